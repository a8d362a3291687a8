# SPDX-License-Identifier: GPL-2.0-or-later
"""`upm bench` end to end, small: 2 containers of the lightest function
with real savings (thumb: python3 + PIL, the same decoded images in every
instance) in the modes off and upm, through the real runc, upm-runtime,
upm-hook and a private upmd, with the host's KSM (/sys/kernel/mm/ksm; the
driver takes the tests' KSM lock and restores the settings itself).

The oracles: the JSON has every column of the table filled for the upm
mode, the upm containers were registered with upmd, upm saved memory
(page frames shared by the containers' pages, ksm_merging_pages; none in
off), and the host's KSM knobs are the same after the run as before.  How
much upm saves is the bench's result, not this test's: PSS differences of
a few MiB between two runs are noise.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from upmtest.ksm import KsmControl
from upmtest.bench import require_pil, run_bench
from upmtest.procfs import KSM_DIR, knobs, read_knob

COLUMNS = ("pss_bytes", "node_used_delta_bytes", "saved_frames_bytes", "kernel_saved_bytes", "saved_pss_bytes", "saved_node_bytes",
           "ideal_saved_bytes", "of_ideal", "t90_s", "ksmd_cpu_s", "ksmd_cpu_s_per_gib", "start_p50_s",
           "start_p95_s", "lat_early_p50_ms", "lat_early_p99_ms", "lat_merged_p50_ms", "lat_merged_p99_ms")


def test_bench_thumb_off_and_upm(upm_bin: Path, tmp_path, report):
    reason = KsmControl.unavailable_reason()
    if reason:
        pytest.skip(f"host KSM unavailable: {reason}")
    if os.geteuid() != 0 or not Path("/usr/bin/runc").exists():
        pytest.skip("needs root and runc (/usr/bin/runc)")
    require_pil()
    knobs_before = knobs()
    # --ksm-run 1: a node whose admin runs ksmd (upmd's tuner idles at the
    # kernel's defaults instead of stopping it), so that what upm advised is
    # merged whatever the tuner's burst caught; with the host's run=0 the
    # saving depends on the burst outlasting the start (docs/bench.md).
    r, doc = run_bench(upm_bin, tmp_path,
                       ["-f", "thumb", "-n", "2", "--modes", "off,upm", "--stagger", "1", "--ksm-run", "1",
                        "--min-measure", "8", "--max-measure", "90", "--settle", "5", "--invocations", "2"],
                       timeout=600)
    assert list(doc["results"]) == ["off", "upm"]
    upm_r, off = doc["results"]["upm"], doc["results"]["off"]
    empty = [c for c in COLUMNS if upm_r.get(c) is None]
    assert not empty, f"columns without a value for mode upm: {empty}; warnings: {doc['warnings']}"
    assert upm_r["ideal"]["source"], upm_r["ideal"]
    assert upm_r["agent"]["registered"] == 2, upm_r.get("agent")
    # saved: the upm containers' pages that share a frame (exact, from
    # pagemap), and the kernel's count for them; none in off
    assert upm_r["saved_frames_bytes"] > 0 and upm_r["merging_pages"] > 0, "nothing merged under upm"
    assert off["saved_frames_bytes"] == 0 and off["merging_pages"] == 0
    assert 0 < upm_r["of_ideal"] <= 1.0
    assert upm_r["ideal_saved_bytes"] >= upm_r["saved_frames_bytes"]
    assert "mode" in r.stdout and "upm" in r.stdout, r.stdout      # the table
    after = {k: read_knob(KSM_DIR / k) for k in knobs_before}
    assert after == knobs_before, "the bench left the host's KSM settings changed"
    report(f"bench thumb x2: upm saved {upm_r['saved_pss_bytes'] >> 20} MiB PSS, merged "
           f"{upm_r['saved_frames_bytes'] >> 20} MiB, {upm_r['of_ideal']:.0%} of the ideal "
           f"({upm_r['ideal']['source']}), t90 {upm_r['t90_s']} s")
