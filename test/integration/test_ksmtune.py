# SPDX-License-Identifier: GPL-2.0-or-later
"""KSM burst tuning on the host's real ksmd (libupm-host's KsmTuner, driven by
the test tool upm-ksmtune until upmd drives it; docs/ksm-tuning.md).

Scenario: four `upm run --backend ksm -- upm-memhog --mib 64 --seed 1`
processes, then the tuner with --kick-on-start.  It must burst (ksmd
running fast), the memory must merge, within 60 s after merging the knobs
must be back at the idle setting with the burst ended by the settle
criterion (not the hard cap), and stopping the tuner must restore every
KSM knob exactly as it was.  A second test kills the tuner during a burst
and checks that the next one recovers the true originals from the state
file, not the burst values it finds.

Oracles: /sys/kernel/mm/ksm (knobs read back), the memhogs' page frames
and KSM counters (upmtest.procfs), ksmd's CPU time from /proc.  The host
KSM is held through the tests' lock and saved/restored around each test
(conftest's ``ksm_held``); the tests start from unusual values
(pages_to_scan 123, sleep_millisecs 37) so that "restored" cannot be
confused with defaults.
"""

from __future__ import annotations

import json
import signal
import time

from upmtest.ksm import set_knobs
from upmtest.merge import MIB, PAGES, describe, upm_run, wait_merged
from upmtest.process import wait_until
from upmtest.procfs import frames_saved, knobs, ksm_counters, ksmd_cpu

START = {"advisor_mode": "none", "pages_to_scan": "123", "sleep_millisecs": "37"}
IDLE = {"pages_to_scan": "100", "sleep_millisecs": "20"}
BURST_SLEEP = "10"
N = 4


def statuses(proc) -> list[dict]:
    out = []
    for line in list(proc.stdout_lines):
        try:
            out.append(json.loads(line))
        except ValueError:
            pass
    return out


def last_status(proc) -> dict:
    s = statuses(proc)
    assert s, f"no status line from upm-ksmtune; stderr: {proc.stderr[-2000:]}"
    return s[-1]


def start_tuner(procs, ksmtune, state_file, *args):
    p = procs.start([ksmtune, "--state-file", state_file, *args])
    p.wait_line(r'"event":"start"', 10)
    return p


def stop_tuner(p) -> int:
    p.signal(signal.SIGTERM)
    return p.wait(30)


def test_burst_merges_then_idle_then_restore(ksm_held, procs, upm_bin, memhog, ksmtune, tmp_path, report):
    """4 x 64 MiB identical: burst, merged, idle within 60 s, exact restore."""
    set_knobs({**START, "run": "0"})
    before = knobs()
    state = tmp_path / "ksm-original.json"
    hogs = [procs.memhog(upm_run(upm_bin, memhog, "--seed", "1", backend="ksm")) for _ in range(N)]

    # Counts left by merged processes that exited while ksmd was stopped
    # (an earlier suite) stay in pages_sharing until ksmd scans again: the
    # burst drops them, so its gain is smaller by up to this much.
    stale = ksm_counters()["pages_sharing"]
    tuner = start_tuner(procs, ksmtune, state, "--kick-on-start")
    t0 = time.monotonic()
    tuner.wait_line(r'"event":"kick"', 10)
    s = last_status(tuner)
    assert s["mode"] == "burst", s
    assert s["original"] == {"run": 0, "pages_to_scan": 123, "sleep_millisecs": 37,
                             **({"advisor_mode": "none"} if "advisor_mode" in before else {})}
    assert state.exists(), "the original settings were not persisted"
    # The knobs themselves, read back from sysfs: ksmd runs fast although
    # it was stopped (run=0) before.
    now = knobs()
    assert now["run"] == "1" and now["sleep_millisecs"] == BURST_SLEEP, now
    assert int(now["pages_to_scan"]) >= 1000, now
    cpu0 = ksmd_cpu()

    took = wait_merged(hogs, timeout=30)
    merged_at = time.monotonic()
    saved = frames_saved(hogs)
    print(describe(hogs))
    assert saved >= 0.95 * (N - 1) * PAGES, f"the regions share {saved} frames"

    # Back to idle within 60 s of merging: the tool says so and sysfs agrees.
    def idle():
        st = last_status(tuner)
        k = knobs()
        return st["mode"] == "idle" and k["run"] == "0" and all(k[n] == v for n, v in IDLE.items()) and st
    st, waited = wait_until(idle, 60, interval=0.2, what="the tuner back at its idle setting",
                            describe=lambda: f"{knobs()} / {last_status(tuner)}")
    burst = st["last_burst"]
    cpu_burst = ksmd_cpu() - cpu0
    report(f"{N} x {MIB} MiB: merged {took:.2f} s after the kick, idle {waited:.2f} s after merging; burst "
           f"{burst['duration_ms']} ms, {burst['full_scans']} full scans, pages_to_scan {burst['pages_to_scan']}, "
           f"end {burst['end_reason']}; ksmd {cpu_burst:.2f} CPU-s")
    assert st["bursts"] == 1, st
    assert burst["end_reason"] == "settled", f"the burst did not settle: {burst}"
    assert burst["full_scans"] >= 2, burst
    assert burst["pages_sharing_gained"] >= 0.9 * (N - 1) * PAGES - stale, (burst, f"stale {stale}")

    # Idle means idle: no knob moves, ksmd (stopped) burns nothing.
    cpu1 = ksmd_cpu()
    time.sleep(3)
    assert knobs()["run"] == "0"
    assert ksmd_cpu() - cpu1 < 0.1, "ksmd kept running while idle"

    # A kick while idle starts a new burst (SIGUSR1 = kick).
    tuner.signal(signal.SIGUSR1)
    wait_until(lambda: last_status(tuner)["bursts"] == 2 and knobs()["run"] == "1", 10,
               what="a second burst after SIGUSR1", describe=lambda: f"{knobs()}")

    assert stop_tuner(tuner) == 0, tuner.stderr
    assert last_status(tuner)["mode"] == "stopped"
    assert knobs() == before, "the original KSM settings were not restored exactly"
    assert not state.exists(), "the state file was left behind"
    for h in hogs:
        assert h.stop() == 0, h.proc.stderr
    _ = t0


def test_crashed_tuner_originals_recovered(ksm_held, procs, ksmtune, tmp_path):
    """SIGKILL during a burst: the next tuner restores the true originals
    (run=1, 123 pages / 37 ms), not the burst values it finds."""
    set_knobs({**START, "run": "1"})
    before = knobs()
    state = tmp_path / "ksm-original.json"

    first = start_tuner(procs, ksmtune, state, "--kick-on-start")
    first.wait_line(r'"event":"kick"', 10)
    assert knobs()["sleep_millisecs"] == BURST_SLEEP
    first.popen.kill()
    first.wait(10)
    assert state.exists(), "no state file after a crash"
    assert knobs()["sleep_millisecs"] == BURST_SLEEP, "the crash left no burst values behind (test is void)"

    second = start_tuner(procs, ksmtune, state)
    s = last_status(second)
    assert s["recovered"] is True, s
    assert s["original"]["run"] == 1 and s["original"]["pages_to_scan"] == 123 \
        and s["original"]["sleep_millisecs"] == 37, s
    # Original run=1: idle keeps ksmd running, at the idle rate.
    k = knobs()
    assert k["run"] == "1" and all(k[n] == v for n, v in IDLE.items()), k

    assert stop_tuner(second) == 0, second.stderr
    assert knobs() == before
    assert not state.exists()
