# SPDX-License-Identifier: GPL-2.0-or-later
"""Switching the host's KSM for a test, and putting it back.

``KSM`` (one KsmControl per process) saves every writable knob of
/sys/kernel/mm/ksm, changes what a test needs, and restores the saved
values -- on failure too, at interpreter exit and on SIGTERM and SIGHUP once
install_restore_handlers() ran (conftest.py and test/demo/layout_bench.py
call it), and, if a run was killed with SIGKILL, at the start of the next
run from the state file the first run left behind (KSM_STATE_FILE).
Separate runs take turns (flock on KSM_LOCK_FILE, which test/demo/demo.sh
and `upm bench` take too).
"""

from __future__ import annotations

import atexit
import fcntl
import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest

from .procfs import KSM_DIR, ksm_counters, ksm_writable_knobs, read_knob

KSM_STATE_FILE = Path(os.environ.get("UPM_TEST_KSM_STATE", "/run/upm-test-ksm-saved.json"))
# Held (flock) while a test has the host's KSM switched: test runs started
# separately (two ctest or pytest invocations) take turns instead of saving
# each other's fast settings as "original".
KSM_LOCK_FILE = KSM_STATE_FILE.with_suffix(".lock")
KSM_LOCK_TIMEOUT = 900.0

# ksmd settings for tests: scan fast enough that tens of MiB merge in about a
# second, without a busy loop (sleep 0 would take a whole CPU of this host).
KSM_FAST_SETTINGS = {
    "advisor_mode": "none",      # the scan-time advisor would override pages_to_scan
    "smart_scan": "0",           # do not skip pages that did not merge on earlier scans
    "pages_to_scan": "10000",
    "sleep_millisecs": "5",
    "run": "1",
}


def write_knob(name: str, value: str) -> None:
    (KSM_DIR / name).write_text(value + "\n")


def set_knobs(values: dict[str, str]) -> None:
    """Writes the knobs of `values` this kernel has (the others are ignored)."""
    for name, value in values.items():
        if (KSM_DIR / name).exists():
            write_knob(name, value)


def restore_knobs(saved: dict[str, str]) -> list[str]:
    """Writes back every saved knob that differs; `run` last.  Returns errors."""
    errors = []
    order = [k for k in saved if k != "run"] + (["run"] if "run" in saved else [])
    for name in order:
        try:
            if read_knob(KSM_DIR / name) != saved[name]:
                write_knob(name, saved[name])
        except OSError as e:
            errors.append(f"restoring {KSM_DIR / name} to `{saved[name]}`: {e.strerror}")
    return errors


class KsmControl:
    """Saves the host's KSM knobs once, switches them, restores them.

    One instance per process (``KSM``); the fixtures call ``apply()`` and
    ``restore()`` around each test.  The saved values are also kept in
    KSM_STATE_FILE until restored, so that a run killed with SIGKILL is
    repaired by the next one.
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
        errors = restore_knobs(stale.get("knobs", {}))
        print(f"conftest: restored KSM settings left by an interrupted run (pid {owner})"
              + (f"; errors: {errors}" if errors else ""))
        KSM_STATE_FILE.unlink(missing_ok=True)

    def apply(self, settings: dict[str, str]) -> None:
        with self._lock:
            if self.saved is None:
                self._take_host_lock()
                self.repair_stale_state()
                self.saved = {k: read_knob(KSM_DIR / k) for k in ksm_writable_knobs()}
                try:
                    KSM_STATE_FILE.write_text(json.dumps({"pid": os.getpid(), "knobs": self.saved}))
                except OSError:
                    pass  # best effort; atexit and the fixtures still restore
            set_knobs(settings)

    def restore(self) -> list[str]:
        with self._lock:
            if self.saved is None:
                return []
            errors = restore_knobs(self.saved)
            self.saved = None
            KSM_STATE_FILE.unlink(missing_ok=True)
            self._release_host_lock()
            return errors


KSM = KsmControl()
_handlers_installed = False


def _restore_on_signal(signum, frame):  # noqa: ARG001
    KSM.restore()
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)


def install_restore_handlers() -> None:
    """KSM.restore() at interpreter exit and on SIGTERM and SIGHUP (then the
    signal's default action).  SIGINT stays with the caller (pytest's
    KeyboardInterrupt runs the fixture teardowns and then atexit)."""
    global _handlers_installed
    if _handlers_installed:
        return
    _handlers_installed = True
    atexit.register(KSM.restore)
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _restore_on_signal)


def ksm_session(settings: dict[str, str]):
    """Generator body of a fixture: the host's KSM switched to `settings`
    under the host lock for the test (yields ksm_counters), restored after;
    a skip that says why when the host has no writable KSM."""
    reason = KsmControl.unavailable_reason()
    if reason:
        print(f"skip: host KSM unavailable: {reason}")
        pytest.skip(f"host KSM unavailable: {reason}")
    try:
        KSM.apply(settings)
        yield ksm_counters
    finally:
        errors = KSM.restore()
        if errors:
            pytest.fail("could not restore the host's KSM settings: " + "; ".join(errors), pytrace=False)
