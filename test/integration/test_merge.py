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
  * /sys/kernel/mm/ksm/pages_sharing (node-wide: pages saved), whose change
    during the test must be at least (N - 1) x 95% of the region's pages,
  * the VmFlags "mg" flag of the data region (advised with MADV_MERGEABLE or
    MADV_UPM, or made mergeable by PR_SET_MEMORY_MERGE),
  * full_scans: a negative result counts only after ksmd has completed at
    least two more full scans (ksmd needs two to merge a page).
"""

from __future__ import annotations

import pytest

from conftest import (FRACTION, MIB, PAGES, assert_not_merged, describe, ksm_counters, upm_run,
                      wait_full_scans, wait_merged)


@pytest.mark.parametrize("alloc", ["--mmap", "--malloc"])
def test_two_instances_merge_95_percent(ksm_fast, procs, upm_bin, memhog, alloc):
    """Two `upm run -- upm-memhog --mib 64 --seed 1`: >= 95% merged within 10 s."""
    before = ksm_counters()
    hogs = [procs.memhog(upm_run(upm_bin, memhog, "--seed", "1", alloc)) for _ in range(2)]
    took = wait_merged(hogs)
    after = ksm_counters()
    print(f"time-to-95% ({alloc[2:]}, 2 x {MIB} MiB, default policy): {took:.2f} s; "
          f"{describe(hogs)}")

    for h in hogs:
        assert h.region().mergeable, f"region of pid {h.pid} lacks VmFlags mg: {h.region()}"
        # Each process counts every one of its pages mapped to a KSM page.
        assert h.merging_pages() >= FRACTION * PAGES
    saved = after["pages_sharing"] - before["pages_sharing"]
    assert saved >= FRACTION * PAGES, (
        f"pages_sharing grew by {saved}, want >= {FRACTION * PAGES:.0f} (one page saved per pair)")
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


def test_many_processes_merge(ksm_fast, procs, upm_bin, memhog):
    """Four instances: every one merged; pages_sharing saves three copies."""
    n = 4
    before = ksm_counters()
    hogs = [procs.memhog(upm_run(upm_bin, memhog, "--seed", "1")) for _ in range(n)]
    took = wait_merged(hogs)
    after = ksm_counters()
    print(f"time-to-95% ({n} x {MIB} MiB): {took:.2f} s; {describe(hogs)}")
    saved = after["pages_sharing"] - before["pages_sharing"]
    assert saved >= FRACTION * (n - 1) * PAGES, (
        f"pages_sharing grew by {saved}, want >= {FRACTION * (n - 1) * PAGES:.0f}")
    assert after["pages_shared"] - before["pages_shared"] <= 1.05 * PAGES, (
        "more KSM pages than distinct pages: identical pages were not merged into one")
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
    for h in same + [other]:
        assert h.stop() == 0, h.proc.stderr
