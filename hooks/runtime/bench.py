#!/usr/bin/env python3
# SPDX-License-Identifier: GPL-2.0-or-later
"""Overhead of upm-runtime: container create-to-start time, against plain runc.

One run, on one machine, interleaved: every round starts one container with
each variant, in a rotating order, so that drift of the machine (other
jobs, page cache, cgroup creation cost) affects all variants alike:

  runc        runc create + runc start                      (the baseline)
  wrapped     upm-runtime create + start, bundle not annotated (pass-through)
  injected    upm-runtime create + start, upm.enabled=true     (spec edited)

The time is from launching `create` until `start` has returned (the
container's process has been released), as a container engine sees it;
`delete` afterwards is not timed.  The injected bundle's config.json is put
back to its original bytes before each round, so every injected create
really reads, edits and rewrites it.  The container's process is
/bin/true in a rootfs with the host's /usr bind-mounted read-only.

Prints a table (median, p95, mean, and the difference of each to runc's
median) and writes every sample to a JSON file.  Needs root and runc.

    sudo hooks/runtime/bench.py --build build --runs 50 --json /tmp/upm-runtime-bench.json
"""

from __future__ import annotations

import argparse
import resource
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

VARIANTS = ("runc", "wrapped", "injected")


def percentile(values: list[float], p: float) -> float:
    s = sorted(values)
    k = (len(s) - 1) * p / 100
    lo, hi = int(k), min(int(k) + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def make_bundle(base: Path, name: str, spec: dict, annotations: dict | None) -> Path:
    b = base / name
    rootfs = b / "rootfs"
    for d in ("usr", "proc", "dev", "sys", "tmp", "etc"):
        (rootfs / d).mkdir(parents=True)
    for link, target in (("bin", "usr/bin"), ("sbin", "usr/sbin"), ("lib", "usr/lib"), ("lib64", "usr/lib64")):
        (rootfs / link).symlink_to(target)
    spec = json.loads(json.dumps(spec))
    spec["process"]["terminal"] = False
    spec["process"]["args"] = ["/bin/true"]
    spec["mounts"].append({"destination": "/usr", "type": "bind", "source": "/usr", "options": ["rbind", "ro"]})
    if annotations:
        spec["annotations"] = annotations
    (b / "config.json").write_text(json.dumps(spec, indent="\t") + "\n")
    return b


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--build", default="build", help="build directory (default: build)")
    ap.add_argument("--runtime", default="/usr/bin/runc", help="the real runtime (default: /usr/bin/runc)")
    ap.add_argument("--runs", type=int, default=50, help="containers per variant (default: 50)")
    ap.add_argument("--warmup", type=int, default=3, help="untimed rounds first (default: 3)")
    ap.add_argument("--json", default="runtime-overhead.json", help="where to write the samples")
    ap.add_argument("--dir", default=None,
                    help="where to create the bundles (default: $TMPDIR; engines keep theirs under /run)")
    args = ap.parse_args()

    build = Path(args.build).resolve()
    wrapper = build / "bin" / "upm-runtime"
    preload = build / "lib" / "libupm-preload.so"
    source = Path(__file__).resolve().parents[2]
    for p in (wrapper, preload, Path(args.runtime)):
        if not p.exists():
            print(f"bench: `{p}` does not exist (make build?)", file=sys.stderr)
            return 1
    if os.geteuid() != 0:
        print("bench: containers need root", file=sys.stderr)
        return 1

    tmp = Path(tempfile.mkdtemp(prefix="upm-runtime-bench.", dir=args.dir))
    try:
        subprocess.run([args.runtime, "spec", "--bundle", tmp], check=True)
        spec = json.loads((tmp / "config.json").read_text())
        (tmp / "config.json").unlink()
        node = tmp / "node.json"
        node.write_text(json.dumps({"runtime": args.runtime, "preload": str(preload),
                                    "policy_dir": str(source / "config" / "policies"),
                                    "log_file": str(tmp / "upm.log"), "log_level": "info", "hook": ""}))
        env = dict(os.environ, UPM_CONFIG=str(node))
        bundles = {"runc": make_bundle(tmp, "plain", spec, None),
                   "injected": make_bundle(tmp, "annotated", spec, {"upm.enabled": "true"})}
        bundles["wrapped"] = bundles["runc"]
        original = (bundles["injected"] / "config.json").read_bytes()
        exe = {"runc": args.runtime, "wrapped": str(wrapper), "injected": str(wrapper)}
        root = tmp / "state"
        samples: dict[str, list[float]] = {v: [] for v in VARIANTS}

        def once(variant: str, n: int) -> float:
            cid = f"upm-bench-{os.getpid()}-{variant}-{n}"
            if variant == "injected":
                (bundles["injected"] / "config.json").write_bytes(original)
            base = [exe[variant], "--root", str(root)]
            t0 = time.perf_counter()
            subprocess.run(base + ["create", "--bundle", str(bundles[variant]), cid], env=env, check=True,
                           stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
            subprocess.run(base + ["start", cid], env=env, check=True)
            t1 = time.perf_counter()
            # Let /bin/true exit before deleting, so that delete never races
            # the exiting process for its cgroup (not timed).
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline:
                st = subprocess.run([args.runtime, "--root", str(root), "state", cid], capture_output=True, text=True)
                if st.returncode != 0 or json.loads(st.stdout).get("status") == "stopped":
                    break
                time.sleep(0.005)
            subprocess.run([args.runtime, "--root", str(root), "delete", "-f", cid], check=True,
                           stderr=subprocess.DEVNULL)
            return (t1 - t0) * 1000

        total = args.warmup + args.runs
        for n in range(total):
            order = VARIANTS[n % 3:] + VARIANTS[:n % 3]
            for v in order:
                ms = once(v, n)
                if n >= args.warmup:
                    samples[v].append(ms)
            print(f"\rround {n + 1}/{total}", end="", file=sys.stderr, flush=True)
        print(file=sys.stderr)
        # The wrapper alone: the same create calls with /bin/true as the
        # "real runtime", so that runc's own variance does not hide ours.
        alone = tmp / "node-alone.json"
        alone.write_text(node.read_text().replace(json.dumps(args.runtime), json.dumps("/bin/true")))
        env_alone = dict(os.environ, UPM_CONFIG=str(alone))
        direct: dict[str, list[float]] = {v: [] for v in VARIANTS}
        direct_cpu: dict[str, list[float]] = {v: [] for v in VARIANTS}
        for n in range(args.warmup + args.runs):
            for v in VARIANTS:
                if v == "injected":
                    (bundles["injected"] / "config.json").write_bytes(original)
                argv = ["/bin/true" if v == "runc" else str(wrapper), "--root", str(root), "create", "--bundle",
                        str(bundles[v]), f"alone-{n}"]
                r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
                t0 = time.perf_counter()
                subprocess.run(argv, env=env_alone, check=True)
                t1 = time.perf_counter()
                r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
                if n >= args.warmup:
                    direct[v].append((t1 - t0) * 1000)
                    direct_cpu[v].append((r1.ru_utime - r0.ru_utime + r1.ru_stime - r0.ru_stime) * 1000)
        log = (tmp / "upm.log").read_text() if (tmp / "upm.log").exists() else ""
        injected = log.count("injected `/dev/upm/libupm-preload.so`")
        if injected < 2 * total:
            print(f"bench: only {injected} of {total} injected creates were logged:\n{log[-2000:]}", file=sys.stderr)
            return 1
    finally:
        subprocess.run([args.runtime, "--root", str(tmp / "state"), "list", "-q"], stdout=subprocess.DEVNULL)
        shutil.rmtree(tmp, ignore_errors=True)

    base_median = statistics.median(samples["runc"])
    rows = []
    print(f"create-to-start, {args.runs} containers per variant, {args.runtime}, interleaved in one run")
    print(f"{'variant':<10} {'median ms':>10} {'p95 ms':>8} {'mean ms':>8} {'+median ms':>11}")
    for v in VARIANTS:
        s = samples[v]
        row = {"variant": v, "runs": len(s), "median_ms": statistics.median(s), "p95_ms": percentile(s, 95),
               "mean_ms": statistics.fmean(s), "added_median_ms": statistics.median(s) - base_median}
        rows.append(row)
        print(f"{v:<10} {row['median_ms']:>10.2f} {row['p95_ms']:>8.2f} {row['mean_ms']:>8.2f} "
              f"{row['added_median_ms']:>+11.2f}")
    print()
    print("the wrapper alone: `create` with /bin/true as the real runtime (wall and CPU time)")
    print(f"{'variant':<10} {'median ms':>10} {'p95 ms':>8} {'+median ms':>11} {'CPU ms':>7} {'+CPU ms':>8}")
    alone_rows = []
    for v in VARIANTS:
        s = direct[v]
        c = direct_cpu[v]
        row = {"variant": "true" if v == "runc" else v, "median_ms": statistics.median(s),
               "p95_ms": percentile(s, 95), "added_median_ms": statistics.median(s) - statistics.median(direct["runc"]),
               "cpu_median_ms": statistics.median(c),
               "added_cpu_median_ms": statistics.median(c) - statistics.median(direct_cpu["runc"])}
        alone_rows.append(row)
        print(f"{row['variant']:<10} {row['median_ms']:>10.2f} {row['p95_ms']:>8.2f} {row['added_median_ms']:>+11.2f} "
              f"{row['cpu_median_ms']:>7.2f} {row['added_cpu_median_ms']:>+8.2f}")
    Path(args.json).write_text(json.dumps({"runtime": args.runtime, "runs": args.runs, "bundle_dir": str(args.dir),
                                           "summary": rows, "samples_ms": samples,
                                           "wrapper_alone": alone_rows, "wrapper_alone_samples_ms": direct,
                                           "wrapper_alone_cpu_ms": direct_cpu},
                                          indent=2) + "\n")
    print(f"samples: {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
