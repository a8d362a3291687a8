# SPDX-License-Identifier: GPL-2.0-or-later
"""Fixtures and helpers shared by the integration suites.

The suites run real processes on the host and use the kernel's own counters
as the oracle: /proc/PID/ksm_merging_pages, the per-region "KSM:" line and
the VmFlags "mg" flag of /proc/PID/smaps, the page frames of
/proc/PID/pagemap, /sys/kernel/mm/ksm/*, and the content of the processes'
memory (upm-memhog verifies every page and can be read through
/proc/PID/mem).  docs/testing.md describes them.

Host KSM: ``ksm_fast`` and ``ksm_off`` save every writable knob of
/sys/kernel/mm/ksm, change what they need, and restore the saved values when
the test ends -- on failure too, at interpreter exit (atexit), on SIGTERM and
SIGHUP (SIGINT goes through pytest's teardown), and, if a run was killed
with SIGKILL, at the start of the next run from the state file the first run
left behind (KSM_STATE_FILE).  Separate runs take turns (flock on
KSM_LOCK_FILE, which test/demo/demo.sh takes too).

Processes: every process a test starts goes through ``procs`` (a
ProcessGroup), in its own session, and is killed with its whole process group
on teardown; nothing outlives the test (upm-memhog also exits when its
parent dies).

Measurements: ``report(message)`` prints a line and repeats it in an "upm
measurements" section at the end of the run.

A missing prerequisite of the host (no KSM, read-only sysfs) is a skip with
the reason printed (pytest -rs); a missing build product is a failure.
"""

from __future__ import annotations

import atexit
import fcntl
import json
import os
import re
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import pytest

KSM_DIR = Path("/sys/kernel/mm/ksm")
KSM_STATE_FILE = Path(os.environ.get("UPM_TEST_KSM_STATE", "/run/upm-test-ksm-saved.json"))
# Held (flock) while a test has the host's KSM switched: test runs started
# separately (two ctest or pytest invocations) take turns instead of saving
# each other's fast settings as "original".
KSM_LOCK_FILE = KSM_STATE_FILE.with_suffix(".lock")
KSM_LOCK_TIMEOUT = 900.0
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")

# ksmd settings for tests: scan fast enough that tens of MiB merge in about a
# second, without a busy loop (sleep 0 would take a whole CPU of this host).
KSM_FAST_SETTINGS = {
    "advisor_mode": "none",      # the scan-time advisor would override pages_to_scan
    "smart_scan": "0",           # do not skip pages that did not merge on earlier scans
    "pages_to_scan": "10000",
    "sleep_millisecs": "5",
    "run": "1",
}


# ---------------------------------------------------------------------------
# Locations of the build products


def _source_dir() -> Path:
    env = os.environ.get("UPM_SOURCE_DIR")
    return Path(env).resolve() if env else Path(__file__).resolve().parents[2]


def _build_dir() -> Path:
    env = os.environ.get("UPM_BUILD_DIR")
    return Path(env).resolve() if env else _source_dir() / "build"


def _find_built(what: str, candidates: Iterable[Path]) -> Path:
    candidates = list(candidates)
    for c in candidates:
        if c.is_file() and os.access(c, os.X_OK if c.suffix != ".so" else os.R_OK):
            return c
    pytest.fail(
        f"{what} is not built: looked for "
        + ", ".join(f"`{c}`" for c in candidates)
        + f" (build with `make build`, or set UPM_BUILD_DIR; now `{_build_dir()}`)",
        pytrace=False,
    )


@pytest.fixture(scope="session")
def source_dir() -> Path:
    return _source_dir()


@pytest.fixture(scope="session")
def build_dir() -> Path:
    d = _build_dir()
    if not d.is_dir():
        pytest.fail(f"build directory `{d}` does not exist (run `make build` or set UPM_BUILD_DIR)",
                    pytrace=False)
    return d


@pytest.fixture(scope="session")
def upm_bin(build_dir: Path) -> Path:
    return _find_built("the `upm` CLI", [build_dir / "bin" / "upm", build_dir / "hooks" / "cli" / "upm"])


@pytest.fixture(scope="session")
def preload_lib(build_dir: Path) -> Path:
    return _find_built("libupm-preload.so",
                       [build_dir / "lib" / "libupm-preload.so",
                        build_dir / "shim" / "preload" / "libupm-preload.so"])


@pytest.fixture(scope="session")
def memhog(build_dir: Path) -> Path:
    return _find_built("upm-memhog", [build_dir / "bin" / "upm-memhog"])


@pytest.fixture(scope="session")
def policies_dir(source_dir: Path) -> Path:
    return source_dir / "config" / "policies"


# ---------------------------------------------------------------------------
# Measurements: printed at once and again in a summary section at the end of
# the run, so that ctest's output shows them without -s.

_MEASUREMENTS: list[str] = []


@pytest.fixture
def report(request):
    """report(message): records one measurement line of this test."""

    def _report(message: str) -> None:
        line = f"{request.node.name}: {message}"
        _MEASUREMENTS.append(line)
        print(line)

    return _report


SKIP_STATUS = 77     # ctest's SKIP_RETURN_CODE for the integration suites


def pytest_sessionfinish(session, exitstatus):
    """A suite in which every test was skipped (and none failed) exits 77,
    so that ctest shows it as skipped instead of passed; the reasons are in
    its output (-rs).  Failures, errors and "no tests collected" (5) keep
    their status."""
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is None or exitstatus != 0:
        return
    if reporter.stats.get("skipped") and not reporter.stats.get("passed"):
        session.exitstatus = SKIP_STATUS


def pytest_terminal_summary(terminalreporter):
    if _MEASUREMENTS:
        terminalreporter.section("upm measurements")
        for line in _MEASUREMENTS:
            terminalreporter.write_line(line)


# ---------------------------------------------------------------------------
# Host KSM: save, switch, restore


def _read_knob(path: Path) -> str:
    text = path.read_text().strip()
    # Choice knobs print every choice with the current one in brackets:
    # "[none] scan-time".
    m = re.search(r"\[([^\]]+)\]", text)
    return m.group(1) if m else text


def ksm_writable_knobs() -> list[str]:
    return sorted(p.name for p in KSM_DIR.iterdir()
                  if p.is_file() and p.stat().st_mode & 0o200)


def ksm_counters() -> dict[str, int]:
    """Every numeric file of /sys/kernel/mm/ksm (counters and knobs)."""
    out = {}
    for p in KSM_DIR.iterdir():
        try:
            out[p.name] = int(p.read_text().strip())
        except (ValueError, OSError):
            pass
    return out


def _write_knob(name: str, value: str) -> None:
    (KSM_DIR / name).write_text(value + "\n")


def _restore_knobs(saved: dict[str, str]) -> list[str]:
    """Writes back every saved knob that differs; `run` last.  Returns errors."""
    errors = []
    order = [k for k in saved if k != "run"] + (["run"] if "run" in saved else [])
    for name in order:
        try:
            if _read_knob(KSM_DIR / name) != saved[name]:
                _write_knob(name, saved[name])
        except OSError as e:
            errors.append(f"restoring {KSM_DIR / name} to `{saved[name]}`: {e.strerror}")
    return errors


class KsmControl:
    """Saves the host's KSM knobs once, switches them, restores them.

    One instance per session (``_ksm_control``); the fixtures call
    ``apply()`` and ``restore()`` around each test.  The saved values are also
    kept in KSM_STATE_FILE until restored, so that a run killed with SIGKILL
    is repaired by the next one.
    """

    def __init__(self) -> None:
        self.saved: dict[str, str] | None = None
        # Reentrant: the SIGTERM/SIGHUP handler calls restore() on the main
        # thread, possibly while apply() waits there for the host lock (a
        # plain Lock deadlocked the run: `timeout` could not stop it).
        self._lock = threading.RLock()
        self._lock_fd: int | None = None

    def _take_host_lock(self) -> None:
        fd = os.open(KSM_LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        deadline = time.monotonic() + KSM_LOCK_TIMEOUT
        announced = False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    os.close(fd)
                    pytest.fail(f"another test run held {KSM_LOCK_FILE} for {KSM_LOCK_TIMEOUT:g} s",
                                pytrace=False)
                if not announced:
                    print(f"conftest: waiting for another test run to release {KSM_LOCK_FILE}")
                    announced = True
                time.sleep(0.2)
        self._lock_fd = fd

    def _release_host_lock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)     # releases the flock
            self._lock_fd = None

    @staticmethod
    def unavailable_reason() -> str | None:
        if not KSM_DIR.is_dir():
            return f"{KSM_DIR} does not exist (kernel without CONFIG_KSM)"
        if not (KSM_DIR / "run").exists():
            return f"{KSM_DIR}/run does not exist"
        if not os.access(KSM_DIR / "run", os.W_OK):
            return f"{KSM_DIR}/run is not writable (run as root, with sysfs mounted read-write)"
        return None

    def repair_stale_state(self) -> None:
        try:
            stale = json.loads(KSM_STATE_FILE.read_text())
        except (OSError, ValueError):
            return
        # We hold the lock, so whoever wrote the file is gone (or lost it).
        owner = stale.get("pid", 0)
        errors = _restore_knobs(stale.get("knobs", {}))
        print(f"conftest: restored KSM settings left by an interrupted run (pid {owner})"
              + (f"; errors: {errors}" if errors else ""))
        KSM_STATE_FILE.unlink(missing_ok=True)

    def apply(self, settings: dict[str, str]) -> None:
        with self._lock:
            if self.saved is None:
                self._take_host_lock()
                self.repair_stale_state()
                self.saved = {k: _read_knob(KSM_DIR / k) for k in ksm_writable_knobs()}
                try:
                    KSM_STATE_FILE.write_text(json.dumps({"pid": os.getpid(), "knobs": self.saved}))
                except OSError:
                    pass  # best effort; atexit and the fixtures still restore
            for name, value in settings.items():
                if (KSM_DIR / name).exists():
                    _write_knob(name, value)

    def restore(self) -> list[str]:
        with self._lock:
            if self.saved is None:
                return []
            errors = _restore_knobs(self.saved)
            self.saved = None
            KSM_STATE_FILE.unlink(missing_ok=True)
            self._release_host_lock()
            return errors


_KSM = KsmControl()
atexit.register(_KSM.restore)


def _restore_on_signal(signum, frame):  # noqa: ARG001
    _KSM.restore()
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)


for _sig in (signal.SIGTERM, signal.SIGHUP):
    signal.signal(_sig, _restore_on_signal)
# SIGINT stays with pytest (KeyboardInterrupt runs the fixture teardowns and
# then atexit).


def _ksm_fixture(settings: dict[str, str]):
    reason = KsmControl.unavailable_reason()
    if reason:
        print(f"skip: host KSM unavailable: {reason}")
        pytest.skip(f"host KSM unavailable: {reason}")
    try:
        _KSM.apply(settings)
        yield ksm_counters
    finally:
        errors = _KSM.restore()
        if errors:
            pytest.fail("could not restore the host's KSM settings: " + "; ".join(errors), pytrace=False)


@pytest.fixture
def ksm_fast():
    """ksmd running with fast settings for the test; restored afterwards."""
    yield from _ksm_fixture(KSM_FAST_SETTINGS)


@pytest.fixture
def ksm_off():
    """ksmd stopped (run=0, merged pages stay merged); restored afterwards."""
    yield from _ksm_fixture({"run": "0"})


# ---------------------------------------------------------------------------
# /proc readers


def ksm_merging_pages(pid: int) -> int:
    return int(Path(f"/proc/{pid}/ksm_merging_pages").read_text().strip())


def ksm_stat(pid: int) -> dict[str, int]:
    out = {}
    try:
        for line in Path(f"/proc/{pid}/ksm_stat").read_text().splitlines():
            k, _, v = line.partition(" ")
            out[k] = int(v)
    except (OSError, ValueError):
        pass
    return out


@dataclass
class SmapsRegion:
    start: int
    end: int
    perms: str
    offset: int
    inode: int
    path: str
    fields: dict[str, int] = field(default_factory=dict)   # kB values: Rss, Pss, KSM, ...
    vmflags: frozenset[str] = frozenset()

    @property
    def size(self) -> int:
        return self.end - self.start

    def contains(self, addr: int) -> bool:
        return self.start <= addr < self.end

    @property
    def mergeable(self) -> bool:
        return "mg" in self.vmflags

    def __str__(self) -> str:
        return (f"{self.start:x}-{self.end:x} {self.perms} {self.path or '[anon]'} "
                f"VmFlags: {' '.join(sorted(self.vmflags))}")


_SMAPS_HEADER = re.compile(
    r"^([0-9a-f]+)-([0-9a-f]+)\s+(\S{4})\s+([0-9a-f]+)\s+\S+\s+(\d+)\s*(.*)$")


def smaps(pid: int) -> list[SmapsRegion]:
    regions: list[SmapsRegion] = []
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        m = _SMAPS_HEADER.match(line)
        if m:
            regions.append(SmapsRegion(int(m[1], 16), int(m[2], 16), m[3], int(m[4], 16),
                                       int(m[5]), m[6]))
            continue
        if not regions:
            continue
        key, _, value = line.partition(":")
        if key == "VmFlags":
            regions[-1].vmflags = frozenset(value.split())
        else:
            parts = value.split()
            if parts and parts[0].isdigit():
                regions[-1].fields[key] = int(parts[0])
    return regions


def smaps_region(pid: int, addr: int) -> SmapsRegion:
    for r in smaps(pid):
        if r.contains(addr):
            return r
    raise AssertionError(f"no mapping of pid {pid} contains {addr:#x}")


def smaps_rollup(pid: int) -> dict[str, int]:
    out = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
        key, _, value = line.partition(":")
        parts = value.split()
        if parts and parts[0].isdigit():
            out[key] = int(parts[0])
    return out


def region_ksm_pages(pid: int, addr: int, length: int) -> int | None:
    """Pages of [addr, addr+length) that are KSM pages (smaps "KSM:" line),
    or None on kernels without that line (before 6.9)."""
    total = 0
    seen = False
    for r in smaps(pid):
        if r.end <= addr or r.start >= addr + length:
            continue
        if "KSM" not in r.fields:
            return None
        seen = True
        total += r.fields["KSM"] * 1024 // PAGE_SIZE
    return total if seen else None


def region_pfns(pid: int, addr: int, length: int) -> list[int]:
    """Page frame numbers backing [addr, addr+length) of `pid`, from
    /proc/PID/pagemap (root only; 0 for a page that is not present)."""
    pfns = []
    with open(f"/proc/{pid}/pagemap", "rb", buffering=0) as f:
        f.seek(addr // PAGE_SIZE * 8)
        data = f.read(length // PAGE_SIZE * 8)
    for i in range(0, len(data), 8):
        e = int.from_bytes(data[i:i + 8], "little")
        pfns.append(e & ((1 << 55) - 1) if e >> 63 else 0)
    return pfns


def frames_saved(hogs) -> int:
    """Pages the hogs' data regions save by sharing frames: present pages
    minus distinct frames.  Exact, and blind to other processes on the host
    (unlike pages_sharing)."""
    present = [pfn for h in hogs for pfn in region_pfns(h.pid, h.addr, h.length) if pfn]
    return len(present) - len(set(present))


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


@pytest.fixture
def procs():
    env = dict(os.environ)
    # The tests choose the policy and backend explicitly; inherited settings
    # of the developer's shell must not leak in.
    for k in ("UPM_POLICY", "UPM_BACKEND", "UPM_LOG", "UPM_PRELOAD", "LD_PRELOAD", "UPM_POLICY_PATH"):
        env.pop(k, None)
    group = ProcessGroup(env)
    try:
        yield group
    finally:
        group.cleanup()


# ---------------------------------------------------------------------------
# Policies


def strip_json_comments(text: str) -> str:
    """Removes // and /* */ comments outside strings (policy files allow them)."""
    out, i, n = [], 0, len(text)
    in_str = False
    while i < n:
        c = text[i]
        if in_str:
            out.append(c)
            if c == "\\" and i + 1 < n:
                out.append(text[i + 1])
                i += 1
            elif c == '"':
                in_str = False
        elif c == '"':
            in_str = True
            out.append(c)
        elif text.startswith("//", i):
            while i < n and text[i] != "\n":
                i += 1
            continue
        elif text.startswith("/*", i):
            end = text.find("*/", i + 2)
            i = n if end < 0 else end + 2
            continue
        else:
            out.append(c)
        i += 1
    return "".join(out)


def load_policy(path: Path) -> dict:
    return json.loads(strip_json_comments(Path(path).read_text()))


@pytest.fixture
def write_policy(tmp_path: Path, policies_dir: Path):
    """write_policy(name, **overrides) -> Path: default.json with top-level
    keys replaced, written to tmp_path/NAME.json."""

    def _write(name: str, base: str = "default", **overrides) -> Path:
        doc = load_policy(policies_dir / f"{base}.json")
        doc.update(overrides)
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps(doc, indent=2) + "\n")
        return path

    return _write


# ---------------------------------------------------------------------------
# upm-memhog's page content, reimplemented (see test/tools/memhog.c), so that
# tests can check a process's memory from outside through /proc/PID/mem.

_M64 = (1 << 64) - 1
_GOLDEN = 0x9E3779B97F4A7C15


def _mix64(z: int) -> int:
    z &= _M64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _M64
    return z ^ (z >> 31)


def memhog_page(seed: int, index: int, generation: int = 0, page_size: int = PAGE_SIZE) -> bytes:
    """The content upm-memhog --pattern distinct gives page `index`."""
    key = _mix64(seed) ^ _mix64(index * _GOLDEN + generation)
    words = [_mix64(key + (j + 1) * _GOLDEN) for j in range(page_size // 8)]
    return b"".join(w.to_bytes(8, "little") for w in words)


def read_process_memory(pid: int, addr: int, length: int) -> bytes:
    with open(f"/proc/{pid}/mem", "rb", buffering=0) as f:
        f.seek(addr)
        return f.read(length)


def write_process_memory(pid: int, addr: int, data: bytes) -> None:
    with open(f"/proc/{pid}/mem", "r+b", buffering=0) as f:
        f.seek(addr)
        f.write(data)


# ---------------------------------------------------------------------------
# upm-memhog under `upm run`: the merge scenarios' shared steps

MIB = 64                    # region of each memhog in the merge scenarios
PAGES = MIB * 1024 * 1024 // PAGE_SIZE
MERGE_TIMEOUT = 10.0        # seconds from the last ready line
FRACTION = 0.95             # of the region's pages that must merge


def upm_run(upm_bin, memhog, *memhog_args, policy=None, backend=None, mib=MIB) -> list:
    """argv of `upm run [--policy P] [--backend B] -- upm-memhog --mib MIB --hold-until-signal ARGS`."""
    argv = [upm_bin, "run"]
    if policy is not None:
        argv += ["--policy", policy]
    if backend is not None:
        argv += ["--backend", backend]
    return argv + ["--", memhog, "--mib", str(mib), "--hold-until-signal", *memhog_args]


def describe(hogs) -> str:
    """The KSM state of some memhogs and of the node, for failure messages."""
    c = ksm_counters()
    per = ", ".join(f"pid {h.pid}: region {h.region_ksm_pages()} ksm pages, "
                    f"process {h.merging_pages()}, mg={h.region().mergeable}" for h in hogs)
    return (f"{per}; pages_sharing={c.get('pages_sharing')} pages_shared={c.get('pages_shared')} "
            f"full_scans={c.get('full_scans')}")


def assert_not_merged(hog) -> None:
    """No page of the hog's data region is a KSM page.  Exact with the smaps
    KSM line; without it (kernel < 6.9) the process count may include a few
    pages of library data, so allow 1% of the region."""
    exact = region_ksm_pages(hog.pid, hog.addr, hog.length)
    if exact is not None:
        assert exact == 0, f"pid {hog.pid}: {describe([hog])}"
    else:
        assert hog.merging_pages() < 0.01 * hog.pages, f"pid {hog.pid}: {describe([hog])}"


def wait_merged(hogs, fraction=FRACTION, timeout=MERGE_TIMEOUT):
    """Waits until every hog's region has `fraction` of its pages merged;
    returns the seconds it took."""
    _, took = wait_until(lambda: all(h.region_ksm_pages() >= fraction * h.pages for h in hogs),
                         timeout, what=f"{fraction:.0%} of every region merged",
                         describe=lambda: describe(hogs))
    return took


def wait_full_scans(n: int, timeout: float = 30.0) -> None:
    """Waits until ksmd has finished `n` more full scans."""
    start = ksm_counters()["full_scans"]
    wait_until(lambda: ksm_counters()["full_scans"] >= start + n, timeout,
               what=f"{n} more full scans of ksmd")
