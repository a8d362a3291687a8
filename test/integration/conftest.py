# SPDX-License-Identifier: GPL-2.0-or-later
"""Fixtures shared by the integration suites (and the pytest hooks of the run).

The suites run real processes on the host and use the kernel's own counters
as the oracle: /proc/PID/ksm_merging_pages, the per-region "KSM:" line and
the VmFlags "mg" flag of /proc/PID/smaps, the page frames of
/proc/PID/pagemap, /sys/kernel/mm/ksm/*, and the content of the processes'
memory (upm-memhog verifies every page and can be read through
/proc/PID/mem).  docs/testing.md describes them.

Host KSM: ``ksm_fast``, ``ksm_off`` and ``ksm_held`` save every writable knob of
/sys/kernel/mm/ksm, change what they need, and restore the saved values when
the test ends -- on failure too, at interpreter exit (atexit), on SIGTERM and
SIGHUP (SIGINT goes through pytest's teardown), and, if a run was killed
with SIGKILL, at the start of the next run from the state file the first run
left behind (KSM_STATE_FILE).  Separate runs take turns (flock on
KSM_LOCK_FILE, which test/demo/demo.sh takes too); upmtest/ksm.py.

Processes: every process a test starts goes through ``procs`` (a
ProcessGroup), in its own session, and is killed with its whole process group
on teardown; nothing outlives the test (upm-memhog also exits when its
parent dies).

Measurements: ``report(message)`` prints a line and repeats it in an "upm
measurements" section at the end of the run.

A missing prerequisite of the host (no KSM, read-only sysfs) is a skip with
the reason printed (pytest -rs); a missing build product is a failure.

This file holds the fixtures and pytest hooks only; the helpers they are
built on, and that the suites import, are in upmtest/ (never import one
test_*.py from another).
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from upmtest import paths
from upmtest.agent import Agent
from upmtest.ksm import KSM_FAST_SETTINGS, install_restore_handlers, ksm_session
from upmtest.paths import find_built
from upmtest.policy import load_policy
from upmtest.process import ProcessGroup

install_restore_handlers()


# ---------------------------------------------------------------------------
# Locations of the build products


@pytest.fixture(scope="session")
def source_dir() -> Path:
    return paths.source_dir()


@pytest.fixture(scope="session")
def build_dir() -> Path:
    d = paths.build_dir()
    if not d.is_dir():
        pytest.fail(f"build directory `{d}` does not exist (run `make build` or set UPM_BUILD_DIR)",
                    pytrace=False)
    return d


@pytest.fixture(scope="session")
def upm_bin(build_dir: Path) -> Path:
    return find_built("the `upm` CLI", [build_dir / "bin" / "upm", build_dir / "hooks" / "cli" / "upm"])


@pytest.fixture(scope="session")
def runtime_bin(build_dir: Path) -> Path:
    return find_built("upm-runtime", [build_dir / "bin" / "upm-runtime"])


@pytest.fixture(scope="session")
def hook_bin(build_dir: Path) -> Path:
    return find_built("upm-hook", [build_dir / "bin" / "upm-hook"])


@pytest.fixture(scope="session")
def upmd_bin(build_dir: Path) -> Path:
    return find_built("upmd", [build_dir / "bin" / "upmd"])


@pytest.fixture(scope="session")
def upm_exec(build_dir: Path) -> Path:
    return find_built("upm-exec", [build_dir / "lib" / "upm-exec"])


@pytest.fixture(scope="session")
def preload_lib(build_dir: Path) -> Path:
    return find_built("libupm-preload.so",
                      [build_dir / "lib" / "libupm-preload.so",
                       build_dir / "shim" / "preload" / "libupm-preload.so"])


@pytest.fixture(scope="session")
def memhog(build_dir: Path) -> Path:
    return find_built("upm-memhog", [build_dir / "bin" / "upm-memhog"])


@pytest.fixture(scope="session")
def ksmtune(build_dir: Path) -> Path:
    return find_built("upm-ksmtune", [build_dir / "bin" / "upm-ksmtune"])


@pytest.fixture(scope="session")
def policies_dir(source_dir: Path) -> Path:
    return source_dir / "config" / "policies"


# ---------------------------------------------------------------------------
# Containers (upmtest/containers.py)


@pytest.fixture(scope="session")
def base_spec(tmp_path_factory) -> dict:
    """`runc spec` output, for the bundles to start from."""
    runc = Path("/usr/bin/runc")
    if os.geteuid() != 0:
        pytest.skip("containers need root")
    if not runc.exists():
        pytest.skip("runc is not installed (/usr/bin/runc)")
    d = tmp_path_factory.mktemp("spec")
    subprocess.run([runc, "spec", "--bundle", d], check=True)
    return json.loads((d / "config.json").read_text())


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
# Host KSM: switched under the host lock, restored after the test
# (upmtest/ksm.py)


@pytest.fixture
def ksm_fast():
    """ksmd running with fast settings for the test; restored afterwards."""
    yield from ksm_session(KSM_FAST_SETTINGS)


@pytest.fixture
def ksm_off():
    """ksmd stopped (run=0, merged pages stay merged); restored afterwards."""
    yield from ksm_session({"run": "0"})


@pytest.fixture
def ksm_held():
    """The host's KSM under the test lock; every writable knob saved and
    restored afterwards, nothing changed (the test changes what it needs)."""
    yield from ksm_session({})


# ---------------------------------------------------------------------------
# Processes (upmtest/process.py)


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


@pytest.fixture
def agent(procs, upmd_bin, tmp_path):
    """A private upmd (its socket and state under tmp_path), stopped after
    the test; a test that stops it itself is fine."""
    a = Agent(procs, upmd_bin, tmp_path).start()
    yield a
    if a.proc.popen.poll() is None:
        assert a.stop() == 0, a.proc.stderr
