# SPDX-License-Identifier: GPL-2.0-or-later
"""Docker for real: a private dockerd with the runtime "upm" that install-runtime registers.

Debian 12 ships Docker 20.10, which passes no OCI annotations (`docker run
--annotation` exists from Docker 24) and does not turn labels into
annotations: with Docker, choosing the runtime is the opt-in.  The shipped
daemon.json fragment registers "upm" with `runtimeArgs: ["--upm-enable"]`,
which dockerd puts before runc's global options; upm-runtime takes it off
and treats every bundle as annotated upm.enabled=true.

The dockerd of this module has its own data root, exec root and socket
(no bridge, no iptables), its configuration written by `upm install-runtime
--engine docker --root TMP`, and $UPM_CONFIG in its environment (dockerd ->
containerd -> shim -> runtime).  The image is the cached minimal Debian 12
of packaging/debian-base.sh, imported; the built upm-memhog is mounted
read-only.  Oracles: the containers' /proc/PID/maps (preload mapped) and
/proc/PID/ksm_merging_pages with ksmd fast (ksm_fast), upm-runtime's log.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
from pathlib import Path

import pytest

from upmtest.paths import source_dir
from upmtest.procfs import ksm_merging_pages
from upmtest.process import wait_until

DOCKERD = Path("/usr/sbin/dockerd")
DOCKER = Path("/usr/bin/docker")  # Debian's docker.io, not another client on PATH
IMAGE = "upm-test-debian:12"

pytestmark = pytest.mark.skipif(not DOCKERD.exists(), reason="docker.io not installed (packaging/install-deps.sh test)")


class Docker:
    def __init__(self, tmp: Path, upm_bin: Path, env: dict[str, str]) -> None:
        self.exec_root = Path(f"/run/upm-test-docker-{os.getpid()}")  # the socket path must stay short
        self.sock = f"unix://{self.exec_root}/docker.sock"
        root = tmp / "host"
        subprocess.run([str(upm_bin), "install-runtime", "--engine", "docker", "--root", str(root),
                        "--bin-dir", str(upm_bin.parent)], check=True, capture_output=True, text=True)
        self.log = open(tmp / "dockerd.log", "w")
        self.proc = subprocess.Popen(
            [str(DOCKERD), "--data-root", str(tmp / "data"), "--exec-root", str(self.exec_root),
             "--pidfile", str(self.exec_root / "dockerd.pid"), "-H", self.sock, "--bridge=none",
             "--iptables=false", "--ip6tables=false", "--config-file", str(root / "etc/docker/daemon.json")],
            stdout=self.log, stderr=subprocess.STDOUT, env=env)
        wait_until(lambda: self.cli("info", check=False).returncode == 0, timeout=60, what="dockerd is up")

    def cli(self, *args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
        r = subprocess.run([str(DOCKER), "-H", self.sock, *args], capture_output=True, text=True, timeout=timeout)
        if check and r.returncode != 0:
            pytest.fail(f"docker {' '.join(args)}: {r.stderr}")
        return r

    def stop(self) -> None:
        ids = self.cli("ps", "-aq", check=False).stdout.split()
        if ids:
            self.cli("rm", "-f", *ids, check=False)
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()
        shutil.rmtree(self.exec_root, ignore_errors=True)


@pytest.fixture(scope="module")
def docker(tmp_path_factory, upm_bin: Path, preload_lib: Path, policies_dir: Path):
    tmp = tmp_path_factory.mktemp("docker")
    log = tmp / "upm-runtime.log"
    config = tmp / "node-config.json"
    config.write_text(json.dumps({"runtime": "/usr/bin/runc", "preload": str(preload_lib),
                                  "policy_dir": str(policies_dir), "hook": "", "log_file": str(log),
                                  "log_level": "debug"}))
    d = Docker(tmp, upm_bin, dict(os.environ, UPM_CONFIG=str(config)))
    d.upm_log = log
    try:
        base = subprocess.run([str(source_dir() / "packaging/debian-base.sh"), "--include", "runc,init-system-helpers"],
                              capture_output=True, text=True, timeout=1800)
        if base.returncode != 0:
            pytest.skip(f"no minimal Debian 12 image (packaging/debian-base.sh): {base.stderr[-300:]}")
        d.cli("import", base.stdout.strip().splitlines()[-1], IMAGE, timeout=600)
        yield d
    finally:
        d.stop()


def start(docker: Docker, memhog: Path, runtime: str) -> int:
    cid = docker.cli("run", "-d", "--runtime", runtime, "--network", "none", "-v", f"{memhog.parent}:/upm:ro",
                     IMAGE, f"/upm/{memhog.name}", "--mib", "32", "--seed", "7", "--hold-until-signal",
                     "--orphan-ok").stdout.strip()
    pid = int(docker.cli("inspect", "-f", "{{.State.Pid}}", cid).stdout)
    assert pid > 0, docker.cli("logs", cid, check=False).stderr
    return pid


def preload_mapped(pid: int) -> bool:
    return "libupm-preload.so" in Path(f"/proc/{pid}/maps").read_text()


def test_runtime_upm_is_the_opt_in(docker: Docker, memhog: Path, ksm_fast) -> None:
    info = json.loads(docker.cli("info", "--format", "{{json .Runtimes}}").stdout)
    assert info["upm"]["runtimeArgs"] == ["--upm-enable"]
    pids = [start(docker, memhog, "upm") for _ in range(2)]
    plain = start(docker, memhog, "runc")
    wait_until(lambda: all(preload_mapped(p) for p in pids), timeout=30, what="the preload is mapped")
    assert not preload_mapped(plain)
    pages = 32 * 256
    _, seconds = wait_until(lambda: all(ksm_merging_pages(p) >= 0.9 * pages for p in pids), timeout=120,
                            what="90% of each upm container's 32 MiB merged")
    print(f"docker: 2 x 32 MiB merged to 90% in {seconds:.1f} s")
    assert ksm_merging_pages(plain) == 0  # never advised
    assert "enabled by the runtime (upm-runtime --upm-enable" in docker.upm_log.read_text()
