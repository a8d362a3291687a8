# SPDX-License-Identifier: GPL-2.0-or-later
"""The Kubernetes installer: its manifests, and the installer on a simulated node.

No cluster runs here.  The manifests of config/runtimes/kubernetes/ are
checked field by field against the Kubernetes API models of Debian's
python3-kubernetes (an unknown or misspelt field fails, as the API server's
strict validation would).  The installer (packaging/installer/) runs against
a node root in a temporary directory: first the script itself with the
package's files unpacked, then the real installer image built with podman
from the package, with the node directory mounted at /host as the DaemonSet
does.  Commands for the node (systemctl) go to a recorder instead of
nsenter.  The package is build-package/package/upm_*.deb (`make check`
builds it); $UPM_DEB names another.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from upmtest.paths import source_dir

SOURCE = source_dir()
INSTALLER = SOURCE / "packaging" / "installer" / "upm-node-installer"
MANIFESTS = sorted((SOURCE / "config" / "runtimes" / "kubernetes").glob("*.yaml"))
NODE_1X = SOURCE / "test" / "fixtures" / "engines" / "containerd-1.6-node.toml"
STATE = "var/lib/upm/node-installer"

try:
    import yaml
    from kubernetes import client as k8s
except ImportError:  # pragma: no cover - depends on the host
    k8s = None


def find_deb() -> Path:
    if os.environ.get("UPM_DEB"):
        return Path(os.environ["UPM_DEB"])
    debs = sorted(glob.glob(str(SOURCE / "build-package" / "package" / "upm_*.deb")))
    if not debs:
        pytest.skip("no build-package/package/upm_*.deb: run `make package` (make check builds it)")
    return Path(debs[-1])


# --- manifests ---------------------------------------------------------------

MODELS = {("v1", "Namespace"): "V1Namespace", ("v1", "ServiceAccount"): "V1ServiceAccount",
          ("v1", "Pod"): "V1Pod", ("apps/v1", "DaemonSet"): "V1DaemonSet",
          ("apps/v1", "Deployment"): "V1Deployment", ("node.k8s.io/v1", "RuntimeClass"): "V1RuntimeClass",
          ("rbac.authorization.k8s.io/v1", "ClusterRole"): "V1ClusterRole",
          ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding"): "V1ClusterRoleBinding"}
SCALARS = {"str": str, "int": int, "bool": bool, "float": (int, float), "object": object,
           "dict(str, str)": dict, "datetime": str}


def strict(value, type_name: str, where: str) -> list[str]:
    """Every field of VALUE is a field of the model TYPE_NAME, recursively."""
    if type_name.startswith("list["):
        if not isinstance(value, list):
            return [f"{where}: a list expected"]
        return [e for i, v in enumerate(value) for e in strict(v, type_name[5:-1], f"{where}[{i}]")]
    if type_name in SCALARS:
        ok = isinstance(value, SCALARS[type_name]) or (type_name == "str" and isinstance(value, (int, str)))
        return [] if ok else [f"{where}: {type_name} expected, got {value!r}"]
    model = getattr(k8s, type_name)
    if not isinstance(value, dict):
        return [f"{where}: an object ({type_name}) expected"]
    fields = {json_name: model.openapi_types[attr] for attr, json_name in model.attribute_map.items()}
    errors = [f"{where}.{key}: unknown field of {type_name}" for key in value if key not in fields]
    for key, v in value.items():
        if key in fields and v is not None:
            errors += strict(v, fields[key], f"{where}.{key}")
    return errors


@pytest.mark.skipif(k8s is None, reason="python3-kubernetes or python3-yaml missing (packaging/install-deps.sh test)")
@pytest.mark.parametrize("manifest", MANIFESTS, ids=[m.name for m in MANIFESTS])
def test_manifest_is_valid(manifest: Path) -> None:
    docs = [d for d in yaml.safe_load_all(manifest.read_text()) if d]
    assert docs
    for doc in docs:
        kind = (doc.get("apiVersion"), doc.get("kind"))
        assert kind in MODELS, f"{manifest.name}: unexpected {kind}"
        errors = strict(doc, MODELS[kind], doc["kind"])
        assert not errors, "\n".join(errors)


def test_installer_daemonset_runs_the_installer() -> None:
    docs = {d["kind"]: d for d in yaml.safe_load_all((SOURCE / "config/runtimes/kubernetes/upm-installer.yaml")
                                                     .read_text()) if d}
    pod = docs["DaemonSet"]["spec"]["template"]["spec"]
    assert pod["hostPID"] is True  # nsenter into PID 1
    c = pod["containers"][0]
    assert c["command"] == ["/usr/bin/upm-node-installer", "run"]
    assert {"name": "host-root", "mountPath": "/host", "mountPropagation": "HostToContainer"} in c["volumeMounts"]
    assert docs["ClusterRole"]["rules"] == [{"apiGroups": [""], "resources": ["nodes"], "verbs": ["get", "patch"]}]


# --- the installer on a simulated node ----------------------------------------

@pytest.fixture
def node(tmp_path: Path) -> Path:
    """A node root with containerd 1.6's configuration and a recorder for node commands."""
    root = tmp_path / "node"
    (root / "etc/containerd").mkdir(parents=True)
    shutil.copy(NODE_1X, root / "etc/containerd/config.toml")
    (root / "usr/bin").mkdir(parents=True)
    (root / "var/lib").mkdir(parents=True)
    recorder = tmp_path / "recorder"
    recorder.write_text('#!/bin/sh\necho "$*" >> "$(dirname "$0")/node-commands"\n')
    recorder.chmod(0o755)
    return root


def tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): (p.read_bytes() if p.is_file() else b"")
            for p in sorted(root.rglob("*"))}


def commands(node: Path) -> list[str]:
    log = node.parent / "node-commands"
    return log.read_text().splitlines() if log.exists() else []


def run_script(node: Path, payload: Path, action: str, check: bool = True) -> subprocess.CompletedProcess:
    env = dict(os.environ, UPM_HOST_ROOT=str(node), UPM_PAYLOAD_ROOT=str(payload),
               UPM_HOST_EXEC=str(node.parent / "recorder"))
    env.pop("NODE_NAME", None)
    r = subprocess.run(["sh", str(INSTALLER), action], capture_output=True, text=True, env=env, timeout=120)
    if check:
        assert r.returncode == 0, r.stderr
    return r


def check_installed(node: Path, payload_bin: bytes) -> None:
    assert (node / "usr/bin/upm-runtime").read_bytes() == payload_bin
    assert (node / "usr/lib/upm/libupm-preload.so").exists()
    assert (node / "usr/lib/systemd/system/upmd.service").exists()
    config = (node / "etc/containerd/config.toml").read_text()
    assert 'BinaryName = "/usr/bin/upm-runtime"' in config
    assert config.startswith(NODE_1X.read_text())
    assert commands(node).count("systemctl restart containerd") == 1
    assert "systemctl enable --now upmd.service" in commands(node)


def test_installer_script_installs_and_undoes_exactly(node: Path, tmp_path: Path) -> None:
    payload = tmp_path / "payload"
    subprocess.run(["dpkg-deb", "-x", str(find_deb()), str(payload)], check=True)
    before = tree(node)

    r = run_script(node, payload, "install")
    assert "not labelling the node" in r.stderr
    check_installed(node, (payload / "usr/bin/upm-runtime").read_bytes())
    run_script(node, payload, "install")  # again: nothing to restart
    assert commands(node).count("systemctl restart containerd") == 1

    run_script(node, payload, "uninstall")
    assert "systemctl disable --now upmd.service" in commands(node)
    assert commands(node).count("systemctl restart containerd") == 2
    assert tree(node) == before


def test_installer_script_refuses_files_it_did_not_write(node: Path, tmp_path: Path) -> None:
    payload = tmp_path / "payload"
    subprocess.run(["dpkg-deb", "-x", str(find_deb()), str(payload)], check=True)
    (node / "usr/bin/upm-runtime").write_text("someone else's")
    r = run_script(node, payload, "install", check=False)
    assert r.returncode == 1
    assert "/usr/bin/upm-runtime is on the node already and this installer did not write it" in r.stderr
    assert commands(node) == []
    (node / "usr/bin/upm-runtime").unlink()
    (node / "var/lib/dpkg/info").mkdir(parents=True)
    (node / "var/lib/dpkg/info/upm.list").write_text("/usr/bin/upm\n")
    r = run_script(node, payload, "install", check=False)
    assert "the node has the Debian package upm installed" in r.stderr


# podman as test_hookd.py runs it here: runc, cgroupfs (this host has hybrid
# cgroups), a private store under /var/cache/upm, file events.
PODMAN_ARGS = ["--root", "/var/cache/upm/podman/root", "--runroot", "/run/upm-podman", "--storage-driver", "vfs",
               "--runtime", "/usr/bin/runc", "--cgroup-manager", "cgroupfs", "--events-backend", "file"]


@pytest.mark.skipif(shutil.which("podman") is None, reason="podman not installed (packaging/install-deps.sh test)")
def test_installer_image_on_a_simulated_node(node: Path) -> None:
    """The image built from the package, run as the DaemonSet runs it (node root at /host)."""
    r = subprocess.run([str(SOURCE / "packaging/installer/build.sh"), str(find_deb()), "localhost/upm-installer:test"],
                       capture_output=True, text=True, timeout=1800,
                       env=dict(os.environ, UPM_PODMAN_ARGS=" ".join(PODMAN_ARGS)))
    if r.returncode != 0 and "debootstrap failed" in r.stderr:
        pytest.skip(f"no Debian base image (no network to the Debian archive?): {r.stderr[-300:]}")
    assert r.returncode == 0, r.stderr
    before = tree(node)

    def podman(action: str) -> None:
        r = subprocess.run(["podman", *PODMAN_ARGS, "run", "--rm", "--network=none", "--privileged",
                            "--ulimit", "nofile=1024:1024", "--ulimit", "nproc=4096:4096",
                            "-v", f"{node}:/host", "-v", f"{node.parent}:/rec",
                            "-e", "UPM_HOST_EXEC=/rec/recorder", "localhost/upm-installer:test",
                            "/usr/bin/upm-node-installer", action], capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr

    podman("install")
    inside = subprocess.run(["podman", *PODMAN_ARGS, "run", "--rm", "--network=none", "--ulimit", "nofile=1024:1024",
                             "--ulimit", "nproc=4096:4096", "localhost/upm-installer:test",
                             "cat", "/usr/bin/upm-runtime"], capture_output=True, timeout=120).stdout
    check_installed(node, inside)
    podman("uninstall")
    assert tree(node) == before
    subprocess.run(["podman", *PODMAN_ARGS, "rmi", "localhost/upm-installer:test"], capture_output=True, timeout=120)
