# SPDX-License-Identifier: GPL-2.0-or-later
"""`upm ideal`: what merging every identical anonymous page would save.

Real processes with known content: upm-memhog started with the same seed
holds page-for-page identical data (every page of one process differs from
the others of that process), with --unique-per-process data nobody else
has, with --pattern zero zero-filled pages.  So the duplicates among them
are known exactly: N processes x P identical pages leave (N - 1) x P to
save.  The rest of each process (its stack, libc's data, stdio buffers)
adds a few duplicates of its own, hence a small tolerance above the known
count and none below it.

After KSM merged the identical data (ksm_fast, the host's ksmd), the saving
still possible drops to about nothing while the saving against no merging
stays what it was; the KSM frames are checked against the kernel's own
count (the smaps "KSM:" line of the data regions, /proc/PID/ksm_merging_pages).

Needs root (page frame numbers and /proc/kpageflags), which every
integration suite has.
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest

from upmtest.merge import wait_full_scans, wait_merged
from upmtest.process import wait_until
from upmtest.procfs import PAGE_SIZE

MIB = 16
PAGES = MIB * 1024 * 1024 // PAGE_SIZE          # identical pages per process
N = 4
UNIQUE_MIB = 8
ZERO_MIB = 4
# Duplicates outside the memhog regions (libc's and the program's data,
# stack, stdio buffers): a few pages per process; seen: 15 for 6 processes.
NOISE_PER_PROCESS = 64

COUNTERS = ["anon_present_pages", "mappings", "distinct_contents", "zero_pages", "unreadable_pages",
            "ideal_resident_pages", "ideal_saved_pages", "ideal_saved_bytes", "ksm_pages_now",
            "unmerged_pages", "ideal_saved_from_unmerged_pages", "merged_saved_pages"]


def hog_argv(memhog, *args, mib=MIB):
    return [memhog, "--mib", str(mib), "--hold-until-signal", *args]


def ideal(procs, upm_bin, *args, expect_rc=0) -> dict:
    r = procs.run([upm_bin, "ideal", "--json", *[str(a) for a in args]], timeout=120)
    assert r.returncode == expect_rc, f"`upm ideal` exited {r.returncode}: {r.stderr}"
    doc = json.loads(r.stdout)
    check_consistent(doc)
    return doc


def check_consistent(doc: dict) -> None:
    """The documented relations between the fields, for the totals and every class."""
    assert doc["page_size"] == PAGE_SIZE
    for where, c in [("total", doc), *doc["by_class"].items()]:
        for k in COUNTERS:
            assert isinstance(c[k], int), f"{where}: {k} = {c.get(k)!r}"
        assert c["ideal_resident_pages"] == c["distinct_contents"] + c["unreadable_pages"], where
        assert c["ideal_saved_pages"] == c["anon_present_pages"] - c["ideal_resident_pages"], where
        assert c["ideal_saved_bytes"] == c["ideal_saved_pages"] * PAGE_SIZE, where
        assert c["ideal_saved_from_unmerged_pages"] == c["unmerged_pages"] - c["ideal_resident_pages"], where
        assert c["merged_saved_pages"] == c["unmerged_pages"] - c["anon_present_pages"], where
        assert c["anon_present_pages"] <= c["unmerged_pages"] <= c["mappings"], where
        assert c["ksm_pages_now"] <= c["anon_present_pages"], where
        assert c["distinct_contents"] <= c["anon_present_pages"], where


def summary(doc: dict) -> str:
    return ", ".join(f"{k}={doc[k]}" for k in COUNTERS)


def start_hogs(procs, memhog):
    """N identical, two unique, one zero-filled; returns (identical, others)."""
    same = [procs.memhog(hog_argv(memhog, "--seed", "1")) for _ in range(N)]
    others = [procs.memhog(hog_argv(memhog, "--seed", "1", "--unique-per-process", mib=UNIQUE_MIB)) for _ in range(2)]
    others.append(procs.memhog(hog_argv(memhog, "--pattern", "zero", mib=ZERO_MIB)))
    return same, others


def test_known_duplicates(procs, upm_bin, memhog, report):
    """4 x 16 MiB identical + 2 x 8 MiB unique + 4 MiB of zeros: the ideal
    saving is 3 x 16 MiB of pages, plus all but one of the zero pages."""
    same, others = start_hogs(procs, memhog)
    pids = [h.pid for h in same + others]
    t0 = time.monotonic()
    doc = ideal(procs, upm_bin, *pids)
    took = time.monotonic() - t0
    report(f"upm ideal: {len(pids)} processes, {doc['anon_present_pages']} pages in {took:.2f} s "
           f"(elapsed_s {doc['elapsed_s']})")
    print(summary(doc))

    assert sorted(doc["pids"]) == sorted(pids)
    assert doc["errors"] == []
    zero = ZERO_MIB * 1024 * 1024 // PAGE_SIZE
    unique = 2 * UNIQUE_MIB * 1024 * 1024 // PAGE_SIZE
    noise = NOISE_PER_PROCESS * len(pids)
    # Zero pages apart: the zero-filled memhog's, and few others.
    assert zero <= doc["zero_pages"] <= zero + noise, summary(doc)
    duplicates = doc["ideal_saved_pages"] - (doc["zero_pages"] - 1)
    assert (N - 1) * PAGES <= duplicates <= (N - 1) * PAGES + noise, (
        f"{duplicates} duplicate non-zero pages, want {(N - 1) * PAGES} (+ at most {noise}): {summary(doc)}")
    assert N * PAGES + unique + zero <= doc["anon_present_pages"] <= N * PAGES + unique + zero + 64 * noise
    assert doc["distinct_contents"] >= PAGES + unique + 1
    # Nothing is merged or shared: every mapping has a frame of its own.
    assert doc["ksm_pages_now"] == 0
    assert doc["mappings"] == doc["unmerged_pages"] == doc["anon_present_pages"]
    assert doc["ideal_saved_from_unmerged_pages"] == doc["ideal_saved_pages"]
    assert doc["unreadable_pages"] == 0
    # The memhog regions are anonymous read-write mappings: class heap.
    heap = doc["by_class"]["heap"]
    assert heap["anon_present_pages"] >= N * PAGES + unique + zero
    assert heap["ideal_saved_pages"] >= (N - 1) * PAGES + zero - 1
    assert set(doc["by_class"]) == {"heap", "anonymous", "libdata", "rodata", "stack", "text"}
    assert doc["bytes_read"] >= (N * PAGES + unique + zero) * PAGE_SIZE

    # --classes: one class alone gives what by_class said about it.
    only = ideal(procs, upm_bin, "--classes", "heap", *pids)
    assert set(only["by_class"]) == {"heap"}
    for k in ("anon_present_pages", "distinct_contents", "zero_pages", "ideal_saved_pages"):
        assert only[k] == only["by_class"]["heap"][k]
        assert abs(only[k] - heap[k]) <= noise, (k, only[k], heap[k])
    stack = ideal(procs, upm_bin, "--classes", "stack", *pids)
    assert stack["anon_present_pages"] < N * PAGES, "the memhog regions were counted as stack"


def test_human_output(procs, upm_bin, memhog):
    same = [procs.memhog(hog_argv(memhog, "--seed", "3", mib=4)) for _ in range(2)]
    r = procs.run([upm_bin, "ideal", *[h.pid for h in same]])
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].startswith("2 processes scanned"), r.stdout
    header = lines[1].split()
    assert header[:2] == ["CLASS", "PRESENT"] and "SAVE_NOW" in header, r.stdout
    rows = {l.split()[0]: l.split() for l in lines[2:] if l and l.split()[0] in
            ("heap", "anonymous", "libdata", "rodata", "stack", "text", "total")}
    assert set(rows) == {"heap", "anonymous", "libdata", "rodata", "stack", "text", "total"}, r.stdout
    saved = int(rows["total"][header.index("SAVE_NOW")])
    assert 1024 <= saved <= 1024 + 2 * NOISE_PER_PROCESS, r.stdout
    assert "SAVE_NOW:" in r.stdout and "SAVE_ALL:" in r.stdout


def test_fork_shared_frames_count_once(procs, upm_bin, tmp_path):
    """A parent and its child share their pages' frames after fork (COW):
    each frame counts once, and sharing is no duplicate left to merge.
    Shared anonymous memory (MAP_SHARED) is not counted: KSM cannot merge it."""
    ready = tmp_path / "ready"
    script = (
        "import mmap, os, signal, sys\n"
        "m = mmap.mmap(-1, 32 << 20, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)\n"
        "m.write(os.urandom(32 << 20))\n"
        "s = mmap.mmap(-1, 16 << 20)\n"            # MAP_SHARED: never counted
        "s.write(os.urandom(16 << 20))\n"
        "pid = os.fork()\n"
        "if pid == 0:\n"
        "    signal.pause()\n"
        f"open({str(ready)!r}, 'w').write(str(pid))\n"
        "signal.pause()\n")
    p = procs.start(["/usr/bin/python3", "-c", script])
    wait_until(lambda: ready.exists() and ready.read_text(), 30, what="the forked python to be ready")
    child = int(ready.read_text())
    try:
        doc = ideal(procs, upm_bin, p.pid, child)
    finally:
        os.kill(child, signal.SIGKILL)
    region = (32 << 20) // PAGE_SIZE
    print(summary(doc))
    assert doc["mappings"] - doc["anon_present_pages"] >= region, summary(doc)
    assert doc["unmerged_pages"] == doc["anon_present_pages"]      # fork sharing is not KSM
    assert doc["ideal_saved_pages"] < region // 4, summary(doc)
    assert doc["anon_present_pages"] < region + (16 << 20) // PAGE_SIZE, "the MAP_SHARED region was counted"


def test_unreadable_pid_is_skipped(procs, upm_bin, memhog):
    hog = procs.memhog(hog_argv(memhog, "--seed", "5", mib=1))
    gone = 2 ** 22 + 12345      # above the default pid_max of 64-bit kernels
    if Path(f"/proc/{gone}").exists():
        pytest.skip(f"pid {gone} exists on this host")
    r = procs.run([upm_bin, "ideal", "--json", gone, hog.pid])
    assert r.returncode == 0, r.stderr
    assert f"process {gone} skipped" in r.stderr and "no such process" in r.stderr, r.stderr
    doc = json.loads(r.stdout)
    assert doc["pids"] == [hog.pid]
    assert doc["errors"] and doc["errors"][0]["pid"] == gone
    r = procs.run([upm_bin, "ideal", gone])
    assert r.returncode == 1 and "no process could be read" in r.stderr, r.stderr


def test_without_cap_sys_admin(procs, upm_bin, memhog):
    """Root without CAP_SYS_ADMIN reads page frame numbers as 0: said, not
    counted as one frame."""
    hog = procs.memhog(hog_argv(memhog, "--seed", "5", mib=1))
    r = procs.run(["setpriv", "--bounding-set", "-sys_admin", "--inh-caps", "-sys_admin", "--",
                   upm_bin, "ideal", "--json", hog.pid])
    assert r.returncode == 1, f"exit {r.returncode}; stdout {r.stdout[:500]}; stderr {r.stderr}"
    assert "page frame numbers read as 0" in r.stderr and "run `upm ideal` as root" in r.stderr, r.stderr


def test_usage_errors(procs, upm_bin, tmp_path):
    r = procs.run([upm_bin, "ideal"])
    assert r.returncode == 2 and "no PID" in r.stderr, r.stderr
    r = procs.run([upm_bin, "ideal", "--classes", "heap,never", "1"])
    assert r.returncode == 2 and "unknown class `never`" in r.stderr, r.stderr
    r = procs.run([upm_bin, "ideal", "--cgroup", tmp_path])
    assert r.returncode == 1 and "not a cgroup directory" in r.stderr, r.stderr
    r = procs.run([upm_bin, "ideal", "--help"])
    assert r.returncode == 0 and "--cgroup" in r.stdout and "--classes" in r.stdout, r.stdout


# --- after merging -----------------------------------------------------------


def test_after_ksm_merging(ksm_fast, procs, upm_bin, memhog, write_policy, report):
    """The same 4 processes before and after ksmd merged their identical
    data: ideal_saved_pages drops by the merged pages to about nothing,
    ideal_saved_from_unmerged_pages stays, and KSM frames are counted."""
    # Advised only on SIGUSR2 (memhog leaves it unblocked), so that the
    # state before merging can be measured on the same processes.
    policy = write_policy("on-signal", triggers={"start": False, "dlopen": False, "delays_ms": [],
                                                 "periodic": None, "signal": "SIGUSR2"})
    hogs = [procs.memhog([upm_bin, "run", "--policy", policy, "--backend", "ksm", "--",
                          *hog_argv(memhog, "--seed", "1")]) for _ in range(N)]
    pids = [h.pid for h in hogs]
    before = ideal(procs, upm_bin, *pids)
    print("before:", summary(before))
    assert all(h.region_ksm_pages() == 0 for h in hogs), "merged before the signal"
    noise = NOISE_PER_PROCESS * N
    assert (N - 1) * PAGES <= before["ideal_saved_pages"] <= (N - 1) * PAGES + noise, summary(before)

    for h in hogs:
        os.kill(h.pid, signal.SIGUSR2)
    took = wait_merged(hogs, fraction=1.0, timeout=60)
    wait_full_scans(2)
    after = ideal(procs, upm_bin, *pids)
    print("after:", summary(after))
    report(f"upm ideal after KSM (merged in {took:.1f} s): ideal_saved_pages {before['ideal_saved_pages']} -> "
           f"{after['ideal_saved_pages']}, ideal_saved_from_unmerged_pages "
           f"{before['ideal_saved_from_unmerged_pages']} -> {after['ideal_saved_from_unmerged_pages']}")

    # The kernel's own count: every page of the data regions is a KSM page,
    # all N regions on the same PAGES frames.
    assert after["ksm_pages_now"] >= PAGES, summary(after)
    assert after["merged_saved_pages"] >= (N - 1) * PAGES, summary(after)
    assert after["ideal_saved_pages"] <= before["ideal_saved_pages"] - (N - 1) * PAGES, summary(after)
    assert after["ideal_saved_pages"] <= noise, summary(after)
    assert after["by_class"]["heap"]["ideal_saved_pages"] <= noise, summary(after)
    # Against no merging at all nothing changed: the same pages, the same contents.
    for k in ("ideal_saved_from_unmerged_pages", "unmerged_pages", "distinct_contents"):
        assert abs(after[k] - before[k]) <= noise, f"{k}: {before[k]} -> {after[k]}"
    assert abs(after["anon_present_pages"] - (before["anon_present_pages"] - (N - 1) * PAGES)) <= noise
    for h in hogs:
        assert h.stop() == 0, h.proc.stderr     # the memhogs verify every page


# --- cgroups -----------------------------------------------------------------


def cgroup2_root() -> tuple[Path | None, str]:
    """The cgroup v2 mount: /sys/fs/cgroup on unified hosts, the `unified`
    mount of hybrid ones; (None, why) when there is none."""
    mounts = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        pre, _, post = line.partition(" - ")
        if post.split()[:1] == ["cgroup2"]:
            mounts.append(Path(pre.split()[4]))
    if not mounts:
        return None, "no cgroup v2 hierarchy is mounted (a cgroup v1 host)"
    for m in mounts:
        if m == Path("/sys/fs/cgroup"):
            return m, ""
    return mounts[0], ""


@pytest.fixture
def cgroup_dir():
    root, why = cgroup2_root()
    if root is None:
        print(f"skip: {why}")
        pytest.skip(why)
    path = root / f"upm-test-ideal-{os.getpid()}"
    try:
        path.mkdir()
    except OSError as e:
        print(f"skip: cannot create a cgroup under {root}: {e}")
        pytest.skip(f"cannot create a cgroup under {root}: {e}")
    (path / "sub").mkdir()
    try:
        yield path
    finally:
        # The test's processes are killed with their groups; wait until the
        # cgroups are empty, then remove them.
        for d in (path / "sub", path):
            for pid in (d / "cgroup.procs").read_text().split():
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except ProcessLookupError:
                    pass
            wait_until(lambda: not (d / "cgroup.procs").read_text().strip(), 10,
                       what=f"{d} to be empty")
            d.rmdir()


def test_cgroup(procs, upm_bin, memhog, cgroup_dir):
    """--cgroup DIR takes the processes of DIR and of the cgroups below it."""
    r = procs.run([upm_bin, "ideal", "--json", "--cgroup", cgroup_dir])
    assert r.returncode == 1 and "no process in cgroup" in r.stderr, (r.returncode, r.stderr)

    hogs = [procs.memhog(hog_argv(memhog, "--seed", "1")) for _ in range(3)]
    outsider = procs.memhog(hog_argv(memhog, "--seed", "1"))
    for h, d in zip(hogs, [cgroup_dir, cgroup_dir, cgroup_dir / "sub"]):
        (d / "cgroup.procs").write_text(str(h.pid))
    pids = sorted(h.pid for h in hogs)
    doc = ideal(procs, upm_bin, "--cgroup", cgroup_dir)
    print(summary(doc))
    assert doc["pids"] == pids, f"scanned {doc['pids']}, the cgroup has {pids} (not {outsider.pid})"
    assert doc["cgroup"] == str(cgroup_dir)
    assert 2 * PAGES <= doc["ideal_saved_pages"] <= 2 * PAGES + NOISE_PER_PROCESS * 3, summary(doc)
    sub = ideal(procs, upm_bin, "--cgroup", cgroup_dir / "sub")
    assert sub["pids"] == [hogs[2].pid]
    # The same processes named by pid: the same counts.
    by_pid = ideal(procs, upm_bin, *pids)
    for k in ("anon_present_pages", "distinct_contents", "ideal_saved_pages"):
        assert abs(by_pid[k] - doc[k]) <= NOISE_PER_PROCESS, (k, by_pid[k], doc[k])
