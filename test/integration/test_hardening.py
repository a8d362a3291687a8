# SPDX-License-Identifier: GPL-2.0-or-later
"""The hardening settings of a policy (docs/hardening.md), with real processes
and real runc containers:

- `trim`: the preload returns the allocator's free memory before advising,
  says how much it released, and never changes the program's output;
- `hash_seed`: `per-domain` gives every process of a domain the same
  PYTHONHASHSEED (Python's hash("x") equal), other domains another one, and
  the default leaves hash randomisation alone;
- `layout`: `fixed` and `shared-per-domain` set ADDR_NO_RANDOMIZE
  (/proc/PID/personality) and give processes of one domain identical
  mapping addresses, other domains other ones; the default leaves ASLR on.

The per-domain secret is a fresh file in tmp_path ($UPM_DOMAIN_SECRET), so the
host's /var/lib/upm/domain-secret is neither created nor read.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import time
from pathlib import Path

import pytest

from upmtest.containers import Node
from upmtest.merge import wait_full_scans

PY = "/usr/bin/python3"

# A program that allocates ~160 MiB through malloc (4000-byte objects are
# above pymalloc's 512-byte limit), keeps every 64th, so that the free
# memory is spread through the heap where free() cannot return it, prints a
# checksum of what it kept, then asks for a policy run (SIGUSR2) and reports
# its anonymous resident memory before and after.
FREES = r'''
import hashlib, os, signal, sys, time
blocks = [bytes([i % 251]) * 4000 for i in range(40000)]
keep = blocks[::64]
del blocks
print(hashlib.sha256(b"".join(keep)).hexdigest(), flush=True)
def rss_anon():
    for line in open("/proc/self/status"):
        if line.startswith("RssAnon:"):
            return int(line.split()[1])
before = rss_anon()
os.kill(os.getpid(), signal.SIGUSR2)
deadline = time.monotonic() + 10
while time.monotonic() < deadline:
    time.sleep(0.2)
    if any("trigger signal" in l for l in open(sys.argv[1]).read().splitlines()):
        break
time.sleep(0.3)
print("rss", before, rss_anon(), flush=True)
'''

SIGNAL_ONLY = {"triggers": {"start": False, "dlopen": False, "periodic": None, "signal": "SIGUSR2"},
               "log_level": "info"}


@pytest.fixture
def secret(tmp_path: Path) -> Path:
    return tmp_path / "state" / "domain-secret"


# ---------------------------------------------------------------------------
# trim


@pytest.mark.parametrize("trim", [True, False])
def test_trim_releases_free_memory(procs, upm_bin, write_policy, tmp_path, trim):
    """trim on: the run releases most of the 150 MiB the program freed, and the
    log says how much; trim off: nothing is released.  The output is the same."""
    policy = write_policy(f"trim-{trim}", trim=trim, **SIGNAL_ONLY)
    prog = tmp_path / "frees.py"
    prog.write_text(FREES)
    log = tmp_path / f"preload-{trim}.log"
    log.write_text("")
    r = procs.run(["sh", "-c", f'exec "$@" 2>>{log}', "sh", upm_bin, "run", "--policy", policy, "--",
                   PY, prog, log], timeout=120)
    assert r.returncode == 0, (r.stdout, log.read_text())
    checksum, rss_line = r.stdout.splitlines()
    before, after = (int(x) for x in rss_line.split()[1:])
    text = log.read_text()
    assert before > 140 * 1024, f"the program did not keep its freed memory: {rss_line}"
    if trim:
        m = re.search(r"trim \(glibc, trigger signal\): released ([\d.]+) MiB "
                      r"\(anonymous resident ([\d.]+) -> ([\d.]+) MiB\) in ([\d.]+) ms", text)
        assert m, text
        assert float(m[1]) > 100, text
        assert after < before - 100 * 1024, f"RssAnon {before} -> {after} KiB"
    else:
        assert "trim (" not in text, text
        assert after > before - 10 * 1024, f"RssAnon {before} -> {after} KiB without trim"
    # the program's result does not depend on trimming
    expected = procs.run([PY, prog, os.devnull], timeout=120, env={"UPM_DISABLE": "1"})
    assert checksum == expected.stdout.splitlines()[0]


# ---------------------------------------------------------------------------
# hash seeds and layout: `upm run`

# What a process looks like from inside: Python's hash of a string, the seed
# variables, its personality and the start address of the first mapping of
# every file and pseudo-path ([heap], [stack], [vdso]).
PROBE = r'''
import json, os
maps = {}
for line in open("/proc/self/maps"):
    f = line.split()
    if len(f) >= 6 and not f[5].startswith("[anon"):
        maps.setdefault(f[5], f[0].split("-")[0])
print(json.dumps({"hash": hash("x"), "seed": os.environ.get("PYTHONHASHSEED"),
                  "perl": os.environ.get("PERL_HASH_SEED"),
                  "personality": int(open("/proc/self/personality").read(), 16),
                  "maps": maps, "stack_rlimit": os.environ.get("UPM_STACK_RLIMIT")}))
'''
ADDR_NO_RANDOMIZE = 0x0040000
LIBC = re.compile(r"/libc\.so\.6$")


def libc_addr(probe: dict) -> str:
    return next(a for p, a in probe["maps"].items() if LIBC.search(p))


def upm_probe(procs, upm_bin, policy, secret: Path, domain: str | None = None, env=None) -> dict:
    extra = ["--domain", domain] if domain else []
    r = procs.run([upm_bin, "run", *extra, "--policy", policy, "--", PY, "-c", PROBE],
                  env={"UPM_DOMAIN_SECRET": str(secret), **(env or {})})
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout.splitlines()[-1]) | {"stderr": r.stderr}


def test_hash_seed_per_domain_upm_run(procs, upm_bin, write_policy, secret):
    """per-domain: equal seeds (and hash("x")) within a domain, different across
    domains; the secret file is created 0600; a seed the caller set is kept."""
    policy = write_policy("seed", hash_seed="per-domain")
    a1, a2 = (upm_probe(procs, upm_bin, policy, secret, "tenant-a") for _ in range(2))
    b = upm_probe(procs, upm_bin, policy, secret, "tenant-b")
    assert a1["seed"] and a1["seed"].isdigit() and 0 < int(a1["seed"]) < 2**32
    assert a1["seed"] == a2["seed"] and a1["hash"] == a2["hash"]
    assert a1["perl"] == a2["perl"] and a1["perl"].startswith("0x")
    assert b["seed"] != a1["seed"] and b["hash"] != a1["hash"] and b["perl"] != a1["perl"]
    st = secret.stat()
    assert stat.S_IMODE(st.st_mode) == 0o600 and st.st_uid == os.geteuid() and st.st_size == 32
    assert stat.S_IMODE(secret.parent.stat().st_mode) == 0o700
    assert secret.read_bytes().hex() not in json.dumps([a1, b])   # only derived values are visible
    # Perl's key order follows the seed too
    perl = ["perl", "-e", 'my %h = map { $_ => 1 } ("a".."z"); print join("", keys %h)']
    def perl_order(domain):
        r = procs.run([upm_bin, "run", "--domain", domain, "--policy", policy, "--", *perl],
                      env={"UPM_DOMAIN_SECRET": str(secret)})
        assert r.returncode == 0, r.stderr
        return r.stdout
    if shutil.which("perl"):
        assert perl_order("tenant-a") == perl_order("tenant-a")
        assert len({perl_order(d) for d in ("tenant-a", "tenant-b", "tenant-c")}) > 1
    # a value in the environment wins
    own = upm_probe(procs, upm_bin, policy, secret, "tenant-a", env={"PYTHONHASHSEED": "123"})
    assert own["seed"] == "123"
    # another secret, other seeds: they are not a function of the domain name alone
    other = upm_probe(procs, upm_bin, policy, secret.parent / "other-secret", "tenant-a")
    assert other["seed"] != a1["seed"]


def test_hash_seed_untouched_by_default(procs, upm_bin, write_policy, secret):
    """The default policy sets no seed: every process hashes differently."""
    policy = write_policy("plain")
    runs = [upm_probe(procs, upm_bin, policy, secret, "tenant-a") for _ in range(3)]
    assert all(r["seed"] is None and r["perl"] is None for r in runs)
    assert len({r["hash"] for r in runs}) == 3
    assert not secret.exists()   # never created when no setting needs it


def test_per_domain_needs_a_domain(procs, upm_bin, write_policy, secret):
    """Without a domain the per-domain settings are not applied (the
    hardening stays) and upm run says why."""
    policy = write_policy("nodomain", hash_seed="per-domain", layout="shared-per-domain")
    r = upm_probe(procs, upm_bin, policy, secret)
    assert r["seed"] is None and r["personality"] & ADDR_NO_RANDOMIZE == 0
    assert "not applied: no sharing domain" in r["stderr"]


def test_layout_default_is_randomized(procs, upm_bin, write_policy, secret):
    policy = write_policy("plain")
    runs = [upm_probe(procs, upm_bin, policy, secret, "tenant-a") for _ in range(2)]
    assert all(r["personality"] & ADDR_NO_RANDOMIZE == 0 for r in runs)
    assert libc_addr(runs[0]) != libc_addr(runs[1])
    assert runs[0]["maps"]["[stack]"] != runs[1]["maps"]["[stack]"]


def test_layout_fixed(procs, upm_bin, write_policy, secret):
    """fixed: ADDR_NO_RANDOMIZE, identical addresses in every run and domain."""
    policy = write_policy("fixed", layout="fixed", **QUIET)
    a, b = upm_probe(procs, upm_bin, policy, secret, "tenant-a"), upm_probe(procs, upm_bin, policy, secret, "tenant-b")
    assert a["personality"] & ADDR_NO_RANDOMIZE and b["personality"] & ADDR_NO_RANDOMIZE
    assert a["maps"] == b["maps"]
    assert a["stack_rlimit"] is None   # the rlimit is not touched


# The preload's worker thread mallocs (a glibc arena of its own, a 64 MiB
# reservation) at a moment that depends on scheduling, which shifts every
# later mmap of the program; the layout tests therefore run the probe with
# automatic triggers off, so that only the layout decides the addresses.
QUIET = {"triggers": {"start": False, "dlopen": False, "periodic": None}}


def test_layout_shared_per_domain(procs, upm_bin, write_policy, secret):
    """shared-per-domain: identical mappings within a domain; across domains the
    mmap area (libraries, vdso) moves, the executable, [heap] and [stack] do
    not (docs/hardening.md says so)."""
    policy = write_policy("shared", layout="shared-per-domain", **QUIET)
    a1, a2 = (upm_probe(procs, upm_bin, policy, secret, "tenant-a") for _ in range(2))
    b = upm_probe(procs, upm_bin, policy, secret, "tenant-b")
    assert a1["personality"] & ADDR_NO_RANDOMIZE
    assert a1["maps"] == a2["maps"]
    assert libc_addr(a1) != libc_addr(b)
    assert a1["maps"].get("[vdso]") != b["maps"].get("[vdso]")
    assert a1["maps"]["[heap]"] == b["maps"]["[heap]"]
    assert a1["stack_rlimit"] is not None and a1["seed"] is None


def test_layout_offsets_are_page_exact(procs, upm_exec):
    """The entropy of shared-per-domain: each of the 2^16 rlimit values the
    secret can pick (128 MiB + k pages) moves the mmap area by exactly k
    pages, so no two of them give the same layout (16 bits)."""
    exe = upm_exec
    base = 128 << 20
    addrs = {}
    for k in (0, 1, 2, 4097, 65535):
        r = procs.run([exe, "-R", "-s", str(base + k * 4096), "--", PY, "-c", PROBE])
        assert r.returncode == 0, r.stderr
        probe = json.loads(r.stdout)
        assert probe["personality"] & ADDR_NO_RANDOMIZE
        addrs[k] = int(libc_addr(probe), 16)
    for k, addr in addrs.items():
        assert addrs[0] - addr == k * 4096, f"k={k}: libc at {addr:#x}, expected {addrs[0] - k * 4096:#x}"


THREAD_STACK = r'''
import ctypes, resource
libc = ctypes.CDLL(None)
attr = ctypes.create_string_buffer(128)
assert libc.pthread_getattr_default_np(attr) == 0
size = ctypes.c_size_t()
assert libc.pthread_attr_getstacksize(attr, ctypes.byref(size)) == 0
print(size.value, resource.getrlimit(resource.RLIMIT_STACK)[0])
'''


def test_thread_stacks_keep_their_default_size(procs, upm_bin, write_policy, secret):
    """The raised RLIMIT_STACK would make glibc's default thread stack that
    large; the preload sets it back to what the original rlimit gives."""
    plain = procs.run([PY, "-c", THREAD_STACK])
    policy = write_policy("shared", layout="shared-per-domain")
    r = procs.run([upm_bin, "run", "--domain", "tenant-a", "--policy", policy, "--", PY, "-c", THREAD_STACK],
                  env={"UPM_DOMAIN_SECRET": str(secret)})
    want, orig_rlimit = (int(x) for x in plain.stdout.split())
    got, rlimit = (int(x) for x in r.stdout.split())
    assert rlimit >= 128 << 20 and rlimit != orig_rlimit   # raised (kept for the programs it execs)
    assert got == want, f"default thread stack {got} bytes, {want} without upm"


def test_static_binary_gets_the_layout(procs, upm_bin, build_dir, write_policy, secret, tmp_path):
    """A static program: the layout applies (personality and rlimit are the
    kernel's), the preload cannot load (nothing is advised)."""
    static = build_dir / "bin" / "upm-memhog-static"
    if not static.exists():
        pytest.skip(f"{static} not built (needs a static libc)")
    policy = write_policy("fixed", layout="fixed")
    h = procs.memhog([upm_bin, "run", "--policy", policy, "--", static, "--mib", "4"])
    assert int(Path(f"/proc/{h.pid}/personality").read_text(), 16) & ADDR_NO_RANDOMIZE
    assert "libupm-preload" not in Path(f"/proc/{h.pid}/maps").read_text()


SUID_PROBE = r'''
#include <stdio.h>
#include <unistd.h>
int main(void) {
    FILE *f = fopen("/proc/self/personality", "r");
    unsigned p = 0;
    if (!f || fscanf(f, "%x", &p) != 1) return 2;
    printf("%x %d %d\n", p, (int)getuid(), (int)geteuid());
    return 0;
}
'''


def test_setuid_exec_clears_the_layout(procs, upm_bin):
    """The kernel clears ADDR_NO_RANDOMIZE on a setuid exec (PER_CLEAR_ON_SETID):
    a setuid program started under a `fixed` policy by an unprivileged user
    runs with ASLR; the same program without the setuid bit does not."""
    if os.geteuid() != 0:
        pytest.skip("needs root to make a setuid-root program")
    import subprocess
    if not shutil.which("cc"):
        pytest.skip("no C compiler")
    import tempfile
    d = Path(tempfile.mkdtemp(prefix="upm-suid-", dir="/tmp"))
    procs_cleanup = lambda: shutil.rmtree(d, ignore_errors=True)  # noqa: E731
    d.chmod(0o755)
    src = d / "probe.c"
    src.write_text(SUID_PROBE)
    exe = d / "probe"
    subprocess.run(["cc", "-O1", "-o", exe, src], check=True)
    policy = d / "fixed.json"
    policy.write_text(json.dumps({"layout": "fixed"}))
    policy.chmod(0o644)
    for part in [*d.parents, upm_bin.parent, *upm_bin.parents]:
        if not os.stat(part).st_mode & 0o001:
            procs_cleanup()
            pytest.skip(f"{part} is not searchable by others (the unprivileged user cannot reach upm or the probe)")
    def run_as_nobody():
        r = procs.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                       upm_bin, "run", "--policy", policy, "--", exe])
        assert r.returncode == 0, r.stderr
        pers, uid, euid = r.stdout.split()
        return int(pers, 16), int(uid), int(euid)
    pers, uid, euid = run_as_nobody()
    assert pers & ADDR_NO_RANDOMIZE and uid == euid == 65534
    os.chown(exe, 0, 0)
    exe.chmod(0o4755)
    try:
        pers, uid, euid = run_as_nobody()
    finally:
        procs_cleanup()
    if euid != 0:
        pytest.skip(f"setuid bit not honoured on {exe} (nosuid mount?)")
    assert pers & ADDR_NO_RANDOMIZE == 0, "ADDR_NO_RANDOMIZE survived a setuid exec"


# ---------------------------------------------------------------------------
# containers: runc behind upm-runtime


def _node(name, tmp_path, runtime_bin, preload_lib, policies_dir, memhog, base_spec, procs, secret):
    n = Node(name, tmp_path, runtime_bin, preload_lib, policies_dir, memhog, base_spec, procs)
    n.env = lambda: {"UPM_CONFIG": str(n.config), "UPM_DOMAIN_SECRET": str(secret)}
    try:
        yield n
    finally:
        procs.cleanup()
        n.cleanup()


@pytest.fixture
def hnode(tmp_path, runtime_bin, preload_lib, policies_dir, memhog, base_spec, procs, secret):
    yield from _node("runc", tmp_path, runtime_bin, preload_lib, policies_dir, memhog, base_spec, procs, secret)


@pytest.fixture(params=["runc", "crun"])
def any_node(request, tmp_path, runtime_bin, preload_lib, policies_dir, memhog, base_spec, procs, secret):
    yield from _node(request.param, tmp_path, runtime_bin, preload_lib, policies_dir, memhog, base_spec, procs,
                     secret)


def container_probe(node, policy: str | None, domain: str | None, env=None) -> dict:
    ann = {"upm.enabled": "true"}
    if policy:
        ann["upm.policy"] = policy
    if domain:
        ann["upm.domain"] = domain
    b = node.bundle([PY, "-c", PROBE], ann, env=env)
    r, cid = node.run(b)
    assert r.returncode == 0, (r.stdout, r.stderr, node.our_log()[-2000:])
    return json.loads(r.stdout.splitlines()[-1]) | {"bundle": b, "cid": cid}


def test_containers_share_layout_and_seed_per_domain(any_node):
    """Two annotated runc (and crun) containers of one domain under a policy asking for
    both: ADDR_NO_RANDOMIZE, identical mappings, equal hash seeds; a third in
    another domain differs; the original args run (behind upm-exec)."""
    (any_node.policy_dir / "shared.json").write_text(json.dumps(
        {"layout": "shared-per-domain", "hash_seed": "per-domain", **QUIET}))
    a1, a2 = (container_probe(any_node, "shared", "tenant-a") for _ in range(2))
    b = container_probe(any_node, "shared", "tenant-b")
    assert a1["personality"] & ADDR_NO_RANDOMIZE and b["personality"] & ADDR_NO_RANDOMIZE
    assert a1["maps"] == a2["maps"], "two containers of one domain are laid out differently"
    assert libc_addr(a1) != libc_addr(b)
    assert a1["seed"] == a2["seed"] and a1["hash"] == a2["hash"] and a1["seed"] != b["seed"]
    spec = json.loads((a1["bundle"] / "config.json").read_text())
    args = spec["process"]["args"]
    assert args[0] == "/dev/upm/upm-exec" and args[args.index("--") + 1:] == [PY, "-c", PROBE]
    exec_mounts = [m for m in spec["mounts"] if m["destination"] == "/dev/upm/upm-exec"]
    assert len(exec_mounts) == 1 and "ro" in exec_mounts[0]["options"]
    assert "layout `shared-per-domain`, hash seed `per-domain`" in any_node.our_log()
    assert a1["stack_rlimit"] is not None
    # a second create of the same bundle wraps once, not twice (idempotent edit)
    r, _ = any_node.run(a1["bundle"])
    assert r.returncode == 0 and json.loads(r.stdout.splitlines()[-1])["maps"] == a1["maps"]
    assert json.loads((a1["bundle"] / "config.json").read_text()) == spec


def test_containers_domain_scoped_by_namespace(hnode):
    """The node scopes upm.domain by the pod's namespace (domain_scope
    "namespace", the default): one upm.domain in two namespaces is two domains
    (other UPM_DOMAIN, other PYTHONHASHSEED), in one namespace it is one."""
    (hnode.policy_dir / "seeded.json").write_text(json.dumps({"hash_seed": "per-domain", **QUIET}))
    # Two namespaces on a stock kernel without upmd: the KSM-backend check
    # (ksm_single_namespace, test_ksm_namespace.py) would leave them out.
    hnode.write_config(ksm_single_namespace=False)

    def probe(namespace: str) -> tuple[dict, list[str]]:
        ann = {"upm.enabled": "true", "upm.policy": "seeded", "upm.domain": "web",
               "io.kubernetes.cri.sandbox-namespace": namespace}
        b = hnode.bundle([PY, "-c", PROBE], ann)
        r, _ = hnode.run(b)
        assert r.returncode == 0, (r.stdout, r.stderr, hnode.our_log()[-2000:])
        env = json.loads((b / "config.json").read_text())["process"]["env"]
        return json.loads(r.stdout.splitlines()[-1]), env

    a1, env_a = probe("team-a")
    a2, _ = probe("team-a")
    b, env_b = probe("team-b")
    assert "UPM_DOMAIN=k8s.team-a.web" in env_a and "UPM_DOMAIN=k8s.team-b.web" in env_b
    assert a1["seed"] is not None and a1["seed"] == a2["seed"] and a1["seed"] != b["seed"]
    assert f"PYTHONHASHSEED={a1['seed']}" in env_a
    assert "scoped by namespace `team-a`: `k8s.team-a.web`" in hnode.our_log()


def test_containers_default_policy_keeps_aslr(hnode):
    """The default policy: no launcher, personality 0, different layouts and
    hash seeds in two containers of one domain."""
    a1, a2 = (container_probe(hnode, None, "tenant-a") for _ in range(2))
    assert a1["personality"] & ADDR_NO_RANDOMIZE == 0 and a2["personality"] & ADDR_NO_RANDOMIZE == 0
    assert libc_addr(a1) != libc_addr(a2)
    assert a1["seed"] is None and a1["hash"] != a2["hash"]
    spec = json.loads((a1["bundle"] / "config.json").read_text())
    assert spec["process"]["args"][0] == PY
    assert not any("upm-exec" in m["destination"] for m in spec["mounts"])


def test_container_fixed_layout_and_own_seed(hnode):
    """fixed: ADDR_NO_RANDOMIZE without a domain; a PYTHONHASHSEED of the spec is
    never replaced."""
    (hnode.policy_dir / "fixed.json").write_text(json.dumps(
        {"layout": "fixed", "hash_seed": "per-domain", **QUIET}))
    r = container_probe(hnode, "fixed", "tenant-a", env=["PYTHONHASHSEED=77"])
    assert r["personality"] & ADDR_NO_RANDOMIZE
    assert r["seed"] == "77"
    assert r["stack_rlimit"] is None


# ---------------------------------------------------------------------------
# upm policy check


def test_policy_check_warns_about_weakened_hardening(procs, upm_bin, write_policy, source_dir):
    """Every setting that weakens a hardening is a warning (the policy stays
    valid); the default and `trim` are not; the normalized policy is valid
    against the schema."""
    jsonschema = pytest.importorskip("jsonschema")
    schema = json.loads((source_dir / "config" / "policy.schema.json").read_text())
    cases = {"plain": ({}, []),
             "trim": ({"trim": True}, []),
             "fixed": ({"layout": "fixed"}, ["/layout: warning: layout `fixed` weakens ASLR"]),
             "shared": ({"layout": "shared-per-domain", "hash_seed": "per-domain"},
                        ["/layout: warning: layout `shared-per-domain` weakens ASLR",
                         "/hash_seed: warning: hash_seed `per-domain` weakens hash randomisation"])}
    for name, (keys, warnings) in cases.items():
        policy = write_policy(name, **keys)
        r = procs.run([upm_bin, "policy", "check", policy])
        assert r.returncode == 0, r.stdout + r.stderr
        lines = [l for l in r.stdout.splitlines() if "warning:" in l]
        assert len(lines) == len(warnings), r.stdout
        for want in warnings:
            assert any(want in l for l in lines), (want, r.stdout)
        assert r.stdout.rstrip().endswith("ok" if not warnings else f"ok ({len(warnings)} warning{'s' if len(warnings) > 1 else ''})")
        norm = procs.run([upm_bin, "policy", "check", "--normalized", policy])
        doc = json.loads(norm.stdout)
        jsonschema.validate(doc, schema)
        for k, v in keys.items():
            assert doc[k] == v
    bad = write_policy("bad", layout="shared")
    r = procs.run([upm_bin, "policy", "check", bad])
    assert r.returncode == 1 and "did you mean `shared-per-domain`?" in r.stdout, r.stdout


# ---------------------------------------------------------------------------
# the acceptance: containers merge more with a shared layout and seed

CONTAINER_WORKER = r'''
import os, random, signal
signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})
weights = random.Random(1).randbytes(16 << 20)     # a model's weights: equal everywhere
vocab = {f"word{i}": i for i in range(200000)}
records = [{"id": i, "name": f"user{i}", "tags": ["a", "b"]} for i in range(100000)]
print("ready", hash(weights[:64]) != 0, flush=True)
signal.sigwait({signal.SIGTERM, signal.SIGINT})
'''


def anon_frames(pid: int) -> list[int]:
    """Page frames of the present anonymous pages of pid's private writable
    or anonymous mappings (pagemap: present, not file/shared), [stack] aside."""
    frames = []
    with open(f"/proc/{pid}/pagemap", "rb", buffering=0) as pm:
        for line in Path(f"/proc/{pid}/maps").read_text().splitlines():
            parts = line.split(None, 5)
            start, end = (int(x, 16) for x in parts[0].split("-"))
            perms, inode = parts[1], int(parts[4])
            path = parts[5].strip() if len(parts) > 5 else ""
            if perms[3] != "p" or perms[0] != "r" or path.startswith("[stack") or path in ("[vdso]", "[vvar]"):
                continue
            if perms[1] != "w" and inode != 0:
                continue
            pm.seek(start // 4096 * 8)
            data = pm.read((end - start) // 4096 * 8)
            for i in range(0, len(data), 8):
                e = int.from_bytes(data[i:i + 8], "little")
                if e >> 63 and not (e >> 61) & 1:
                    frames.append(e & ((1 << 55) - 1))
    return frames


def test_containers_merge_more_with_shared_layout_and_seed(hnode, ksm_fast, procs):
    """Side by side on the host's KSM: two annotated runc containers under the
    default policy and two under a policy with layout `shared-per-domain` and
    hash seed `per-domain` (each pair in its own domain), running the same
    weights + dict workload.  The second pair has identical mappings and saves
    measurably more; the first pair's layouts differ."""
    (hnode.policy_dir / "shared.json").write_text(json.dumps({"layout": "shared-per-domain",
                                                               "hash_seed": "per-domain"}))
    groups = {"default": (None, "tenant-a"), "shared": ("shared", "tenant-b")}
    started = {}
    for name, (policy, domain) in groups.items():
        ann = {"upm.enabled": "true", "upm.domain": domain} | ({"upm.policy": policy} if policy else {})
        started[name] = []
        for _ in range(2):
            b = hnode.bundle([PY, "-c", CONTAINER_WORKER], ann)
            cid = hnode.new_id()
            p = procs.start(hnode.argv("run", "--bundle", b, cid), env=hnode.env())
            started[name].append((p, cid))
    pids = {}
    for name, items in started.items():
        pids[name] = []
        for p, cid in items:
            p.wait_line(r"^ready ", 120)
            state = procs.run(hnode.argv("state", cid), env=hnode.env())
            pids[name].append(json.loads(state.stdout)["pid"])
    time.sleep(2.5)     # the next periodic advice covers everything the workers allocated
    wait_full_scans(3, timeout=120)
    saved = {}
    for name, ps in pids.items():
        frames = [f for pid in ps for f in anon_frames(pid)]
        saved[name] = len(frames) - len(set(frames))
    libc = {name: [next(l.split("-")[0] for l in Path(f"/proc/{pid}/maps").read_text().splitlines()
                        if LIBC.search(l)) for pid in ps] for name, ps in pids.items()}
    print(f"pages saved: {saved}; libc: {libc}")
    assert libc["shared"][0] == libc["shared"][1]
    assert libc["default"][0] != libc["default"][1]
    for pid in pids["shared"]:
        assert int(Path(f"/proc/{pid}/personality").read_text(), 16) & ADDR_NO_RANDOMIZE
    mib = 256   # pages per MiB
    assert saved["default"] > 10 * mib, f"the default pair merged almost nothing: {saved}"
    assert saved["shared"] > saved["default"] + 20 * mib and saved["shared"] > 1.5 * saved["default"], saved


def test_container_without_launcher_fails_open(hnode, tmp_path, preload_lib):
    """No upm-exec next to the preload: the layout is not applied (ASLR stays,
    the args are the original ones), the hash seed still is, and our log
    says why."""
    lonely = tmp_path / "lonely"
    lonely.mkdir()
    shutil.copy(preload_lib, lonely / "libupm-preload.so")
    hnode.write_config(preload=str(lonely / "libupm-preload.so"))
    (hnode.policy_dir / "shared.json").write_text(json.dumps({"layout": "shared-per-domain",
                                                               "hash_seed": "per-domain", **QUIET}))
    r = container_probe(hnode, "shared", "tenant-a")
    assert r["personality"] & ADDR_NO_RANDOMIZE == 0
    assert r["seed"] is not None
    spec = json.loads((r["bundle"] / "config.json").read_text())
    assert spec["process"]["args"][0] == PY
    assert f"layout not applied: the launcher `{lonely}/upm-exec` is not an executable file; ASLR stays" \
        in hnode.our_log()
