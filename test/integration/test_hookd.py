# SPDX-License-Identifier: GPL-2.0-or-later
"""upm-hook's hooks.d modes: createRuntime (CRI-O, podman) and precreate (podman).

The containers are started by the real runc and crun (no upm-runtime): their
config.json carries the createRuntime hook as CRI-O adds it from
config/runtimes/crio/hooks.d/99-upm.json.  The rootfs is upmtest's Node's
(host /usr bind-mounted read-only) with `root.readonly` false, as the
engines set it.  The hook path is a two-line script that sets $UPM_CONFIG
(a node configuration in tmp_path) and execs build/bin/upm-hook.

Oracles: the container's own view (/proc/self/maps, /etc/ld.so.preload,
/dev/upm), the host's view of the container's process (/proc/PID/maps,
/proc/PID/ksm_merging_pages via upmtest), the bytes, mtimes and listings of
host sentinel files and directories that a hostile image points at, and our
log.  podman runs with its storage in tmp_path (--root/--runroot, vfs),
cgroupfs, a file events backend and runc; it is skipped, with the reason,
when it is not installed or cannot start a container here.
"""

from __future__ import annotations

import ctypes
import json
import os
import shutil
import stat
import struct
import subprocess
import tempfile
from pathlib import Path

import pytest

from upmtest.containers import Node, hybrid_cgroups, sha256
from upmtest.merge import FRACTION, wait_merged
from upmtest.paths import source_dir
from upmtest.procfs import frames_saved

SOURCE = source_dir()
CRIO_HOOK = SOURCE / "config/runtimes/crio/hooks.d/99-upm.json"
PODMAN_HOOK = SOURCE / "config/runtimes/podman/hooks.d/99-upm.json"
CRIO_EVENTS = {st: SOURCE / f"config/runtimes/crio/hooks.d/99-upm-{st}.json" for st in ("poststart", "poststop")}
PRELOAD = "/dev/upm/libupm-preload.so"
POLICY = "/dev/upm/policy.json"
LIBDL = next((p for p in (Path("/usr/lib/x86_64-linux-gnu/libdl.so.2"), Path("/usr/lib/aarch64-linux-gnu/libdl.so.2"))
              if p.exists()), None)

PROBE = ["/bin/sh", "-c",
         "grep -c libupm-preload.so /proc/self/maps; echo ld:; cat /etc/ld.so.preload 2>/dev/null; echo; echo :ld; "
         "env | sort; echo policy:; cat /dev/upm/policy.json 2>/dev/null; echo :policy; "
         "if [ -f /etc/ld.so.preload ]; then (echo x >> /etc/ld.so.preload) 2>/dev/null && echo ld-writable "
         "|| echo ld-read-only; else echo ld-absent; fi"]


def probe(r: subprocess.CompletedProcess) -> dict:
    assert r.returncode in (0, 1), f"exit {r.returncode}; stdout {r.stdout!r}; stderr {r.stderr!r}"
    lines = r.stdout.splitlines()
    cut = lambda a, b: lines[lines.index(a) + 1:lines.index(b)]  # noqa: E731
    return {"maps": int(lines[0]), "ld": [ln for ln in cut("ld:", ":ld") if ln],
            "env": dict(ln.split("=", 1) for ln in cut(":ld", "policy:") if "=" in ln),
            "policy": "\n".join(cut("policy:", ":policy")), "ld_writable": lines[-1]}


class HookNode:
    """upmtest's Node, but the containers run on the real runtime with the
    createRuntime hook in their config.json (hooks.d mode)."""

    def __init__(self, node: Node, hook_bin: Path) -> None:
        self.n = node
        self.wrapper = node.tmp / "upm-hook-wrapper"
        self.wrapper.write_text(f"#!/bin/sh\nUPM_CONFIG={node.config} exec {hook_bin} \"$@\"\n")
        self.wrapper.chmod(0o755)
        hook = json.loads(CRIO_HOOK.read_text())
        self.hook_entry = dict(hook["hook"], path=str(self.wrapper))
        assert hook["stages"] == ["createRuntime"]
        self.events = {st: dict(json.loads(f.read_text())["hook"], path=str(self.wrapper))
                       for st, f in CRIO_EVENTS.items()}

    def bundle(self, args, annotations=None, readonly=False, ld_so_preload: str | None = None, env=None,
               events: bool = False) -> Path:
        """events: also the poststart/poststop files of the hooks directory.
        Not with crun for short-lived containers: crun 1.8.1 waits for a
        hook's SIGCHLD with sigtimedwait() and loses it when the container's
        process exits at the same moment (the two signals coalesce), then
        kills the finished hook after its timeout."""
        b = self.n.bundle(args, annotations, env)
        spec = json.loads((b / "config.json").read_text())
        spec["root"]["readonly"] = readonly
        spec.setdefault("hooks", {})["createRuntime"] = [self.hook_entry]
        for st, entry in self.events.items():
            if events:
                spec["hooks"][st] = [entry]
        (b / "config.json").write_text(json.dumps(spec, indent="\t"))
        if ld_so_preload is not None:
            (b / "rootfs/etc/ld.so.preload").write_text(ld_so_preload)
        return b

    def run(self, b: Path, wrapper: bool = False):
        cid = self.n.new_id()
        r = self.n.procs.run(self.n.argv("run", "--bundle", b, cid, wrapper=wrapper), timeout=90, env=self.n.env())
        return r, cid

    def start_memhog(self, b: Path):
        cid = self.n.new_id()
        h = self.n.procs.memhog(self.n.argv("run", "--bundle", b, cid, wrapper=False), env=self.n.env())
        state = self.n.procs.run(self.n.argv("state", cid, wrapper=False), env=self.n.env())
        assert state.returncode == 0, state.stderr
        h.pid = json.loads(state.stdout)["pid"]
        return h

    def log(self) -> str:
        return self.n.our_log()


@pytest.fixture(params=["runc", "crun"])
def hnode(request, tmp_path, runtime_bin, preload_lib, policies_dir, memhog, base_spec, procs, hook_bin):
    n = Node(request.param, tmp_path, runtime_bin, preload_lib, policies_dir, memhog, base_spec, procs)
    try:
        yield HookNode(n, hook_bin)
    finally:
        procs.cleanup()
        n.cleanup()


@pytest.fixture
def runc_hnode(tmp_path, runtime_bin, preload_lib, policies_dir, memhog, base_spec, procs, hook_bin):
    n = Node("runc", tmp_path, runtime_bin, preload_lib, policies_dir, memhog, base_spec, procs)
    try:
        yield HookNode(n, hook_bin)
    finally:
        procs.cleanup()
        n.cleanup()


# ---------------------------------------------------------------------------


def test_shipped_hook_files():
    """The hooks.d files: 1.0.0 schema, anchored annotation regexes, one stage each."""
    for path, stage in ((CRIO_HOOK, "createRuntime"), (PODMAN_HOOK, "precreate"),
                        (CRIO_EVENTS["poststart"], "poststart"), (CRIO_EVENTS["poststop"], "poststop")):
        h = json.loads(path.read_text())
        assert h["version"] == "1.0.0" and h["stages"] == [stage]
        assert h["hook"]["path"] == "/usr/bin/upm-hook" and h["hook"]["args"] == ["upm-hook", stage]
        assert h["when"] == {"annotations": {"^upm\\.enabled$": "^true$"}}
        assert path.name.startswith("99-upm")


def test_create_runtime_injects(hnode):
    """Annotated: the preload is loaded through the container's
    /etc/ld.so.preload (the image's entries kept, first), the policy is at
    /dev/upm/policy.json with the annotation's domain, both read-only, no
    LD_PRELOAD; the image's file on the host is unchanged."""
    assert LIBDL is not None
    image_ld = f"# the image's own preload\n{LIBDL}\n"
    b = hnode.bundle(PROBE, {"upm.enabled": "true", "upm.policy": "python-ml", "upm.domain": "tenant-a"},
                     ld_so_preload=image_ld, events=hnode.n.name == "runc")
    host_file = b / "rootfs/etc/ld.so.preload"
    st = host_file.stat()
    r, cid = hnode.run(b)
    p = probe(r)
    assert p["maps"] >= 1, r.stdout
    assert p["ld"] == ["# the image's own preload", str(LIBDL), PRELOAD]
    assert p["ld_writable"] == "ld-read-only"
    assert "LD_PRELOAD" not in p["env"] and "UPM_POLICY" not in p["env"]
    policy = json.loads(p["policy"])
    assert policy["domain"] == "tenant-a"
    assert policy["classes"] == json.loads(
        "\n".join(ln for ln in (hnode.n.policy_dir / "python-ml.json").read_text().splitlines()
                  if not ln.lstrip().startswith("//")))["classes"]
    assert host_file.read_text() == image_ld and host_file.stat().st_mtime_ns == st.st_mtime_ns
    log = hnode.log()
    assert f"container `{cid}`: createRuntime: injected `{PRELOAD}`" in log, log
    assert "extended the image's `/etc/ld.so.preload`" in log and "domain `tenant-a`" in log
    if hnode.n.name == "runc":   # the poststart/poststop files of the same directory ran too
        assert f"container `{cid}`: poststart, pid " in log and f"container `{cid}`: poststop" in log, log
    assert "] error: " not in log, log


def test_image_without_ld_so_preload(runc_hnode):
    """No /etc/ld.so.preload in a writable image: an empty mount point is
    created in the rootfs (the only write into the image) and stays empty."""
    b = runc_hnode.bundle(PROBE, {"upm.enabled": "true"})
    r, cid = runc_hnode.run(b)
    p = probe(r)
    assert p["maps"] >= 1 and p["ld"] == [PRELOAD]
    assert (b / "rootfs/etc/ld.so.preload").read_bytes() == b""
    assert "created `/etc/ld.so.preload` (empty in the image)" in runc_hnode.log()


def test_read_only_rootfs_without_ld_so_preload_fails_open(hnode):
    """root.readonly and no /etc/ld.so.preload: nothing is created or mounted,
    the container starts without the preload, the log says why."""
    b = hnode.bundle(PROBE, {"upm.enabled": "true"}, readonly=True)
    before = sorted(str(p.relative_to(b)) for p in b.rglob("*"))
    r, cid = hnode.run(b)
    p = probe(r)
    assert p["maps"] == 0 and p["ld"] == [] and p["policy"] == ""
    assert sorted(str(p.relative_to(b)) for p in b.rglob("*")) == before
    assert (f"container `{cid}`: not deduplicated: the image has no `/etc/ld.so.preload` and the spec makes "
            "its rootfs read-only") in hnode.log()


def test_preload_uses_the_mounted_policy(hnode):
    """Without UPM_POLICY the preload reads /dev/upm/policy.json: a policy with
    log_level info makes every process of the container say so on stderr."""
    (hnode.n.policy_dir / "loud.json").write_text('{"log_level": "info"}')
    b = hnode.bundle(["/bin/sh", "-c", "sleep 0.5"], {"upm.enabled": "true", "upm.policy": "loud"})
    r, cid = hnode.run(b)
    assert r.returncode == 0, r.stderr
    assert "info: policy `/dev/upm/policy.json`, backend " in r.stderr, r.stderr


def test_setuid_programs_get_an_inert_preload(runc_hnode):
    """/etc/ld.so.preload reaches set-user-ID programs too (LD_PRELOAD never
    did): run as uid 1000, setuid-root copies of grep and sleep have the
    preload mapped but inert (no policy read, nothing logged, the caller's
    UPM_* ignored), while the plain sleep runs it."""
    n = runc_hnode.n
    (n.policy_dir / "loud.json").write_text('{"log_level": "info"}')
    b = runc_hnode.bundle(["/bin/sh", "-c", "/opt/grep-suid -c libupm-preload.so /proc/self/maps; "
                           "/opt/sleep-suid 0.5; /usr/bin/sleep 0.5"],
                          {"upm.enabled": "true", "upm.policy": "loud"}, env=["UPM_LOG=debug"])
    for prog in ("grep", "sleep"):
        suid = b / f"rootfs/opt/{prog}-suid"
        shutil.copy(f"/usr/bin/{prog}", suid)
        os.chmod(suid, 0o4755)
    spec = json.loads((b / "config.json").read_text())
    spec["process"]["user"] = {"uid": 1000, "gid": 1000}
    spec["process"]["noNewPrivileges"] = False
    (b / "config.json").write_text(json.dumps(spec))
    r, cid = runc_hnode.run(b)
    assert r.returncode == 0, r.stderr
    assert int(r.stdout) >= 1     # mapped in the setuid grep
    upm_lines = [ln for ln in r.stderr.splitlines() if ln.startswith("upm[")]
    assert upm_lines, r.stderr
    # one upm line prefix per process that ran the preload: the shell and the
    # plain sleep, not the setuid sleep (each lives 0.5 s, long enough to log)
    pids = {ln.split("]")[0] for ln in upm_lines}
    assert len(pids) == 2, r.stderr


def test_no_dev_tmpfs_fails_open(hnode):
    """A spec without a tmpfs on /dev: nowhere to put the preload but the
    image; nothing is written, the container starts, the log says why."""
    b = hnode.bundle(PROBE, {"upm.enabled": "true"})
    spec = json.loads((b / "config.json").read_text())
    spec["mounts"] = [m for m in spec["mounts"] if m["destination"] != "/dev"]
    (b / "config.json").write_text(json.dumps(spec))
    r, cid = hnode.run(b)
    p = probe(r)
    assert p["maps"] == 0 and p["ld"] == []
    # (the runtime itself creates its device nodes in the image's /dev)
    assert not (b / "rootfs/dev/upm").exists() and not (b / "rootfs/etc/ld.so.preload").exists()
    assert f"container `{cid}`: not deduplicated: the spec mounts no tmpfs on `/dev`" in hnode.log()


def test_hardening_is_reported_not_applied(runc_hnode):
    """A policy with a shared layout and hash seed: the createRuntime hook
    cannot apply them (no environment, no command change) and says so; the
    preload is injected anyway."""
    b = runc_hnode.bundle(PROBE, {"upm.enabled": "true", "upm.policy": "python-shared", "upm.domain": "t1"})
    r, cid = runc_hnode.run(b)
    assert probe(r)["maps"] >= 1
    log = runc_hnode.log()
    assert f"container `{cid}`: createRuntime: the policy's layout `shared-per-domain`" in log, log
    assert "not applied: a createRuntime hook cannot change the environment" in log


def test_unannotated_container_is_untouched(runc_hnode):
    b = runc_hnode.bundle(PROBE, {"upm.enabled": "True"})
    before = sorted(str(p.relative_to(b)) for p in b.rglob("*"))
    digest = sha256(b / "config.json")
    r, cid = runc_hnode.run(b)
    p = probe(r)
    assert p["maps"] == 0 and p["ld"] == []
    assert sorted(str(p.relative_to(b)) for p in b.rglob("*")) == before
    assert sha256(b / "config.json") == digest
    assert "annotation `upm.enabled` is `True`, not `true`" in runc_hnode.log()


def test_fail_closed_refuses(runc_hnode):
    """A fail-closed policy whose preload is missing: the hook exits 1 and
    runc refuses the container."""
    (runc_hnode.n.policy_dir / "strict.json").write_text('{"on_error": "closed"}')
    runc_hnode.n.write_config(preload="/nonexistent/libupm-preload.so")
    b = runc_hnode.bundle(PROBE, {"upm.enabled": "true", "upm.policy": "strict"})
    r, cid = runc_hnode.run(b)
    assert r.returncode != 0 and "ld:" not in r.stdout
    assert f"container `{cid}`: refused: preload `/nonexistent/libupm-preload.so` cannot be read" in runc_hnode.log()


def test_fail_open_on_missing_preload(runc_hnode):
    runc_hnode.n.write_config(preload="/nonexistent/libupm-preload.so")
    b = runc_hnode.bundle(PROBE, {"upm.enabled": "true"})
    r, cid = runc_hnode.run(b)
    p = probe(r)
    assert r.returncode == 0 and p["maps"] == 0
    assert f"container `{cid}`: not deduplicated: preload `/nonexistent/libupm-preload.so` cannot be read" \
        in runc_hnode.log()


def test_spec_already_injected_by_upm_runtime(runc_hnode):
    """upm-runtime and the hooks.d hook both configured: the hook sees the
    spec's own injection and does nothing; the preload is there once."""
    b = runc_hnode.bundle(PROBE, {"upm.enabled": "true"})
    r, cid = runc_hnode.run(b, wrapper=True)
    p = probe(r)
    assert p["maps"] >= 1 and p["env"].get("LD_PRELOAD") == PRELOAD and p["ld"] == []
    assert f"container `{cid}`: createRuntime: the spec has the preload already" in runc_hnode.log()


def test_two_containers_merge(hnode, ksm_fast, report):
    """Two containers injected by the createRuntime hook hold the same 64 MiB:
    the preload is mapped in their processes (seen from the host) and the
    host's KSM merges the memory."""
    memhog = ["/opt/upm-memhog", "--mib", "64", "--seed", "5", "--hold-until-signal"]
    hogs = [hnode.start_memhog(hnode.bundle(memhog, {"upm.enabled": "true"})) for _ in range(2)]
    for h in hogs:
        maps = Path(f"/proc/{h.pid}/maps").read_text()
        assert PRELOAD in maps, f"the preload is not mapped in {h.pid}"
    took = wait_merged(hogs, timeout=30)
    saved = frames_saved(hogs)
    report(f"{hnode.n.name}: 2 containers via createRuntime x 64 MiB, 95% merged {took:.2f} s after ready, "
           f"{saved} of {hogs[0].pages} pages share frames")
    assert saved >= FRACTION * hogs[0].pages


# ---------------------------------------------------------------------------
# Hostile images: links to host paths must resolve inside the rootfs or not at all.


def snapshot(d: Path) -> dict:
    return {str(p.relative_to(d)): (p.read_bytes() if p.is_file() and not p.is_symlink() else None,
                                    p.lstat().st_mtime_ns) for p in sorted(d.rglob("*"))}


HOSTILE = ["etc-absolute", "etc-dotdot", "ld-absolute", "ld-dotdot", "ld-inside", "ld-device", "ld-proc",
           "dev-upm", "ld-dir", "ld-is-dir", "ld-large"]


@pytest.mark.parametrize("case", HOSTILE)
def test_hostile_rootfs(hnode, case):
    """/etc, /etc/ld.so.preload and /dev/upm as links to a host directory or
    file (absolute, or a `..` chain), a device, a /proc file, a directory:
    the host's files keep their bytes and mtimes, no file appears on the
    host, the container starts, and the log says why it was not
    deduplicated (or, where the link resolves inside the rootfs, it is)."""
    host = hnode.n.tmp / "host"
    host.mkdir()
    sentinel = host / "ld.so.preload"
    sentinel.write_text("/host/evil.so\n")
    (host / "passwd").write_text("root:x:0:0::/root:/bin/sh\n")
    before = snapshot(host)
    b = hnode.bundle(PROBE, {"upm.enabled": "true"})
    rootfs = b / "rootfs"
    up = "../" * 30
    expect = None   # None: injected; else the reason in the log
    if case in ("etc-absolute", "etc-dotdot"):
        (rootfs / "etc").rmdir()
        (rootfs / "etc").symlink_to(str(host) if case == "etc-absolute" else up + str(host).lstrip("/"))
        expect = "not deduplicated: the image has no `/etc`"
    elif case in ("ld-absolute", "ld-dotdot"):
        (rootfs / "etc/ld.so.preload").symlink_to(str(sentinel) if case == "ld-absolute"
                                                 else up + str(sentinel).lstrip("/"))
        expect = "not deduplicated: `/etc/ld.so.preload` in the image is a link that resolves to nothing inside the rootfs"
    elif case == "ld-inside":
        # the same absolute path exists inside the rootfs: that file is used
        inside = rootfs / str(sentinel).lstrip("/")
        inside.parent.mkdir(parents=True)
        inside.write_text(f"{LIBDL}\n")
        (rootfs / "etc/ld.so.preload").symlink_to(str(sentinel))
    elif case == "ld-device":
        # (a FIFO would hang the container's own loader, with or without upm)
        (rootfs / "etc/ld.so.preload").symlink_to("/dev/null")
        expect = "not deduplicated: `/etc/ld.so.preload` in the image resolves across a mount"
    elif case == "ld-proc":
        (rootfs / "etc/ld.so.preload").symlink_to("/proc/1/environ")
        expect = "not deduplicated: `/etc/ld.so.preload` in the image resolves across a mount"
    elif case == "ld-dir":
        (rootfs / "etc/ld.so.preload").symlink_to(str(host))
        expect = "not deduplicated: `/etc/ld.so.preload` in the image is a link that resolves to nothing inside the rootfs"
    elif case == "ld-is-dir":
        (rootfs / "etc/ld.so.preload").mkdir()
        expect = "not deduplicated: `/etc/ld.so.preload` in the image is not a regular file"
    elif case == "ld-large":
        (rootfs / "etc/ld.so.preload").write_text("# padding\n" * 7000)
        expect = "not deduplicated: `/etc/ld.so.preload` in the image is larger than 65536 bytes"
    elif case == "dev-upm":
        (rootfs / "dev/upm").symlink_to(str(host))
    r, cid = hnode.run(b)
    assert snapshot(host) == before, "a host file was written, created or removed"
    p = probe(r)
    assert r.returncode == 0
    log = hnode.log()
    if expect is None:
        assert p["maps"] >= 1 and p["ld"][-1] == PRELOAD, (r.stdout, log)
        if case == "ld-inside":
            assert p["ld"] == [str(LIBDL), PRELOAD]
            assert (rootfs / str(sentinel).lstrip("/")).read_text() == f"{LIBDL}\n"
            assert "a link in the image, resolved inside the rootfs" in log
    else:
        assert p["maps"] == 0, (r.stdout, log)
        assert f"container `{cid}`: {expect}" in log, log
        assert not (rootfs / "dev/upm").exists() or case == "dev-upm"


def test_hostile_busybox_image(hnode, tmp_path):
    """A static busybox image whose /etc, /run, /usr/lib and /dev/upm are links
    to host directories (absolute and `..` chains): the container runs, the
    host directories are untouched, the log says why."""
    busybox = shutil.which("busybox")
    if busybox is None or subprocess.run(["ldd", busybox], capture_output=True).returncode == 0:
        pytest.skip("no static busybox (packaging/install-deps.sh test installs busybox-static)")
    host = tmp_path / "host-etc"
    host.mkdir()
    (host / "ld.so.preload").write_text("/host/evil.so\n")
    hostrun = tmp_path / "host-run"
    hostrun.mkdir()
    before = (snapshot(host), snapshot(hostrun))
    b = hnode.bundle(["/bin/busybox", "true"], {"upm.enabled": "true"})
    rootfs = b / "rootfs"
    spec = json.loads((b / "config.json").read_text())
    spec["mounts"] = [m for m in spec["mounts"] if m["destination"] != "/usr"]
    (b / "config.json").write_text(json.dumps(spec))
    (rootfs / "bin").unlink()
    (rootfs / "bin").mkdir()
    shutil.copy(busybox, rootfs / "bin/busybox")
    (rootfs / "etc").rmdir()
    (rootfs / "etc").symlink_to(str(host))
    (rootfs / "run").symlink_to("../" * 20 + str(hostrun).lstrip("/"))
    (rootfs / "usr/lib").symlink_to("../" * 20 + str(hostrun).lstrip("/"))
    (rootfs / "dev/upm").symlink_to(str(hostrun))
    r, cid = hnode.run(b)
    assert r.returncode == 0, r.stderr
    assert (snapshot(host), snapshot(hostrun)) == before
    assert f"container `{cid}`: not deduplicated: the image has no `/etc`" in hnode.log()


# ---------------------------------------------------------------------------
# Hostile images, continued: device nodes, volumes, files of other users.
# The hook runs as host root, in the runtime's cgroup (outside the
# container's device allow-list), in the container's mount namespace.


class Inotify:
    """IN_OPEN events on one path (through ctypes: the stdlib has no inotify)."""

    IN_OPEN = 0x20

    def __init__(self, path: Path) -> None:
        self.libc = ctypes.CDLL(None, use_errno=True)
        self.fd = self.libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        assert self.fd >= 0, os.strerror(ctypes.get_errno())
        wd = self.libc.inotify_add_watch(self.fd, os.fsencode(path), self.IN_OPEN)
        assert wd >= 0, os.strerror(ctypes.get_errno())

    def opens(self) -> int:
        n = 0
        while True:
            try:
                data = os.read(self.fd, 4096)
            except BlockingIOError:
                return n
            i = 0
            while i < len(data):
                _wd, mask, _cookie, length = struct.unpack_from("iIII", data, i)
                n += bool(mask & self.IN_OPEN)
                i += 16 + length

    def close(self) -> None:
        os.close(self.fd)


def test_ld_so_preload_device_is_never_opened(hnode):
    """Security #1: the image's /etc/ld.so.preload is a character device (1:3,
    /dev/null's numbers, harmless; a watchdog 10:130 would reboot the node).
    The hook must not open it: it resolves with O_PATH, sees a device and
    stops.  Oracle: an inotify IN_OPEN watch on the device node in the rootfs,
    read after `create` (the createRuntime hook has run, the container's own
    loader has not).  O_PATH opens raise no IN_OPEN (checked here first, with
    a control open that must be seen)."""
    b = hnode.bundle(PROBE, {"upm.enabled": "true"})
    node = b / "rootfs/etc/ld.so.preload"
    os.mknod(node, 0o644 | stat.S_IFCHR, os.makedev(1, 3))
    watch = Inotify(node)
    try:
        os.close(os.open(node, os.O_PATH))
        if watch.opens() != 0:
            pytest.skip("this kernel reports O_PATH opens as IN_OPEN: the oracle cannot tell them apart")
        os.close(os.open(node, os.O_RDONLY))
        assert watch.opens() == 1, "the control open of the device node raised no IN_OPEN"
        cid = hnode.n.new_id()
        # (the created container's init keeps the runtime's stdio: files, not pipes)
        with open(hnode.n.tmp / f"create-{cid}.err", "w+") as err:
            r = subprocess.run(hnode.n.argv("create", "--bundle", b, cid, wrapper=False), env=hnode.n.env(),
                               stdin=subprocess.DEVNULL, stdout=err, stderr=err, timeout=90)
            err.seek(0)
            assert r.returncode == 0, err.read()
        log = hnode.log()
        assert f"container `{cid}`: not deduplicated: `/etc/ld.so.preload` in the image is not a regular file" \
            in log, log
        assert watch.opens() == 0, "the createRuntime hook opened the image's device node"
    finally:
        watch.close()


def user_bundle(hnode, mounts=(), uid=1000):
    """A bundle whose process runs as `uid` and prints what it can see of the
    preload files; `mounts`: (destination, host directory) read-write binds."""
    b = hnode.bundle(["/bin/sh", "-c", "grep -c libupm-preload.so /proc/self/maps; cat /etc/ld.so.preload; "
                      "cat /dev/upm/ld.so.preload; ls -l /dev/upm; true"], {"upm.enabled": "true"})
    spec = json.loads((b / "config.json").read_text())
    spec["process"]["user"] = {"uid": uid, "gid": uid}
    for dest, src in mounts:
        spec["mounts"].append({"destination": dest, "type": "bind", "source": str(src), "options": ["rbind", "rw"]})
    (b / "config.json").write_text(json.dumps(spec))
    return b


SECRET = "TOP-SECRET-of-the-host-1234"


def test_link_to_a_volume_is_not_read(hnode):
    """Security #2a: /vol is a bind of a host directory holding a root-only
    (0600) file; the image's /etc/ld.so.preload links to /vol/secret and the
    container runs as uid 1000.  The hook must not read across the mount: the
    secret never reaches the container (its stdout, stderr through ld.so's
    complaints, /dev/upm/ld.so.preload); the host file is unchanged; the
    container starts without upm and the log says why."""
    host = hnode.n.tmp / "host-vol"
    host.mkdir()
    (host / "secret").write_text(SECRET + "\n")
    os.chmod(host / "secret", 0o600)
    before = snapshot(host)
    b = user_bundle(hnode, [("/vol", host)])
    (b / "rootfs/etc/ld.so.preload").symlink_to("/vol/secret")
    r, cid = hnode.run(b)
    log = hnode.log()
    assert SECRET not in r.stdout and SECRET not in r.stderr, (r.stdout, r.stderr)
    assert snapshot(host) == before
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[0] == "0", (r.stdout, log)
    assert f"container `{cid}`: not deduplicated: `/etc/ld.so.preload` in the image resolves across a mount" \
        in log, log


def test_etc_link_to_a_volume_creates_nothing(hnode):
    """Security #2b: the image's /etc links to /data, a writable bind of a host
    directory.  The hook must not create its mount point there: the host
    directory stays empty, the container starts without upm, the log says
    why."""
    host = hnode.n.tmp / "host-data"
    host.mkdir()
    b = user_bundle(hnode, [("/data", host)])
    (b / "rootfs/etc").rmdir()
    (b / "rootfs/etc").symlink_to("/data")
    r, cid = hnode.run(b)
    log = hnode.log()
    assert list(host.iterdir()) == [], "the hook created a file in the host directory"
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[0] == "0", (r.stdout, log)
    assert f"container `{cid}`: not deduplicated: `/etc` in the image resolves across a mount" in log, log


def test_image_file_is_read_as_the_container_user(hnode):
    """Security #2 (reading as the container's user): the image's own
    /etc/ld.so.preload is root-only (0600) and the container runs as uid
    1000, whose loader cannot read it.  The hook must not read it for them
    and publish it in a world-readable file: the text never reaches the
    container, which starts without upm, the log says why.  The same file
    made readable (0644) is extended and the preload is loaded."""
    b = user_bundle(hnode)
    image = b / "rootfs/etc/ld.so.preload"
    image.write_text(SECRET + "\n")
    os.chmod(image, 0o600)
    r, cid = hnode.run(b)
    log = hnode.log()
    assert SECRET not in r.stdout and SECRET not in r.stderr, (r.stdout, r.stderr)
    assert r.returncode == 0 and r.stdout.splitlines()[0] == "0", (r.stdout, r.stderr, log)
    assert (f"container `{cid}`: not deduplicated: `/etc/ld.so.preload` in the image cannot be read by the "
            "container's user (uid 1000, gid 1000)") in log, log
    # readable by the container's user: injected after the image's entry
    b = user_bundle(hnode)
    (b / "rootfs/etc/ld.so.preload").write_text(f"{LIBDL}\n")
    r, cid = hnode.run(b)
    lines = r.stdout.splitlines()
    assert r.returncode == 0 and int(lines[0]) >= 1, (r.stdout, r.stderr, hnode.log())
    assert lines[1:3] == [str(LIBDL), PRELOAD], r.stdout


def test_image_file_is_read_as_the_mapped_user(hnode):
    """Security #2, user namespaces: the container's root is host uid 100000
    (linux.uidMappings); the image's /etc/ld.so.preload is 0600.  Owned by
    host uid 100000 (the container's root) it is read and extended; owned by
    host root, which the container's root cannot read, the container starts
    without upm and the log names both ids.  (The hook also creates /dev/upm
    as the owner of the runtime's /dev tmpfs, which belongs to the user
    namespace: as host root, mkdir failed with EOVERFLOW.)"""
    results = {}
    # runc binds the rootfs from inside the user namespace: its parents must
    # be searchable by host uid 100000 (tmp_path's are 0700)
    public = Path(tempfile.mkdtemp(prefix="upm-userns-", dir="/tmp"))
    os.chmod(public, 0o711)
    try:
        _mapped_runs(hnode, public, results)
    finally:
        shutil.rmtree(public, ignore_errors=True)
    r, cid = results[100000]
    lines = r.stdout.splitlines()
    assert r.returncode == 0 and int(lines[0]) >= 1, (r.stdout, r.stderr, hnode.log())
    assert lines[1:3] == [str(LIBDL), PRELOAD], r.stdout
    r, cid = results[0]
    log = hnode.log()
    assert r.returncode == 0 and r.stdout.splitlines()[0] == "0", (r.stdout, r.stderr, log)
    assert (f"container `{cid}`: not deduplicated: `/etc/ld.so.preload` in the image cannot be read by the "
            "container's user (uid 0, gid 0; host uid 100000, gid 100000)") in log, log


def _mapped_runs(hnode, public: Path, results: dict) -> None:
    for owner in (100000, 0):
        b = user_bundle(hnode, uid=0)
        b = Path(shutil.move(b, public / b.name))
        spec = json.loads((b / "config.json").read_text())
        spec["linux"]["namespaces"].append({"type": "user"})
        spec["linux"]["uidMappings"] = [{"containerID": 0, "hostID": 100000, "size": 65536}]
        spec["linux"]["gidMappings"] = [{"containerID": 0, "hostID": 100000, "size": 65536}]
        # (sysfs and cgroupfs of the host's network and cgroup namespaces
        # cannot be mounted from a new user namespace)
        spec["mounts"] = [m for m in spec["mounts"] if m["destination"] not in ("/sys", "/sys/fs/cgroup")]
        (b / "config.json").write_text(json.dumps(spec))
        image = b / "rootfs/etc/ld.so.preload"
        image.write_text(f"{LIBDL}\n")
        os.chown(image, owner, owner)
        os.chmod(image, 0o600)
        results[owner] = hnode.run(b)


# ---------------------------------------------------------------------------
# precreate (podman): the spec on stdin, the spec on stdout


def precreate(hook_bin: Path, config: Path, data: bytes) -> subprocess.CompletedProcess:
    return subprocess.run([hook_bin, "precreate"], input=data, capture_output=True, timeout=30,
                          env={"PATH": "/usr/bin:/bin", "UPM_CONFIG": str(config), "SECRET": "do-not-log-me"})


def test_precreate_direct(runc_hnode, hook_bin, base_spec):
    n = runc_hnode.n
    spec = dict(base_spec, annotations={"upm.enabled": "true", "upm.domain": "d1"})
    spec["process"] = dict(spec["process"], env=spec["process"]["env"] + ["TOKEN=spec-secret-value"])
    r = precreate(hook_bin, n.config, json.dumps(spec).encode())
    assert r.returncode == 0 and r.stderr == b""
    out = json.loads(r.stdout)
    env = dict(e.split("=", 1) for e in out["process"]["env"])
    assert env["LD_PRELOAD"] == PRELOAD and env["UPM_POLICY"] == POLICY and env["UPM_DOMAIN"] == "d1"
    assert {m["destination"] for m in out["mounts"]} >= {PRELOAD, POLICY}
    assert "precreate: injected" in n.our_log()
    # not annotated, not JSON, too large: the input comes back byte for byte
    plain = json.dumps(base_spec).encode()
    big = json.dumps(dict(spec, pad="x" * (5 << 20))).encode()
    for data in (plain, b"{not json", big, b""):
        r = precreate(hook_bin, n.config, data)
        assert r.returncode == 0 and r.stdout == data, r.stderr
    assert "larger than 4194304 bytes; passed on unchanged" in n.our_log()
    # fail closed
    (n.policy_dir / "strict.json").write_text('{"on_error": "closed"}')
    n.write_config(preload="/nonexistent/libupm-preload.so")
    strict = dict(base_spec, annotations={"upm.enabled": "true", "upm.policy": "strict"})
    r = precreate(hook_bin, n.config, json.dumps(strict).encode())
    assert r.returncode == 1 and b"upm-hook: error: precreate: refused" in r.stderr
    assert "do-not-log-me" not in n.our_log() and "spec-secret-value" not in n.our_log()


# ---------------------------------------------------------------------------
# podman


PODMAN = Path("/usr/bin/podman")


class Podman:
    def __init__(self, store: Path, hooks_dir: Path, runtime: str) -> None:
        # podman refuses a runroot longer than 50 characters: `store` is short.
        # With crun, podman runs in a private mount namespace without
        # /sys/fs/cgroup/unified, like Node's crun (upmtest/containers.py).
        prefix = []
        if runtime == "crun" and hybrid_cgroups():
            prefix = ["unshare", "-m", "sh", "-c", 'umount -l /sys/fs/cgroup/unified 2>/dev/null; exec "$0" "$@"']
        self.base = [*prefix, str(PODMAN), "--root", str(store / "root"), "--runroot", str(store / "run"),
                     "--storage-driver", "vfs", "--cgroup-manager", "cgroupfs", "--events-backend", "file",
                     "--runtime", f"/usr/bin/{runtime}", "--hooks-dir", str(hooks_dir)]

    def run(self, rootfs: Path, args: list[str], annotations: dict[str, str], *extra: str):
        # podman's default rlimits (nofile, nproc = 1048576) exceed what this
        # host allows a container; --rootfs is a switch: the rootfs is the first operand
        argv = [*self.base, "run", "--rm", "--network", "none", "--ulimit", "nofile=1024:1024",
                "--ulimit", "nproc=4096:4096", "-v", "/usr:/usr:ro", *extra]
        for k, v in annotations.items():
            argv += ["--annotation", f"{k}={v}"]
        return subprocess.run([*argv, "--rootfs", str(rootfs), *args], capture_output=True, text=True, timeout=180)


def podman_rootfs(tmp: Path, name: str) -> Path:
    r = tmp / name
    for d in ("usr", "proc", "dev", "sys", "tmp", "etc", "run"):
        (r / d).mkdir(parents=True)
    for link, target in (("bin", "usr/bin"), ("sbin", "usr/sbin"), ("lib", "usr/lib"), ("lib64", "usr/lib64")):
        (r / link).symlink_to(target)
    return r


@pytest.fixture(params=["runc", "crun"])
def podman(request, tmp_path, runc_hnode):
    if not PODMAN.exists():
        pytest.skip("podman is not installed (packaging/install-deps.sh test installs it)")
    hooks = tmp_path / "hooks.d"
    hooks.mkdir()
    store = Path(tempfile.mkdtemp(prefix="upm-pm-", dir="/tmp"))
    pm = Podman(store, hooks, request.param)
    try:
        probe_run = pm.run(podman_rootfs(tmp_path, "probe-rootfs"), ["/bin/true"], {})
        if probe_run.returncode != 0:
            pytest.skip(f"podman cannot start a container here: {probe_run.stderr.strip()[-300:]}")
        yield pm, hooks, runc_hnode
    finally:
        subprocess.run([*pm.base, "rm", "-af"], capture_output=True, timeout=120)
        subprocess.run(["umount", "-R", str(store / "root")], capture_output=True, timeout=60)
        shutil.rmtree(store, ignore_errors=True)


@pytest.mark.parametrize("mode", ["createRuntime", "precreate"])
def test_podman_hooks_dir(podman, mode, tmp_path):
    """podman --hooks-dir with the shipped file (hook path pointed at the test
    wrapper), runc and crun: annotated → the preload is mapped; unannotated
    → it is not."""
    pm, hooks, hn = podman
    shipped = json.loads((CRIO_HOOK if mode == "createRuntime" else PODMAN_HOOK).read_text())
    shipped["hook"]["path"] = str(hn.wrapper)
    (hooks / "99-upm.json").write_text(json.dumps(shipped))
    cmd = ["/bin/sh", "-c", "grep -c libupm-preload.so /proc/self/maps; cat /etc/ld.so.preload 2>/dev/null; "
                            "env | grep -c '^LD_PRELOAD=' || true"]
    r = pm.run(podman_rootfs(tmp_path, "rootfs-a"), cmd, {"upm.enabled": "true", "upm.domain": "pd"})
    assert r.returncode == 0, r.stderr
    lines = r.stdout.split()
    assert int(lines[0]) >= 1, (r.stdout, hn.log())
    log = hn.log()
    if mode == "createRuntime":
        assert PRELOAD in lines and lines[-1] == "0"
        assert ": createRuntime: injected" in log, log
    else:
        assert PRELOAD not in lines[1:-1] and lines[-1] == "1"
        assert "precreate: injected" in log and "domain `pd`" in log, log
    r = pm.run(podman_rootfs(tmp_path, "rootfs-b"), cmd, {"other": "x"})
    assert r.returncode == 0 and r.stdout.split()[0] == "0", r.stdout


def test_help(hook_bin):
    r = subprocess.run([hook_bin, "--help"], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0 and "createRuntime" in r.stdout and "precreate" in r.stdout
    for stage in ("createRuntime", "prestart", "precreate"):
        r = subprocess.run([hook_bin, stage, "--help"], capture_output=True, text=True, timeout=30,
                           stdin=subprocess.DEVNULL)
        assert r.returncode == 0 and "Usage: upm-hook " + stage in r.stdout, r.stdout


def test_create_runtime_with_bad_state_exits_zero(hook_bin, runc_hnode):
    """createRuntime with no, malformed or pid-less state: exit 0, an error line."""
    env = {"PATH": "/usr/bin:/bin", "UPM_CONFIG": str(runc_hnode.n.config)}
    for data in (b"", b"{not json", json.dumps({"id": "c1", "bundle": "/x"}).encode(),
                 json.dumps({"id": "c1", "pid": 1}).encode()):
        r = subprocess.run([hook_bin, "createRuntime"], input=data, capture_output=True, timeout=30, env=env)
        assert r.returncode == 0 and r.stdout == b"", r.stderr
    errors = [ln for ln in runc_hnode.log().splitlines() if "] error: " in ln]
    assert len(errors) == 4, errors
    assert "no `pid`" in errors[2] and "no `bundle`" in errors[3]
