#!/usr/bin/python3
# SPDX-License-Identifier: GPL-2.0-or-later
"""The measuring half of demo.sh (which checks the host, switches ksmd to
fast settings and restores them); run it through demo.sh.

For each workload (N upm-memhog processes holding the same M MiB, seed 1;
then, if python3-numpy is installed, N python3 processes each building the
same M MiB numpy array from a fixed seed), two phases:

  with upm     each started as `upm run --backend ksm -- upm-memhog ...`
  without upm  each started directly (the baseline), given as long as the
               first phase took

For each phase it records, per process, PSS (/proc/PID/smaps_rollup) when
the process is ready and at the end, ksm_merging_pages, and for the node
pages_sharing, general_profit, MemAvailable and ksmd's CPU time; it polls
the page frames of the processes (/proc/PID/pagemap: present pages minus
distinct frames) to find the time to 90% of the achievable savings.  The ideal
is measured, not assumed: every present page (/proc/PID/pagemap) of every
private writable or anonymous mapping of the processes is hashed, and the
ideal saving is the number of pages minus the number of distinct ones.

Measures as in `upm bench` (docs/bench.md, "Measures"): saved memory
is PSS without dedup minus PSS with dedup, and the node's MemAvailable
change; pages_sharing is the kernel's count; achieved savings are reported
as a fraction of the ideal.
"""

from __future__ import annotations

import argparse
import array
import json
import os
import re
import select
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

# The readers of the kernel's counters the integration suites use.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "integration"))
from upmtest.procfs import KSM_DIR, ksm_counters, ksm_merging_pages, ksmd_cpu  # noqa: E402

PAGE = os.sysconf("SC_PAGE_SIZE")
MIB = 1024 * 1024
POLL = 0.1
T_START = time.monotonic()
PFN_MASK = (1 << 55) - 1
SETTLE = 1.0
NEVER_HASHED = {"[stack]", "[vvar]", "[vvar_vclock]", "[vdso]", "[vsyscall]", "[uprobes]"}


def meminfo_kib() -> dict[str, int]:
    out = {}
    for line in Path("/proc/meminfo").read_text().splitlines():
        k, _, v = line.partition(":")
        out[k] = int(v.split()[0])
    return out


def pss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1])
    return 0


class Hog:
    """One upm-memhog, started in its own session."""

    def __init__(self, argv: list[str]) -> None:
        self.argv = argv
        self.popen = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, start_new_session=True)

    def wait_ready(self, timeout: float) -> None:
        line = self._read_line(timeout)
        m = re.match(r"ready (0x[0-9a-f]+) (\d+) pid=(\d+)", line)
        if not m:
            raise RuntimeError(f"unexpected first line from `{' '.join(self.argv)}`: {line!r}")
        self.addr, self.length, self.pid = int(m[1], 16), int(m[2]), int(m[3])
        self.pss_ready_kib = pss_kib(self.pid)

    def _read_line(self, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        buf = b""
        fd = self.popen.stdout.fileno()
        while b"\n" not in buf:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                raise RuntimeError(f"`{' '.join(self.argv)}` was not ready within {timeout:g} s")
            chunk = os.read(fd, 4096)
            if not chunk:
                err = self.popen.stderr.read().decode(errors="replace")
                raise RuntimeError(f"`{' '.join(self.argv)}` exited ({self.popen.wait()}): {err}")
            buf += chunk
        return buf.decode(errors="replace").splitlines()[0]

    def stop(self) -> tuple[int, str, str]:
        """SIGTERM; returns (exit status, last stdout line, stderr)."""
        if self.popen.poll() is None:
            try:
                os.kill(self.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        try:
            out, err = self.popen.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            self.kill()
            out, err = self.popen.communicate()
        lines = out.decode(errors="replace").splitlines()
        return self.popen.returncode, (lines[-1] if lines else ""), err.decode(errors="replace")

    def kill(self) -> None:
        try:
            os.killpg(self.popen.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def hashed_regions(pid: int):
    """(start, end) of the mappings the ideal is computed over: private and
    writable or anonymous, not stacks or kernel pseudo-mappings."""
    for line in Path(f"/proc/{pid}/maps").read_text().splitlines():
        parts = line.split(None, 5)
        start, end = (int(x, 16) for x in parts[0].split("-"))
        perms, inode = parts[1], int(parts[4])
        path = parts[5].strip() if len(parts) > 5 else ""
        if perms[3] != "p" or path in NEVER_HASHED or perms[0] != "r":
            continue
        if perms[1] == "w" or inode == 0:
            yield start, end


def page_digests(pid: int, counter: Counter) -> int:
    """Adds the digest of every present page of `pid`'s hashed regions to
    `counter`; returns the number of pages."""
    n = 0
    with open(f"/proc/{pid}/pagemap", "rb", buffering=0) as pm, \
            open(f"/proc/{pid}/mem", "rb", buffering=0) as mem:
        for start, end in hashed_regions(pid):
            pm.seek(start // PAGE * 8)
            entries = pm.read((end - start) // PAGE * 8)
            present = [int.from_bytes(entries[i:i + 8], "little") >> 63
                       for i in range(0, len(entries), 8)]
            i = 0
            while i < len(present):
                if not present[i]:
                    i += 1
                    continue
                j = i
                while j < len(present) and present[j] and j - i < 1024:
                    j += 1
                mem.seek(start + i * PAGE)
                try:
                    data = mem.read((j - i) * PAGE)
                except OSError:
                    data = b""
                view = memoryview(data)
                for k in range(0, len(data), PAGE):
                    # Python's 64-bit SipHash of the bytes: 0.15 s per 128 MiB
                    # (blake2b takes 0.4 s); a collision among 10^6 pages has
                    # a probability below 10^-7.
                    counter[hash(view[k:k + PAGE])] += 1
                    n += 1
                i = j
    return n


def frames_saved(pids: list[int]) -> int:
    """Pages the processes save by sharing page frames, over the same
    mappings as the ideal: present pages minus distinct frames (pagemap).
    Exact and blind to other processes on the node, unlike pages_sharing."""
    frames = array.array("Q")
    for pid in pids:
        try:
            with open(f"/proc/{pid}/pagemap", "rb", buffering=0) as pm:
                for start, end in hashed_regions(pid):
                    pm.seek(start // PAGE * 8)
                    entries = array.array("Q")
                    entries.frombytes(pm.read((end - start) // PAGE * 8))
                    frames.extend(e & PFN_MASK for e in entries if e >> 63)
        except OSError:
            continue
    return len(frames) - len(set(frames))


def ideal_saved_pages(pids: list[int]) -> tuple[int, int]:
    """(pages hashed, pages an ideal merge of identical pages would save)."""
    counter: Counter = Counter()
    total = sum(page_digests(pid, counter) for pid in pids)
    return total, total - len(counter)


def log(msg: str) -> None:
    print(f"demo: [{time.monotonic() - T_START:5.1f} s] {msg}", file=sys.stderr)


def run_phase(name: str, argv_of, n: int, expect_saved: int, timeout: float,
              min_wait: float, ready_timeout: float) -> dict:
    log(f"phase `{name}`: starting {n} processes")
    mem_start = meminfo_kib()
    hogs: list[Hog] = []
    try:
        t_start = time.monotonic()
        for i in range(n):          # all at once, like a burst of containers
            hogs.append(Hog(argv_of(i)))
        for h in hogs:
            h.wait_ready(ready_timeout)
        t0 = time.monotonic()
        k0, mem_ready, cpu0 = ksm_counters(), meminfo_kib(), ksmd_cpu()
        series = []     # (seconds since ready, frames saved, pages_sharing change)
        pids = [h.pid for h in hogs]
        while True:
            t = time.monotonic() - t0
            saved = frames_saved(pids)
            series.append((round(t, 3), saved, ksm_counters()["pages_sharing"] - k0["pages_sharing"]))
            if t >= timeout or (t >= min_wait and saved >= 0.99 * expect_saved):
                break
            time.sleep(POLL)
        elapsed = time.monotonic() - t0
        time.sleep(SETTLE)   # let freed pages reach the counters MemAvailable reads
        k1, mem_end, cpu1 = ksm_counters(), meminfo_kib(), ksmd_cpu()
        procs = [{"pid": h.pid, "pss_ready_kib": h.pss_ready_kib, "pss_end_kib": pss_kib(h.pid),
                  "ksm_merging_pages": ksm_merging_pages(h.pid)} for h in hogs]
        for p in procs:
            p["saved_kib"] = p["pss_ready_kib"] - p["pss_end_kib"]
        frames = frames_saved(pids)
        log(f"phase `{name}`: {elapsed:.1f} s observed; hashing every page for the ideal")
        hashed, ideal = ideal_saved_pages(pids)
        log(f"phase `{name}`: stopping the processes")
        results = [h.stop() for h in hogs]
    finally:
        for h in hogs:
            h.kill()
    for p, (status, last, err) in zip(procs, results):
        p["exit_status"], p["final_line"] = status, last
        if status != 0:
            print(f"demo: warning: memhog {p['pid']} exited with {status}: {err.strip()}", file=sys.stderr)
    saved_pages = k1["pages_sharing"] - k0["pages_sharing"]
    target = 0.9 * ideal
    t90 = next((t for t, s, _ in series if ideal and s >= target), None)
    return {
        "name": name,
        "startup_s": round(t0 - t_start, 3),
        "observed_s": round(elapsed, 3),
        "processes": procs,
        "pss_ready_kib": sum(p["pss_ready_kib"] for p in procs),
        "pss_end_kib": sum(p["pss_end_kib"] for p in procs),
        "ksm_merging_pages": sum(p["ksm_merging_pages"] for p in procs),
        "frames_saved_pages": frames,
        "pages_sharing_delta": saved_pages,
        "pages_shared_delta": k1["pages_shared"] - k0["pages_shared"],
        "general_profit_delta_bytes": k1.get("general_profit", 0) - k0.get("general_profit", 0),
        "full_scans": k1["full_scans"] - k0["full_scans"],
        "memavailable_start_kib": mem_start["MemAvailable"],
        "memavailable_ready_kib": mem_ready["MemAvailable"],
        "memavailable_end_kib": mem_end["MemAvailable"],
        "memavailable_recovered_kib": mem_end["MemAvailable"] - mem_ready["MemAvailable"],
        "ksmd_cpu_s": round(cpu1 - cpu0, 3),
        "ideal_hashed_pages": hashed,
        "ideal_saved_pages": ideal,
        "saved_fraction_of_ideal": round(frames / ideal, 4) if ideal else None,
        "time_to_90pct_s": t90,
        "all_intact": all(p["exit_status"] == 0 for p in procs),
        "series": series,
    }


def settle_ksmd(scans: int = 1, timeout: float = 5) -> None:
    start, deadline = ksm_counters()["full_scans"], time.monotonic() + timeout
    while ksm_counters()["full_scans"] < start + scans and time.monotonic() < deadline:
        time.sleep(POLL)


def mib(kib_or_bytes: float, unit: int = 1024) -> str:
    return f"{kib_or_bytes * unit / MIB:.1f}"


def print_tables(cfg: dict, wl: dict, upm: dict, base: dict) -> None:
    w = print
    w(f"\n== {wl['title']}: {cfg['procs']} processes x {cfg['mib']} MiB, `upm run --backend ksm`, "
      f"ksmd pages_to_scan={cfg['ksm'].get('pages_to_scan')} sleep_millisecs={cfg['ksm'].get('sleep_millisecs')}\n")
    w("with upm, per process       PSS at ready   PSS merged   ksm_merging_pages   saved MiB")
    for i, p in enumerate(upm["processes"], 1):
        w(f"  {wl['name']:<8} #{i:<2} pid {p['pid']:<8} {mib(p['pss_ready_kib']):>8} MiB"
          f" {mib(p['pss_end_kib']):>8} MiB {p['ksm_merging_pages']:>19} {mib(p['saved_kib']):>11}")
    w(f"  total{'':20} {mib(upm['pss_ready_kib']):>8} MiB {mib(upm['pss_end_kib']):>8} MiB"
      f" {upm['ksm_merging_pages']:>19} {mib(upm['pss_ready_kib'] - upm['pss_end_kib']):>11}\n")

    def row(label, a, b, ratio=""):
        w(f"  {label:<38} {a:>14} {b:>14} {ratio:>8}")

    pss_ratio = f"{upm['pss_end_kib'] / base['pss_end_kib']:.2f}" if base["pss_end_kib"] else "-"
    row("node and totals", "without upm", "with upm", "ratio")
    row("PSS total at the end (MiB)", mib(base["pss_end_kib"]), mib(upm["pss_end_kib"]), pss_ratio)
    row("saved: PSS without - with upm (MiB)", "-", mib(base["pss_end_kib"] - upm["pss_end_kib"]))
    row("frames saved (pagemap, MiB)", mib(base["frames_saved_pages"], PAGE), mib(upm["frames_saved_pages"], PAGE))
    row("pages_sharing (kernel, delta)", base["pages_sharing_delta"], upm["pages_sharing_delta"])
    row("saved per pages_sharing (MiB)", mib(base["pages_sharing_delta"], PAGE),
        mib(upm["pages_sharing_delta"], PAGE))
    row("general_profit delta (MiB)", mib(base["general_profit_delta_bytes"], 1),
        mib(upm["general_profit_delta_bytes"], 1))
    row("MemAvailable recovered (MiB)", mib(base["memavailable_recovered_kib"]),
        mib(upm["memavailable_recovered_kib"]))
    row("ideal saving, hashed pages (MiB)", mib(base["ideal_saved_pages"], PAGE),
        mib(upm["ideal_saved_pages"], PAGE))
    frac = lambda ph: "-" if ph["saved_fraction_of_ideal"] is None else f"{ph['saved_fraction_of_ideal']:.1%}"
    row("achieved (frames) / ideal", frac(base), frac(upm))
    t90 = lambda ph: "never" if ph["time_to_90pct_s"] is None else f"{ph['time_to_90pct_s']:.2f}"
    row("time to 90% of ideal (s, from ready)", t90(base), t90(upm))
    row("observed for (s)", f"{base['observed_s']:.1f}", f"{upm['observed_s']:.1f}")
    gib = upm["frames_saved_pages"] * PAGE / (1024 * MIB)
    row("ksmd CPU (s)", f"{base['ksmd_cpu_s']:.2f}", f"{upm['ksmd_cpu_s']:.2f}")
    row("ksmd CPU-s per GiB saved", "-", f"{upm['ksmd_cpu_s'] / gib:.2f}" if gib > 0 else "-")
    row("data intact (checked by the processes)", "yes" if base["all_intact"] else "NO",
        "yes" if upm["all_intact"] else "NO")


def workloads(a) -> list[dict]:
    """The workloads to run: upm-memhog always, python3 + numpy if importable."""
    out = [{"name": "memhog", "title": "upm-memhog --seed 1 (page-distinct, identical across processes)",
            "argv": [a.memhog, "--mib", str(a.mib), "--seed", "1", "--hold-until-signal", "--checksum"]}]
    wanted = a.workloads.split(",")
    if "numpy" in wanted:
        probe = subprocess.run([sys.executable, "-c", "import numpy"], capture_output=True, text=True)
        if probe.returncode == 0:
            out.append({"name": "numpy", "title": "python3 + numpy, a float64 array from a fixed seed",
                        "argv": [sys.executable, str(Path(__file__).with_name("numpy_worker.py")), str(a.mib)]})
        else:
            print("demo: skipping the numpy workload: python3-numpy is not installed "
                  "(packaging/install-deps.sh workloads)", file=sys.stderr)
    return [w for w in out if w["name"] in wanted]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--upm", required=True)
    ap.add_argument("--memhog", required=True)
    ap.add_argument("--procs", type=int, default=4)
    ap.add_argument("--mib", type=int, default=128)
    ap.add_argument("--timeout", type=float, default=30)
    ap.add_argument("--workloads", default="memhog,numpy")
    ap.add_argument("--json", required=True)
    a = ap.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    expect = (a.procs - 1) * a.mib * MIB // PAGE
    cfg = {"procs": a.procs, "mib": a.mib, "page_size": PAGE, "upm": a.upm, "memhog": a.memhog,
           "kernel": os.uname().release,
           "ksm": {k: (KSM_DIR / k).read_text().strip() for k in
                   ("pages_to_scan", "sleep_millisecs", "smart_scan", "max_page_sharing")
                   if (KSM_DIR / k).exists()}}
    doc = {"config": cfg, "workloads": {}}
    ok = True
    for wl in workloads(a):
        upm = run_phase(f"{wl['name']} with upm", lambda i: [a.upm, "run", "--backend", "ksm", "--", *wl["argv"]],
                        a.procs, expect, a.timeout, 0, 60)
        # ksmd releases the exited processes' KSM pages while it scans; let
        # it, so that the next phase's pages_sharing change is its own.
        settle_ksmd()
        wait = max(upm["observed_s"], 3.0)
        base = run_phase(f"{wl['name']} without upm", lambda i: wl["argv"], a.procs, expect, wait, wait, 60)
        settle_ksmd()
        print_tables(cfg, wl, upm, base)
        doc["workloads"][wl["name"]] = {
            "title": wl["title"], "argv": wl["argv"], "with_upm": upm, "without_upm": base,
            "pss_ratio_with_over_without": (upm["pss_end_kib"] / base["pss_end_kib"]
                                            if base["pss_end_kib"] else None)}
        ok = ok and upm["all_intact"] and base["all_intact"]
    Path(a.json).write_text(json.dumps(doc, indent=1) + "\n")
    print(f"\njson: {a.json}")
    if not ok:
        print("demo: error: a process found its data changed", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
