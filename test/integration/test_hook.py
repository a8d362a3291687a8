# SPDX-License-Identifier: GPL-2.0-or-later
"""upm-hook, the OCI hook upm-runtime adds as poststart/poststop.

Called directly: the container state on stdin (valid, malformed, oversized,
empty), a node configuration in tmp_path ($UPM_CONFIG) whose log_file is the
oracle.  The hook must exit 0 for poststart and poststop whatever it reads
(runc kills the container when a poststart hook fails) and say what was
wrong in the log.

End to end: a runc container started through upm-runtime
(upmtest/containers.py's Node) whose node configuration names the built
upm-hook.  The hooks the runtime runs get no environment from upm-runtime,
so the hook path is a two-line script that sets $UPM_CONFIG and execs
build/bin/upm-hook (Node.use_hook); without it the hook would read
/etc/upm/config.json and log to the node's real log.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from upmtest.containers import Node

STATE = {"ociVersion": "1.0.2", "id": "hook-test-1", "status": "running", "pid": 4242,
         "bundle": "/nonexistent/bundle",
         "annotations": {"upm.enabled": "true", "upm.policy": "python-ml", "upm.domain": "tenant-a"}}


class Hook:
    def __init__(self, exe: Path, tmp: Path) -> None:
        self.exe = exe
        self.log = tmp / "log" / "upm.log"      # the directory does not exist yet: the hook creates it
        self.config = tmp / "node-config.json"
        self.config.write_text(json.dumps({"log_file": str(self.log), "log_level": "debug"}))

    def run(self, event: str, stdin: bytes, *extra: str) -> subprocess.CompletedProcess:
        env = {"PATH": "/usr/bin:/bin", "UPM_CONFIG": str(self.config), "SECRET_TOKEN": "do-not-log-me"}
        return subprocess.run([self.exe, event, *extra], input=stdin, capture_output=True, timeout=30, env=env)

    def lines(self) -> list[str]:
        return self.log.read_text().splitlines() if self.log.exists() else []


@pytest.fixture
def hook(hook_bin, tmp_path) -> Hook:
    return Hook(hook_bin, tmp_path)


def test_poststart_reports_the_domain_scoped_by_namespace(hook):
    """The hook reports (and registers) the domain upm-runtime gave the
    container: scoped by the pod's namespace; none when the namespaces differ."""
    ann = STATE["annotations"] | {"io.kubernetes.cri.sandbox-namespace": "team-a"}
    assert hook.run("poststart", json.dumps(STATE | {"annotations": ann}).encode()).returncode == 0
    ann_conflict = ann | {"io.kubernetes.pod.namespace": "team-b", "upm.domain": "other"}
    assert hook.run("poststart", json.dumps(STATE | {"annotations": ann_conflict}).encode()).returncode == 0
    lines = [ln for ln in hook.lines() if "container `hook-test-1`: poststart" in ln]
    assert len(lines) == 2, hook.lines()
    assert "domain `k8s.team-a.tenant-a`" in lines[0]
    assert "domain" not in lines[1].split("policy `python-ml`")[1], lines[1]


@pytest.mark.parametrize("event", ["poststart", "poststop"])
def test_valid_state_is_logged(hook, event):
    r = hook.run(event, json.dumps(STATE).encode())
    assert r.returncode == 0, r.stderr
    assert r.stdout == b"" and r.stderr == b""
    lines = hook.lines()
    event_lines = [ln for ln in lines if f"container `hook-test-1`: {event}" in ln]
    assert len(event_lines) == 1, lines
    line = event_lines[0]
    assert " upm-hook[" in line and "] info: " in line
    assert "pid 4242" in line and "policy `python-ml`" in line and "domain `tenant-a`" in line
    agent = [ln for ln in lines if "upmd.sock" in ln]
    if event == "poststart" and not Path("/run/upm/upmd.sock").exists():
        assert len(agent) == 1 and "no node agent at `/run/upm/upmd.sock`, not registered" in agent[0]
    if event == "poststop":
        assert agent == []
    assert "do-not-log-me" not in hook.log.read_text()


def test_poststop_without_pid(hook):
    state = dict(STATE, status="stopped")
    del state["pid"]
    r = hook.run("poststop", json.dumps(state).encode())
    assert r.returncode == 0
    assert any("container `hook-test-1`: poststop" in ln and "status `stopped`" in ln for ln in hook.lines())


BAD_INPUTS = {
    "empty": (b"", "empty"),
    "garbage": (b"{not json", "not valid JSON"),
    "array": (b"[1, 2]", "not a JSON object"),
    "no-id": (json.dumps({"pid": 1}).encode(), "no string `id`"),
    "bad-id": (json.dumps(dict(STATE, id="a/../b")).encode(), "`/`"),
    "negative-pid": (json.dumps(dict(STATE, pid=-1)).encode(), "out of range"),
    "huge-pid": (json.dumps(dict(STATE, pid=1 << 40)).encode(), "out of range"),
    "string-pid": (json.dumps(dict(STATE, pid="12")).encode(), "not an integer"),
    "deep": (b"[" * 100000 + b"]" * 100000, "nested deeper"),
    "oversized": (json.dumps(dict(STATE, bundle="x" * (2 << 20))).encode(), "more than 1048576 bytes"),
}


@pytest.mark.parametrize("event", ["poststart", "poststop"])
@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_malformed_state_exits_zero_and_logs(hook, event, case):
    data, why = BAD_INPUTS[case]
    r = hook.run(event, data)
    assert r.returncode == 0, r.stderr
    errors = [ln for ln in hook.lines() if "] error: " in ln]
    assert len(errors) == 1, hook.lines()
    assert f"{event}: container state on stdin: " in errors[0] and why in errors[0], errors[0]


def test_poststart_without_pid_is_an_error(hook):
    state = dict(STATE)
    del state["pid"]
    r = hook.run("poststart", json.dumps(state).encode())
    assert r.returncode == 0
    assert any("] error: " in ln and "no `pid`" in ln for ln in hook.lines())


def test_help(hook):
    r = subprocess.run([hook.exe, "--help"], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0
    assert "poststart" in r.stdout and "poststop" in r.stdout
    r = subprocess.run([hook.exe, "poststart", "--help"], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0 and "poststart" in r.stdout
    r = subprocess.run([hook.exe, "no-such-event"], capture_output=True, text=True, timeout=30,
                       stdin=subprocess.DEVNULL)
    assert r.returncode != 0


def test_runc_container_runs_the_hooks(tmp_path, hook_bin, runtime_bin, preload_lib, policies_dir,
                                       memhog, base_spec, procs):
    """An annotated runc container through upm-runtime: the real upm-hook runs
    at poststart and poststop and logs both, with the container's id, pid,
    policy and domain, into the node log."""
    n = Node("runc", tmp_path, runtime_bin, preload_lib, policies_dir, memhog, base_spec, procs)
    try:
        n.use_hook(hook_bin)
        b = n.bundle(["/bin/true"], {"upm.enabled": "true", "upm.policy": "python-ml", "upm.domain": "tenant-a"})
        r, cid = n.run(b)
        assert r.returncode == 0, f"stdout {r.stdout!r}; stderr {r.stderr!r}"
        log = n.our_log()
        assert "hooks poststart and poststop" in log, log
        start = [ln for ln in log.splitlines() if f"upm-hook[" in ln and f"container `{cid}`: poststart, pid " in ln]
        stop = [ln for ln in log.splitlines() if f"upm-hook[" in ln and f"container `{cid}`: poststop" in ln]
        assert len(start) == 1 and len(stop) == 1, log
        for line in start + stop:
            assert "policy `python-ml`" in line and "domain `tenant-a`" in line
        assert "] error: " not in log, log
    finally:
        procs.cleanup()
        n.cleanup()
