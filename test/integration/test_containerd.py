# SPDX-License-Identifier: GPL-2.0-or-later
"""upm-runtime as containerd's runc binary, driven with `ctr`.

A private containerd (Debian 12: 1.6.20) runs for this module only: its own
--root, --state and socket under tmp_path, a minimal configuration without
the CRI plugin, and $UPM_CONFIG in its environment, which containerd passes
to containerd-shim-runc-v2 and the shim to the runtime it runs.  Containers
are started with

    ctr run --runc-binary build/bin/upm-runtime --annotation upm.enabled=true
            --rootfs --mount type=bind,src=/usr,dst=/usr,options=rbind:ro ROOTFS ID CMD

`--runc-binary` sets the runc shim's `BinaryName` option, the same option
the shipped containerd configuration sets for the runtime handler `upm`
(config/runtimes/), and `--annotation` puts an OCI annotation into the spec
as the CRI plugin does with `pod_annotations`.  The rootfs is a directory
(no image, no snapshotter) whose /usr is the host's, bind-mounted read-only,
so that the container runs glibc programs (a static binary such as
busybox-static never loads a preload).

Oracles, read from the host: /proc/PID/maps of the container's process (the
preload mapped, and its device and inode are those of the built library),
/proc/PID/environ, the bundle's config.json that containerd wrote and the
runtime read, upm-runtime's log, and a hook script's log (the poststart and
poststop hooks the edit adds ran under containerd's runc).

Teardown: every task and container is deleted, containerd is stopped, a
shim of this containerd still running (found by its exact -address
argument) is killed by pid, and mounts left under tmp_path are unmounted.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from upmtest.process import wait_until

CONTAINERD = Path("/usr/bin/containerd")
CTR = Path("/usr/bin/ctr")
RUNC = Path("/usr/bin/runc")
PRELOAD_IN_CONTAINER = "/dev/upm/libupm-preload.so"   # containerd mounts a tmpfs on /dev
POLICY_IN_CONTAINER = "/dev/upm/policy.json"
NAMESPACE = "upm-test"
_IDS = itertools.count()


class Containerd:
    """A private containerd and the containers this module started in it."""

    def __init__(self, tmp: Path, runtime_bin: Path, preload: Path, policies_dir: Path) -> None:
        self.tmp = tmp
        self.runtime_bin = runtime_bin
        self.preload = preload
        self.address = str(tmp / "containerd.sock")
        self.log = tmp / "upm.log"
        self.hook_log = tmp / "hook.log"
        self.containerd_log = tmp / "containerd.log"
        self.ids: list[str] = []
        self.proc: subprocess.Popen | None = None

        policy_dir = tmp / "policies"
        policy_dir.mkdir()
        for p in policies_dir.glob("*.json"):
            shutil.copy(p, policy_dir / p.name)
        hook = tmp / "hook.sh"
        hook.write_text(f"#!/bin/sh\ncat >/dev/null\necho \"$1\" >> {self.hook_log}\nexit 0\n")
        hook.chmod(0o755)
        self.node_config = tmp / "node-config.json"
        self.node_config.write_text(json.dumps({
            "runtime": str(RUNC), "preload": str(preload), "policy_dir": str(policy_dir),
            "hook": str(hook), "log_file": str(self.log), "log_level": "debug"}, indent=2))

        self.rootfs = tmp / "rootfs"
        for d in ("usr", "proc", "dev", "sys", "tmp", "etc"):
            (self.rootfs / d).mkdir(parents=True)
        for link, target in (("bin", "usr/bin"), ("sbin", "usr/sbin"), ("lib", "usr/lib"), ("lib64", "usr/lib64")):
            (self.rootfs / link).symlink_to(target)

        self.config = tmp / "containerd.toml"
        self.config.write_text(
            "version = 2\n"
            f'root = "{tmp / "root"}"\n'
            f'state = "{tmp / "state"}"\n'
            'disabled_plugins = ["io.containerd.grpc.v1.cri"]\n'
            "[grpc]\n"
            f'  address = "{self.address}"\n'
            "[ttrpc]\n"
            '  address = ""\n'
            "[debug]\n"
            '  address = ""\n')

    # -- containerd --------------------------------------------------------------

    def start(self) -> None:
        env = dict(os.environ, UPM_CONFIG=str(self.node_config))
        with open(self.containerd_log, "wb") as out:
            self.proc = subprocess.Popen([CONTAINERD, "--config", self.config], env=env, stdin=subprocess.DEVNULL,
                                         stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            wait_until(lambda: self.proc.poll() is not None or self.ctr("version", check=False).returncode == 0,
                       timeout=30, interval=0.2)
        except AssertionError:
            pass
        if self.proc.poll() is not None or self.ctr("version", check=False).returncode != 0:
            pytest.fail(f"the private containerd did not come up; its log:\n{self.containerd_log_tail()}",
                        pytrace=False)

    def containerd_log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.containerd_log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def ctr(self, *args, check: bool = True, timeout: float = 90) -> subprocess.CompletedProcess:
        r = subprocess.run([CTR, "--address", self.address, "--namespace", NAMESPACE, *map(str, args)],
                           stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout)
        if check and r.returncode != 0:
            pytest.fail(f"`ctr {' '.join(map(str, args))}` failed ({r.returncode}): {r.stderr.strip()}\n"
                        f"containerd's log:\n{self.containerd_log_tail()}", pytrace=False)
        return r

    # -- containers --------------------------------------------------------------

    def run_args(self, cid: str, annotations: dict[str, str]) -> list[str]:
        args = ["run", "--runc-binary", self.runtime_bin, "--runc-root", self.tmp / "runc",
                "--fifo-dir", self.tmp / "fifo", "--rootfs",
                "--mount", "type=bind,src=/usr,dst=/usr,options=rbind:ro"]
        for k, v in annotations.items():
            args += ["--annotation", f"{k}={v}"]
        return args

    def start_sleeper(self, annotations: dict[str, str]) -> tuple[str, int]:
        """A detached container running /usr/bin/sleep (glibc); (id, host pid)."""
        cid = f"upm-ctr-{os.getpid()}-{next(_IDS)}"
        self.ids.append(cid)
        self.ctr(*self.run_args(cid, annotations), "-d", self.rootfs, cid, "/usr/bin/sleep", "600")
        return cid, self.task_pid(cid)

    def run_foreground(self, annotations: dict[str, str], *cmd: str) -> subprocess.CompletedProcess:
        """`ctr run --rm`: the container's output."""
        cid = f"upm-ctr-{os.getpid()}-{next(_IDS)}"
        self.ids.append(cid)
        return self.ctr(*self.run_args(cid, annotations), "--rm", self.rootfs, cid, *cmd)

    def task_pid(self, cid: str) -> int:
        for line in self.ctr("task", "ls").stdout.splitlines()[1:]:
            fields = line.split()
            if fields and fields[0] == cid:
                return int(fields[1])
        pytest.fail(f"no task `{cid}` in `ctr task ls`", pytrace=False)

    def bundle_config(self, cid: str) -> dict:
        return json.loads((self.tmp / "state" / "io.containerd.runtime.v2.task" / NAMESPACE / cid /
                           "config.json").read_text())

    def our_log(self) -> str:
        return self.log.read_text() if self.log.exists() else ""

    # -- teardown ----------------------------------------------------------------

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            for cid in self.ids:
                self.ctr("task", "kill", "-s", "SIGKILL", cid, check=False, timeout=30)
            for cid in self.ids:
                for _ in range(50):
                    if self.ctr("task", "rm", "-f", cid, check=False, timeout=30).returncode == 0:
                        break
                    if "not found" in self.ctr("task", "ls", check=False).stdout:
                        break
                    time.sleep(0.1)
                self.ctr("container", "rm", cid, check=False, timeout=30)
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=15)
        # Shims of this containerd only: their command line names our socket.
        for pid_dir in Path("/proc").iterdir():
            if not pid_dir.name.isdigit():
                continue
            try:
                argv = (pid_dir / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if argv and argv[0].endswith(b"containerd-shim-runc-v2") and self.address.encode() in argv:
                try:
                    os.kill(int(pid_dir.name), signal.SIGKILL)
                except ProcessLookupError:
                    pass
        prefix = str(self.tmp) + "/"
        mounts = [line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()]
        for m in sorted((m for m in mounts if m.startswith(prefix)), key=len, reverse=True):
            subprocess.run(["umount", "-l", m], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


@pytest.fixture(scope="module")
def containerd(tmp_path_factory, runtime_bin: Path, preload_lib: Path, policies_dir: Path):
    if os.geteuid() != 0:
        pytest.skip("containerd needs root")
    for p in (CONTAINERD, CTR, RUNC):
        if not p.exists():
            pytest.skip(f"`{p}` is not installed (Debian: `sudo packaging/install-deps.sh test` installs "
                        "containerd and runc)")
    c = Containerd(tmp_path_factory.mktemp("containerd"), runtime_bin, preload_lib, policies_dir)
    try:
        c.start()
        yield c
    finally:
        c.stop()


def environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(e.decode(errors="replace").split("=", 1) for e in raw if b"=" in e)


def preload_mappings(pid: int) -> list[list[str]]:
    """The maps lines (split) of the preload in process PID."""
    lines = Path(f"/proc/{pid}/maps").read_text().splitlines()
    return [line.split() for line in lines if line.endswith(PRELOAD_IN_CONTAINER)]


# ---------------------------------------------------------------------------


def test_annotated_container_gets_the_preload(containerd):
    """upm.enabled=true through ctr: containerd's shim ran upm-runtime, which
    edited the bundle; the container's process has the built preload mapped
    (same device and inode), LD_PRELOAD, UPM_POLICY and UPM_DOMAIN; the hooks
    ran; our log says what was injected."""
    cid, pid = containerd.start_sleeper({"upm.enabled": "true", "upm.policy": "python-ml",
                                         "upm.domain": "tenant-a"})
    wait_until(lambda: preload_mappings(pid), timeout=10, what=f"the preload mapped in {pid}",
               describe=lambda: containerd.our_log())
    st = os.stat(containerd.preload)
    dev = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}"
    for fields in preload_mappings(pid):
        assert (fields[3], int(fields[4])) == (dev, st.st_ino), f"not the built preload: {fields}"
    env = environ(pid)
    assert env.get("LD_PRELOAD") == PRELOAD_IN_CONTAINER
    assert env.get("UPM_POLICY") == POLICY_IN_CONTAINER
    assert env.get("UPM_DOMAIN") == "tenant-a"

    spec = containerd.bundle_config(cid)
    assert spec["annotations"]["upm.enabled"] == "true"
    binds = {m["destination"]: m for m in spec["mounts"] if m["destination"].startswith("/dev/upm/")}
    assert set(binds) == {PRELOAD_IN_CONTAINER, POLICY_IN_CONTAINER}
    assert "ro" in binds[PRELOAD_IN_CONTAINER]["options"]
    assert binds[PRELOAD_IN_CONTAINER]["source"] == str(containerd.preload)

    log = containerd.our_log()
    assert f"container `{cid}`: injected `{PRELOAD_IN_CONTAINER}`" in log, log
    assert "policy `python-ml`" in log
    wait_until(lambda: containerd.hook_log.exists() and "poststart" in containerd.hook_log.read_text(),
               timeout=10, what="the poststart hook")


def test_unannotated_container_is_untouched(containerd):
    """No annotation, or upm.enabled with another value than `true`: no preload
    mapped, no variable set, the bundle's config.json not edited, nothing
    injected according to our log."""
    for annotations in ({}, {"upm.enabled": "True", "upm.policy": "python-ml"}):
        cid, pid = containerd.start_sleeper(annotations)
        # The process is running its program (sleep) when ctr returns; give a
        # wrongly injected preload the same chance as in the annotated test.
        wait_until(lambda: Path(f"/proc/{pid}/exe").resolve().name == "sleep", timeout=10,
                   what=f"{pid} running sleep")
        assert preload_mappings(pid) == []
        env = environ(pid)
        assert "LD_PRELOAD" not in env and "UPM_POLICY" not in env and "UPM_DOMAIN" not in env
        spec = containerd.bundle_config(cid)
        assert not [m for m in spec["mounts"] if m["destination"].startswith("/dev/upm")]
        assert "hooks" not in spec or "poststart" not in spec["hooks"]
        assert f"container `{cid}`: injected" not in containerd.our_log()


def test_foreground_run_sees_the_preload_from_inside(containerd):
    """`ctr run --rm` in the foreground: the container's own /proc/self/maps
    has the preload when annotated and not otherwise (output through
    containerd's FIFOs)."""
    probe = ["/bin/sh", "-c", "grep -c libupm-preload.so /proc/self/maps || true"]
    with_upm = containerd.run_foreground({"upm.enabled": "true"}, *probe)
    assert int(with_upm.stdout.split()[-1]) >= 1, with_upm.stdout
    without = containerd.run_foreground({}, *probe)
    assert int(without.stdout.split()[-1]) == 0, without.stdout
