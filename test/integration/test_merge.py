# SPDX-License-Identifier: GPL-2.0-or-later
"""Merging: identical data in processes started with `upm run` is merged.

The acceptance scenario of the project: two instances of a program holding
the same 64 MiB, each started with `upm run -- ...` under the default
policy, with ksmd switched to fast settings.  Within 10 s of the programs'
ready lines at least 95% of those pages must be merged.

Oracles (the kernel's own counters, nothing upm reports about itself):
  * the "KSM:" line of /proc/PID/smaps for the data region (kernel >= 6.9;
    older kernels fall back to /proc/PID/ksm_merging_pages),
  * /proc/PID/ksm_merging_pages, which counts, per process, the pages of
    that process that are mapped to a KSM page.  Every process sharing a
    KSM page counts it, the first one included: two processes with 16384
    identical pages each both show 16384,
  * frames: the page frame numbers of the data regions (/proc/PID/pagemap);
    N processes whose pages merged share frames, saving at least
    (N - 1) x 95% of a region's pages; other data shares no frame with them,
  * /sys/kernel/mm/ksm/pages_sharing (node-wide: pages saved) must be at
    least what the frames show (its change is no oracle: other processes'
    KSM pages come and go during a test),
  * the VmFlags "mg" flag of the data region (advised with MADV_MERGEABLE or
    MADV_UPM, or made mergeable by PR_SET_MEMORY_MERGE),
  * full_scans: a negative result counts only after ksmd has completed at
    least two more full scans (ksmd needs two to merge a page).
"""

from __future__ import annotations

import pytest

from upmtest.merge import (FRACTION, MIB, PAGES, assert_not_merged, describe, upm_run, wait_full_scans,
                           wait_merged)
from upmtest.procfs import frames_saved, ksm_counters, region_pfns


@pytest.mark.parametrize("alloc,backend,policy", [("--mmap", None, None), ("--malloc", None, None),
                                                  ("--mmap", "ksm", None), ("--mmap", None, "all-anonymous")],
                         ids=["mmap", "malloc", "mmap-backend-ksm", "mmap-all-anonymous"])
def test_two_instances_merge_95_percent(ksm_fast, procs, upm_bin, memhog, policies_dir, report,
                                        alloc, backend, policy):
    """Two `upm run -- upm-memhog --mib 64 --seed 1`: >= 95% merged within 10 s.

    Under the default policy, and under all-anonymous (which may take the
    PR_SET_MEMORY_MERGE path instead of advising regions)."""
    path = policies_dir / f"{policy}.json" if policy else None
    before = ksm_counters()
    hogs = [procs.memhog(upm_run(upm_bin, memhog, "--seed", "1", alloc, backend=backend, policy=path))
            for _ in range(2)]
    took = wait_merged(hogs)
    saved = frames_saved(hogs)
    after = ksm_counters()      # after the frames: merging goes on meanwhile
    report(f"time-to-95% {took:.2f} s (2 x {MIB} MiB, {alloc[2:]}, {policy or 'default'} policy, "
           f"backend {backend or 'auto'})")
    print(describe(hogs))

    for h in hogs:
        assert h.region().mergeable, f"region of pid {h.pid} lacks VmFlags mg: {h.region()}"
        # Each process counts every one of its pages mapped to a KSM page.
        assert h.merging_pages() >= FRACTION * PAGES
    assert saved >= FRACTION * PAGES, f"the regions share {saved} frames, want >= {FRACTION * PAGES:.0f}"
    # pages_sharing counts the whole node; other processes' KSM pages may go
    # away during the test, so only its value (not its change) is bounded.
    assert after["pages_sharing"] >= saved, (
        f"pages_sharing {after['pages_sharing']} (before {before['pages_sharing']}) < {saved} frames saved")
    for h in hogs:
        assert h.stop() == 0, f"memhog {h.pid} found corrupt pages: {h.proc.stderr}"


@pytest.mark.parametrize("launch", ["libdata-policy", "without-upm"])
def test_unadvised_data_not_merged(ksm_fast, procs, upm_bin, memhog, write_policy, launch):
    """Data upm was not asked to advise stays unmerged.

    libdata-policy: `upm run` with a policy whose classes are ["libdata"]
    (no heap, no anonymous); without-upm: the same program started directly.
    A positive control with another seed runs at the same time under the
    default policy; the verdict is taken once the control has merged and
    ksmd has completed two more full scans.
    """
    if launch == "libdata-policy":
        libdata_only = write_policy("libdata-only", classes=["libdata"])
        argv = upm_run(upm_bin, memhog, "--seed", "1", policy=libdata_only)
    else:
        argv = [memhog, "--mib", str(MIB), "--hold-until-signal", "--seed", "1"]
    negative = [procs.memhog(argv) for _ in range(2)]
    control = [procs.memhog(upm_run(upm_bin, memhog, "--seed", "7")) for _ in range(2)]
    took = wait_merged(control)
    wait_full_scans(2)
    print(f"control merged in {took:.2f} s; {describe(negative)}")

    for h in negative:
        region = h.region()
        assert not region.mergeable, f"{launch}: the data region was advised: {region}"
        assert_not_merged(h)
    for h in control:
        assert h.region().mergeable


def test_many_processes_merge(ksm_fast, procs, upm_bin, memhog, report):
    """Four instances: every one merged; pages_sharing saves three copies."""
    n = 4
    before = ksm_counters()
    hogs = [procs.memhog(upm_run(upm_bin, memhog, "--seed", "1")) for _ in range(n)]
    took = wait_merged(hogs)
    saved = frames_saved(hogs)
    after = ksm_counters()      # after the frames: merging goes on meanwhile
    report(f"time-to-95% {took:.2f} s ({n} x {MIB} MiB)")
    print(describe(hogs))
    assert saved >= FRACTION * (n - 1) * PAGES, (
        f"the regions share {saved} frames, want >= {FRACTION * (n - 1) * PAGES:.0f} "
        "(identical pages of all processes merged into one)")
    assert after["pages_sharing"] >= saved, (
        f"pages_sharing {after['pages_sharing']} (before {before['pages_sharing']}) < {saved} frames saved")
    for h in hogs:
        assert h.stop() == 0, h.proc.stderr


@pytest.mark.parametrize("variant", [["--seed", "2"], ["--seed", "1", "--unique-per-process"]],
                         ids=["other-seed", "unique-per-process"])
def test_different_data_not_merged(ksm_fast, procs, upm_bin, memhog, variant):
    """A process holding other data is advised but shares nothing with the others."""
    same = [procs.memhog(upm_run(upm_bin, memhog, "--seed", "1")) for _ in range(2)]
    other = procs.memhog(upm_run(upm_bin, memhog, *variant))
    took = wait_merged(same)
    wait_full_scans(2)
    print(f"pair merged in {took:.2f} s; other: {describe([other])}")
    region = other.region()
    assert region.mergeable, f"the other process's region was not advised: {region}"
    assert_not_merged(other)
    pair = {pfn for h in same for pfn in region_pfns(h.pid, h.addr, h.length) if pfn}
    mine = {pfn for pfn in region_pfns(other.pid, other.addr, other.length) if pfn}
    assert not pair & mine, f"{len(pair & mine)} frames shared with the processes holding other data"
    for h in same + [other]:
        assert h.stop() == 0, h.proc.stderr
