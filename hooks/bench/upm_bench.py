#!/usr/bin/python3
# SPDX-License-Identifier: GPL-2.0-or-later
"""upm bench: N concurrent containers of one real serverless function on one
node, every mode side by side (the paper's experiment; docs/bench.md).

For each mode, N runc containers of FUNCTION (hooks/bench/functions/) are
started, staggered (--batch every --stagger seconds), through upm-runtime
(with upm-hook and a private upmd, as the product runs them) or plain runc.
Each container imports its libraries, loads its model or data after start,
and serves invocations over HTTP on a unix socket in a bind-mounted
directory; a container is ready when its first invocation is answered.
Then the bench serves invocations, samples memory every --interval seconds
until the saving settled (or --max-measure), measures latency, asks
`upm ideal` what merging every identical page would save, and tears down.

Modes:
  off             plain runc, no upm: the baseline
  ksm-default     no upm: the whole process mergeable (PR_SET_MEMORY_MERGE in
                  the function's entry), ksmd at the kernel defaults
                  (100 pages every 20 ms)
  ksm-aggressive  the same, ksmd at 10000 pages every 10 ms
  upm             upm.enabled=true, the default policy, upmd tuning ksmd:
                  the default install
  upm-shared      upm.enabled=true, upm.policy=python-shared, upm.domain=bench
                  (one trusting tenant: shared layout and hash seed, trim)
  upm-kernel      the patched kernel (test/kernel) in a QEMU guest: the
                  default policy's advice is madvise(MADV_UPM), which merges
                  before it returns; no ksmd.  With upm-kernel in --modes,
                  every mode of the run (off, ksm-default, ksm-aggressive,
                  upm-kernel) runs in that one guest, whose kernel has no
                  namespaces: instances there are processes, each in its
                  own cgroup, not containers

Needs root (containers, /sys/kernel/mm/ksm).  The host's KSM settings are
saved and restored (lock /run/upm-test-ksm-saved.lock, shared with the
tests), and every container and upmd is removed on exit, Ctrl-C or failure.
"""

from __future__ import annotations

import argparse
import copy
import fcntl
import http.client
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
KSM = Path("/sys/kernel/mm/ksm")
LOCK_FILE = Path("/run/upm-test-ksm-saved.lock")
STATE_FILE = Path(os.environ.get("UPM_TEST_KSM_STATE", "/run/upm-test-ksm-saved.json"))
PAGE = os.sysconf("SC_PAGE_SIZE")
TICK = os.sysconf("SC_CLK_TCK")
MIB = 1 << 20
GIB = 1 << 30
ALL_MODES = ("off", "ksm-default", "ksm-aggressive", "upm", "upm-shared", "upm-kernel")
FUNCTIONS = ("imagerec", "graph", "thumb", "template", "node")
PYTHON = "/usr/bin/python3"
RUNC = "/usr/bin/runc"
# ksmd settings of the ksm-* modes; the upm modes and `off` run with the
# host's own settings (the upm modes: upmd's tuner on top of them).
KSM_FIXED = {
    "ksm-default": {"advisor_mode": "none", "pages_to_scan": "100", "sleep_millisecs": "20", "run": "1"},
    "ksm-aggressive": {"advisor_mode": "none", "pages_to_scan": "10000", "sleep_millisecs": "10", "run": "1"},
}
# The only parts of the host's /etc a container sees (read-only): the
# dynamic linker's cache and alternatives (BLAS), matplotlib's rc file
# (python3-igraph imports matplotlib, which fails without it).
ETC_FILES = ("ld.so.cache", "matplotlibrc")
T0 = time.monotonic()


class Interrupted(Exception):
    pass


def log(msg: str) -> None:
    Progress.clear()
    print(f"bench: [{time.monotonic() - T0:6.1f} s] {msg}", file=sys.stderr, flush=True)


class Progress:
    """One progress line on stderr (rewritten in place on a terminal)."""
    tty = sys.stderr.isatty()
    last = 0.0
    shown = False

    @classmethod
    def show(cls, text: str) -> None:
        now = time.monotonic()
        if cls.tty:
            sys.stderr.write("\r\033[K" + text[:160])
            sys.stderr.flush()
            cls.shown = True
        elif now - cls.last >= 10:
            print(f"bench: [{now - T0:6.1f} s] {text}", file=sys.stderr, flush=True)
            cls.last = now

    @classmethod
    def clear(cls) -> None:
        if cls.shown:
            sys.stderr.write("\r\033[K")
            sys.stderr.flush()
            cls.shown = False


# ---------------------------------------------------------------------------
# Host KSM: lock, save, set, restore (the protocol of test/integration/upmtest/ksm.py)


def read_knob(name: str) -> str:
    text = (KSM / name).read_text().strip()
    m = re.search(r"\[([^\]]+)\]", text)
    return m.group(1) if m else text


def writable_knobs() -> list[str]:
    return sorted(p.name for p in KSM.iterdir() if p.is_file() and p.stat().st_mode & 0o200)


def set_knobs(values: dict[str, str]) -> None:
    # advisor_mode first (leaving the advisor resets pages_to_scan), run last
    order = [k for k in ("advisor_mode", "smart_scan") if k in values]
    order += [k for k in values if k not in order and k != "run"]
    order += ["run"] if "run" in values else []
    for k in order:
        if (KSM / k).exists() and read_knob(k) != values[k]:
            (KSM / k).write_text(f"{values[k]}\n")


class HostKsm:
    def __init__(self) -> None:
        self.fd: int | None = None
        self.saved: dict[str, str] | None = None

    def take(self, timeout: float) -> None:
        self.fd = os.open(LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        deadline = time.monotonic() + timeout
        told = False
        while True:
            try:
                fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{LOCK_FILE} stayed locked for {timeout:g} s (a test run switches KSM)")
                if not told:
                    log(f"waiting for another run (tests, demo) to release {LOCK_FILE}")
                    told = True
                time.sleep(0.5)
        try:   # a run killed with SIGKILL left its originals: put them back first
            stale = json.loads(STATE_FILE.read_text())
            set_knobs({k: v for k, v in stale.get("knobs", {}).items() if (KSM / k).exists()})
            log(f"restored KSM settings left by an interrupted run (pid {stale.get('pid')})")
            STATE_FILE.unlink(missing_ok=True)
        except (OSError, ValueError):
            pass
        self.saved = {k: read_knob(k) for k in writable_knobs()}
        STATE_FILE.write_text(json.dumps({"pid": os.getpid(), "knobs": self.saved}))

    def baseline(self) -> None:
        """Back to the host's own settings (between modes)."""
        if self.saved is not None:
            set_knobs(self.saved)

    def restore(self) -> list[str]:
        errors = []
        if self.saved is not None:
            try:
                set_knobs(self.saved)
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


def ksm_counter(name: str) -> int:
    try:
        return int((KSM / name).read_text())
    except (OSError, ValueError):
        return 0


def meminfo() -> dict[str, int]:
    out = {}
    for line in Path("/proc/meminfo").read_text().splitlines():
        k, v = line.split(":", 1)
        out[k] = int(v.split()[0]) * 1024
    return out


def node_used() -> int:
    m = meminfo()
    return m["MemTotal"] - m["MemAvailable"]


_ksmd_pid: list[int] = []


def ksmd_cpu() -> float:
    if not _ksmd_pid:
        for d in Path("/proc").iterdir():
            try:
                if d.name.isdigit() and (d / "comm").read_text().strip() == "ksmd":
                    _ksmd_pid.append(int(d.name))
                    break
            except OSError:
                continue
    if not _ksmd_pid:
        return 0.0
    return proc_cpu(_ksmd_pid[0])


def proc_cpu(pid: int) -> float:
    try:
        f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(f[11]) + int(f[12])) / TICK
    except (OSError, IndexError, ValueError):
        return 0.0


# Threads that advise memory for merging inside the instances: the
# preload's worker, and serve.py's MADV_MERGEABLE loop on kernels without
# PR_SET_MEMORY_MERGE.  Their CPU (advice; with MADV_UPM the merging itself)
# counts with ksmd's in CPU-s per GiB.
ADVISE_THREADS = ("upm-worker", "merge-any")


def advise_cpu(pids: list[int], seen: dict[int, float]) -> float:
    """CPU-s of the advising threads of these processes so far: the highest
    reading of each thread (a thread that ended keeps its last one)."""
    for pid in pids:
        try:
            tids = os.listdir(f"/proc/{pid}/task")
        except OSError:
            continue
        for t in tids:
            try:
                stat = Path(f"/proc/{pid}/task/{t}/stat").read_text()
            except OSError:
                continue
            comm = stat[stat.find("(") + 1:stat.rfind(")")]
            if comm in ADVISE_THREADS:
                f = stat.rsplit(")", 1)[1].split()
                seen[int(t)] = max(seen.get(int(t), 0.0), (int(f[11]) + int(f[12])) / TICK)
    return sum(seen.values())


def tree(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            for t in Path(f"/proc/{p}/task").iterdir():
                todo += [int(c) for c in (t / "children").read_text().split()]
        except OSError:
            pass
    return out


def pss(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def merging_pages(pid: int) -> int:
    try:
        return int(Path(f"/proc/{pid}/ksm_merging_pages").read_text())
    except (OSError, ValueError):
        return 0


def _anon_regions(pid: int):
    """(start, end) of the private mappings upm's default classes cover
    (heap, anonymous, library data: private and writable, or anonymous),
    without [stack] and the kernel's pseudo-mappings."""
    for line in Path(f"/proc/{pid}/maps").read_text().splitlines():
        parts = line.split(None, 5)
        start, end = (int(x, 16) for x in parts[0].split("-"))
        perms, inode = parts[1], int(parts[4])
        path = parts[5].strip() if len(parts) > 5 else ""
        if perms[3] != "p" or perms[0] != "r" or path.startswith("[stack") or \
                path in ("[vdso]", "[vvar]", "[vvar_vclock]", "[vsyscall]"):
            continue
        if perms[1] == "w" or inode == 0:
            yield start, end


def python_ideal(pids: list[int], contents: bool = True) -> dict:
    """The fallback of `upm ideal` (the method of test/demo/layout_bench.py):
    every present anonymous page of those regions (pagemap) is read through
    /proc/PID/mem and hashed; ideal saved = pages - distinct contents.  And,
    with or without contents, the saving achieved right now for exactly
    these processes: present pages - distinct page frames."""
    import array
    from collections import Counter
    pfn_mask = (1 << 55) - 1
    digests: Counter = Counter()
    frames = array.array("Q")

    def present(e: int) -> bool:
        return bool(e >> 63) and not (e >> 61) & 1      # present, not file-backed/shared-anon

    for pid in pids:
        try:
            with open(f"/proc/{pid}/pagemap", "rb", buffering=0) as pm, \
                    open(f"/proc/{pid}/mem", "rb", buffering=0) as mem:
                for start, end in _anon_regions(pid):
                    pm.seek(start // PAGE * 8)
                    entries = array.array("Q")
                    entries.frombytes(pm.read((end - start) // PAGE * 8))
                    if not contents:
                        frames.extend(e & pfn_mask for e in entries if present(e))
                        continue
                    i, n = 0, len(entries)
                    while i < n:       # runs of present anonymous pages, read in one go
                        if not present(entries[i]):
                            i += 1
                            continue
                        j = i
                        while j < n and j - i < 256 and present(entries[j]):
                            j += 1
                        try:
                            mem.seek(start + i * PAGE)
                            data = mem.read((j - i) * PAGE)
                        except OSError:
                            i = j
                            continue
                        for k in range(len(data) // PAGE):
                            digests[hash(data[k * PAGE:(k + 1) * PAGE])] += 1   # 64-bit SipHash
                            frames.append(entries[i + k] & pfn_mask)
                        i = j
        except OSError:
            continue
    out = {"present_pages": len(frames), "saved_frames_pages": len(frames) - len(set(frames)), "page_size": PAGE}
    if contents:
        total = sum(digests.values())
        out.update({"anon_present_pages": total, "distinct_contents": len(digests),
                    "ideal_saved_pages": total - len(digests),
                    "source": "python fallback (pagemap + /proc/PID/mem, SipHash per page)"})
    return out


def advice_end(samples: list[dict], final: dict, t_ready: float) -> dict:
    """When the instances' advising threads last ran (their CPU reached its
    final value; seconds after the last instance was ready) and the fraction
    of the final merged pages merged by then.  With MADV_UPM and ksmd
    stopped, everything is merged when the last advice returns (1.0)."""
    if not samples or final.get("advise_cpu", 0) <= 0:
        return {"t_advice_end_s": None, "merged_at_advice_end": None}
    hit = next((x for x in samples if x.get("advise_cpu", 0) >= final["advise_cpu"] - 0.011), samples[-1])
    return {"t_advice_end_s": round(hit["t"] - t_ready, 1),
            "merged_at_advice_end": round(hit["merging"] / final["merging"], 3) if final["merging"] else None}


def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    v = sorted(values)
    k = (len(v) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(v) - 1)
    return v[lo] + (v[hi] - v[lo]) * (k - lo)


# ---------------------------------------------------------------------------
# Containers


class Container:
    def __init__(self, bench: "Bench", mode: str, i: int) -> None:
        self.bench = bench
        self.mode = mode
        self.i = i
        self.id = f"upm-bench-{os.getpid()}-{mode}-{i}"
        self.bundle = bench.workdir / mode / f"c{i}"
        self.sock = bench.sockdir / f"{self.id}.sock"
        self.pid = 0
        self.t_start = 0.0
        self.t_ready: float | None = None
        self.error: str | None = None
        self.created = False

    def write_bundle(self) -> None:
        b = self.bench
        rootfs = self.bundle / "rootfs"
        for d in ("usr", "proc", "dev", "sys", "tmp", "etc/alternatives", "opt/upm-bench",
                  "var/cache/upm-bench", "run/upm-bench"):
            (rootfs / d).mkdir(parents=True, exist_ok=True)
        for f in ETC_FILES:
            if Path("/etc", f).exists():
                (rootfs / "etc" / f).touch()
        for link, target in (("bin", "usr/bin"), ("sbin", "usr/sbin"), ("lib", "usr/lib"), ("lib64", "usr/lib64")):
            if not (rootfs / link).is_symlink():
                (rootfs / link).symlink_to(target)
        spec = copy.deepcopy(b.base_spec)
        spec["process"]["terminal"] = False
        spec["process"]["args"] = b.function_argv(self)
        env = [e for e in spec["process"]["env"] if not e.startswith("TERM=")]
        env += ["HOME=/tmp", "PYTHONDONTWRITEBYTECODE=1", "OMP_NUM_THREADS=1",
                f"UPM_BENCH_IMAGE_SIZE={b.args.image_size}"]
        if self.mode.startswith("ksm-"):
            env.append("UPM_BENCH_MERGE_ANY=1")
        spec["process"]["env"] = env
        ro = ["rbind", "ro", "nosuid", "nodev"]
        spec["mounts"] += [
            {"destination": "/usr", "type": "bind", "source": "/usr", "options": ["rbind", "ro", "nosuid"]},
            *({"destination": f"/etc/{f}", "type": "bind", "source": f"/etc/{f}", "options": ro}
              for f in (*ETC_FILES, "alternatives") if Path("/etc", f).exists()),
            {"destination": "/opt/upm-bench", "type": "bind", "source": str(b.functions), "options": ro},
            {"destination": "/var/cache/upm-bench", "type": "bind", "source": str(b.cache), "options": ro},
            {"destination": "/run/upm-bench", "type": "bind", "source": str(b.sockdir),
             "options": ["rbind", "rw", "nosuid", "nodev", "noexec"]},
            {"destination": "/tmp", "type": "tmpfs", "source": "tmpfs",
             "options": ["nosuid", "nodev", "mode=1777", "size=256m"]},
        ]
        spec["hostname"] = f"bench-{self.i}"
        ann = {}
        if self.mode in ("upm", "upm-shared"):
            ann["upm.enabled"] = "true"
        if self.mode == "upm-shared":
            ann["upm.policy"] = "python-shared"
            ann["upm.domain"] = "bench"
        if ann:
            spec["annotations"] = ann
        (self.bundle / "config.json").write_text(json.dumps(spec, indent="\t") + "\n")

    def runtime(self) -> list[str]:
        exe = RUNC if self.mode in ("off", "ksm-default", "ksm-aggressive") else str(self.bench.bins["upm-runtime"])
        return [exe, "--root", str(self.bench.state_root)]

    def start(self) -> None:
        """`RUNTIME run -d`, then waits for the first invocation (readiness)."""
        out = open(self.bench.workdir / self.mode / f"c{self.i}.log", "ab")
        self.t_start = time.monotonic()
        self.created = True
        r = subprocess.run([*self.runtime(), "run", "-d", "--bundle", str(self.bundle), self.id],
                           stdin=subprocess.DEVNULL, stdout=out, stderr=out, env=self.bench.env,
                           timeout=120)
        out.close()
        if r.returncode != 0:
            raise RuntimeError(f"`run` of {self.id} failed (status {r.returncode}): {self.log_tail()}")
        st = subprocess.run([RUNC, "--root", str(self.bench.state_root), "state", self.id],
                            capture_output=True, text=True, timeout=60)
        if st.returncode != 0:
            raise RuntimeError(f"`runc state {self.id}`: {st.stderr.strip()}")
        self.pid = json.loads(st.stdout)["pid"]

    def alive(self) -> bool:
        return Path(f"/proc/{self.pid}").exists()

    def wait_ready(self, timeout: float) -> None:
        deadline = self.t_start + timeout
        while not self.sock.exists():
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.id} was not listening within {timeout:g} s: {self.log_tail()}")
            if not self.alive():
                raise RuntimeError(f"{self.id} exited during its cold start: {self.log_tail()}")
            time.sleep(0.2)
        self.invoke(0, timeout=max(5.0, deadline - time.monotonic()))
        self.t_ready = time.monotonic()

    def invoke(self, seed: int, timeout: float = 300.0) -> float:
        """One invocation; returns its latency in seconds (as the client sees it)."""
        t = time.perf_counter()
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(timeout)
        try:
            s.connect(str(self.sock))
            conn = http.client.HTTPConnection("localhost", timeout=timeout)
            conn.sock = s
            conn.request("GET", f"/invoke?seed={seed}")
            resp = conn.getresponse()
            body = resp.read()
        finally:
            s.close()
        took = time.perf_counter() - t
        if resp.status != 200:
            raise RuntimeError(f"{self.id}: invocation {seed} failed: {body[:300]!r}")
        return took

    def log_tail(self) -> str:
        try:
            return (self.bench.workdir / self.mode / f"c{self.i}.log").read_text()[-1500:].strip() or "(no output)"
        except OSError:
            return "(no output)"

    def delete(self) -> None:
        if not self.created:
            return
        subprocess.run([RUNC, "--root", str(self.bench.state_root), "delete", "-f", self.id],
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=120)
        self.created = False


def prepare_cache(function: str, cache: Path) -> None:
    """The function's host-side data (model weights, input files), generated
    once from a fixed seed."""
    cache.mkdir(parents=True, exist_ok=True)
    if function == "node":
        return
    code = (f"import sys; sys.path.insert(0, {str(HERE / 'functions')!r}); import {function} as f; "
            f"getattr(f, 'prepare', lambda d: None)({str(cache)!r})")
    t = time.monotonic()
    r = subprocess.run([PYTHON, "-c", code], capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"preparing {function} in {cache} failed: {r.stderr[-2000:]}")
    log(f"{function}: cache {cache} ready ({time.monotonic() - t:.1f} s)")


# ---------------------------------------------------------------------------
# upmd


def agent_call(sock_path: Path, request: dict, timeout: float = 5.0) -> dict:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(str(sock_path))
        s.sendall((json.dumps(request) + "\n").encode())
        buf = b""
        while b"\n" not in buf:
            chunk = s.recv(65536)
            if not chunk:
                break
            buf += chunk
    return json.loads(buf.decode().split("\n", 1)[0])


class Upmd:
    def __init__(self, bench: "Bench", mode: str) -> None:
        d = bench.workdir / mode
        self.sock = bench.agent_sock
        self.logf = d / "upmd.log"
        argv = [str(bench.bins["upmd"]), "--foreground", "--socket", str(self.sock),
                "--state-file", str(d / "upmd-state.json"),
                "--tuner-state-file", str(d / "ksm-original.json"), "--log-level", "info"]
        self.p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                  stderr=open(self.logf, "wb"), start_new_session=True)
        deadline = time.monotonic() + 30
        while True:
            try:
                if agent_call(self.sock, {"op": "ping"}).get("ok"):
                    return
            except (OSError, ValueError):
                pass
            if self.p.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"upmd did not come up: {self.logf.read_text()[-1500:]}")
            time.sleep(0.1)

    def status(self) -> dict:
        try:
            return agent_call(self.sock, {"op": "status"})
        except (OSError, ValueError):
            return {}

    def stop(self) -> None:
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGTERM)
            try:
                self.p.wait(30)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait(10)


# ---------------------------------------------------------------------------
# The bench


class Bench:
    def __init__(self, args) -> None:
        self.args = args
        self.bins = find_bins(args)
        self.functions = HERE / "functions"
        self.cache = Path(args.cache)
        self.workdir = Path(tempfile.mkdtemp(prefix="upm-bench-", dir=args.workdir))
        os.chmod(self.workdir, 0o755)
        self.sockdir = self.workdir / "sock"
        self.sockdir.mkdir()
        self.state_root = self.workdir / "runc-state"
        self.agent_sock = self.workdir / "upmd.sock"
        self.ksm = HostKsm()
        self.containers: list[Container] = []
        self.upmd: Upmd | None = None
        self.warnings: list[str] = []
        self.results: dict[str, dict] = {}
        self.ideal_missing = False
        self.stopping = False
        spec_dir = self.workdir / "spec"
        spec_dir.mkdir()
        subprocess.run([RUNC, "spec", "--bundle", str(spec_dir)], check=True)
        self.base_spec = json.loads((spec_dir / "config.json").read_text())
        self.write_node_config()

    def warn(self, msg: str) -> None:
        if msg not in self.warnings:
            self.warnings.append(msg)
            log(f"warning: {msg}")

    def write_node_config(self) -> None:
        """A node configuration of our own ($UPM_CONFIG): the real runc, the
        policies, and upm-hook reaching the private upmd.  runc gives hooks
        no environment, so the configured hook is a two-line wrapper that
        names our upmd's socket and execs the real upm-hook."""
        pol = self.workdir / "policies"
        pol.mkdir()
        for p in find_policies().glob("*.json"):
            shutil.copy(p, pol / p.name)
        self.config = self.workdir / "node-config.json"
        hook = self.workdir / "upm-hook"
        hook.write_text("#!/bin/sh\n"
                        f"UPM_AGENT_SOCKET='{self.agent_sock}' UPM_CONFIG='{self.config}' "
                        f"exec '{self.bins.get('upm-hook', '/nonexistent')}' \"$@\"\n")
        hook.chmod(0o755)
        cfg = {"runtime": RUNC, "policy_dir": str(pol), "default_policy": "default", "hook": str(hook),
               "log_file": str(self.workdir / "upm.log"), "log_level": "info"}
        self.config.write_text(json.dumps(cfg, indent=2) + "\n")
        self.env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "UPM_CONFIG": str(self.config)}

    def make_instance(self, mode: str, i: int) -> Container:
        return Container(self, mode, i)

    def mode_setup(self, mode: str) -> None:
        """Before a mode's first instance (the guest's cgroups and upm knobs)."""

    def mode_finish(self, mode: str, res: dict) -> None:
        """After a mode's final readings, before its teardown."""

    def function_argv(self, c: Container) -> list[str]:
        sock = f"/run/upm-bench/{c.sock.name}"
        if self.args.function == "node":
            argv = ["/usr/bin/node", "/opt/upm-bench/node_fn.js", "--socket", sock]
            if c.mode.startswith("ksm-"):
                argv = [PYTHON, "/opt/upm-bench/merge_exec.py", *argv]
            return argv
        return [PYTHON, "/opt/upm-bench/serve.py", self.args.function, "--socket", sock,
                "--cache", "/var/cache/upm-bench"]

    def prepare(self) -> None:
        prepare_cache(self.args.function, self.cache)

    # -- one mode -----------------------------------------------------------------

    def run_mode(self, mode: str) -> dict:
        a = self.args
        (self.workdir / mode).mkdir()
        self.ksm.baseline()
        self.wait_quiet()
        if a.ksm_run != "host":
            set_knobs({"run": a.ksm_run})     # the node's own ksmd, under every mode
        if mode in KSM_FIXED:
            set_knobs(KSM_FIXED[mode])
        if mode in ("upm", "upm-shared"):
            self.upmd = Upmd(self, mode)
        self.mode_setup(mode)
        knobs = {k: read_knob(k) for k in ("run", "pages_to_scan", "sleep_millisecs")}
        log(f"mode `{mode}`: {a.n} x {a.function}, ksm run={knobs['run']} {knobs['pages_to_scan']} pages/"
            f"{knobs['sleep_millisecs']} ms{' + upmd' if self.upmd else ''}")
        cs = [self.make_instance(mode, i) for i in range(a.n)]
        for c in cs:
            c.write_bundle()
        self.containers = cs
        base = {"used": node_used(), "sharing": ksm_counter("pages_sharing"), "ksmd": ksmd_cpu(),
                "t": time.monotonic()}
        samples: list[dict] = []
        advisers: dict[int, float] = {}
        stop = threading.Event()
        state = {"phase": "start"}

        def sampler():
            last_pss = 0.0
            pss_sum = 0
            while not stop.is_set():
                now = time.monotonic()
                pids = [p for c in cs if c.pid for p in tree(c.pid)]
                if now - last_pss >= a.pss_interval:
                    pss_sum = sum(pss(p) for p in pids)
                    last_pss = now
                s = {"t": round(now - base["t"], 2), "pss": pss_sum, "used": node_used() - base["used"],
                     "sharing": ksm_counter("pages_sharing") - base["sharing"],
                     "merging": sum(merging_pages(p) for p in pids), "ksmd_cpu": round(ksmd_cpu() - base["ksmd"], 3),
                     "advise_cpu": round(advise_cpu(pids, advisers), 3),
                     "ready": sum(1 for c in cs if c.t_ready), "phase": state["phase"]}
                samples.append(s)
                Progress.show(f"[{mode}] {state['phase']}: {s['ready']}/{len(cs)} ready, t={s['t']:.0f} s, "
                              f"PSS {s['pss'] / GIB:.2f} GiB, merging {s['merging'] * PAGE / MIB:.0f} MiB, "
                              f"ksmd {s['ksmd_cpu']:.1f} CPU-s")
                stop.wait(a.interval)

        th = threading.Thread(target=sampler, daemon=True)
        th.start()
        try:
            self.start_all(cs)
            t_last_ready = max(c.t_ready for c in cs)
            state["phase"] = "latency (early)"
            lat_early = self.latency_round(cs, seed0=1000)
            state["phase"] = "serving"
            self.serve_until_settled(cs, samples, t_last_ready - base["t"], stop)
            state["phase"] = "latency (merged)"
            lat_merged = self.latency_round(cs, seed0=2000)
            state["phase"] = "final"
            time.sleep(a.interval * 2)
        finally:
            stop.set()
            th.join(10)
        pids = [p for c in cs if c.pid for p in tree(c.pid)]
        final = {"pss": sum(pss(p) for p in pids), "used": node_used() - base["used"],
                 "sharing": ksm_counter("pages_sharing") - base["sharing"],
                 "merging": sum(merging_pages(p) for p in pids), "ksmd_cpu": ksmd_cpu() - base["ksmd"],
                 "advise_cpu": advise_cpu(pids, advisers), "cpu": sum(proc_cpu(p) for p in pids)}
        frames = python_ideal(pids, contents=False)
        final["saved_frames_pages"] = frames["saved_frames_pages"]
        ideal = self.ideal(pids)
        agent = self.upmd.status() if self.upmd else {}
        res = self.summarise(mode, cs, base, samples, final, ideal, lat_early, lat_merged,
                             t_last_ready - base["t"], agent)
        self.mode_finish(mode, res)
        self.teardown()
        return res

    def start_all(self, cs: list[Container]) -> None:
        a = self.args
        errors: list[str] = []

        def one(c: Container):
            if self.stopping:
                return
            try:
                c.start()
                c.wait_ready(a.ready_timeout)
            except Exception as e:  # noqa: BLE001 - collected and raised below
                c.error = str(e)
                errors.append(f"{c.id}: {e}")

        threads = []
        for k in range(0, len(cs), a.batch):
            if k:
                time.sleep(a.stagger)
            for c in cs[k:k + a.batch]:
                t = threading.Thread(target=one, args=(c,), daemon=True)
                t.start()
                threads.append(t)
            if errors:
                break
        for t in threads:
            while t.is_alive():
                t.join(0.5)
        if errors:
            raise RuntimeError("containers failed to start: " + "; ".join(errors[:3]))

    def latency_round(self, cs: list[Container], seed0: int) -> list[float]:
        """--invocations invocations of every container, one at a time."""
        out = []
        for k in range(self.args.invocations):
            for c in cs:
                out.append(c.invoke(seed0 + k * 100 + c.i))
        return out

    def serve_until_settled(self, cs, samples, t_ready, stop) -> None:
        """Serves invocations (one every --load-interval seconds, round robin)
        until the saving settled: at least --min-measure seconds after the
        last container was ready, the containers' ksm_merging_pages grew by
        less than 1% (and 1 MiB) over the last --settle seconds, and, if
        ksmd runs, it completed two full scans since; at most --max-measure."""
        a = self.args
        k = 0
        t_begin = time.monotonic()
        scans_at_ready = ksm_counter("full_scans")
        while True:
            el = time.monotonic() - t_begin
            if el >= a.max_measure:
                break
            if el >= a.min_measure and samples:
                now = samples[-1]
                old = [s for s in samples if s["t"] <= now["t"] - a.settle]
                if old and now["t"] - t_ready >= a.settle:
                    grew = now["merging"] - old[-1]["merging"]
                    # while ksmd runs, nothing is settled before it has gone
                    # twice over everything since the last start (a slow
                    # ksmd merges nothing in its first pass); stopped
                    # (run=0: idle upmd tuner, off), nothing more will merge
                    scans = ksm_counter("full_scans") - scans_at_ready
                    if grew <= max(0.01 * now["merging"], MIB / PAGE) and (read_knob("run") != "1" or scans >= 2):
                        break
            c = cs[k % len(cs)]
            k += 1
            t = time.monotonic()
            c.invoke(5000 + k)
            time.sleep(max(0.0, a.load_interval - (time.monotonic() - t)))

    def ideal(self, pids: list[int]) -> dict | None:
        doc = self.upm_ideal(pids)
        if doc is None and self.args.ideal_fallback:
            t = time.monotonic()
            doc = python_ideal(pids)
            doc["_seconds"] = round(time.monotonic() - t, 2)
        return doc

    def upm_ideal(self, pids: list[int]) -> dict | None:
        fallback = ("; using the python fallback (--no-ideal-fallback: n/a)" if self.args.ideal_fallback
                    else "; the fraction of the ideal is n/a")
        if self.ideal_missing:
            return None
        if "upm" not in self.bins:
            self.ideal_missing = True
            self.warn("the `upm` CLI was not found" + fallback)
            return None
        t = time.monotonic()
        try:
            r = subprocess.run([str(self.bins["upm"]), "ideal", "--json", *map(str, pids)],
                               capture_output=True, text=True, timeout=900)
        except (OSError, subprocess.TimeoutExpired) as e:
            self.warn(f"`upm ideal` failed ({e})" + fallback)
            return None
        if r.returncode != 0:
            if r.returncode == 2 and "ideal" in r.stderr and ("unknown" in r.stderr or "xtra" in r.stderr):
                self.ideal_missing = True
                self.warn(f"`{self.bins['upm']} ideal` is not available in this build" + fallback)
            else:
                self.warn(f"`upm ideal` failed (status {r.returncode}): {r.stderr.strip()[-300:]}" + fallback)
            return None
        try:
            doc = json.loads(r.stdout)
        except ValueError:
            self.warn("`upm ideal --json` printed no JSON" + fallback)
            return None
        doc["_seconds"] = round(time.monotonic() - t, 2)
        doc.setdefault("source", "upm ideal")
        return doc

    def summarise(self, mode, cs, base, samples, final, ideal, lat_early, lat_merged, t_ready, agent) -> dict:
        starts = [c.t_ready - c.t_start for c in cs]
        saved_kernel = final["sharing"] * PAGE
        t90 = None
        if final["merging"] > 0:
            # on the containers' own ksm_merging_pages: the node's pages_sharing
            # also moves with other processes (and with stale counts of exited ones)
            goal = 0.9 * final["merging"]
            hit = next((s["t"] for s in samples if s["merging"] >= goal), None)
            if hit is not None:
                t90 = round(max(0.0, hit - t_ready), 1)
        res = {
            "mode": mode, "n": len(cs), "function": self.args.function,
            "pss_bytes": final["pss"], "node_used_delta_bytes": final["used"],
            "kernel_saved_bytes": saved_kernel, "merging_pages": final["merging"],
            "saved_frames_bytes": final["saved_frames_pages"] * PAGE,
            "ksmd_cpu_s": round(final["ksmd_cpu"], 2), "advise_cpu_s": round(final["advise_cpu"], 2),
            "containers_cpu_s": round(final["cpu"], 2),
            "t90_s": t90, "t_last_ready_s": round(t_ready, 1),
            "start_p50_s": round(pct(starts, 0.5), 2), "start_p95_s": round(pct(starts, 0.95), 2),
            "lat_early_p50_ms": round(pct(lat_early, 0.5) * 1000, 1),
            "lat_early_p99_ms": round(pct(lat_early, 0.99) * 1000, 1),
            "lat_merged_p50_ms": round(pct(lat_merged, 0.5) * 1000, 1),
            "lat_merged_p99_ms": round(pct(lat_merged, 0.99) * 1000, 1),
            "measured_s": round(samples[-1]["t"] - t_ready, 1) if samples else None,
            "ksm_settings": {k: read_knob(k) for k in ("run", "pages_to_scan", "sleep_millisecs")},
            "ideal": ideal, "loadavg_end": Path("/proc/loadavg").read_text().split()[:3], "series": samples,
        }
        res.update(advice_end(samples, final, t_ready))
        gib = final["saved_frames_pages"] * PAGE / GIB
        res["ksmd_cpu_s_per_gib"] = round(final["ksmd_cpu"] / gib, 2) if gib > 0 else None
        # the measure: CPU spent merging (ksmd + the advising threads) per GiB saved
        res["merge_cpu_s_per_gib"] = round((final["ksmd_cpu"] + final["advise_cpu"]) / gib, 2) if gib > 0 else None
        # `upm ideal`: what merging every identical page saves against no
        # merging at all (ideal_saved_from_unmerged_pages; its
        # ideal_saved_pages is what is left to save from the current state);
        # the python fallback counts against no merging too.
        ideal_pages = ideal and ideal.get("ideal_saved_from_unmerged_pages", ideal.get("ideal_saved_pages"))
        if ideal_pages:
            # achieved for exactly these processes: their present anonymous
            # pages minus distinct frames (merges elsewhere on the node do not count)
            achieved = final["saved_frames_pages"]
            res["achieved_saved_pages"] = achieved
            res["ideal_saved_bytes"] = ideal_pages * ideal.get("page_size", PAGE)
            res["of_ideal"] = round(achieved / ideal_pages, 3)
        else:
            res["ideal_saved_bytes"] = None
            res["of_ideal"] = None
        if agent:
            cont = agent.get("containers", [])
            res["agent"] = {"registered": len(cont), "tuner": agent.get("tuner"),
                            "advise_seconds": round(sum(c.get("advise_seconds", 0) for c in cont), 3),
                            "advised_bytes": sum(c.get("advised_bytes", 0) for c in cont)}
            if len(cont) != len(cs):
                self.warn(f"mode {mode}: upmd registered {len(cont)} of {len(cs)} containers "
                          f"(upm-hook log: {self.workdir / 'upm.log'})")
        return res

    def delete_containers(self) -> None:
        for c in self.containers:
            try:
                c.delete()
            except Exception as e:  # noqa: BLE001 - keep deleting the others
                log(f"warning: deleting {c.id}: {e}")
        self.containers = []

    def teardown(self) -> None:
        self.delete_containers()
        # containers whose `run` was still under way when we gave up
        for attempt in range(2 if self.stopping else 1):
            if attempt:
                time.sleep(2)
            r = subprocess.run([RUNC, "--root", str(self.state_root), "list", "-q"], capture_output=True,
                               text=True, timeout=60)
            for cid in r.stdout.split() if r.returncode == 0 else []:
                subprocess.run([RUNC, "--root", str(self.state_root), "delete", "-f", cid],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=120)
        if self.upmd:
            self.upmd.stop()
            self.upmd = None

    def drain_ksm(self) -> None:
        """After a mode: KSM's counters of the exited containers are only
        dropped when ksmd scans again (with run=0 they stay), so ksmd runs
        fast until pages_sharing is 0 or stops falling for 3 s (at most
        60 s); then the host's settings."""
        if ksm_counter("pages_sharing") == 0:
            return
        set_knobs({"advisor_mode": "none", "pages_to_scan": "5000", "sleep_millisecs": "10", "run": "1"})
        prev, same = ksm_counter("pages_sharing"), 0
        for _ in range(60):
            time.sleep(1)
            now = ksm_counter("pages_sharing")
            if now == 0:
                break
            same = same + 1 if now >= prev else 0
            if same >= 3:
                break
            prev = now
        self.ksm.baseline()

    def wait_quiet(self) -> None:
        """Before a mode: the previous mode's memory is given back (node used
        stops falling) so that the node delta starts from a steady state."""
        self.drain_ksm()
        prev = node_used()
        for _ in range(10):
            time.sleep(1)
            now = node_used()
            if abs(now - prev) < 32 * MIB:
                return
            prev = now

    # -- all modes ----------------------------------------------------------------

    def run(self) -> dict:
        a = self.args
        self.prepare()
        self.ksm.take(a.lock_timeout)
        for mode in a.modes:
            self.results[mode] = self.run_mode(mode)
            log(f"mode `{mode}` done: " + short(self.results[mode]))
        off = self.results.get("off")
        for r in self.results.values():
            if off and r is not off:
                r["saved_pss_bytes"] = off["pss_bytes"] - r["pss_bytes"]
                r["saved_node_bytes"] = off["node_used_delta_bytes"] - r["node_used_delta_bytes"]
                # the containers' own extra CPU (advice, trimming, COW faults), noisy
                r["containers_cpu_vs_off_s"] = round(r["containers_cpu_s"] - off["containers_cpu_s"], 2)
            elif r is off:
                r["saved_pss_bytes"] = r["saved_node_bytes"] = 0
            else:
                r["saved_pss_bytes"] = r["saved_node_bytes"] = None
        return {"function": a.function, "n": a.n, "modes": list(a.modes),
                "config": {k: getattr(a, k) for k in ("batch", "stagger", "interval", "pss_interval", "ksm_run",
                                                      "min_measure", "max_measure", "settle", "invocations",
                                                      "load_interval", "image_size", "ready_timeout")},
                "ksm_fixed": KSM_FIXED, "host": host_info(), "bins": {k: str(v) for k, v in self.bins.items()},
                "results": self.results, "warnings": self.warnings}

    def cleanup(self) -> None:
        self.stopping = True
        try:
            self.teardown()
            if self.ksm.saved is not None:
                self.drain_ksm()
        finally:
            errors = self.ksm.restore()
            if errors:
                log("warning: could not restore the host's KSM settings: " + "; ".join(errors))
            elif self.ksm.fd is None:
                log("restored the host's KSM settings")
            if not self.args.keep:
                shutil.rmtree(self.workdir, ignore_errors=True)
            else:
                log(f"kept {self.workdir}")


def short(r: dict) -> str:
    return (f"PSS {r['pss_bytes'] / GIB:.2f} GiB, merged {r['saved_frames_bytes'] / MIB:.0f} MiB, "
            f"t90 {'-' if r['t90_s'] is None else r['t90_s']} s, ksmd {r['ksmd_cpu_s']} CPU-s, start p50 {r['start_p50_s']} s")


def host_info() -> dict:
    return {"kernel": os.uname().release, "cpus": os.cpu_count(), "mem_total_bytes": meminfo()["MemTotal"],
            "loadavg": Path("/proc/loadavg").read_text().split()[:3],
            "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def find_bins(args) -> dict[str, Path]:
    """upm, upm-runtime, upm-hook, upmd: from --bin-dir, $UPM_BUILD_DIR/bin,
    the build tree next to this script, or the installation it belongs to.
    The upm modes need the last three; `upm` (for `upm ideal`) is optional."""
    cands = []
    if args.bin_dir:
        cands.append(Path(args.bin_dir))
    if os.environ.get("UPM_BUILD_DIR"):
        cands.append(Path(os.environ["UPM_BUILD_DIR"]) / "bin")
    cands += [HERE.parent.parent / "build" / "bin",       # source tree: hooks/bench -> build/bin
              HERE.parent.parent.parent / "bin"]          # installed: share/upm/bench -> bin
    names = ("upm", "upm-runtime", "upm-hook", "upmd")
    found = next((d for d in cands if any(os.access(d / n, os.X_OK) for n in names)), None)
    need = ("upm-runtime", "upm-hook", "upmd") if any(m in ("upm", "upm-shared") for m in args.modes) else ()
    if found is None:
        if need:
            raise SystemExit("bench: error: upm-runtime not found (tried " + ", ".join(map(str, cands)) +
                             "); run `make build` or pass --bin-dir")
        return {}
    bins = {}
    for n in names:      # installed, upmd is in PREFIX/sbin
        for p in (found / n, found.parent / "sbin" / n):
            if os.access(p, os.X_OK):
                bins[n] = p
                break
    missing = [n for n in need if n not in bins]
    if missing:
        raise SystemExit(f"bench: error: missing in {found}: {', '.join(missing)} (run `make build`)")
    return bins


def find_policies() -> Path:
    for d in (HERE.parent.parent / "config" / "policies", HERE.parent / "policies"):
        if (d / "default.json").is_file():
            return d
    raise SystemExit("bench: error: the shipped policies were not found (config/policies or share/upm/policies)")


# ---------------------------------------------------------------------------
# upm-kernel: every mode in one QEMU guest running the patched kernel
#
# The host side (run_in_guest) boots test/kernel's kernel and initramfs with
# the host's / shared read-only over virtio-9p, plus a writable work
# directory and the read-only cache; the guest's /init (upm.mode=hostroot)
# chroots into the host's root and runs this same script with
# --guest-inner DIR, which runs the modes (GuestBench) and writes
# DIR/result.json; the host prints the table, the JSON and the plot.
# The guest kernel has no namespaces (tinyconfig), so an instance there is a
# plain process in a cgroup of its own, not a runc container.

GUEST_MODES = ("off", "ksm-default", "ksm-aggressive", "upm-kernel")
CGROUP = Path("/sys/fs/cgroup")
UPM_SYSFS = Path("/sys/kernel/mm/upm")
UPM_STATS = ("calls", "pages_examined", "pages_merged_existing", "pairs_merged", "pages_merged_zero",
             "candidates", "candidates_added", "stale_dropped", "index_full", "merge_failed", "reconciled",
             "index_bytes", "time_ns")


def upm_stats() -> dict[str, int]:
    out = {}
    for k in UPM_STATS:
        try:
            out[k] = int((UPM_SYSFS / k).read_text())
        except (OSError, ValueError):
            pass
    return out


class GuestProc(Container):
    """An instance in the guest: `serve.py FUNCTION` as a process of its own
    session, in its own cgroup (memory controller on: its own memcg, as a
    container's), started through `upm run` (the preload, default policy)
    in the upm-kernel mode."""

    def __init__(self, bench: "GuestBench", mode: str, i: int) -> None:
        super().__init__(bench, mode, i)
        self.id = f"{mode}-{i}"
        self.sock = bench.sockdir / f"{self.id}.sock"
        self.cgroup = bench.cgroup_parent(mode) / f"i{i}"
        self.proc: subprocess.Popen | None = None

    def write_bundle(self) -> None:
        self.cgroup.mkdir(exist_ok=True)

    def start(self) -> None:
        b = self.bench
        argv = [PYTHON, str(b.functions / "serve.py"), b.args.function, "--socket", str(self.sock),
                "--cache", str(b.cache)]
        env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/tmp", "LANG": "C.UTF-8",
               "PYTHONDONTWRITEBYTECODE": "1", "OMP_NUM_THREADS": "1",
               "UPM_BENCH_IMAGE_SIZE": str(b.args.image_size)}
        if self.mode.startswith("ksm-"):
            env["UPM_BENCH_MERGE_ANY"] = "1"
        if self.mode == "upm-kernel":
            argv = [str(b.bins["upm"]), "run", "--log", "info", "--", *argv]
        # the shell moves itself into the cgroup, then execs the instance
        argv = ["/bin/sh", "-c", 'echo $$ > "$0" && exec "$@"', str(self.cgroup / "cgroup.procs"), *argv]
        out = open(b.workdir / self.mode / f"c{self.i}.log", "ab")
        self.t_start = time.monotonic()
        self.created = True
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=out, env=env,
                                     cwd="/tmp", start_new_session=True)
        out.close()
        self.pid = self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def delete(self) -> None:
        if not self.created:
            return
        if self.proc is not None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except OSError:
                pass
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                pass
        for _ in range(50):
            try:
                self.cgroup.rmdir()
                break
            except FileNotFoundError:
                break
            except OSError:
                time.sleep(0.1)
        self.created = False


class GuestBench(Bench):
    """The modes inside the guest (--guest-inner): the same measures as on
    the host, instances are GuestProc."""

    def __init__(self, args, outdir: Path) -> None:  # noqa: super().__init__ needs runc
        self.args = args
        self.outdir = outdir
        self.bins = find_bins(args)
        self.functions = HERE / "functions"
        self.cache = Path(args.cache)
        self.workdir = Path(tempfile.mkdtemp(prefix="upm-bench-", dir="/tmp"))
        self.sockdir = self.workdir / "sock"
        self.sockdir.mkdir()
        self.state_root = None
        self.ksm = HostKsm()          # the guest's own KSM
        self.containers = []
        self.upmd = None
        self.warnings = []
        self.results = {}
        self.ideal_missing = False
        self.stopping = False
        self.mode_state: dict = {}

    def make_instance(self, mode: str, i: int) -> Container:
        return GuestProc(self, mode, i)

    def prepare(self) -> None:
        if not (self.cache.is_dir() and any(self.cache.iterdir())):
            raise RuntimeError(f"the cache {self.cache} is empty in the guest (the host prepares it)")
        # One unmeasured instance first: the guest reads the host's files
        # over 9p once into its page cache, so that the first mode does not
        # pay for everyone (off started 30% slower than the next mode without it)
        t = time.monotonic()
        self.mode_setup("warmup")
        (self.workdir / "warmup").mkdir()
        w = GuestProc(self, "warmup", 0)
        w.write_bundle()
        self.containers = [w]
        try:
            w.start()
            w.wait_ready(self.args.ready_timeout)
            w.invoke(1)
        finally:
            self.teardown()
        log(f"warm-up instance ready and invoked in {time.monotonic() - t:.1f} s (not measured)")

    def cgroup_parent(self, mode: str) -> Path:
        return CGROUP / f"upm-bench-{mode}"

    def mode_setup(self, mode: str) -> None:
        parent = self.cgroup_parent(mode)
        parent.mkdir(exist_ok=True)
        (parent / "cgroup.subtree_control").write_text("+memory\n")
        st = {"upm": upm_stats()}
        if mode == "upm-kernel":
            if not UPM_SYSFS.is_dir():
                raise RuntimeError(f"{UPM_SYSFS} is missing: the guest kernel has no CONFIG_UPM")
            # one sharing domain for the bench's instances: their common
            # parent cgroup (depth 1), as the containers of one tenant
            st["domain_level"] = (UPM_SYSFS / "domain_level").read_text().strip()
            st["domain_mode"] = (UPM_SYSFS / "domain_mode").read_text().strip()
            (UPM_SYSFS / "domain_level").write_text("1\n")
        self.mode_state = st

    def mode_finish(self, mode: str, res: dict) -> None:
        st = self.mode_state
        now = upm_stats()
        res["upm_sysfs_delta"] = {k: now[k] - st["upm"].get(k, 0) for k in now}
        res["instances"] = "processes in cgroups (QEMU guest)"
        if mode == "upm-kernel":
            res["upm_domain"] = {"domain_mode": st["domain_mode"], "domain_level": 1,
                                 "cgroup": str(self.cgroup_parent(mode))}
            (UPM_SYSFS / "domain_level").write_text(st["domain_level"] + "\n")
            # the preload's backend, from its log lines (`upm run --log info`)
            logs = [(self.workdir / mode / f"c{c.i}.log") for c in self.containers]
            text = "".join(p.read_text(errors="replace") for p in logs if p.exists())
            res["preload_backend_upm"] = "backend upm" in text
            if "backend upm" not in text:
                self.warn("mode upm-kernel: the preload did not log `backend upm` (MADV_UPM not used?)")
            res["advise_seconds_kernel"] = round(res["upm_sysfs_delta"].get("time_ns", 0) / 1e9, 3)

    def teardown(self) -> None:
        self.delete_containers()
        for mode in (*GUEST_MODES, "warmup"):
            try:
                self.cgroup_parent(mode).rmdir()
            except OSError:
                pass

    def cleanup(self) -> None:
        # the instances' logs back to the host (the guest's /tmp is gone after)
        try:
            dest = self.outdir / "logs"
            for p in self.workdir.glob("*/c*.log"):
                (dest / p.parent.name).mkdir(parents=True, exist_ok=True)
                shutil.copy(p, dest / p.parent.name / p.name)
        except OSError as e:
            log(f"warning: copying the instances' logs: {e}")
        super().cleanup()


def guest_inner(outdir: Path) -> int:
    """In the guest: run the modes of OUTDIR/args.json, write OUTDIR/result.json."""
    a = argparse.Namespace(**json.loads((outdir / "args.json").read_text()))
    a.workdir = "/tmp"

    def on_signal(signum, frame):  # noqa: ARG001
        raise Interrupted(signal.Signals(signum).name, 128 + signum)

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, on_signal)
    bench = GuestBench(a, outdir)
    log(f"guest: {a.n} x {a.function}, modes {','.join(a.modes)}, kernel {os.uname().release}, "
        f"{os.cpu_count()} CPUs, {meminfo()['MemTotal'] / GIB:.1f} GiB")
    status, doc = 0, None
    try:
        doc = bench.run()
    except Interrupted as e:
        status = e.args[1]
    except Exception as e:  # noqa: BLE001 - reported, then cleaned up
        log(f"error: {e}")
        status = 1
    finally:
        bench.cleanup()
    if doc is None and bench.results:
        doc = {"function": a.function, "n": a.n, "modes": list(bench.results), "host": host_info(),
               "results": bench.results, "warnings": bench.warnings + ["incomplete run"]}
    if doc:
        (outdir / "result.json.tmp").write_text(json.dumps(doc, indent=1) + "\n")
        os.rename(outdir / "result.json.tmp", outdir / "result.json")
        print(table(doc), flush=True)
    return status


SPLAT = re.compile(r"WARNING:|BUG:|KASAN|possible circular locking|possible recursive locking|inconsistent lock "
                   r"state|suspicious RCU usage|Kernel panic|sleeping function called from invalid context|Bad page")


def find_guest_images(a) -> tuple[str, str]:
    """The bzImage (--kernel, else test/kernel/build.sh) and the initramfs
    (test/kernel/initramfs.sh): the source tree's scripts, cached builds."""
    kdir = HERE.parent.parent / "test" / "kernel"
    if not (kdir / "initramfs.sh").is_file():
        raise SystemExit("bench: error: upm-kernel needs the source tree's test/kernel/ (the test kernel and its "
                         f"initramfs); {kdir} is missing")
    kernel = a.kernel
    if not kernel:
        log("building (or reusing) the test kernel: test/kernel/build.sh (the first build takes minutes)")
        r = subprocess.run([str(kdir / "build.sh")], stdout=subprocess.PIPE, text=True)
        kernel = r.stdout.strip().splitlines()[-1] if r.returncode == 0 and r.stdout.strip() else ""
        if not kernel or not Path(kernel).is_file():
            raise SystemExit(f"bench: error: test/kernel/build.sh failed (status {r.returncode})")
    elif not Path(kernel).is_file():
        raise SystemExit(f"bench: error: --kernel {kernel}: no such file")
    r = subprocess.run([str(kdir / "initramfs.sh")], stdout=subprocess.PIPE, text=True)
    initrd = r.stdout.strip().splitlines()[-1] if r.returncode == 0 and r.stdout.strip() else ""
    if not initrd or not Path(initrd).is_file():
        raise SystemExit(f"bench: error: test/kernel/initramfs.sh failed (status {r.returncode})")
    return str(Path(kernel).resolve()), initrd


def emit(doc: dict, a) -> None:
    """The table on stdout, and the JSON and the plot where --json and --plot ask."""
    print(table(doc), flush=True)
    if a.json:
        Path(a.json).write_text(json.dumps(doc, indent=1) + "\n")
        print(f"bench: JSON: {a.json}", file=sys.stderr)
    if a.plot:
        try:
            plot(doc, a.plot)
            print(f"bench: plot: {a.plot}", file=sys.stderr)
        except ImportError:
            print("bench: warning: matplotlib is missing (packaging/install-deps.sh workloads); no plot",
                  file=sys.stderr)


def guest_workdir(a) -> Path:
    """The guest's work directory (shared over 9p): the arguments of the
    inner run and the script the guest's init runs."""
    work = Path(tempfile.mkdtemp(prefix="upm-bench-guest-", dir=a.workdir))
    os.chmod(work, 0o755)
    inner = {k: v for k, v in vars(a).items() if k not in ("json", "plot", "kernel")}
    (work / "args.json").write_text(json.dumps(inner, indent=1) + "\n")
    (work / "guest.sh").write_text(f"#!/bin/sh\nexec {PYTHON} -u {HERE / 'upm_bench.py'} --guest-inner {work}\n")
    return work


def guest_console_log(a) -> Path:
    logdir = Path(os.environ.get("UPM_KERNEL_LOG_DIR") or
                  Path(os.environ.get("UPM_CACHE_DIR", "/var/cache/upm")) / "kernel" / "logs")
    logdir.mkdir(parents=True, exist_ok=True)
    return logdir / f"console-{time.strftime('%Y%m%d-%H%M%S')}-bench-{a.function}.log"


def hostroot_qemu_argv(qemu: str, mem: str, cpus: int, kernel: str, initrd: str, work: Path,
                       cache: Path | None = None, accel: str = "tcg") -> list[str]:
    """QEMU booting the test kernel in the initramfs's hostroot mode: the host's / read-only (tag
    hostroot), `work` writable (upmout; the guest runs work/guest.sh), `cache` read-only (upmcache).
    Also used by test/integration/test_remote_kernel.py."""
    append = f"console=ttyS0 panic=-1 upm.mode=hostroot upm.out={work}" + (f" upm.cache={cache}" if cache else "")
    argv = [qemu, "-nographic", "-no-reboot", "-m", mem, "-smp", str(cpus), "-cpu", "max", "-accel", accel,
            # merge=off: the guest's RAM stays out of the host's KSM
            "-object", f"memory-backend-ram,id=mem,size={mem},merge=off", "-machine", "pc,memory-backend=mem",
            "-kernel", kernel, "-initrd", initrd, "-append", append,
            "-fsdev", "local,id=hostroot,path=/,security_model=none,readonly=on,multidevs=remap",
            "-device", "virtio-9p-pci,fsdev=hostroot,mount_tag=hostroot",
            "-fsdev", f"local,id=upmout,path={work},security_model=none,multidevs=remap",
            "-device", "virtio-9p-pci,fsdev=upmout,mount_tag=upmout"]
    if cache:
        argv += ["-fsdev", f"local,id=upmcache,path={cache},security_model=none,readonly=on,multidevs=remap",
                 "-device", "virtio-9p-pci,fsdev=upmcache,mount_tag=upmcache"]
    return argv


def qemu_argv(qemu: str, a, kernel: str, initrd: str, work: Path, cache: Path, accel: str) -> list[str]:
    return hostroot_qemu_argv(qemu, a.guest_mem, a.guest_cpus, kernel, initrd, work, cache, accel)


def run_qemu(argv: list[str], console: Path, timeout: float, t0: float) -> tuple[int, int | None, int | None]:
    """Runs QEMU until the guest's driver says END (then it powers off), the
    timeout or a signal; its console goes to `console`, the driver's lines
    to stderr.  Returns (status, the guest driver's status, QEMU's)."""
    status = 0

    def on_signal(signum, frame):  # noqa: ARG001
        raise Interrupted(signal.Signals(signum).name, 128 + signum)

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, on_signal)
    p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                         start_new_session=True)
    ended = {"rc": None}

    def pump():
        with open(console, "wb") as f:
            for raw in p.stdout:
                f.write(raw)
                f.flush()
                line = raw.decode(errors="replace").rstrip("\r\n")
                if line.startswith(("bench:", "upm-guest:")):
                    print(f"guest: {line}", file=sys.stderr, flush=True)
                m = re.match(r"upm-guest: END rc=(\d+)", line)
                if m:
                    ended["rc"] = int(m.group(1))

    th = threading.Thread(target=pump, daemon=True)
    th.start()
    try:
        while p.poll() is None:
            if time.monotonic() - t0 > timeout:
                log(f"the guest did not finish within {timeout:.0f} s; stopping QEMU")
                status = 1
                break
            if ended["rc"] is not None:
                try:
                    p.wait(30)      # powers off by itself
                except subprocess.TimeoutExpired:
                    pass
                break
            time.sleep(0.5)
    except (KeyboardInterrupt, Interrupted) as e:
        log("interrupted; stopping QEMU")
        status = e.args[1] if isinstance(e, Interrupted) else 130
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGTERM)
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
        th.join(10)
    return status, ended["rc"], p.returncode


def guest_result(a, work: Path, console: Path, status: int) -> dict | None:
    """The guest's result.json, with the console's kernel splats as
    warnings; None (and the console's tail on stderr) when there is none."""
    text = console.read_text(errors="replace")
    result = work / "result.json"
    if not result.exists():
        tail = "\n".join(text.splitlines()[-40:])
        print(f"bench: error: the guest wrote no result (console {console}):\n{tail}", file=sys.stderr)
        if not a.keep:
            shutil.rmtree(work, ignore_errors=True)
        return None
    doc = json.loads(result.read_text())
    splats = [ln for ln in text.splitlines() if SPLAT.search(ln)]
    if splats:
        doc["warnings"].append(f"guest console: {len(splats)} kernel splat line(s), first: {splats[0].strip()} "
                               f"({console})")
    return doc


def run_in_guest(a) -> int:
    """On the host: boot the guest, let it run every mode, report."""
    qemu = shutil.which("qemu-system-x86_64")
    if not qemu:
        print("bench: error: qemu-system-x86_64 is missing (packaging/install-deps.sh kernel)", file=sys.stderr)
        return 2
    bins = find_bins(a)
    if "upm-kernel" in a.modes and "upm" not in bins:
        print("bench: error: the `upm` CLI was not found (upm-kernel starts instances with `upm run`); run "
              "`make build` or pass --bin-dir", file=sys.stderr)
        return 2
    a.bin_dir = str(bins["upm"].parent) if "upm" in bins else a.bin_dir
    kernel, initrd = find_guest_images(a)
    cache = Path(a.cache).resolve()
    prepare_cache(a.function, cache)
    a.cache = str(cache)
    work = guest_workdir(a)
    console = guest_console_log(a)
    accel = os.environ.get("UPM_QEMU_ACCEL", "tcg")
    argv = qemu_argv(qemu, a, kernel, initrd, work, cache, accel)
    timeout = a.guest_timeout or 600 + len(a.modes) * (a.ready_timeout + a.max_measure + 300)
    log(f"{a.n} x {a.function}, modes {','.join(a.modes)} in a QEMU guest ({accel}, {a.guest_cpus} vCPUs, "
        f"{a.guest_mem}); kernel {kernel}; console {console}; timeout {timeout:.0f} s")
    t0 = time.monotonic()
    status, rc, qemu_rc = run_qemu(argv, console, timeout, t0)
    log(f"guest ran {time.monotonic() - t0:.0f} s (guest driver status {rc}, qemu {qemu_rc})")
    doc = guest_result(a, work, console, status)
    if doc is None:
        return status or 1
    doc["guest"] = {"accel": accel, "cpus": a.guest_cpus, "memory": a.guest_mem, "kernel_image": kernel,
                    "initrd": initrd, "console_log": str(console), "qemu": argv,
                    "seconds": round(time.monotonic() - t0, 1), "host": host_info()}
    emit(doc, a)
    if a.keep:
        log(f"kept {work} (instance logs in logs/)")
    else:
        shutil.rmtree(work, ignore_errors=True)
    return status or rc or 0

# ---------------------------------------------------------------------------
# Output


def fmt(v, spec="", none="n/a") -> str:
    return none if v is None else format(v, spec)


def table(doc: dict) -> str:
    rows = [("mode", "PSS GiB", "node GiB", "saved PSS MiB", "saved node MiB", "merged MiB", "ideal MiB",
             "of ideal", "t90 s", "ksmd CPU-s", "advice CPU-s", "CPU-s/GiB", "start p50/p95 s", "early p50/p99 ms",
             "merged p50/p99 ms")]
    for m, r in doc["results"].items():
        rows.append((m, f"{r['pss_bytes'] / GIB:.2f}", f"{r['node_used_delta_bytes'] / GIB:.2f}",
                     fmt(r.get("saved_pss_bytes") and r["saved_pss_bytes"] / MIB, ".0f", "0" if m == "off" else "n/a"),
                     fmt(r.get("saved_node_bytes") and r["saved_node_bytes"] / MIB, ".0f", "0" if m == "off" else "n/a"),
                     f"{r['saved_frames_bytes'] / MIB:.0f}",
                     fmt(r["ideal_saved_bytes"] and r["ideal_saved_bytes"] / MIB, ".0f"),
                     fmt(r["of_ideal"] and r["of_ideal"] * 100, ".0f") + ("%" if r["of_ideal"] is not None else ""),
                     fmt(r["t90_s"], ".1f", "-"), f"{r['ksmd_cpu_s']:.1f}", fmt(r.get("advise_cpu_s"), ".1f"),
                     fmt(r.get("merge_cpu_s_per_gib", r["ksmd_cpu_s_per_gib"]), ".1f", "-"),
                     f"{r['start_p50_s']:.1f}/{r['start_p95_s']:.1f}",
                     f"{r['lat_early_p50_ms']:.0f}/{r['lat_early_p99_ms']:.0f}",
                     f"{r['lat_merged_p50_ms']:.0f}/{r['lat_merged_p99_ms']:.0f}"))
    w = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.rjust(w[i]) if i else c.ljust(w[i]) for i, c in enumerate(r)) for r in rows]
    lines.insert(1, "  ".join("-" * x for x in w))
    head = (f"upm bench: {doc['n']} x {doc['function']} on {doc['host']['cpus']} CPUs, "
            f"kernel {doc['host']['kernel']}, {doc['host']['date']}")
    g = doc.get("guest")
    if g:
        head += (f"\n(QEMU {g['accel']} guest, {g['cpus']} vCPUs, {g['memory']} RAM, the host's / over 9p; "
                 f"instances are processes in cgroups, not containers)")
    return "\n".join([head, *lines, *("warning: " + x for x in doc["warnings"])])


def plot(doc: dict, out: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(10, 8), sharex=True)
    for m, r in doc["results"].items():
        s = r["series"]
        t = [x["t"] for x in s]
        line, = ax1.plot(t, [x["pss"] / GIB for x in s], label=m)
        ax2.plot(t, [x["merging"] * PAGE / GIB for x in s], label=m, color=line.get_color())
        ax1.axvline(r["t_last_ready_s"], color=line.get_color(), linestyle=":", linewidth=0.8)
    ax1.set_ylabel("sum of PSS of the containers (GiB)")
    ax2.set_ylabel("containers' ksm_merging_pages (GiB)")
    ax2.set_xlabel("seconds since the first container was started (dotted: last one ready)")
    ax1.set_title(f"upm bench: {doc['n']} x {doc['function']}, {doc['host']['cpus']} CPUs, "
                  f"kernel {doc['host']['kernel']}"
                  + (f" (QEMU {doc['guest']['accel']} guest; instances are processes)" if doc.get("guest") else ""))
    ax1.legend()
    ax1.grid(alpha=0.3)
    ax2.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=100)


# ---------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="upm bench", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="Method and results: docs/bench.md.")
    ap.add_argument("--quick", action="store_true",
                    help="a small configuration: imagerec, -n 4, --modes off,upm, shorter windows "
                         "(explicit options still win)")
    ap.add_argument("--function", "-f", choices=FUNCTIONS, help="the function (default imagerec; with upm-kernel thumb)")
    ap.add_argument("-n", type=int, help="containers per mode (default 16; --quick 4; with upm-kernel 4)")
    ap.add_argument("--modes", help=f"comma-separated, from {','.join(ALL_MODES)} (default all but upm-kernel; --quick off,upm; "
                    "with upm-kernel every mode runs in the QEMU guest)")
    ap.add_argument("--batch", type=int, default=2, help="containers started together (default 2)")
    ap.add_argument("--stagger", type=float, default=4.0, help="seconds between batches (default 4)")
    ap.add_argument("--ready-timeout", type=float, help="seconds from `run` until the first invocation is "
                    "answered (default 900; --quick 400)")
    ap.add_argument("--min-measure", type=float, help="seconds served after the last container was ready, at "
                    "least (default 90; --quick 30)")
    ap.add_argument("--max-measure", type=float, help="seconds served at most (default 600; --quick 120)")
    ap.add_argument("--settle", type=float, help="settled: merged pages grew <1%% over this many seconds "
                    "(default 30; --quick 15)")
    ap.add_argument("--interval", type=float, default=0.5, help="sampling interval of pages_sharing (default 0.5)")
    ap.add_argument("--pss-interval", type=float, default=2.0,
                    help="seconds between PSS readings (smaps_rollup walks every page; default 2)")
    ap.add_argument("--invocations", type=int, default=3, help="invocations per container in each latency "
                    "round (default 3)")
    ap.add_argument("--load-interval", type=float, default=1.0,
                    help="seconds between invocations while serving, round robin (default 1)")
    ap.add_argument("--image-size", type=int, default=96, help="imagerec: image side in pixels (default 96)")
    ap.add_argument("--cache", default="/var/cache/upm/bench", help="host directory of the model and data files "
                    "(default /var/cache/upm/bench), bind-mounted read-only")
    ap.add_argument("--bin-dir", help="where upm, upm-runtime, upm-hook and upmd are (default: the build tree "
                    "or the installation this script belongs to)")
    ap.add_argument("--workdir", default="/tmp", help="parent of the bench's bundles and sockets (default /tmp)")
    ap.add_argument("--lock-timeout", type=float, default=1800, help="seconds to wait for the KSM lock")
    ap.add_argument("--ksm-run", choices=("host", "0", "1"), default="host",
                    help="ksmd's `run` before each mode: as the host has it (default), or 1 = a node whose admin "
                         "runs ksmd at the host's pages_to_scan/sleep_millisecs (upmd's tuner then idles there "
                         "instead of stopping ksmd), 0 = KSM off")
    ap.add_argument("--no-ideal-fallback", dest="ideal_fallback", action="store_false",
                    help="without `upm ideal`, report the fraction of the ideal as n/a instead of hashing the "
                         "pages in python")
    ap.add_argument("--json", metavar="OUT", help="write every result (with the time series) as JSON")
    ap.add_argument("--plot", metavar="OUT.png", help="plot memory over time per mode (matplotlib)")
    ap.add_argument("--keep", action="store_true", help="keep the work directory (bundles, logs)")
    g = ap.add_argument_group("upm-kernel (the QEMU guest; docs/bench.md)")
    g.add_argument("--kernel", metavar="BZIMAGE", help="the guest kernel (default: test/kernel/build.sh's, built "
                   "or reused)")
    g.add_argument("--guest-mem", default="3G", help="guest RAM (default 3G)")
    g.add_argument("--guest-cpus", type=int, default=2, help="guest vCPUs (default 2)")
    g.add_argument("--guest-timeout", type=float, help="seconds before QEMU is stopped (default from the modes' "
                   "windows)")
    ap.add_argument("--guest-inner", metavar="DIR", help=argparse.SUPPRESS)
    return ap


def guest_defaults(ap: argparse.ArgumentParser, a: argparse.Namespace) -> None:
    """upm-kernel: every mode in the QEMU guest; TCG is slow: a light
    function, few instances, shorter windows."""
    not_guest = [m for m in a.modes if m not in GUEST_MODES]
    if not_guest:
        ap.error(f"with upm-kernel every mode runs in the QEMU guest, which has no containers: "
                 f"{', '.join(not_guest)} cannot run there (run them on the host separately); "
                 f"choose from {', '.join(GUEST_MODES)}")
    if a.function == "node":
        ap.error("upm-kernel: the guest runs the python functions only (node's merge_exec.py needs "
                 "PR_SET_MEMORY_MERGE, which the 6.1 guest kernel lacks)")
    a.function = a.function or "thumb"
    a.n = a.n or 4
    a.ready_timeout = a.ready_timeout or 600
    a.min_measure = a.min_measure if a.min_measure is not None else 30
    a.max_measure = a.max_measure or 300
    a.settle = a.settle or 15


def parse_args(argv=None):
    ap = build_parser()
    a = ap.parse_args(argv)
    if a.guest_inner:
        return a
    q = a.quick
    host_modes = [m for m in ALL_MODES if m != "upm-kernel"]
    a.modes = [m for m in (a.modes or ("off,upm" if q else ",".join(host_modes))).split(",") if m]
    bad = [m for m in a.modes if m not in ALL_MODES]
    if bad:
        ap.error(f"unknown mode(s) {', '.join(bad)}; choose from {', '.join(ALL_MODES)}")
    a.guest = "upm-kernel" in a.modes
    if a.guest:
        guest_defaults(ap, a)
    a.function = a.function or "imagerec"
    a.n = a.n or (4 if q else 16)
    if "off" in a.modes and a.modes[0] != "off":
        a.modes.remove("off")
        a.modes.insert(0, "off")
    a.ready_timeout = a.ready_timeout or (400 if q else 900)
    a.min_measure = a.min_measure if a.min_measure is not None else (30 if q else 90)
    a.max_measure = a.max_measure or (120 if q else 600)
    a.settle = a.settle or (15 if q else 30)
    if a.n < 1 or a.batch < 1:
        ap.error("-n and --batch must be at least 1")
    return a


def main(argv=None) -> int:
    a = parse_args(argv)
    if os.geteuid() != 0:
        print("bench: error: run as root (containers and /sys/kernel/mm/ksm)", file=sys.stderr)
        return 2
    if a.guest_inner:
        return guest_inner(Path(a.guest_inner))
    if a.guest:
        return run_in_guest(a)
    if not (KSM / "run").exists():
        print(f"bench: error: {KSM} is missing (kernel without CONFIG_KSM)", file=sys.stderr)
        return 2
    if not os.access(RUNC, os.X_OK):
        print(f"bench: error: {RUNC} is missing (packaging/install-deps.sh test)", file=sys.stderr)
        return 2

    def on_signal(signum, frame):  # noqa: ARG001
        raise Interrupted(signal.Signals(signum).name, 128 + signum)

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, on_signal)
    bench = Bench(a)
    log(f"{a.n} x {a.function}, modes {','.join(a.modes)}; work directory {bench.workdir}")
    status = 0
    doc = None
    try:
        doc = bench.run()
    except Interrupted as e:
        log(f"interrupted ({e.args[0]}); cleaning up")
        status = e.args[1]
    except Exception as e:  # noqa: BLE001 - reported, then cleaned up
        log(f"error: {e}")
        status = 1
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        bench.cleanup()
    if doc is None and bench.results:
        doc = {"function": a.function, "n": a.n, "modes": list(bench.results), "host": host_info(),
               "results": bench.results, "warnings": bench.warnings + ["incomplete run"]}
        for r in doc["results"].values():
            r.setdefault("saved_pss_bytes", None)
            r.setdefault("saved_node_bytes", None)
    if doc:
        emit(doc, a)
    return status


if __name__ == "__main__":
    sys.exit(main())
