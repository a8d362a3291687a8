# SPDX-License-Identifier: GPL-2.0-or-later
"""Processes a test starts: each in its own session, its output collected by
threads, killed with its whole process group on cleanup (ProcessGroup, the
``procs`` fixture of conftest.py); upm-memhog's ready line (Memhog);
wait_until; the environment of a program run without upm's variables."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import threading
import time
from dataclasses import dataclass
from typing import Callable

from .procfs import PAGE_SIZE, SmapsRegion, ksm_merging_pages, region_ksm_pages, smaps_region

# ---------------------------------------------------------------------------
# Waiting


class Timeout(AssertionError):
    pass


def wait_until(predicate: Callable[[], object], timeout: float, interval: float = 0.05,
               what: str = "condition", describe: Callable[[], str] | None = None):
    """Polls `predicate` until it returns a true value; returns (value, seconds).

    Raises Timeout (an AssertionError) naming `what` and, if given, the
    state `describe()` reports at the end.
    """
    start = time.monotonic()
    while True:
        value = predicate()
        elapsed = time.monotonic() - start
        if value:
            return value, elapsed
        if elapsed >= timeout:
            state = f"; last state: {describe()}" if describe else ""
            raise Timeout(f"timed out after {timeout:g} s waiting for {what}{state}")
        time.sleep(interval)


# ---------------------------------------------------------------------------
# Processes


class Process:
    """A child process in its own session whose output is collected by threads."""

    def __init__(self, argv: list[str], env: dict[str, str] | None = None, cwd: str | None = None,
                 stdin=subprocess.DEVNULL) -> None:
        self.argv = [str(a) for a in argv]
        self.popen = subprocess.Popen(self.argv, env=env, cwd=cwd, stdin=stdin,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      start_new_session=True)
        self.pid = self.popen.pid
        self.stdout_lines: list[str] = []
        self.stderr_lines: list[str] = []
        self._cond = threading.Condition()
        self._threads = [threading.Thread(target=self._pump, args=(self.popen.stdout, self.stdout_lines),
                                          daemon=True),
                         threading.Thread(target=self._pump, args=(self.popen.stderr, self.stderr_lines),
                                          daemon=True)]
        for t in self._threads:
            t.start()

    def _pump(self, stream, sink: list[str]) -> None:
        for raw in iter(stream.readline, b""):
            with self._cond:
                sink.append(raw.decode(errors="replace").rstrip("\n"))
                self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    @property
    def stdout(self) -> str:
        return "\n".join(self.stdout_lines)

    @property
    def stderr(self) -> str:
        return "\n".join(self.stderr_lines)

    def wait_line(self, pattern: str, timeout: float, start: int = 0) -> tuple[re.Match, int]:
        """Waits for a stdout line (index >= start) matching `pattern`;
        returns the match and the line's index."""
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for i in range(start, len(self.stdout_lines)):
                    m = rx.search(self.stdout_lines[i])
                    if m:
                        return m, i
                left = deadline - time.monotonic()
                if left <= 0 or (self.popen.poll() is not None and not any(t.is_alive() for t in self._threads)):
                    raise Timeout(
                        f"no line matching {pattern!r} from `{' '.join(self.argv)}` within {timeout:g} s "
                        f"(exit status {self.popen.poll()}); stdout: {self.stdout[-2000:]!r}; "
                        f"stderr: {self.stderr[-2000:]!r}")
                self._cond.wait(min(left, 0.1))

    def wait(self, timeout: float) -> int:
        rc = self.popen.wait(timeout)
        for t in self._threads:
            t.join(5)
        return rc

    def signal(self, sig: int) -> None:
        if self.popen.poll() is None:
            os.kill(self.pid, sig)

    def kill_group(self) -> None:
        try:
            os.killpg(self.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            self.popen.wait(3)
        except subprocess.TimeoutExpired:
            pass
        try:
            os.killpg(self.pid, signal.SIGKILL)  # stragglers of the group too
        except ProcessLookupError:
            pass
        try:
            self.popen.wait(5)
        except subprocess.TimeoutExpired:
            pass


@dataclass
class Memhog:
    """A running upm-memhog and what its ready line said."""
    proc: Process
    pid: int          # the memhog's own pid (differs from proc.pid if a wrapper forks)
    addr: int
    length: int
    seed: int

    @property
    def pages(self) -> int:
        return self.length // PAGE_SIZE

    def merging_pages(self) -> int:
        return ksm_merging_pages(self.pid)

    def region_ksm_pages(self) -> int:
        """KSM pages of the data region; falls back to the process's count
        on kernels without the smaps KSM line."""
        n = region_ksm_pages(self.pid, self.addr, self.length)
        return self.merging_pages() if n is None else n

    def region(self) -> SmapsRegion:
        return smaps_region(self.pid, self.addr)

    def checksum(self, timeout: float = 30) -> tuple[str, int]:
        """Asks for a checksum (SIGUSR1); returns (hex, bad pages)."""
        start = len(self.proc.stdout_lines)
        os.kill(self.pid, signal.SIGUSR1)
        m, _ = self.proc.wait_line(r"^checksum ([0-9a-f]{16}) pages=\d+ bad=(\d+)", timeout, start)
        return m[1], int(m[2])

    def stop(self, timeout: float = 30) -> int:
        """SIGTERM to the memhog; returns the exit status of the process we started."""
        try:
            os.kill(self.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        return self.proc.wait(timeout)


READY_RX = r"^ready (0x[0-9a-f]+) (\d+) pid=(\d+) pages=\d+ pagesize=\d+ seed=(\d+)"


class ProcessGroup:
    """Starts processes for one test and kills them all on teardown."""

    def __init__(self, env: dict[str, str]) -> None:
        self.env = env
        self.procs: list[Process] = []

    def start(self, argv: list, env: dict[str, str] | None = None, **kw) -> Process:
        full_env = dict(self.env)
        if env:
            full_env.update(env)
        p = Process(argv, env=full_env, **kw)
        self.procs.append(p)
        return p

    def memhog(self, argv: list, timeout: float = 30, env: dict[str, str] | None = None) -> Memhog:
        """Starts `argv` (a memhog, possibly behind `upm run --`) and waits for its ready line."""
        p = self.start(argv, env=env)
        m, _ = p.wait_line(READY_RX, timeout)
        return Memhog(p, pid=int(m[3]), addr=int(m[1], 16), length=int(m[2]), seed=int(m[4]))

    def run(self, argv: list, timeout: float = 60, env: dict[str, str] | None = None,
            input: str | None = None) -> subprocess.CompletedProcess:
        """Runs a short command to completion (killed with its group on timeout)."""
        full_env = dict(self.env)
        if env:
            full_env.update(env)
        argv = [str(a) for a in argv]
        p = subprocess.Popen(argv, env=full_env, stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             start_new_session=True)
        try:
            out, err = p.communicate(input, timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            out, err = p.communicate()
            raise Timeout(f"`{' '.join(argv)}` did not finish within {timeout:g} s; "
                          f"stdout: {out[-2000:]!r}; stderr: {err[-2000:]!r}")
        return subprocess.CompletedProcess(argv, p.returncode, out, err)

    def cleanup(self) -> None:
        for p in self.procs:
            p.kill_group()


def clean_env(**extra) -> dict[str, str]:
    """os.environ without UPM_*, LD_PRELOAD and PYTHONPATH, plus `extra`."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("UPM_") and k not in ("LD_PRELOAD", "PYTHONPATH")}
    env.update({k: str(v) for k, v in extra.items()})
    return env


def run(argv, env, timeout=60, **kw) -> subprocess.CompletedProcess:
    """subprocess.run with text output captured."""
    return subprocess.run([str(a) for a in argv], env=env, capture_output=True, text=True,
                          timeout=timeout, **kw)
