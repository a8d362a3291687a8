# SPDX-License-Identifier: GPL-2.0-or-later
"""The engine configuration of config/runtimes/ parses and says what it must.

No container engine runs here: these are syntax and consistency checks only
(docs/install.md).  TOML with tomllib, JSON with json, YAML with PyYAML
(python3-yaml; the YAML tests skip with the reason when it is missing).
"""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path

import pytest

from upmtest.paths import source_dir

SOURCE = source_dir()
RUNTIMES = SOURCE / "config" / "runtimes"
POLICIES = SOURCE / "config" / "policies"
BINARY = "/usr/bin/upm-runtime"
HANDLER = "upm"
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")

try:
    import yaml
except ImportError:  # pragma: no cover - depends on the host
    yaml = None

needs_yaml = pytest.mark.skipif(yaml is None, reason="python3-yaml (PyYAML) not installed: YAML not parsed")


def load_toml(rel: str) -> dict:
    with open(RUNTIMES / rel, "rb") as f:
        return tomllib.load(f)


def load_yaml(rel: str) -> dict:
    with open(RUNTIMES / rel, encoding="utf-8") as f:
        return yaml.safe_load(f)


def all_files(ext: str) -> list[Path]:
    return sorted(p for p in RUNTIMES.rglob("*") if p.is_file() and p.name.endswith(ext))


def test_every_file_parses():
    files = [p for p in RUNTIMES.rglob("*") if p.is_file()]
    assert files, f"nothing under {RUNTIMES}"
    for p in files:
        if p.suffix in (".toml", ".conf"):
            with open(p, "rb") as f:
                tomllib.load(f)
        elif p.suffix == ".json":
            json.loads(p.read_text(encoding="utf-8"))
        elif p.suffix in (".yaml", ".yml"):
            if yaml is not None:
                assert list(yaml.safe_load_all(p.read_text(encoding="utf-8")))
        else:
            assert p.suffix == ".md", f"unexpected file {p}"


def test_every_snippet_has_a_header_comment():
    for ext in (".toml", ".conf", ".yaml"):
        for p in all_files(ext):
            first = p.read_text(encoding="utf-8").splitlines()[0]
            assert first.startswith("# "), f"{p}: no header comment"
    # JSON cannot carry one: the README documents daemon.json.
    assert "docker/daemon.json" in (RUNTIMES / "README.md").read_text(encoding="utf-8")


def containerd_runtimes(cfg: dict, version: int) -> dict:
    assert cfg["version"] == version
    if version == 2:
        return cfg["plugins"]["io.containerd.grpc.v1.cri"]["containerd"]["runtimes"]
    return cfg["plugins"]["io.containerd.cri.v1.runtime"]["containerd"]["runtimes"]


@pytest.mark.parametrize("rel,version", [("containerd/99-upm.toml", 2),
                                         ("containerd/99-upm.containerd2.toml", 3)])
def test_containerd(rel, version):
    text = (RUNTIMES / rel).read_text(encoding="utf-8")
    assert 'imports = ["/etc/containerd/conf.d/*.toml"]' in text  # the 2.x line for the main config
    if version == 2:  # 1.x would reset the CRI plugin from a drop-in (test_install_runtime.py)
        assert "NOT into a conf.d file" in text
    runtimes = containerd_runtimes(load_toml(rel), version)
    assert list(runtimes) == [HANDLER]
    rt = runtimes[HANDLER]
    assert rt["runtime_type"] == "io.containerd.runc.v2"
    assert rt["options"]["BinaryName"] == BINARY
    assert "upm.*" in rt["pod_annotations"]
    assert "container_annotations" not in rt  # not user-settable in Kubernetes
    # Go path.Match semantics for the glob: the three annotations pass.
    for ann in ("upm.enabled", "upm.policy", "upm.domain"):
        assert any(re.fullmatch(re.escape(g).replace(r"\*", "[^/]*"), ann) for g in rt["pod_annotations"])


def test_crio():
    cfg = load_toml("crio/99-upm.conf")
    rt = cfg["crio"]["runtime"]["runtimes"][HANDLER]
    assert rt["runtime_path"] == BINARY
    assert rt["runtime_type"] == "oci"
    assert rt["runtime_root"] == "/run/upm-runc"
    # CRI-O refuses unknown allowed_annotations ("invalid allowed_annotation");
    # upm.* pass through without it.
    assert not any(a.startswith("upm.") for a in rt.get("allowed_annotations", []))


def test_podman():
    cfg = load_toml("podman/containers.conf.d/99-upm.conf")
    assert cfg["engine"]["runtimes"][HANDLER] == [BINARY]


def test_docker():
    cfg = json.loads((RUNTIMES / "docker/daemon.json").read_text(encoding="utf-8"))
    # --upm-enable: with Docker the runtime is the opt-in (Docker before 24 passes no annotations)
    assert cfg == {"runtimes": {HANDLER: {"path": BINARY, "runtimeArgs": ["--upm-enable"]}}}


@needs_yaml
def test_runtimeclass_matches_handlers():
    rc = load_yaml("kubernetes/runtimeclass.yaml")
    assert rc["apiVersion"] == "node.k8s.io/v1"
    assert rc["kind"] == "RuntimeClass"
    assert rc["metadata"]["name"] == HANDLER
    handler = rc["handler"]
    assert handler in containerd_runtimes(load_toml("containerd/99-upm.toml"), 2)
    assert handler in containerd_runtimes(load_toml("containerd/99-upm.containerd2.toml"), 3)
    assert handler in load_toml("crio/99-upm.conf")["crio"]["runtime"]["runtimes"]


@needs_yaml
def test_example_pod():
    pod = load_yaml("kubernetes/example-pod.yaml")
    assert pod["apiVersion"] == "v1" and pod["kind"] == "Pod"
    assert pod["spec"]["runtimeClassName"] == load_yaml("kubernetes/runtimeclass.yaml")["metadata"]["name"]
    ann = pod["metadata"]["annotations"]
    # Annotation values are strings; upm.enabled must be exactly "true".
    assert all(isinstance(v, str) for v in ann.values()), ann
    assert ann["upm.enabled"] == "true"
    assert NAME_RE.fullmatch(ann["upm.policy"]), ann["upm.policy"]
    assert (POLICIES / f"{ann['upm.policy']}.json").is_file()
    assert NAME_RE.fullmatch(ann["upm.domain"]), ann["upm.domain"]
    assert pod["spec"]["containers"]


def test_cmake_installs_runtimes():
    text = (SOURCE / "config" / "CMakeLists.txt").read_text(encoding="utf-8")
    assert re.search(r"install\(DIRECTORY runtimes/ DESTINATION \$\{CMAKE_INSTALL_DATADIR\}/upm/runtimes\)", text)
