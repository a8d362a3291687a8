# SPDX-License-Identifier: GPL-2.0-or-later
"""`upm install-runtime` end to end, checked by the engines' own parsers.

Each test installs into a host root in a temporary directory (`--root`),
never into this machine's /etc.  containerd's result is read by the real
`containerd config dump` (Debian 12 ships containerd 1.6); podman's by the
real `podman info`.  Skips say which engine is missing.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest

from upmtest.paths import build_dir, source_dir

SOURCE = source_dir()
BUILD = build_dir()
UPM = BUILD / "bin" / "upm"
NODE_1X = SOURCE / "test" / "fixtures" / "engines" / "containerd-1.6-node.toml"

needs_containerd = pytest.mark.skipif(shutil.which("containerd") is None,
                                      reason="containerd not installed (packaging/install-deps.sh test)")
needs_podman = pytest.mark.skipif(shutil.which("podman") is None,
                                  reason="podman not installed (packaging/install-deps.sh test)")


def upm(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run([str(UPM), *args], capture_output=True, text=True, check=check, timeout=60)


def containerd_dump(config: Path) -> dict:
    """The configuration containerd itself would run with (imports merged)."""
    out = subprocess.run(["containerd", "--config", str(config), "config", "dump"],
                         capture_output=True, text=True, check=True, timeout=60).stdout
    return tomllib.loads(out)


def cri(dump: dict) -> dict:
    return dump["plugins"]["io.containerd.grpc.v1.cri"]


@needs_containerd
def test_containerd_1x_keeps_the_nodes_cri_settings(tmp_path: Path) -> None:
    """The handler reaches containerd and the node's CNI and cgroup settings survive."""
    config = tmp_path / "etc/containerd/config.toml"
    config.parent.mkdir(parents=True)
    shutil.copy(NODE_1X, config)
    before = cri(containerd_dump(config))

    r = upm("install-runtime", "--engine", "containerd", "--root", str(tmp_path), "--bin-dir", "/opt/upm/bin")
    assert "now run: systemctl restart containerd" in r.stdout
    after = cri(containerd_dump(config))
    upm_rt = after["containerd"]["runtimes"]["upm"]
    assert upm_rt["runtime_type"] == "io.containerd.runc.v2"
    assert upm_rt["options"]["BinaryName"] == "/opt/upm/bin/upm-runtime"
    assert upm_rt["pod_annotations"] == ["upm.*"]
    assert after["cni"]["bin_dir"] == before["cni"]["bin_dir"] == "/usr/lib/cni"
    assert after["containerd"]["runtimes"]["runc"] == before["containerd"]["runtimes"]["runc"]
    assert after["containerd"]["runtimes"]["runc"]["options"]["SystemdCgroup"] is True

    upm("uninstall-runtime", "--engine", "containerd", "--root", str(tmp_path))
    assert config.read_text() == NODE_1X.read_text()
    assert cri(containerd_dump(config)) == before


@needs_containerd
def test_containerd_1x_drop_in_would_reset_the_cri_plugin(tmp_path: Path) -> None:
    """Why 1.x gets a block in the main file: containerd replaces a whole plugin from an import.

    If this starts failing, containerd merges imports deeply and the drop-in
    of config version 3 could be used for version 2 as well.
    """
    config = tmp_path / "config.toml"
    text = NODE_1X.read_text().replace("imports = []", f'imports = ["{tmp_path}/conf.d/*.toml"]', 1)
    config.write_text(text)
    (tmp_path / "conf.d").mkdir()
    shutil.copy(SOURCE / "config/runtimes/containerd/99-upm.toml", tmp_path / "conf.d/99-upm.toml")
    after = cri(containerd_dump(config))
    assert "upm" in after["containerd"]["runtimes"]
    assert after["cni"]["bin_dir"] != "/usr/lib/cni"  # reset to containerd's default


def test_dry_run_changes_nothing_and_again_is_nothing_to_do(tmp_path: Path) -> None:
    r = upm("install-runtime", "--engine", "docker", "--root", str(tmp_path), "--dry-run")
    assert r.stdout.startswith("would write /etc/docker/daemon.json")
    assert not (tmp_path / "etc").exists()
    upm("install-runtime", "--engine", "docker", "--root", str(tmp_path))
    r = upm("install-runtime", "--engine", "docker", "--root", str(tmp_path))
    assert r.stdout == "unchanged /etc/docker/daemon.json: already has the runtime \"upm\" (docker run --runtime upm)\nnothing to do\n"


def test_refusal_says_what_to_do_and_exits_1(tmp_path: Path) -> None:
    config = tmp_path / "etc/containerd/config.toml"
    config.parent.mkdir(parents=True)
    config.write_text('version = 3\nimports = [\n  "/etc/site/*.toml",\n]\n')
    r = upm("install-runtime", "--engine", "containerd", "--root", str(tmp_path), check=False)
    assert r.returncode == 1
    assert "add \"/etc/containerd/conf.d/*.toml\" to it by hand" in r.stderr
    assert config.read_text() == 'version = 3\nimports = [\n  "/etc/site/*.toml",\n]\n'


@needs_podman
def test_podman_reads_the_runtime(tmp_path: Path) -> None:
    """podman, given the drop-in as its configuration, knows the runtime "upm"."""
    upm("install-runtime", "--engine", "podman", "--root", str(tmp_path), "--bin-dir", str(BUILD / "bin"))
    dropin = tmp_path / "etc/containers/containers.conf.d/99-upm.conf"
    env = dict(os.environ, CONTAINERS_CONF=str(dropin))
    r = subprocess.run(["podman", "--runtime", "upm", "info", "--format", "{{.Host.OCIRuntime.Path}}"],
                       capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == str(BUILD / "bin" / "upm-runtime")
