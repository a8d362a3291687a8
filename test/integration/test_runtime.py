# SPDX-License-Identifier: GPL-2.0-or-later
"""upm-runtime with the real runc and crun of this machine.

Every test builds OCI bundles in tmp_path: a rootfs with the host's /usr
bind-mounted read-only (bin, sbin, lib, lib64 are links into it, as on the
host), so glibc programs run inside, plus a copy of upm-memhog in /opt.  The
containers are started through build/bin/upm-runtime with a node
configuration in tmp_path ($UPM_CONFIG), a state directory of their own
(--root in tmp_path) and unique ids, and are deleted on teardown whatever
happened (upmtest/containers.py's Node).  The oracles are the container's
own view (/proc/self/maps, its environment, the files at /run/upm),
config.json's bytes, both logs (ours and the runtime's --log), and for
merging the kernel's KSM counters of the container processes read from the
host.

crun refuses hosts where cgroup v1 and a cgroup v2 hierarchy with
controllers are mounted side by side ("hybrid"), which is how this machine
is set up; crun is then run in a private mount namespace in which
/sys/fs/cgroup/unified is unmounted, so that it sees plain cgroup v1 (the
host's mounts are not changed).
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from upmtest.containers import POLICY_IN_CONTAINER, PRELOAD_IN_CONTAINER, Node, sha256
from upmtest.merge import FRACTION, assert_not_merged, describe, wait_full_scans, wait_merged
from upmtest.procfs import frames_saved


@pytest.fixture(params=["runc", "crun"])
def node(request, tmp_path, runtime_bin, preload_lib, policies_dir, memhog, base_spec, procs):
    n = Node(request.param, tmp_path, runtime_bin, preload_lib, policies_dir, memhog, base_spec, procs)
    try:
        yield n
    finally:
        procs.cleanup()
        n.cleanup()


@pytest.fixture
def runc_node(tmp_path, runtime_bin, preload_lib, policies_dir, memhog, base_spec, procs):
    n = Node("runc", tmp_path, runtime_bin, preload_lib, policies_dir, memhog, base_spec, procs)
    try:
        yield n
    finally:
        procs.cleanup()
        n.cleanup()


PROBE = ["/bin/sh", "-c",
         "grep -c libupm-preload.so /proc/self/maps; env | sort; "
         f"echo policy:; cat {POLICY_IN_CONTAINER} 2>/dev/null; echo :policy; "
         f"echo x 2>/dev/null > {POLICY_IN_CONTAINER} && echo policy-writable || echo policy-read-only"]


def probe_output(r: subprocess.CompletedProcess) -> tuple[int, dict[str, str], str, str]:
    """(preload mappings of the probe's grep, env, policy text, writability) from PROBE's output."""
    assert r.returncode in (0, 1), f"exit {r.returncode}; stdout {r.stdout!r}; stderr {r.stderr!r}"
    lines = r.stdout.splitlines()
    maps = int(lines[0])
    env = dict(line.split("=", 1) for line in lines[1:lines.index("policy:")] if "=" in line)
    policy = "\n".join(lines[lines.index("policy:") + 1:lines.index(":policy")])
    return maps, env, policy, lines[-1]


# ---------------------------------------------------------------------------


def test_annotated_container_has_the_preload(node):
    """upm.enabled=true: the preload is mapped in the container's processes,
    LD_PRELOAD/UPM_POLICY/UPM_DOMAIN are set, the policy is mounted read-only,
    the hooks ran, and our log says what was injected."""
    b = node.bundle(PROBE, {"upm.enabled": "true", "upm.policy": "python-ml", "upm.domain": "tenant-a"})
    r, cid = node.run(b)
    maps, env, policy, writable = probe_output(r)
    assert maps >= 1, f"the preload is not mapped: {r.stdout}"
    assert env.get("LD_PRELOAD") == PRELOAD_IN_CONTAINER
    assert env.get("UPM_POLICY") == POLICY_IN_CONTAINER
    assert env.get("UPM_DOMAIN") == "tenant-a"
    assert policy.strip() == (node.policy_dir / "python-ml.json").read_text().strip()
    assert writable == "policy-read-only"
    log = node.our_log()
    assert f"container `{cid}`: injected `{PRELOAD_IN_CONTAINER}`" in log, log
    assert "policy `python-ml`" in log and "domain `tenant-a`" in log
    assert node.hook_log.read_text().split() == ["poststart", "poststop"]
    # nothing upm-related reached the runtime's log: it carries only problems
    assert not [e for e in node.runtime_log_entries() if "upm-runtime" in e.get("msg", "")]


def test_unannotated_bundle_is_byte_identical(node):
    """Without upm.enabled=true config.json is neither changed nor rewritten,
    and no preload is mapped; `upm.enabled=True` does not enable either."""
    for ann in (None, {"other": "x"}, {"upm.enabled": "True", "upm.policy": "python-ml"}):
        b = node.bundle(PROBE, ann)
        cfg = b / "config.json"
        digest, st = sha256(cfg), cfg.stat()
        r, _ = node.run(b)
        maps, env, policy, _ = probe_output(r)
        assert maps == 0
        assert "LD_PRELOAD" not in env and "UPM_POLICY" not in env
        assert policy == ""
        assert sha256(cfg) == digest
        after = cfg.stat()
        assert (after.st_ino, after.st_mtime_ns) == (st.st_ino, st.st_mtime_ns)
        assert sorted(p.name for p in b.iterdir()) == ["config.json", "rootfs"]
    assert node.hook_log.exists() is False


def test_existing_ld_preload_is_kept(runc_node):
    """An LD_PRELOAD of the image stays first; ours is appended once."""
    lib = next(p for p in (Path("/usr/lib/x86_64-linux-gnu/libdl.so.2"), Path("/usr/lib/aarch64-linux-gnu/libdl.so.2"))
               if p.exists())
    b = runc_node.bundle(PROBE, {"upm.enabled": "true"}, env=[f"LD_PRELOAD={lib}"])
    r, _ = runc_node.run(b)
    maps, env, _, _ = probe_output(r)
    assert env["LD_PRELOAD"] == f"{lib}:{PRELOAD_IN_CONTAINER}"
    assert maps >= 1
    # a second create of the same bundle does not add it twice
    spec = json.loads((b / "config.json").read_text())
    r2, _ = runc_node.run(b)
    assert probe_output(r2)[1]["LD_PRELOAD"] == f"{lib}:{PRELOAD_IN_CONTAINER}"
    assert json.loads((b / "config.json").read_text()) == spec


def test_invalid_policy_name_uses_default(runc_node):
    """A policy name outside the safe set is never used as a path: the default
    policy is mounted and the log says why."""
    b = runc_node.bundle(PROBE, {"upm.enabled": "true", "upm.policy": "../../etc/passwd"})
    r, cid = runc_node.run(b)
    maps, env, policy, _ = probe_output(r)
    assert maps >= 1
    assert policy.strip() == (runc_node.policy_dir / "default.json").read_text().strip()
    msg = "invalid policy name `../../etc/passwd` in annotation `upm.policy`"
    assert msg in runc_node.our_log()
    warnings = [e for e in runc_node.runtime_log_entries() if msg in e["msg"]]
    assert warnings and warnings[0]["level"] == "warning"
    assert set(warnings[0]) == {"level", "msg", "time"}


@pytest.mark.parametrize("case", ["broken-policy", "missing-policy", "missing-preload"])
def test_fail_open(runc_node, case):
    """A broken or missing policy or a missing preload: the container starts
    unchanged and both logs say why."""
    annotations = {"upm.enabled": "true"}
    if case == "broken-policy":
        (runc_node.policy_dir / "broken.json").write_text('{"classes": ["hep"]}')
        annotations["upm.policy"] = "broken"
        why = "not deduplicated: policy `broken` is invalid"
    elif case == "missing-policy":
        annotations["upm.policy"] = "no-such-policy"
        why = "not deduplicated: no policy named `no-such-policy`"
    else:
        runc_node.write_config(preload="/nonexistent/libupm-preload.so")
        why = "not deduplicated: preload `/nonexistent/libupm-preload.so` cannot be read"
    b = runc_node.bundle(PROBE, annotations)
    digest = sha256(b / "config.json")
    r, cid = runc_node.run(b)
    maps, env, _, _ = probe_output(r)
    assert maps == 0 and "LD_PRELOAD" not in env
    assert sha256(b / "config.json") == digest
    assert f"container `{cid}`: {why}" in runc_node.our_log()
    errors = [e for e in runc_node.runtime_log_entries() if why in e["msg"]]
    assert errors and errors[0]["level"] == "error", runc_node.runtime_log_entries()
    assert errors[0]["msg"].startswith("upm-runtime: container")


def test_fail_closed_refuses(runc_node):
    """A valid policy with on_error=closed and no preload: upm-runtime refuses,
    no container is created, and the runtime log carries the error."""
    (runc_node.policy_dir / "strict.json").write_text('{"on_error": "closed"}')
    runc_node.write_config(preload="/nonexistent/libupm-preload.so")
    b = runc_node.bundle(PROBE, {"upm.enabled": "true", "upm.policy": "strict"})
    r, cid = runc_node.run(b)
    assert r.returncode == 1
    assert "upm-runtime: error: container" in r.stderr and "refused" in r.stderr
    errors = [e for e in runc_node.runtime_log_entries() if e["level"] == "error"]
    assert errors and "refused: preload" in errors[-1]["msg"]
    state = runc_node.procs.run(runc_node.argv("state", cid), env=runc_node.env())
    assert state.returncode != 0


def test_pass_through(node):
    """Commands other than create/run, --version and --help are the real runtime's."""
    for args in (["--version"], ["--help"], ["list"], ["state", "no-such-container"]):
        ours = node.procs.run(node.argv(*args), env=node.env())
        theirs = node.procs.run(node.argv(*args, wrapper=False), env=node.env())
        assert (ours.returncode, ours.stdout) == (theirs.returncode, theirs.stdout), args
    own = node.procs.run([node.wrapper, "--upm-version"], env=node.env())
    assert own.returncode == 0 and f"real runtime: {node.real}" in own.stdout


def test_two_annotated_containers_merge(node, ksm_fast, report):
    """The issue's Done criterion: two annotated containers holding the same
    64 MiB get it merged by the host's KSM; a third, unannotated container with
    the same data is not merged."""
    memhog = ["/opt/upm-memhog", "--mib", "64", "--seed", "4", "--hold-until-signal"]
    hogs = [node.start_memhog(node.bundle(memhog, {"upm.enabled": "true"})) for _ in range(2)]
    plain = node.start_memhog(node.bundle(memhog))
    took = wait_merged(hogs, timeout=30)
    saved = frames_saved(hogs)      # exact: the two regions share page frames
    report(f"{node.name}: 2 annotated containers x 64 MiB, 95% merged {took:.2f} s after ready, "
           f"{saved} of {hogs[0].pages} pages share frames")
    assert saved >= FRACTION * hogs[0].pages
    print(describe(hogs + [plain]))
    for h in hogs:
        assert h.region().mergeable
    wait_full_scans(2)
    assert not plain.region().mergeable
    assert_not_merged(plain)


@pytest.mark.parametrize("link", ["absolute", "dotdot"])
@pytest.mark.parametrize("where", ["dev-tmpfs", "run"])
def test_hostile_rootfs_links_stay_inside(node, link, where):
    """The image's /run, /etc and its /dev/upm (the injection target) are
    symbolic links to a host directory (absolute, or a `..` chain): nothing is
    written there, the rootfs is not changed when the spec mounts a tmpfs on
    /dev (it hides the image's /dev), and the container still has the
    preload.  Without the /dev tmpfs the files would go to /run/upm, which
    here is a link that resolves to nothing inside the rootfs (crun would
    refuse to create the mount target and the container would not start):
    upm fails open and says why (docs/runtime.md)."""
    host_dir = node.tmp / f"host-{link}"
    host_dir.mkdir()
    b = node.bundle(PROBE, {"upm.enabled": "true"})
    rootfs = b / "rootfs"
    target = str(host_dir) if link == "absolute" else "../" * 40 + str(host_dir).lstrip("/")
    (rootfs / "run").symlink_to(target)
    if where == "run":
        spec = json.loads((b / "config.json").read_text())
        spec["mounts"] = [m for m in spec["mounts"] if m["destination"] != "/dev"]
        (b / "config.json").write_text(json.dumps(spec))
    else:
        (rootfs / "etc").rmdir()
        (rootfs / "etc").symlink_to(target)
        (rootfs / "dev" / "upm").symlink_to(target)
    before = sorted(str(p.relative_to(rootfs)) for p in rootfs.rglob("*"))
    r, cid = node.run(b)
    assert list(host_dir.iterdir()) == [], "the runtime wrote outside the rootfs"
    if where == "run":
        # /run resolves to nothing inside the rootfs: no place for the files
        maps, env, _, _ = probe_output(r)
        assert maps == 0 and "LD_PRELOAD" not in env
        assert (f"container `{cid}`: not deduplicated: no place for the preload: `/run` in the image is a "
                "symbolic link that does not resolve inside the rootfs") in node.our_log()
        return
    maps, env, policy, writable = probe_output(r)
    assert maps >= 1
    assert env.get("UPM_POLICY") == (POLICY_IN_CONTAINER if where == "dev-tmpfs" else "/run/upm/policy.json")
    assert writable == "policy-read-only"
    if where == "dev-tmpfs":
        assert sorted(str(p.relative_to(rootfs)) for p in rootfs.rglob("*")) == before


def test_symlinked_config_is_not_followed(runc_node):
    """config.json as a symbolic link: upm-runtime neither reads nor writes
    through it (the target keeps its bytes), says so, and the runtime runs."""
    b = runc_node.bundle(PROBE, {"upm.enabled": "true"})
    outside = runc_node.tmp / "outside-config.json"
    (b / "config.json").rename(outside)
    (b / "config.json").symlink_to(outside)
    digest = sha256(outside)
    r, cid = runc_node.run(b)
    maps, _, _, _ = probe_output(r)
    assert maps == 0
    assert sha256(outside) == digest
    assert (b / "config.json").is_symlink()
    assert f"container `{cid}`: not deduplicated: `config.json` in bundle" in runc_node.our_log()


def test_bundle_from_working_directory_and_text_log(runc_node):
    """Without --bundle the bundle is the working directory; with the default
    text --log-format, our warnings are logrus text lines; --debug adds info."""
    b = runc_node.bundle(PROBE, {"upm.enabled": "true", "upm.domain": "bad domain"})
    cid = runc_node.new_id()
    log = runc_node.tmp / "runtime.log"
    argv = [*runc_node.prefix, runc_node.wrapper, "--root", runc_node.root, "--log", log, "--debug", "run", cid]
    # ProcessGroup.run() has no working directory; the container ends by itself.
    r = subprocess.run([str(a) for a in argv], env={**os.environ, **runc_node.env()}, cwd=b,
                       capture_output=True, text=True, timeout=60)
    maps, env, _, _ = probe_output(r)
    assert maps >= 1 and "UPM_DOMAIN" not in env
    lines = [line for line in log.read_text().splitlines() if "upm-runtime:" in line]
    assert any(line.startswith('time="') and " level=warning msg=\"upm-runtime: container `" in line
               and "invalid domain `bad domain`" in line for line in lines), lines
    assert any(" level=info msg=\"upm-runtime: container `" in line and "injected" in line for line in lines), lines


def test_seccomp_denying_madvise_fails_open(node):
    """A seccomp profile that denies madvise: upm leaves the spec (and the
    profile) alone, the container starts, and the log says dedup is off."""
    b = node.bundle(PROBE, {"upm.enabled": "true"})
    spec = json.loads((b / "config.json").read_text())
    spec["linux"]["seccomp"] = {"defaultAction": "SCMP_ACT_ALLOW",
                                "syscalls": [{"names": ["madvise"], "action": "SCMP_ACT_ERRNO"}]}
    (b / "config.json").write_text(json.dumps(spec, indent="\t"))
    digest = sha256(b / "config.json")
    r, cid = node.run(b)
    maps, env, _, _ = probe_output(r)
    assert maps == 0 and "LD_PRELOAD" not in env
    assert sha256(b / "config.json") == digest
    why = "gives `madvise` the action `SCMP_ACT_ERRNO`"
    assert f"container `{cid}`: not deduplicated: the preload could not advise" in node.our_log()
    assert why in node.our_log()
    assert any(why in e["msg"] and e["level"] == "error" for e in node.runtime_log_entries())


def test_argv_is_passed_exactly(runc_node):
    """The real runtime gets upm-runtime's argv unchanged, argv[0] replaced by
    its own path, for create (edited) and for every other command."""
    fake = runc_node.tmp / "fake-runtime"
    out = runc_node.tmp / "argv.txt"
    fake.write_text(f"#!/bin/sh\nprintf '%s\\n' \"$0\" \"$@\" > {out}\nexit 7\n")
    fake.chmod(0o755)
    runc_node.write_config(runtime=str(fake))
    b = runc_node.bundle(PROBE, {"upm.enabled": "true"})
    cases = [
        ["--root", "/r", "--log=/l", "--log-format", "json", "--systemd-cgroup", "--debug", "create",
         f"--bundle={b}", "--pid-file", "/p", "--console-socket", "/s", "my id", "--", "--bundle", "x"],
        ["-root", "/r", "--rootless", "auto", "create", "-b", str(b), "c2"],
        ["state", "c1"], ["--help"], ["--version"], ["delete", "-f", "c1"], ["exec", "-t", "c1", "sh"],
        ["kill", "c1", "KILL"], ["start", "c1"], ["features"],
    ]
    for args in cases:
        r = runc_node.procs.run([runc_node.wrapper, *args], env=runc_node.env())
        assert r.returncode == 7, (args, r.stderr)
        assert out.read_text().split("\n")[:-1] == [str(fake), *args]
    assert f"--bundle={b}" in cases[0] and "injected" in runc_node.our_log()


def test_unusable_runtime_is_reported(runc_node):
    """No real runtime, or upm-runtime itself as the real runtime: exit 127 and
    the reason in both logs and on stderr."""
    for runtime, why in ((runc_node.tmp / "missing-runtime", "cannot execute the real runtime"),
                         (runc_node.wrapper, "names upm-runtime itself")):
        runc_node.write_config(runtime=str(runtime))
        r = runc_node.procs.run(runc_node.argv("state", "c1"), env=runc_node.env())
        assert r.returncode == 127 and why in r.stderr
        assert why in runc_node.our_log()
        assert any(why in e["msg"] for e in runc_node.runtime_log_entries())
