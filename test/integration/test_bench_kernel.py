# SPDX-License-Identifier: GPL-2.0-or-later
"""`upm bench --modes off,upm-kernel` end to end, smallest: the test kernel
(test/kernel/build.sh, CONFIG_UPM) booted under QEMU with the host's root
shared read-only over virtio-9p, 2 instances of thumb (python3 + PIL, the
same decoded images in every instance) per mode, `off` and `upm-kernel`
(`upm run`: the preload's default policy, whose advice is madvise(MADV_UPM)
on that kernel) in one guest boot.  The host's KSM is not touched.

The oracles are the guest kernel's own counters, carried back in the JSON:
the instances' merged-page counts (/proc/PID/ksm_*, summed) and the node's
pages_sharing grew under upm-kernel and not under off, the upm sysfs
statistics show MADV_UPM calls that merged pages, the page frames the
instances share (pagemap) are at least half of what `upm ideal` says
merging every identical page would save, and the preload logged backend
upm.  Needs root, qemu-system-x86_64 and the kernel build (cached after the
first: minutes then, about 3-4 minutes with a cached kernel).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from upmtest.bench import require_pil, run_bench

COLUMNS = ("pss_bytes", "saved_frames_bytes", "kernel_saved_bytes", "saved_pss_bytes", "ideal_saved_bytes",
           "of_ideal", "t90_s", "ksmd_cpu_s", "advise_cpu_s", "merge_cpu_s_per_gib", "start_p50_s",
           "start_p95_s", "lat_early_p50_ms", "lat_early_p99_ms", "lat_merged_p50_ms", "lat_merged_p99_ms")


def test_bench_kernel_thumb_off_and_upm_kernel(upm_bin: Path, tmp_path, report):
    if os.geteuid() != 0:
        pytest.skip("needs root (QEMU's 9p export of / as root, the guest driver runs as root)")
    if not shutil.which("qemu-system-x86_64"):
        pytest.skip("qemu-system-x86_64 is missing (packaging/install-deps.sh kernel)")
    if not Path("/usr/src/linux-source-6.1.tar.xz").exists():
        pytest.skip("linux-source-6.1 is missing: the test kernel cannot be built (packaging/install-deps.sh kernel)")
    require_pil()
    r, doc = run_bench(upm_bin, tmp_path,
                       ["-f", "thumb", "-n", "2", "--modes", "off,upm-kernel", "--stagger", "1",
                        "--min-measure", "10", "--max-measure", "120", "--settle", "5", "--invocations", "2"],
                       timeout=1500, stderr_tail=6000)
    assert list(doc["results"]) == ["off", "upm-kernel"]
    assert doc["guest"]["accel"] and doc["host"]["kernel"] != os.uname().release, \
        "the results are not from the guest kernel"
    kr, off = doc["results"]["upm-kernel"], doc["results"]["off"]
    empty = [c for c in COLUMNS if kr.get(c) is None]
    assert not empty, f"columns without a value for upm-kernel: {empty}; warnings: {doc['warnings']}"
    assert kr["preload_backend_upm"], "the preload did not use MADV_UPM in the guest"
    # the guest kernel's counters: merged under upm-kernel, nothing under off
    assert kr["merging_pages"] > 0 and kr["kernel_saved_bytes"] > 0, kr
    assert off["merging_pages"] == 0 and off["saved_frames_bytes"] == 0, off
    st = kr["upm_sysfs_delta"]
    assert st["calls"] > 0 and st["pages_merged_existing"] + 2 * st["pairs_merged"] > 0, st
    assert kr["ksmd_cpu_s"] == 0, "ksmd ran under upm-kernel (it should be stopped: run=0)"
    assert kr["saved_frames_bytes"] > 0
    assert 0.5 <= kr["of_ideal"] <= 1.0, f"upm-kernel reached {kr['of_ideal']:.0%} of the ideal"
    assert not [w for w in doc["warnings"] if "splat" in w], doc["warnings"]
    assert "upm-kernel" in r.stdout and "QEMU" in r.stdout, r.stdout      # the table
    report(f"bench thumb x2 in the guest: upm-kernel merged {kr['saved_frames_bytes'] >> 20} MiB, "
           f"{kr['of_ideal']:.0%} of the ideal, t90 {kr['t90_s']} s, advice {kr['advise_cpu_s']} CPU-s, "
           f"guest ran {doc['guest']['seconds']} s")
