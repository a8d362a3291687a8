# SPDX-License-Identifier: GPL-2.0-or-later
"""libupm-preload.so and privileges: set-user-ID programs, no_new_privs,
privilege-dropping entrypoints (security findings 3, 4 and 8).

- #3: a set-user-ID program that loads the preload (through
  /etc/ld.so.preload, what upm-hook's hooks.d mode uses) must ignore its
  caller's UPM_* variables: UPM_STACK_RLIMIT set the thread stack size of a
  set-uid-root program to 16 KiB.
- #4: the `all-anonymous` policy's prctl(PR_SET_MEMORY_MERGE) is inherited
  across exec, into set-user-ID programs too; it may only be used when the
  process has no_new_privs.
- #8: glibc applies setuid()/setgid()/setgroups()... to every thread of the
  process; the preload's worker thread must not make them fail (setpriv
  aborted with status 134).

The tests run as root and drop to uid/gid 1000 with setpriv; the helper
program (preload_privs.c) is compiled with cc into a directory under /tmp
that uid 1000 can reach, with a set-uid-root copy of it.  The
/etc/ld.so.preload test runs in a private mount namespace (unshare -m) with
an overlay over /etc: the host's /etc is not touched.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path

import pytest

from upmtest.process import clean_env, run

HERE = Path(__file__).resolve().parent
UID = 1000
SETPRIV = ["setpriv", f"--reuid={UID}", f"--regid={UID}", "--clear-groups"]
# Status of a program that glibc aborted (SIGABRT: 128 + 6).
ABORTED = 134


def fields(line: str) -> dict[str, int]:
    """"a=1 b=2" -> {"a": 1, "b": 2}"""
    return {k: int(v) for k, v in (f.split("=", 1) for f in line.split())}


@pytest.fixture(scope="module")
def privs(preload_lib: Path, policies_dir: Path):
    """A directory under /tmp (mode 755) with the helper (`plain`), its
    set-uid-root copy (`suid`), a copy of the preload and of the
    all-anonymous policy, all reachable by uid 1000."""
    if os.geteuid() != 0:
        pytest.skip("needs root: the tests make a set-uid-root program and switch to uid 1000")
    for tool in ("setpriv", "unshare", "cc"):
        if not shutil.which(tool):
            pytest.skip(f"`{tool}` is not installed (packaging/install-deps.sh)")
    d = Path(tempfile.mkdtemp(prefix="upm-privs-", dir="/tmp"))
    try:
        d.chmod(0o755)
        for part in d.parents:
            if not os.stat(part).st_mode & 0o001:
                pytest.skip(f"{part} is not searchable by others: uid {UID} cannot reach the helper")
        plain = d / "privs"
        r = subprocess.run(["cc", "-O2", "-Wall", "-Werror", "-pthread", "-o", plain, HERE / "preload_privs.c"],
                           capture_output=True, text=True)
        assert r.returncode == 0, f"cc failed:\n{r.stderr}"
        suid = d / "privs-suid"
        shutil.copy(plain, suid)
        os.chown(suid, 0, 0)
        suid.chmod(0o4755)
        lib = d / "libupm-preload.so"
        shutil.copy(preload_lib, lib)
        lib.chmod(0o644)
        pol = d / "all-anonymous.json"
        shutil.copy(policies_dir / "all-anonymous.json", pol)
        pol.chmod(0o644)
        r = run([*SETPRIV, suid, "merge"], clean_env())
        assert r.returncode == 0, r.stderr
        if fields(r.stdout)["euid"] != 0:
            pytest.skip(f"the set-user-ID bit is not honoured on {suid} (nosuid mount?)")
        yield {"dir": d, "plain": plain, "suid": suid, "lib": lib, "policy": pol}
    finally:
        shutil.rmtree(d, ignore_errors=True)


# ---------------------------------------------------------------------------
# Finding 3: the caller's environment does not steer a set-user-ID program


def test_stack_rlimit_does_not_steer_setuid_programs(privs):
    """In a mount namespace whose /etc/ld.so.preload names the preload, uid
    1000 runs the helper with UPM_STACK_RLIMIT=16384: the plain helper gets a
    16 KiB default thread stack (what the variable is for: the launcher's
    value), the set-uid-root copy keeps glibc's own default, as without the
    variable.  The preload is mapped in all three."""
    d, plain, suid = privs["dir"], privs["plain"], privs["suid"]
    ovl = d / "ovl"
    ovl.mkdir()
    # setpriv itself loads the preload from /etc/ld.so.preload: UPM_DISABLE
    # keeps it inert there (finding 8 is tested separately); `env -u` gives
    # the programs under test an active preload.
    as_user = " ".join(SETPRIV) + " env -u UPM_DISABLE"
    script = f"""set -e
mount -t tmpfs upm-test {ovl}
mkdir {ovl}/upper {ovl}/work
mount -t overlay upm-test -o lowerdir=/etc,upperdir={ovl}/upper,workdir={ovl}/work /etc
echo {privs['lib']} > /etc/ld.so.preload
{as_user} UPM_STACK_RLIMIT=16384 {plain} stack
{as_user} UPM_STACK_RLIMIT=16384 {suid} stack
{as_user} {suid} stack
"""
    r = run(["unshare", "--mount", "--propagation", "private", "sh", "-c", script], clean_env(UPM_DISABLE=1))
    if r.returncode != 0 and "overlay" in r.stderr:
        pytest.skip(f"cannot mount an overlay over /etc here: {r.stderr.strip()}")
    assert r.returncode == 0, r.stderr
    plain_with, suid_with, suid_without = (fields(ln) for ln in r.stdout.splitlines())
    assert plain_with["preload"] == suid_with["preload"] == suid_without["preload"] == 1, r.stdout
    assert plain_with["euid"] == UID and suid_with["euid"] == 0, r.stdout
    assert plain_with["stack"] == 16384, f"control: UPM_STACK_RLIMIT had no effect at all: {r.stdout}"
    assert suid_with["stack"] == suid_without["stack"], \
        f"UPM_STACK_RLIMIT changed the thread stack size of a set-uid-root program: {r.stdout}"
    assert not Path("/etc/ld.so.preload").exists() or privs["lib"].name not in Path("/etc/ld.so.preload").read_text()


# ---------------------------------------------------------------------------
# Finding 4: PR_SET_MEMORY_MERGE only with no_new_privs


def merge_run(privs, *setpriv_extra) -> tuple[dict, dict, str]:
    """uid 1000 runs the helper under the all-anonymous policy; once the
    preload has advised it, it execs the set-uid-root copy, which reports
    PR_GET_MEMORY_MERGE."""
    # LD_PRELOAD only after setpriv (setpriv itself is finding 8's subject)
    env = clean_env(UPM_POLICY=privs["policy"], UPM_LOG="info")
    r = run([*SETPRIV, *setpriv_extra, "env", "LD_PRELOAD=" + str(privs["lib"]),
             privs["plain"], "advised", privs["suid"], "merge"], env)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert len(lines) == 2, r.stdout + r.stderr
    parent, child = fields(lines[0]), fields(lines[1])
    if parent["merge"] < 0 or child["merge"] < 0:
        pytest.skip("the kernel has no PR_GET_MEMORY_MERGE (Linux < 6.4)")
    if "backend `ksm" not in r.stderr:
        pytest.skip(f"the preload did not choose the KSM backend here: {r.stderr.strip()}")
    assert parent["mg"] == 1, f"the preload never advised the helper's memory: {r.stderr}"
    return parent, child, r.stderr


def test_process_merge_does_not_survive_setuid_exec(privs):
    """Without no_new_privs the preload advises regions (MADV_MERGEABLE, which
    exec drops) instead of making the whole process mergeable, and says why:
    the set-uid-root program it execs runs with PR_GET_MEMORY_MERGE 0."""
    parent, child, log = merge_run(privs)
    assert child["euid"] == 0
    assert child["merge"] == 0, f"PR_SET_MEMORY_MERGE survived the exec of a set-uid-root program: {log}"
    assert parent["nnp"] == 0 and parent["merge"] == 0, log
    assert "backend `ksm`" in log and "no_new_privs" in log, log


def test_process_merge_with_no_new_privs(privs):
    """With no_new_privs (setpriv --no-new-privs, Kubernetes'
    allowPrivilegeEscalation: false) an exec can gain no privilege: the
    whole process is made mergeable, as before."""
    parent, child, log = merge_run(privs, "--no-new-privs")
    assert parent["nnp"] == 1 and parent["merge"] == 1, log
    assert "backend `ksm-process`" in log, log
    assert child["euid"] == UID     # no_new_privs: the set-user-ID bit is ignored


# ---------------------------------------------------------------------------
# Finding 8: privilege-dropping entrypoints under the preload

# A policy whose worker thread lives for a minute (a pending delay): the
# worker exists whenever the program changes its credentials.
WORKER_POLICY = '{"version": 1, "triggers": {"start": true, "dlopen": true, "delays_ms": [60000]}}'


@pytest.fixture(scope="module")
def worker_policy(privs) -> Path:
    p = privs["dir"] / "worker.json"
    p.write_text(WORKER_POLICY)
    p.chmod(0o644)
    return p


def drop_cases(privs):
    plain = str(privs["plain"])
    return {
        # setpriv: PR_SET_KEEPCAPS, setresuid, capset, setresgid, setgroups
        "setpriv": [*SETPRIV, "id"],
        # the same sequence written out (a daemon keeping a capability)
        "keepcaps": [plain, "keepcaps", str(UID), str(UID), "/usr/bin/id"],
        # su-exec / gosu style: setgroups, setgid, setuid from full root
        # (Debian's gosu is a static Go binary that never loads the preload,
        # so its sequence is reproduced in C); it did not fail before the
        # fix (every thread still had every capability) but goes through
        # the same wrappers
        "su-exec": [plain, "drop", str(UID), str(UID), "/usr/bin/id"],
        # capsh (libcap2-bin): keep CAP_SETGID across the uid change
        "capsh": ["capsh", "--keep=1", f"--uid={UID}", "--caps=cap_setgid+ep", f"--gid={UID}", "--", "-c", "id"],
        # capsh dropping a bounding capability, then the ids (did not fail
        # before either: no per-thread divergence before the broadcasts)
        "capsh-drop": ["capsh", "--drop=cap_net_raw", f"--gid={UID}", f"--uid={UID}", "--", "-c", "id"],
    }


@pytest.mark.parametrize("how", ["LD_PRELOAD", "upm run"])
@pytest.mark.parametrize("case", ["setpriv", "keepcaps", "su-exec", "capsh", "capsh-drop"])
def test_privilege_drop_under_the_preload(request, privs, worker_policy, how, case):
    """The entrypoint drops to uid 1000 while the preload's worker thread
    exists; it must exit 0 and its child print uid=1000 (before the fix the
    keepcaps sequences aborted in glibc's all-thread setresgid: 134)."""
    argv = drop_cases(privs)[case]
    if not shutil.which(argv[0]):
        pytest.skip(f"`{argv[0]}` is not installed (packaging/install-deps.sh, group test)")
    if how == "LD_PRELOAD":
        r = run(argv, clean_env(LD_PRELOAD=privs["lib"], UPM_POLICY=worker_policy, UPM_LOG="warn"))
    else:
        upm_bin = request.getfixturevalue("upm_bin")
        r = run([upm_bin, "run", "--policy", worker_policy, "--", *argv], clean_env(UPM_LOG="warn"))
    assert r.returncode not in (ABORTED, -signal.SIGABRT), f"{case} aborted under the preload (status 134): {r.stderr}"
    assert r.returncode == 0, r.stderr
    assert f"uid={UID}" in r.stdout and f"gid={UID}" in r.stdout, r.stdout


def test_worker_follows_dropped_capabilities(privs, worker_policy):
    """A root program that drops every capability with capset() (per thread,
    as libcap-ng's capng_apply does) and keeps running: the worker thread is
    restarted from the program's thread and holds no capability either (it
    kept them all before: a thread with root's capabilities inside a
    program that had given them up)."""
    r = run([privs["plain"], "capdrop"],
            clean_env(LD_PRELOAD=privs["lib"], UPM_POLICY=worker_policy, UPM_LOG="warn"))
    assert r.returncode == 0, r.stderr
    rows = [ln.split() for ln in r.stdout.splitlines()]
    assert any(name == "upm-worker" for name, _ in rows), f"no worker thread to check: {r.stdout}"
    for name, capeff in rows:
        assert int(capeff, 16) == 0, f"thread {name} kept capabilities {capeff}: {r.stdout}"
