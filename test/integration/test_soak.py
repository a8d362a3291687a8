# SPDX-License-Identifier: GPL-2.0-or-later
"""Soak: many container lifecycles through the product's path leak nothing.

Create, start and delete cycles of annotated (`upm.enabled=true`) and plain
runc containers (each holding 8 MiB of data identical across containers) through upm-runtime, with the real upm-hook registering
them with a private upmd that tunes the host's ksmd, several at a time.
About a quarter of the containers have their process killed (SIGKILL from
the host) before the delete, and in the middle of the run upmd itself is
killed with SIGKILL and restarted on the same state files.

Asserted at the end: every container started (and every annotated one had
the preload mapped), upmd's registry is empty, its open file descriptors
are back to their count at the start and its RSS within a small margin,
no mount of the run is left in the host's mount table, the bundles hold
exactly the files they held before, `/run/upm` of the host is unchanged,
and the host's KSM settings are the originals.

`make check` runs a short version (UPM_SOAK_CYCLES, default 200); `make
soak` runs 1000 cycles and prints the figures.  Uses /sys/kernel/mm/ksm
(ksm_off holds the host-KSM lock and restores the host's settings).
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import threading
import time
from pathlib import Path

from upmtest.agent import Agent
from upmtest.containers import Node
from upmtest.process import wait_until
from upmtest.procfs import knobs, rss_kib

CYCLES = int(os.environ.get("UPM_SOAK_CYCLES", "200"))
PARALLEL = int(os.environ.get("UPM_SOAK_PARALLEL", "8"))
KILL_FRACTION = 0.25
RSS_MARGIN_KIB = 4096           # allocator slack upmd may keep after the run


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def tree(path: Path) -> set[str]:
    """Every path under `path` (relative), as the bundle's files."""
    out = set()
    for root, dirs, files in os.walk(path):
        for name in dirs + files:
            out.add(os.path.relpath(os.path.join(root, name), path))
    return out


def mounts_under(prefix: str) -> list[str]:
    out = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split()
        if len(fields) > 4 and (fields[4].startswith(prefix) or fields[3].startswith(prefix)):
            out.append(line)
    return out


class Soak:
    """The cycles, their outcomes and their failures, shared by the workers."""

    def __init__(self, n: Node, agent: Agent, seed: int) -> None:
        self.n = n
        self.agent = agent
        self.rng = random.Random(seed)
        self.lock = threading.Lock()
        self.next = 0
        self.done = 0
        self.failures: list[str] = []
        self.killed = 0
        self.annotated = 0
        self.restart_at = CYCLES // 2
        self.restarted = threading.Event()
        self.before_kill: tuple[int, int] = (0, 0)   # first upmd's fds and RSS when killed
        self.at_restart: tuple[int, int] = (0, 0)    # the second's after its start
        self.first_log = ""                            # the first upmd's log
        self.bundle_files: dict[Path, set[str]] = {}

    def take(self) -> tuple[int, bool, bool] | None:
        with self.lock:
            if self.next >= CYCLES or len(self.failures) >= 5:
                return None
            i = self.next
            self.next += 1
            return i, self.rng.random() < 0.5, self.rng.random() < KILL_FRACTION

    def fail(self, what: str) -> None:
        with self.lock:
            self.failures.append(what)

    def runtime(self, *args, timeout: float = 60):
        return self.n.procs.run(self.n.argv(*args), env=self.n.env(), timeout=timeout)

    def create(self, bundle: Path, cid: str) -> subprocess.CompletedProcess:
        """`create` without pipes: the container's process inherits the stdio
        of `runc create`, and a pipe would stay open until it exits."""
        err = self.n.tmp / f"{cid}.stderr"
        with open(err, "w+") as f:
            p = subprocess.run([str(a) for a in self.n.argv("create", "--bundle", bundle, cid)],
                               env={**os.environ, **self.n.env()}, stdin=subprocess.DEVNULL,
                               stdout=subprocess.DEVNULL, stderr=f, timeout=60)
            f.seek(0)
            return subprocess.CompletedProcess(p.args, p.returncode, "", f.read())

    def cycle(self, i: int, annotated: bool, kill: bool) -> None:
        n = self.n
        # upm-memhog: 8 MiB of data identical across containers, so that the
        # tuner sees growth and bursts while containers come and go.
        bundle = n.bundle(["/opt/upm-memhog", "--mib", "8", "--seed", "5", "--hold-until-signal", "--orphan-ok"],
                          {"upm.enabled": "true"} if annotated else {})
        self.bundle_files[bundle] = tree(bundle)
        cid = f"upm-soak-{os.getpid()}-{i}"
        r = self.create(bundle, cid)
        if r.returncode != 0:
            self.fail(f"cycle {i}: create failed ({r.returncode}): {r.stderr[-500:]}")
            self.runtime("delete", "-f", cid)
            return
        try:
            r = self.runtime("start", cid)
            if r.returncode != 0:
                self.fail(f"cycle {i}: start failed ({r.returncode}): {r.stderr[-500:]}")
                return
            st = self.runtime("state", cid)
            state = json.loads(st.stdout) if st.returncode == 0 else {}
            if state.get("status") != "running":
                self.fail(f"cycle {i}: not running after start: {st.stdout[-300:]} {st.stderr[-300:]}")
                return
            pid = state["pid"]
            if annotated:
                # The preload is in the process once its exec is done.
                def mapped() -> bool:
                    try:
                        return "libupm-preload.so" in Path(f"/proc/{pid}/maps").read_text()
                    except OSError:
                        return False
                deadline = time.monotonic() + 10
                while not mapped() and time.monotonic() < deadline:
                    time.sleep(0.05)
                if not mapped():
                    self.fail(f"cycle {i}: annotated container {cid} runs without the preload")
            if kill:
                os.kill(pid, signal.SIGKILL)
                with self.lock:
                    self.killed += 1
        finally:
            r = self.runtime("delete", "-f", cid)
            if r.returncode != 0:
                self.fail(f"cycle {i}: delete failed ({r.returncode}): {r.stderr[-500:]}")
            with self.lock:
                self.done += 1
                self.annotated += annotated

    def worker(self) -> None:
        while True:
            job = self.take()
            if job is None:
                return
            i, annotated, kill = job
            if i == self.restart_at and not self.restarted.is_set():
                self.restart_agent()
            try:
                self.cycle(i, annotated, kill)
            except Exception as e:  # noqa: BLE001  (reported with the others)
                self.fail(f"cycle {i}: {type(e).__name__}: {e}")

    def restart_agent(self) -> None:
        """upmd killed with SIGKILL in the middle of the run, and started again
        on the same socket, registry and tuner state files."""
        self.restarted.set()
        pid = self.agent.proc.popen.pid
        self.before_kill = (fd_count(pid), rss_kib(pid))
        self.agent.proc.signal(signal.SIGKILL)
        self.agent.proc.wait(30)
        self.first_log = self.agent.proc.stderr
        self.agent.start()
        pid = self.agent.proc.popen.pid
        self.at_restart = (fd_count(pid), rss_kib(pid))


def test_soak_container_lifecycles_leak_nothing(ksm_off, procs, upmd_bin, hook_bin,
                                                runtime_bin, preload_lib, policies_dir, memhog,
                                                base_spec, tmp_path, report):
    ksm_before = knobs()
    run_upm = Path("/run/upm")
    run_upm_before = tree(run_upm) if run_upm.is_dir() else set()
    a = Agent(procs, upmd_bin, tmp_path, "--tune", "--poll-interval", "1",
              "--tuner-state-file", str(tmp_path / "ksm-original.json"), metrics=False)
    a.start()
    (tmp_path / "node").mkdir()
    n = Node("runc", tmp_path / "node", runtime_bin, preload_lib, policies_dir, memhog, base_spec, procs)
    n.use_hook(hook_bin, a.socket, log_level="info")
    soak = Soak(n, a, seed=int(os.environ.get("UPM_SOAK_SEED", "20261203")))
    try:
        fds0, rss0 = fd_count(a.proc.popen.pid), rss_kib(a.proc.popen.pid)
        t0 = time.monotonic()
        workers = [threading.Thread(target=soak.worker, daemon=True) for _ in range(PARALLEL)]
        for w in workers:
            w.start()
        last = time.monotonic()
        while any(w.is_alive() for w in workers):
            for w in workers:
                w.join(timeout=1)
            if time.monotonic() - last >= 30:
                last = time.monotonic()
                print(f"soak: {soak.done}/{CYCLES} cycles, {time.monotonic() - t0:.0f} s", flush=True)
        elapsed = time.monotonic() - t0
        assert not soak.failures, "\n".join(soak.failures)
        assert soak.done == CYCLES and soak.restarted.is_set()

        # The hook registered the annotated containers (all but those whose
        # poststart ran while upmd was down, or that were killed first).
        log = soak.first_log + a.proc.stderr
        registered = log.count(": registered, pid ")
        assert registered >= soak.annotated * 0.8, \
            f"{registered} registrations for {soak.annotated} annotated containers; upmd log tail: {log[-2000:]}"
        # upmd's registry ends empty: exits are noticed, poststop unregisters.
        pid = a.proc.popen.pid
        wait_until(lambda: a.call({"op": "list"})["containers"] == [], 30,
                   what="upmd's registry to be empty after the last delete",
                   describe=lambda: json.dumps(a.call({"op": "list"})["containers"])[:2000])
        # The restarted upmd's fds back to their count at its start, its RSS
        # within a margin (after a poll pass).  (The first one is reported:
        # it was killed with containers in flight.)
        time.sleep(2)
        fds1, rss1 = fd_count(pid), rss_kib(pid)
        fds_r, rss_r = soak.at_restart
        assert fds1 <= fds_r, f"upmd holds {fds1} fds after the soak, {fds_r} after its restart: " \
                              f"{sorted(os.readlink(f'/proc/{pid}/fd/{fd}') for fd in os.listdir(f'/proc/{pid}/fd'))}"
        assert rss1 <= rss_r + RSS_MARGIN_KIB, f"upmd's RSS grew from {rss_r} to {rss1} KiB"
        # Nothing left behind: mounts, files in bundles, /run/upm.
        left = mounts_under(str(tmp_path))
        assert not left, "mounts left behind:\n" + "\n".join(left[:20])
        for bundle, files in soak.bundle_files.items():
            now = tree(bundle)
            assert now == files, f"{bundle}: files added {sorted(now - files)[:10]}, removed {sorted(files - now)[:10]}"
        assert (tree(run_upm) if run_upm.is_dir() else set()) == run_upm_before, \
            f"/run/upm changed: {sorted((tree(run_upm) if run_upm.is_dir() else set()) ^ run_upm_before)[:20]}"
        # The host's KSM settings are the originals once upmd stops.
        bursts = a.call({"op": "status"})["tuner"].get("bursts", 0)
        assert a.stop() == 0, a.proc.stderr[-2000:]
        assert knobs() == ksm_before, f"{knobs()} != {ksm_before}; upmd log tail: {a.proc.stderr[-2000:]}"
        report(f"soak: {CYCLES} create/start/delete cycles ({soak.annotated} annotated, {soak.killed} killed "
               f"with SIGKILL, upmd killed and restarted once), {PARALLEL} at a time, in {elapsed:.0f} s "
               f"({CYCLES / elapsed:.1f} cycles/s); first upmd: fds {fds0} -> {soak.before_kill[0]}, RSS {rss0} -> "
               f"{soak.before_kill[1]} KiB when killed; restarted upmd: fds {fds_r} -> {fds1}, RSS {rss_r} -> {rss1} KiB; "
               f"{registered} registrations, {bursts} ksmd bursts of the restarted upmd; registry empty, no mounts or files left, host KSM settings restored")
    finally:
        procs.cleanup()
        n.cleanup()
