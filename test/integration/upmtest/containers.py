# SPDX-License-Identifier: GPL-2.0-or-later
"""Containers through upm-runtime with the machine's runc or crun (Node):
OCI bundles in tmp (a rootfs with the host's /usr bind-mounted read-only and
a copy of upm-memhog in /opt), a node configuration, a state directory and
logs of their own, unique ids, deleted on cleanup whatever happened.

crun refuses hosts where cgroup v1 and a cgroup v2 hierarchy with
controllers are mounted side by side ("hybrid"); crun is then run in a
private mount namespace in which /sys/fs/cgroup/unified is unmounted, so
that it sees plain cgroup v1 (the host's mounts are not changed).
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from .process import Memhog

RUNTIMES = {"runc": Path("/usr/bin/runc"), "crun": Path("/usr/bin/crun")}
# The specs of these tests mount a tmpfs on /dev (as every engine does), so
# the files go to /dev/upm (docs/runtime.md).
PRELOAD_IN_CONTAINER = "/dev/upm/libupm-preload.so"
POLICY_IN_CONTAINER = "/dev/upm/policy.json"
_IDS = itertools.count()


def hybrid_cgroups() -> bool:
    unified = Path("/sys/fs/cgroup/unified/cgroup.controllers")
    try:
        return bool(unified.read_text().split()) and os.path.ismount("/sys/fs/cgroup/unified")
    except OSError:
        return False


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


class Node:
    """A runtime (runc or crun) behind upm-runtime, with its node configuration,
    state directory and logs in tmp_path; deletes its containers on teardown."""

    def __init__(self, name: str, tmp: Path, runtime_bin: Path, preload: Path, policies_dir: Path,
                 memhog: Path, base_spec: dict, procs) -> None:
        self.name = name
        self.real = RUNTIMES[name]
        if not self.real.exists():
            pytest.skip(f"{name} is not installed ({self.real})")
        self.tmp = tmp
        self.wrapper = runtime_bin
        self.memhog = memhog
        self.base_spec = base_spec
        self.procs = procs
        self.root = tmp / f"state-{name}"
        self.log = tmp / "upm.log"              # our log
        self.runtime_log = tmp / "runtime.json"  # the runtime's --log, json
        self.policy_dir = tmp / "policies"
        self.policy_dir.mkdir(exist_ok=True)
        for p in policies_dir.glob("*.json"):
            shutil.copy(p, self.policy_dir / p.name)
        self.agent_socket: Path | None = None
        self.hook_log = tmp / "hook.log"
        self.hook = tmp / "upm-hook"
        self.hook.write_text(f"#!/bin/sh\ncat >/dev/null\necho \"$1\" >> {self.hook_log}\nexit 0\n")
        self.hook.chmod(0o755)
        self.settings = {"runtime": str(self.real), "preload": str(preload),
                         "policy_dir": str(self.policy_dir), "hook": str(self.hook),
                         "log_file": str(self.log), "log_level": "debug"}
        self.write_config()
        self.ids: list[str] = []
        self.prefix: list[str] = []
        if name == "crun" and hybrid_cgroups():
            self.prefix = ["unshare", "-m", "sh", "-c",
                           'umount -l /sys/fs/cgroup/unified 2>/dev/null; exec "$0" "$@"']

    def write_config(self, **overrides) -> None:
        self.settings.update(overrides)
        self.config = self.tmp / "node-config.json"
        self.config.write_text(json.dumps(self.settings, indent=2))

    def use_hook(self, hook_bin: Path, agent_socket: Path | None = None, **config) -> Path:
        """Makes the runtime run the built upm-hook (through a wrapper script
        in tmp that sets $UPM_CONFIG and, if given, $UPM_AGENT_SOCKET: the
        hooks get no environment from upm-runtime); `config`: more settings
        of the node configuration.  Returns the wrapper."""
        wrapper = self.tmp / "upm-hook-wrapper"
        self.agent_socket = agent_socket
        agent = f" UPM_AGENT_SOCKET={agent_socket}" if agent_socket is not None else ""
        wrapper.write_text(f"#!/bin/sh\nUPM_CONFIG={self.config}{agent} exec {hook_bin} \"$@\"\n")
        wrapper.chmod(0o755)
        self.write_config(hook=str(wrapper), **config)
        return wrapper

    def env(self) -> dict[str, str]:
        """upm-runtime's environment: its node configuration and, after
        use_hook() with a socket, the node agent it asks (ksm-claim)."""
        env = {"UPM_CONFIG": str(self.config)}
        if self.agent_socket is not None:
            env["UPM_AGENT_SOCKET"] = str(self.agent_socket)
        return env

    # -- bundles ------------------------------------------------------------------

    def bundle(self, args: list[str], annotations: dict[str, str] | None = None,
               env: list[str] | None = None) -> Path:
        n = next(_IDS)
        b = self.tmp / f"bundle{n}"
        rootfs = b / "rootfs"
        for d in ("usr", "proc", "dev", "sys", "tmp", "etc", "opt"):
            (rootfs / d).mkdir(parents=True)
        for link, target in (("bin", "usr/bin"), ("sbin", "usr/sbin"), ("lib", "usr/lib"), ("lib64", "usr/lib64")):
            (rootfs / link).symlink_to(target)
        shutil.copy2(self.memhog, rootfs / "opt" / "upm-memhog")
        spec = copy.deepcopy(self.base_spec)
        spec["process"]["terminal"] = False
        spec["process"]["args"] = args
        spec["process"]["env"] += env or []
        spec["mounts"].append({"destination": "/usr", "type": "bind", "source": "/usr",
                               "options": ["rbind", "ro", "nosuid"]})
        spec["hostname"] = f"upm-test-{n}"
        if annotations is not None:
            spec["annotations"] = annotations
        (b / "config.json").write_text(json.dumps(spec, indent="\t") + "\n")
        return b

    def new_id(self) -> str:
        cid = f"upm-test-{os.getpid()}-{next(_IDS)}"
        self.ids.append(cid)
        return cid

    # -- running ------------------------------------------------------------------

    def argv(self, *args, wrapper: bool = True) -> list:
        exe = self.wrapper if wrapper else self.real
        return [*self.prefix, exe, "--root", self.root, "--log", self.runtime_log, "--log-format", "json", *args]

    def run(self, bundle: Path, timeout: float = 60) -> tuple[subprocess.CompletedProcess, str]:
        """`upm-runtime run --bundle B ID` in the foreground: the container's output."""
        cid = self.new_id()
        r = self.procs.run(self.argv("run", "--bundle", bundle, cid), timeout=timeout, env=self.env())
        return r, cid

    def start_memhog(self, bundle: Path) -> Memhog:
        """Starts a container whose process is upm-memhog; waits for its ready line."""
        cid = self.new_id()
        h = self.procs.memhog(self.argv("run", "--bundle", bundle, cid), env=self.env())
        state = self.procs.run(self.argv("state", cid), env=self.env())
        assert state.returncode == 0, state.stderr
        h.pid = json.loads(state.stdout)["pid"]     # the host's pid of the container's init (memhog)
        return h

    def our_log(self) -> str:
        return self.log.read_text() if self.log.exists() else ""

    def runtime_log_entries(self) -> list[dict]:
        if not self.runtime_log.exists():
            return []
        return [json.loads(line) for line in self.runtime_log.read_text().splitlines() if line.strip()]

    def cleanup(self) -> None:
        for cid in self.ids:
            subprocess.run([*self.prefix, self.real, "--root", self.root, "delete", "-f", cid],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=60)
