# SPDX-License-Identifier: GPL-2.0-or-later
"""Integrity: merged pages keep every process's data exactly as it wrote it.

After two processes' identical pages are merged, one of them writes to half
of its pages (copy-on-write must give it private copies); the other's data
must not change.  Oracles:
  * upm-memhog's own verification of every page against the content it must
    hold (exit status 2 and bad=K on any mismatch),
  * checksums compared with those of the same program run without upm and
    without KSM (the reference run),
  * sample pages read from outside through /proc/PID/mem and compared with
    the content computed by this test (conftest.memhog_page),
  * the kernel's KSM counters: the writer's written pages stop being KSM
    pages, the other process's stay merged,
  * page frames (/proc/PID/pagemap): no written page shares the reader's
    frame, the unwritten ones still do.
"""

from __future__ import annotations

import random

import pytest

from upmtest.merge import FRACTION, MIB, PAGES, describe, upm_run, wait_merged
from upmtest.procfs import (PAGE_SIZE, memhog_page, read_process_memory, region_ksm_pages, region_pfns,
                            write_process_memory)

WRITE_AFTER = 8.0   # seconds after ready; merging takes about 1-2 s
STRIDE = 2          # the writer rewrites every 2nd page


def reference_checksum(procs, memhog, *args) -> str:
    """Checksum of the same content computed by a run without upm or KSM."""
    r = procs.run([memhog, "--mib", str(MIB), "--hold", "0", "--checksum", *args], timeout=60)
    assert r.returncode == 0, r.stderr
    for line in r.stdout.splitlines():
        if line.startswith("checksum "):
            return line.split()[1]
    raise AssertionError(f"no checksum line in {r.stdout!r}")


def check_sample_pages(hog, written_stride: int | None, n: int = 48) -> None:
    """Reads `n` random pages (and the first and last) through /proc/PID/mem."""
    rng = random.Random(hog.pid)
    for index in {0, hog.pages - 1, *rng.sample(range(hog.pages), n)}:
        generation = 1 if written_stride and index % written_stride == 0 else 0
        got = read_process_memory(hog.pid, hog.addr + index * PAGE_SIZE, PAGE_SIZE)
        assert got == memhog_page(hog.seed, index, generation), (
            f"pid {hog.pid} page {index} (generation {generation}) does not hold its content")


def test_write_after_merge(ksm_fast, procs, upm_bin, memhog):
    ref_plain = reference_checksum(procs, memhog, "--seed", "1")
    ref_written = reference_checksum(procs, memhog, "--seed", "1", "--write-after", "0",
                                     "--write-stride", str(STRIDE))
    assert ref_plain != ref_written

    reader = procs.memhog(upm_run(upm_bin, memhog, "--seed", "1", "--checksum"))
    writer = procs.memhog(upm_run(upm_bin, memhog, "--seed", "1", "--checksum",
                                  "--write-after", str(WRITE_AFTER), "--write-stride", str(STRIDE)))
    took = wait_merged([reader, writer])
    assert not any(line.startswith("wrote") for line in writer.proc.stdout_lines), (
        f"merging took {took:.1f} s, longer than the {WRITE_AFTER} s before the write; "
        "the test did not write to merged pages")
    print(f"merged in {took:.2f} s; {describe([reader, writer])}")

    writer.proc.wait_line(r"^wrote \d+ pages", WRITE_AFTER + 10)
    written = (PAGES + STRIDE - 1) // STRIDE

    # Copy-on-write gave the writer private copies of what it wrote; what it
    # did not write, and all of the reader's pages, are still KSM pages.
    w_ksm = writer.region_ksm_pages()
    r_ksm = reader.region_ksm_pages()
    print(f"after the write: writer {w_ksm}, reader {r_ksm} KSM pages in the region")
    assert w_ksm <= PAGES - written, f"written pages still KSM pages: {describe([writer])}"
    assert w_ksm >= FRACTION * (PAGES - written) - 0.05 * PAGES, describe([writer])
    assert r_ksm >= FRACTION * PAGES, f"the write unmerged the reader's pages: {describe([reader])}"

    # Frames: every written page of the writer has its own frame now; the
    # pages it did not write still share the reader's.
    r_pfns = region_pfns(reader.pid, reader.addr, reader.length)
    w_pfns = region_pfns(writer.pid, writer.addr, writer.length)
    shared_written = sum(1 for i in range(0, PAGES, STRIDE) if w_pfns[i] == r_pfns[i])
    shared_unwritten = sum(1 for i in range(PAGES) if i % STRIDE and w_pfns[i] == r_pfns[i])
    assert shared_written == 0, f"{shared_written} written pages still share the reader's frame"
    assert shared_unwritten >= FRACTION * (PAGES - written), (
        f"only {shared_unwritten} unwritten pages still share a frame")

    check_sample_pages(reader, None)
    check_sample_pages(writer, STRIDE)
    assert reader.checksum() == (ref_plain, 0)
    assert writer.checksum() == (ref_written, 0)

    assert reader.stop() == 0, reader.proc.stderr
    assert writer.stop() == 0, writer.proc.stderr
    assert reader.proc.stdout_lines[-1].startswith(f"checksum {ref_plain} ")
    assert writer.proc.stdout_lines[-1].startswith(f"checksum {ref_written} ")


def test_foreign_write_to_merged_page_is_private(ksm_fast, procs, upm_bin, memhog):
    """A write into one process's merged page (through /proc/PID/mem) changes
    that process only; and the verification catches it (a positive control
    of the corruption check)."""
    hogs = [procs.memhog(upm_run(upm_bin, memhog, "--seed", "1")) for _ in range(2)]
    wait_merged(hogs)
    victim, other = hogs
    index = 4242
    write_process_memory(victim.pid, victim.addr + index * PAGE_SIZE + 100, b"upm")

    assert read_process_memory(other.pid, other.addr + index * PAGE_SIZE, PAGE_SIZE) == memhog_page(1, index)
    assert other.checksum()[1] == 0
    assert victim.checksum()[1] == 1
    assert victim.stop() == 2, "memhog did not report the page changed behind its back"
    assert other.stop() == 0, other.proc.stderr


@pytest.mark.parametrize("n", [3])
def test_exit_of_one_sharer_keeps_others(ksm_fast, procs, upm_bin, memhog, n):
    """When sharers exit one by one, the last one's data is intact."""
    ref = reference_checksum(procs, memhog, "--seed", "1")
    hogs = [procs.memhog(upm_run(upm_bin, memhog, "--seed", "1")) for _ in range(n)]
    wait_merged(hogs)
    for h in hogs[:-1]:
        assert h.stop() == 0, h.proc.stderr
    last = hogs[-1]
    exact = region_ksm_pages(last.pid, last.addr, last.length)
    print(f"last sharer after the others exited: {exact} KSM pages in the region")
    check_sample_pages(last, None)
    assert last.checksum() == (ref, 0)
    assert last.stop() == 0


def test_identical_pages_within_and_across_processes(ksm_fast, procs, upm_bin, memhog, report):
    """Every page of two processes holds the same content (--pattern same):
    more sharers than one KSM page may have (max_page_sharing), so the
    kernel chains duplicates.  All pages merge into a handful of frames and
    every page still reads back right."""
    ref = reference_checksum(procs, memhog, "--seed", "1", "--pattern", "same")
    hogs = [procs.memhog(upm_run(upm_bin, memhog, "--seed", "1", "--pattern", "same", "--checksum"))
            for _ in range(2)]
    took = wait_merged(hogs)
    frames = {pfn for h in hogs for pfn in region_pfns(h.pid, h.addr, h.length) if pfn}
    max_sharing = int(open("/sys/kernel/mm/ksm/max_page_sharing").read())
    report(f"2 x {MIB} MiB of one repeated page: 95% merged in {took:.2f} s into {len(frames)} frames "
           f"(max_page_sharing {max_sharing})")
    # Each KSM page has at most max_page_sharing mappers; allow the 5% not
    # merged yet and some slack for chains being filled.
    assert len(frames) <= 2 * PAGES // max_sharing * 2 + 0.05 * 2 * PAGES, f"{len(frames)} frames"
    expected = memhog_page(1, 0)
    for h in hogs:
        for index in (0, 1, h.pages // 2, h.pages - 1):
            assert read_process_memory(h.pid, h.addr + index * PAGE_SIZE, PAGE_SIZE) == expected
        assert h.checksum() == (ref, 0)
    for h in hogs:
        assert h.stop() == 0, h.proc.stderr
