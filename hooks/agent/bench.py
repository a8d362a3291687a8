#!/usr/bin/env python3
# SPDX-License-Identifier: GPL-2.0-or-later
"""KSM burst tuning against fixed ksmd settings: time to savings and ksmd CPU.

One run, one machine, the same workload three times: N processes, each
`upm run --backend ksm -- upm-memhog --mib M --seed 1` (identical M MiB in
every process, distinct pages within one), under three ksmd regimes:

  default     fixed: run=1, pages_to_scan=100, sleep_millisecs=20 (the
              kernel's defaults, what an admin gets with `echo 1 > run`)
  aggressive  fixed: ksm-throttler's "aggressive" level, pages_to_scan =
              AnonPages/10, sleep_millisecs=1 (kata-containers/ksm-throttler
              ksm.go), kept for ever
  burst       libupm-host's KsmTuner: idle at the kernel defaults (run=1,
              100 pages / 20 ms), a burst sized from AnonPages on a kick,
              back to idle when merging settled.  Driven by upmd when the
              build has it (started before the processes on a socket of its
              own; `upm run` registers each process, which kicks), else by
              the test tool upm-ksmtune --kick-on-start (--tuner chooses)

For each: t0 = every process has printed its ready line (memory written
and advised; the tuner is kicked at t0); the merge phase lasts until 99% of
the ideal savings are reached (or --timeout); then an idle tail of --tail
seconds with the processes still running.  Measured:

  t90         seconds from t0 until 90% of the ideal savings
  saved       page frames the data regions save (pagemap: present pages
              minus distinct frames) at the end of the merge phase, as a
              fraction of the ideal (N-1) x M MiB (every page has N copies)
  cpu merge   ksmd CPU-seconds (utime+stime of the ksmd thread) from t0 to
              the end of the merge phase
  cpu tail    ksmd CPU-seconds during the idle tail
  cpu/GiB     (cpu merge) per GiB saved

Ratios are to the burst variant.  The host's KSM settings are saved first
and restored at the end, on error and on SIGINT/SIGTERM/SIGHUP; the run
takes the lock test/integration/upmtest/ksm.py and demo.sh use
(/run/upm-test-ksm-saved.lock) and leaves the same state file, so that a
run killed with SIGKILL is repaired by the next test run.

    sudo hooks/agent/bench.py --build build --json /tmp/upm-ksmtune-bench.json
"""

from __future__ import annotations

import argparse
import array
import fcntl
import json
import os
import re
import select
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

KSM = Path("/sys/kernel/mm/ksm")
LOCK_FILE = Path("/run/upm-test-ksm-saved.lock")
STATE_FILE = Path(os.environ.get("UPM_TEST_KSM_STATE", "/run/upm-test-ksm-saved.json"))
PAGE = os.sysconf("SC_PAGE_SIZE")
TICK = os.sysconf("SC_CLK_TCK")
PFN_MASK = (1 << 55) - 1
POLL = 0.1
VARIANTS = ("default", "aggressive", "burst")
T_START = time.monotonic()


def log(msg: str) -> None:
    print(f"bench: [{time.monotonic() - T_START:6.1f} s] {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------
# KSM knobs: save, set, restore


def read_knob(name: str) -> str:
    text = (KSM / name).read_text().strip()
    m = re.search(r"\[([^\]]+)\]", text)
    return m.group(1) if m else text


def writable_knobs() -> list[str]:
    return sorted(p.name for p in KSM.iterdir() if p.is_file() and p.stat().st_mode & 0o200)


def write_knob(name: str, value: str) -> None:
    if (KSM / name).exists():
        (KSM / name).write_text(f"{value}\n")


def set_knobs(values: dict[str, str]) -> None:
    # advisor_mode first (leaving the advisor resets pages_to_scan), run last.
    order = [k for k in ("advisor_mode", "smart_scan") if k in values]
    order += [k for k in values if k not in order and k != "run"]
    order += ["run"] if "run" in values else []
    for k in order:
        write_knob(k, values[k])


class HostKsm:
    """The lock, the saved knobs and their restoration."""

    def __init__(self) -> None:
        self.fd: int | None = None
        self.saved: dict[str, str] | None = None

    def take(self) -> None:
        self.fd = os.open(LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log(f"waiting for another run to release {LOCK_FILE}")
            fcntl.flock(self.fd, fcntl.LOCK_EX)
        # A run killed with SIGKILL left its originals: put them back first.
        try:
            stale = json.loads(STATE_FILE.read_text())
            set_knobs({k: v for k, v in stale.get("knobs", {}).items() if (KSM / k).exists()})
            log(f"restored KSM settings left by an interrupted run (pid {stale.get('pid')})")
            STATE_FILE.unlink(missing_ok=True)
        except (OSError, ValueError):
            pass
        self.saved = {k: read_knob(k) for k in writable_knobs()}
        STATE_FILE.write_text(json.dumps({"pid": os.getpid(), "knobs": self.saved}))

    def restore(self) -> list[str]:
        errors = []
        if self.saved is not None:
            try:
                set_knobs({k: v for k, v in self.saved.items() if read_knob(k) != v})
            except OSError as e:
                errors.append(str(e))
            now = {k: read_knob(k) for k in self.saved}
            errors += [f"{k}={now[k]} (was {v})" for k, v in self.saved.items() if now[k] != v]
            if not errors:
                STATE_FILE.unlink(missing_ok=True)
            self.saved = None
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
        return errors


# ---------------------------------------------------------------------------
# Counters


def ksmd_cpu() -> float:
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            if (d / "comm").read_text().strip() != "ksmd":
                continue
            f = (d / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        return (int(f[11]) + int(f[12])) / TICK
    return 0.0


def anon_pages() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("AnonPages:"):
            return int(line.split()[1]) * 1024 // PAGE
    return 0


def ksm_counter(name: str) -> int:
    try:
        return int((KSM / name).read_text())
    except (OSError, ValueError):
        return 0


class Hog:
    def __init__(self, argv: list[str]) -> None:
        self.argv = argv
        self.popen = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, start_new_session=True)
        self.pid = self.addr = self.length = 0

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        buf = b""
        fd = self.popen.stdout.fileno()
        while b"\n" not in buf:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                raise RuntimeError(f"`{' '.join(self.argv)}` was not ready within {timeout:g} s")
            chunk = os.read(fd, 4096)
            if not chunk:
                raise RuntimeError(f"`{' '.join(self.argv)}` exited: {self.popen.stderr.read().decode()}")
            buf += chunk
        m = re.match(r"ready (0x[0-9a-f]+) (\d+) pid=(\d+)", buf.decode())
        if not m:
            raise RuntimeError(f"unexpected line {buf!r}")
        self.addr, self.length, self.pid = int(m[1], 16), int(m[2]), int(m[3])

    def kill(self) -> None:
        try:
            os.killpg(self.popen.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        try:
            self.popen.wait(10)
        except subprocess.TimeoutExpired:
            pass


def frames_saved(hogs: list[Hog]) -> int:
    frames = array.array("Q")
    for h in hogs:
        with open(f"/proc/{h.pid}/pagemap", "rb", buffering=0) as pm:
            pm.seek(h.addr // PAGE * 8)
            entries = array.array("Q")
            entries.frombytes(pm.read(h.length // PAGE * 8))
            frames.extend(e & PFN_MASK for e in entries if e >> 63)
    return len(frames) - len(set(frames))


# ---------------------------------------------------------------------------
# One variant


def agent_call(sock_path: str, request: dict, timeout: float = 5.0) -> dict:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(sock_path)
        s.sendall((json.dumps(request) + "\n").encode())
        buf = b""
        while b"\n" not in buf:
            chunk = s.recv(65536)
            if not chunk:
                break
            buf += chunk
    return json.loads(buf.decode().split("\n", 1)[0])


def start_upmd(build: Path, args) -> tuple[subprocess.Popen, str]:
    sock = str(Path(args.workdir) / "upmd.sock")
    argv = [str(build / "bin" / "upmd"), "--foreground", "--socket", sock,
            "--state-file", str(Path(args.workdir) / "upmd-state.json"),
            "--tuner-state-file", args.state_file, "--log-level", "info"]
    p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                         stderr=open(Path(args.workdir) / "upmd.log", "w"), start_new_session=True)
    deadline = time.monotonic() + 20
    while True:
        try:
            st = agent_call(sock, {"op": "status"})
            if st.get("tuner", {}).get("mode") in ("idle", "burst"):
                return p, sock
            raise RuntimeError(f"upmd's tuner is not running: {st.get('tuner')}")
        except (OSError, ValueError):
            if p.poll() is not None or time.monotonic() > deadline:
                p.kill()
                raise RuntimeError(f"upmd did not come up: {(Path(args.workdir) / 'upmd.log').read_text()[-2000:]}")
            time.sleep(0.1)


def run_variant(name: str, args, build: Path, baseline: dict[str, str]) -> dict:
    upm = build / "bin" / "upm"
    memhog = build / "bin" / "upm-memhog"
    tuner_bin = build / "bin" / "upm-ksmtune"
    use_upmd = name == "burst" and args.tuner == "upmd"
    # Every variant starts from the same node state: the kernel defaults,
    # ksmd running (an admin who switched KSM on), no advisor, smart_scan
    # as the host has it.
    set_knobs(baseline)
    if name == "aggressive":
        set_knobs({"pages_to_scan": str(max(100, anon_pages() // 10)), "sleep_millisecs": "1"})
    log(f"variant `{name}`: {args.procs} x {args.mib} MiB; ksm {read_knob('run')}/{read_knob('pages_to_scan')}"
        f"/{read_knob('sleep_millisecs')}")
    hogs: list[Hog] = []
    tuner = None
    upmd = None
    sock = None
    lines: list[str] = []
    env_sock = os.environ.pop("UPM_AGENT_SOCKET", None)
    try:
        if use_upmd:
            upmd, sock = start_upmd(build, args)
            os.environ["UPM_AGENT_SOCKET"] = sock     # `upm run` registers there: the kick
        for _ in range(args.procs):
            hogs.append(Hog([str(upm), "run", "--backend", "ksm", "--", str(memhog), "--mib", str(args.mib),
                             "--seed", "1", "--hold-until-signal"]))
        for h in hogs:
            h.wait_ready(120)
        ideal = (args.procs - 1) * (args.mib << 20) // PAGE
        t0 = time.monotonic()
        cpu0 = ksmd_cpu()
        scans0 = ksm_counter("full_scans")
        if name == "burst" and not use_upmd:
            tuner = subprocess.Popen([str(tuner_bin), "--kick-on-start", "--state-file", args.state_file],
                                     stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True, start_new_session=True)
        series = []
        t90 = None
        while True:
            t = time.monotonic() - t0
            saved = frames_saved(hogs)
            series.append((round(t, 2), saved))
            if t90 is None and saved >= 0.9 * ideal:
                t90 = t
            if saved >= 0.99 * ideal or t >= args.timeout:
                break
            time.sleep(POLL)
        t_merge = time.monotonic() - t0
        cpu_merge = ksmd_cpu() - cpu0
        scans_merge = ksm_counter("full_scans") - scans0
        saved_end = series[-1][1]
        log(f"variant `{name}`: t90 {t90 if t90 is None else round(t90, 2)} s, merge phase {t_merge:.1f} s, "
            f"ksmd {cpu_merge:.2f} CPU-s; idle tail {args.tail:g} s")
        cpu1 = ksmd_cpu()
        knob_trace = []
        tail_end = time.monotonic() + args.tail
        while time.monotonic() < tail_end:
            knob_trace.append((round(time.monotonic() - t0, 1), read_knob("run"), read_knob("pages_to_scan"),
                               read_knob("sleep_millisecs")))
            time.sleep(min(1.0, max(0.0, tail_end - time.monotonic())))
        cpu_tail = ksmd_cpu() - cpu1
        burst = None
        if upmd is not None:
            st = agent_call(sock, {"op": "status"})
            burst = st.get("tuner", {}).get("last_burst")
            burst = dict(burst or {}, bursts=st.get("tuner", {}).get("bursts"), kicks=st.get("tuner", {}).get("kicks"))
            upmd.send_signal(signal.SIGTERM)
            if upmd.wait(30) != 0:
                raise RuntimeError(f"upmd exited {upmd.returncode}: "
                                   f"{(Path(args.workdir) / 'upmd.log').read_text()[-2000:]}")
            upmd = None
        if tuner is not None:
            tuner.send_signal(signal.SIGTERM)
            out, err = tuner.communicate(timeout=30)
            lines = [ln for ln in out.splitlines() if ln.startswith("{")]
            if tuner.returncode != 0:
                raise RuntimeError(f"upm-ksmtune exited {tuner.returncode}: {err[-2000:]}")
            last = json.loads(lines[-1]) if lines else {}
            burst = last.get("last_burst")
            tuner = None
        gib = saved_end * PAGE / (1 << 30)
        return {
            "variant": name,
            "tuner": (args.tuner if name == "burst" else None),
            "t90_s": None if t90 is None else round(t90, 3),
            "merge_phase_s": round(t_merge, 3),
            "saved_pages": saved_end,
            "ideal_pages": ideal,
            "saved_fraction": round(saved_end / ideal, 4) if ideal else None,
            "ksmd_cpu_merge_s": round(cpu_merge, 3),
            "ksmd_cpu_tail_s": round(cpu_tail, 3),
            "tail_s": args.tail,
            "ksmd_cpu_per_gib_saved": round(cpu_merge / gib, 3) if gib else None,
            "full_scans_merge": scans_merge,
            "burst": burst,
            "knobs_during_tail": knob_trace[:: max(1, len(knob_trace) // 10)],
            "series": series[:: max(1, len(series) // 200)],
        }
    finally:
        os.environ.pop("UPM_AGENT_SOCKET", None)
        if env_sock is not None:
            os.environ["UPM_AGENT_SOCKET"] = env_sock
        if upmd is not None:
            upmd.send_signal(signal.SIGTERM)
            try:
                upmd.wait(30)
            except subprocess.TimeoutExpired:
                upmd.kill()
        if tuner is not None:
            tuner.send_signal(signal.SIGTERM)
            try:
                tuner.communicate(timeout=30)
            except subprocess.TimeoutExpired:
                tuner.kill()
        for h in hogs:
            h.kill()


def ratio(a, b) -> str:
    if a is None or b is None:
        return "-"
    if b == 0:
        return "inf" if a else "1.00"
    return f"{a / b:.2f}"


def table(results: dict[str, dict]) -> str:
    b = results.get("burst", {})
    head = (f"{'variant':<11} {'t90 s':>7} {'x burst':>8} {'saved':>6} {'ksmd CPU-s merge':>17} {'x burst':>8} "
            f"{'CPU-s tail':>11} {'x burst':>8} {'CPU-s/GiB':>10}")
    rows = [head, "-" * len(head)]
    for name in VARIANTS:
        r = results.get(name)
        if not r:
            continue
        t90 = "-" if r["t90_s"] is None else f"{r['t90_s']:.2f}"
        rows.append(f"{name:<11} {t90:>7} {ratio(r['t90_s'], b.get('t90_s')):>8} "
                    f"{r['saved_fraction'] * 100:5.1f}% {r['ksmd_cpu_merge_s']:>17.2f} "
                    f"{ratio(r['ksmd_cpu_merge_s'], b.get('ksmd_cpu_merge_s')):>8} "
                    f"{r['ksmd_cpu_tail_s']:>11.2f} {ratio(r['ksmd_cpu_tail_s'], b.get('ksmd_cpu_tail_s')):>8} "
                    f"{'-' if r['ksmd_cpu_per_gib_saved'] is None else format(r['ksmd_cpu_per_gib_saved'], '.2f'):>10}")
    return "\n".join(rows)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog=__doc__.split("\n\n", 1)[1])
    ap.add_argument("--build", type=Path, default=Path(__file__).resolve().parents[2] / "build",
                    help="build directory with bin/upm, bin/upm-memhog, bin/upm-ksmtune (default: ./build)")
    ap.add_argument("--json", type=Path, help="write the results (and time series) to this file")
    ap.add_argument("--procs", type=int, default=8, help="processes per variant (default 8)")
    ap.add_argument("--mib", type=int, default=64, help="MiB of identical data per process (default 64)")
    ap.add_argument("--tail", type=float, default=30.0, help="idle tail after merging, seconds (default 30)")
    ap.add_argument("--timeout", type=float, default=300.0, help="longest merge phase, seconds (default 300)")
    ap.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated subset (default all)")
    ap.add_argument("--state-file", default="/run/upm/bench-ksm-original.json",
                    help="the tuner's state file (default /run/upm/bench-ksm-original.json)")
    ap.add_argument("--tuner", choices=("auto", "upmd", "upm-ksmtune"), default="auto",
                    help="what drives the burst variant: upmd (kicked by `upm run` registering), the test tool "
                         "upm-ksmtune --kick-on-start, or auto = upmd if built (default)")
    args = ap.parse_args()

    variants = [v for v in args.variants.split(",") if v]
    for v in variants:
        if v not in VARIANTS:
            ap.error(f"unknown variant `{v}` (known: {', '.join(VARIANTS)})")
    build = args.build.resolve()
    if args.tuner == "auto":
        args.tuner = "upmd" if os.access(build / "bin" / "upmd", os.X_OK) else "upm-ksmtune"
    need = ["upm", "upm-memhog"] + ([args.tuner] if "burst" in variants else [])
    for exe in need:
        if not os.access(build / "bin" / exe, os.X_OK):
            ap.error(f"`{build / 'bin' / exe}` is not built (cmake --build {build})")
    if not (KSM / "run").exists():
        print(f"bench: {KSM} does not exist (kernel without CONFIG_KSM)", file=sys.stderr)
        return 77
    if not os.access(KSM / "run", os.W_OK):
        print(f"bench: {KSM}/run is not writable (run as root)", file=sys.stderr)
        return 77

    host = HostKsm()

    def on_signal(signum, frame):  # noqa: ARG001
        raise KeyboardInterrupt(f"signal {signum}")

    for s in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(s, on_signal)

    results: dict[str, dict] = {}
    status = 0
    import tempfile
    workdir = tempfile.TemporaryDirectory(prefix="upm-bench-")
    args.workdir = workdir.name
    try:
        host.take()
        baseline = {"advisor_mode": "none", "run": "1", "pages_to_scan": "100", "sleep_millisecs": "20"}
        for v in variants:
            results[v] = run_variant(v, args, build, baseline)
    except KeyboardInterrupt as e:
        log(f"interrupted ({e}); restoring the KSM settings")
        status = 130
    finally:
        errors = host.restore()
        if errors:
            log("could not restore the KSM settings: " + "; ".join(errors))
            status = status or 1

    if results:
        print(f"\n{args.procs} x {args.mib} MiB identical (upm run --backend ksm -- upm-memhog --seed 1), "
              f"idle tail {args.tail:g} s, burst driven by {args.tuner}, kernel {os.uname().release}, "
              f"{os.cpu_count()} CPUs\n")
        print(table(results))
        print("\nt90: seconds from all processes ready to 90% of the ideal savings; saved: at the end of the merge "
              "phase (99% or timeout); CPU-s: ksmd utime+stime; x burst: ratio to the burst variant")
    if args.json and results:
        doc = {"procs": args.procs, "mib": args.mib, "tail_s": args.tail, "tuner": args.tuner,
               "kernel": os.uname().release,
               "cpus": os.cpu_count(), "anon_pages_at_end": anon_pages(), "results": results}
        args.json.write_text(json.dumps(doc, indent=2) + "\n")
        print(f"\nbench: wrote {args.json}")
    return status


if __name__ == "__main__":
    sys.exit(main())
