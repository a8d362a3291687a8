#!/usr/bin/python3
# SPDX-License-Identifier: GPL-2.0-or-later
"""What the hardening settings are worth: N instances of a Python function
under every combination of layout {randomized, shared-per-domain} x hash seed
{random, per-domain} x trim {off, on}, side by side in one run, on the KSM
backend (docs/hardening.md has the table).

    sudo test/demo/layout_bench.py [--build DIR] [--n 4] [--workload auto|torch|numpy] [--json FILE]

For each combination: N instances are started with `upm run --domain bench
--policy P` (the default policy plus the three keys), each initialises (a
deterministic torch model and one inference, else a numpy array; then a
vocabulary dict and parsed records -- interpreter heap full of pointers and
string hashes -- and temporary buffers freed again), then idles.  Once every
instance is ready and ksmd (fast settings, the host-KSM lock of the test
suite held) has made three full scans after the last advice:

- anon MiB: present private anonymous pages of all instances (pagemap, the
  mappings the default policy advises: not [stack], not file pages);
- ideal MiB: what merging every identical one of those pages would save
  (every page hashed through /proc/PID/mem);
- KSM MiB: what ksmd actually saved over the same pages (pages minus
  distinct page frames);
- resident MiB: anon minus KSM saving, what the instances cost after merging.

The baseline is the first row (randomized, random, trim off): the default.
Needs root (pagemap frame numbers, /proc/PID/mem, the KSM knobs).
"""

from __future__ import annotations

import argparse
import array
import itertools
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

HERE = Path(__file__).resolve().parent
SOURCE = HERE.parent.parent
sys.path.insert(0, str(SOURCE / "test" / "integration"))
from upmtest.ksm import KSM, KSM_FAST_SETTINGS, KsmControl, install_restore_handlers  # noqa: E402
from upmtest.procfs import ksm_counters, ksm_merging_pages  # noqa: E402

PAGE = os.sysconf("SC_PAGE_SIZE")
PFN_MASK = (1 << 55) - 1
PY = "/usr/bin/python3"

WORKER = r'''
import os, signal, sys
signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})
kind = sys.argv[1]
if kind == "torch":
    import torch
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 32, 3), torch.nn.ReLU(), torch.nn.Flatten(),
                                torch.nn.Linear(32 * 62 * 62, 64))
    with torch.no_grad():
        result = float(model(torch.ones(1, 3, 64, 64)).sum())
else:
    import numpy as np
    weights = np.random.default_rng(1).random(4 * 1024 * 1024)
    result = float(weights.sum())
# Request handling state: a vocabulary and parsed records (objects, pointers,
# cached string hashes), and temporaries that are freed again.
vocab = {f"word{i}": i for i in range(200000)}
records = [{"id": i, "name": f"user{i}", "tags": ["a", "b"]} for i in range(100000)]
tmp = [bytes([i % 251]) * 4000 for i in range(20000)]
keep = tmp[::64]
del tmp
print("ready", result, len(vocab), os.getpid(), flush=True)
signal.sigwait({signal.SIGTERM, signal.SIGINT})
'''


def anon_regions(pid: int):
    """(start, end) of private mappings the default policy may advise: readable,
    writable or anonymous, not [stack] or kernel pseudo-mappings."""
    for line in Path(f"/proc/{pid}/maps").read_text().splitlines():
        parts = line.split(None, 5)
        start, end = (int(x, 16) for x in parts[0].split("-"))
        perms, inode = parts[1], int(parts[4])
        path = parts[5].strip() if len(parts) > 5 else ""
        if perms[3] != "p" or perms[0] != "r" or path.startswith("[stack") or path in ("[vdso]", "[vvar]", "[vsyscall]"):
            continue
        if perms[1] == "w" or inode == 0:
            yield start, end


def anon_pages(pid: int):
    """(address, pfn) of every present anonymous page (pagemap: present, not
    a file or shared page) of the regions above."""
    with open(f"/proc/{pid}/pagemap", "rb", buffering=0) as pm:
        for start, end in anon_regions(pid):
            pm.seek(start // PAGE * 8)
            entries = array.array("Q")
            entries.frombytes(pm.read((end - start) // PAGE * 8))
            for i, e in enumerate(entries):
                if e >> 63 and not (e >> 61) & 1:
                    yield start + i * PAGE, e & PFN_MASK


def measure(pids: list[int]) -> dict:
    digests: Counter = Counter()
    frames = array.array("Q")
    for pid in pids:
        pages = list(anon_pages(pid))
        frames.extend(pfn for _, pfn in pages)
        with open(f"/proc/{pid}/mem", "rb", buffering=0) as mem:
            for addr, _ in pages:
                mem.seek(addr)
                try:
                    data = mem.read(PAGE)
                except OSError:
                    continue
                digests[hash(data)] += 1     # 64-bit SipHash; collisions negligible here
    total = sum(digests.values())
    return {"anon_pages": len(frames), "ideal_saved_pages": total - len(digests),
            "ksm_saved_pages": len(frames) - len(set(frames)),
            "ksm_merging_pages": sum(ksm_merging_pages(p) for p in pids)}


def settle(scans: int, timeout: float) -> None:
    """Waits for `scans` full ksmd scans, then until pages_sharing stops moving."""
    start = ksm_counters()["full_scans"]
    deadline = time.monotonic() + timeout
    while ksm_counters()["full_scans"] < start + scans and time.monotonic() < deadline:
        time.sleep(0.1)
    last = -1
    while time.monotonic() < deadline:
        now = ksm_counters()["pages_sharing"]
        if now == last:
            break
        last = now
        time.sleep(0.5)


def run_combo(a, upm: Path, secret: Path, tmp: Path, worker: Path, kind: str, layout: str, seed: str,
              trim: bool) -> dict:
    policy = tmp / f"p-{layout}-{seed}-{trim}.json"
    policy.write_text(json.dumps({"layout": layout, "hash_seed": seed, "trim": trim}))
    env = dict(os.environ, UPM_DOMAIN_SECRET=str(secret))
    for k in ("UPM_POLICY", "UPM_LOG", "LD_PRELOAD", "PYTHONHASHSEED"):
        env.pop(k, None)
    procs = [subprocess.Popen([upm, "run", "--backend", "ksm", "--domain", "bench", "--policy", policy, "--",
                               PY, worker, kind], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
                              start_new_session=True, text=True) for _ in range(a.n)]
    try:
        t0 = time.monotonic()
        lines = []
        for p in procs:
            line = p.stdout.readline()
            if not line.startswith("ready"):
                raise RuntimeError(f"instance did not start: {line!r} {p.stderr.read()[-2000:]}")
            lines.append(line.split())
        results = {l[1] for l in lines}
        if len(results) != 1:
            raise RuntimeError(f"instances computed different results: {results}")
        pids = [int(l[3]) for l in lines]
        ready_s = time.monotonic() - t0
        time.sleep(2.5)   # the next periodic run (every second) trims and advises what init left
        settle(a.scans, a.timeout)
        m = measure(pids)
        return {"layout": layout, "hash_seed": seed, "trim": trim, "ready_s": round(ready_s, 1), **m}
    finally:
        for p in procs:
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            p.wait()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--build", type=Path, default=Path(os.environ.get("UPM_BUILD_DIR", SOURCE / "build")))
    ap.add_argument("--n", type=int, default=4, help="instances per combination (default 4)")
    ap.add_argument("--workload", choices=["auto", "torch", "numpy"], default="auto")
    ap.add_argument("--scans", type=int, default=3, help="full ksmd scans to wait for (default 3)")
    ap.add_argument("--timeout", type=float, default=60.0, help="max seconds of settling per combination")
    ap.add_argument("--json", type=Path, help="write every result here")
    a = ap.parse_args()
    if os.geteuid() != 0:
        print("layout_bench: needs root (pagemap, /proc/PID/mem, KSM knobs)", file=sys.stderr)
        return 77
    reason = KsmControl.unavailable_reason()
    if reason:
        print(f"layout_bench: host KSM unavailable: {reason}", file=sys.stderr)
        return 77
    install_restore_handlers()      # the KSM settings come back on exit, SIGTERM and SIGHUP
    kind = a.workload
    if kind == "auto":
        kind = "torch" if subprocess.run([PY, "-c", "import torch"], capture_output=True).returncode == 0 else "numpy"
    upm = a.build / "bin" / "upm"
    rows = []
    with tempfile.TemporaryDirectory(prefix="upm-layout-bench-") as d:
        tmp = Path(d)
        worker = tmp / "worker.py"
        worker.write_text(WORKER)
        secret = tmp / "state" / "domain-secret"
        KSM.apply(KSM_FAST_SETTINGS)
        try:
            for layout, seed, trim in itertools.product(["randomized", "shared-per-domain"],
                                                        ["random", "per-domain"], [False, True]):
                r = run_combo(a, upm, secret, tmp, worker, kind, layout, seed, trim)
                rows.append(r)
                print(f"  {layout:17} {seed:10} trim={'on' if trim else 'off':3}  anon {r['anon_pages'] * PAGE >> 20} MiB,"
                      f" ideal {r['ideal_saved_pages'] * PAGE >> 20} MiB, KSM {r['ksm_saved_pages'] * PAGE >> 20} MiB",
                      file=sys.stderr, flush=True)
        finally:
            errors = KSM.restore()
            if errors:
                print("layout_bench: could not restore KSM settings: " + "; ".join(errors), file=sys.stderr)
    mib = lambda pages: pages * PAGE / 2**20  # noqa: E731
    base = rows[0]
    base_resident = base["anon_pages"] - base["ksm_saved_pages"]
    print(f"\n{a.n} instances of a Python + {kind} function, KSM backend, one domain; ideal and KSM savings over "
          f"the instances' anonymous pages (MiB)")
    print(f"{'layout':17} {'hash seed':10} {'trim':4} {'anon':>7} {'ideal':>7} {'ideal%':>6} {'KSM':>7} "
          f"{'KSM/ideal':>9} {'resident':>8} {'vs base':>7}")
    for r in rows:
        resident = r["anon_pages"] - r["ksm_saved_pages"]
        r["resident_pages"] = resident
        print(f"{r['layout']:17} {r['hash_seed']:10} {'on' if r['trim'] else 'off':4} {mib(r['anon_pages']):7.1f} "
              f"{mib(r['ideal_saved_pages']):7.1f} {100 * r['ideal_saved_pages'] / max(1, r['anon_pages']):5.1f}% "
              f"{mib(r['ksm_saved_pages']):7.1f} {100 * r['ksm_saved_pages'] / max(1, r['ideal_saved_pages']):8.1f}% "
              f"{mib(resident):8.1f} {100 * (resident - base_resident) / max(1, base_resident):+6.1f}%")
    if a.json:
        a.json.write_text(json.dumps({"n": a.n, "workload": kind, "page_size": PAGE, "rows": rows}, indent=2) + "\n")
        print(f"\nwrote {a.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
