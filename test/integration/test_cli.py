# SPDX-License-Identifier: GPL-2.0-or-later
"""The `upm` command line: help, version, `upm run`, `upm maps`, `upm status`.

What the CLI reports is checked against the kernel: `upm maps --json`
against /proc/PID/maps and the VmFlags of /proc/PID/smaps, `upm status
--json` against /proc/PID/ksm_merging_pages and /sys/kernel/mm/ksm.  JSON
field names and exit statuses are those of docs/cli.md.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from upmtest.merge import upm_run, wait_merged
from upmtest.process import wait_until
from upmtest.procfs import ksm_counters, ksm_merging_pages, smaps

COMMANDS = [["run"], ["maps"], ["advise"], ["status"], ["policy"], ["policy", "check"], ["ideal"], ["bench"]]


def project_version(source_dir: Path) -> str:
    m = re.search(r"project\(upm VERSION ([0-9.]+)", (source_dir / "CMakeLists.txt").read_text())
    assert m, "no project(upm VERSION ...) in CMakeLists.txt"
    return m[1]


def listed_subcommands(help_text: str) -> list[str]:
    """Subcommand names from a CLI11 help text ("Subcommands:" section)."""
    names, in_section = [], False
    for line in help_text.splitlines():
        if line.strip().upper().startswith("SUBCOMMANDS"):
            in_section = True
            continue
        if in_section:
            m = re.match(r"^\s+([a-z][a-z0-9-]*)\b", line)
            if m:
                names.append(m[1])
            elif line.strip() and not line.startswith(" "):
                in_section = False
    return names


# --- help and version --------------------------------------------------------


def test_help_lists_commands(procs, upm_bin):
    r = procs.run([upm_bin, "--help"])
    assert r.returncode == 0, r.stderr
    listed = listed_subcommands(r.stdout)
    for cmd in ("run", "maps", "status", "policy"):
        assert cmd in listed, f"`upm --help` does not list `{cmd}`: {r.stdout}"


@pytest.mark.parametrize("cmd", COMMANDS, ids=" ".join)
def test_command_help(procs, upm_bin, cmd):
    r = procs.run([upm_bin, *cmd, "--help"])
    assert r.returncode == 0, f"`upm {' '.join(cmd)} --help` exited {r.returncode}: {r.stderr}"
    assert cmd[-1] in r.stdout and len(r.stdout.splitlines()) >= 3, r.stdout


def test_every_listed_command_has_help(procs, upm_bin):
    """Commands added later get the same check."""
    listed = listed_subcommands(procs.run([upm_bin, "--help"]).stdout)
    for cmd in listed:
        r = procs.run([upm_bin, cmd, "--help"])
        assert r.returncode == 0 and r.stdout.strip(), f"`upm {cmd} --help`: {r.returncode} {r.stderr}"


def test_version(procs, upm_bin, source_dir):
    r = procs.run([upm_bin, "--version"])
    assert r.returncode == 0, r.stderr
    assert project_version(source_dir) in r.stdout, r.stdout


@pytest.mark.parametrize("argv", [["frobnicate"], ["maps"], ["maps", "not-a-pid"], ["run"],
                                  ["status", "--bogus-option"]],
                         ids=["unknown-command", "maps-without-pid", "maps-bad-pid", "run-without-command",
                              "unknown-option"])
def test_usage_errors(procs, upm_bin, argv):
    """Usage errors exit 2 with a message on stderr (docs/cli.md)."""
    r = procs.run([upm_bin, *argv])
    assert r.returncode == 2, f"exit {r.returncode}: {r.stdout}{r.stderr}"
    assert r.stderr.strip(), "a usage error without a message"


def test_unknown_command_is_named(procs, upm_bin):
    r = procs.run([upm_bin, "frobnicate"])
    assert "frobnicate" in r.stderr, f"the message does not name the unknown command: {r.stderr!r}"


# --- upm run -----------------------------------------------------------------


def test_run_loads_preload(procs, upm_bin, preload_lib):
    r = procs.run([upm_bin, "run", "--", "/bin/cat", "/proc/self/maps"])
    assert r.returncode == 0, r.stderr
    assert preload_lib.name in r.stdout, "the preload is not mapped into the command"


def test_run_appends_to_ld_preload(procs, upm_bin, preload_lib):
    """An existing LD_PRELOAD is kept, ours appended once (docs/cli.md)."""
    other = "/lib/x86_64-linux-gnu/libm.so.6"
    if not Path(other).exists():
        pytest.skip(f"{other} does not exist on this machine")
    show = ["/bin/sh", "-c", 'printf "%s\\n" "$LD_PRELOAD"']
    r = procs.run([upm_bin, "run", "--", *show], env={"LD_PRELOAD": other})
    assert r.returncode == 0, r.stderr
    entries = [e for e in re.split(r"[: ]", r.stdout.strip()) if e]
    assert entries[0] == other and len(entries) == 2, entries
    assert Path(entries[1]).name == preload_lib.name, entries
    again = procs.run([upm_bin, "run", "--", *show], env={"LD_PRELOAD": r.stdout.strip()})
    assert again.stdout == r.stdout, "the preload was added twice"


def test_run_sets_policy_path(procs, upm_bin, policies_dir):
    show = ["/bin/sh", "-c", 'printf "%s\\n" "${UPM_POLICY-unset}"']
    r = procs.run([upm_bin, "run", "--policy", policies_dir / "nodejs.json", "--", *show])
    assert r.returncode == 0, r.stderr
    assert Path(r.stdout.strip()).is_absolute() and Path(r.stdout.strip()).name == "nodejs.json", r.stdout
    r = procs.run([upm_bin, "run", "--", *show], env={"UPM_POLICY": "/somewhere/else.json"})
    assert r.stdout.strip() == "unset", "an inherited UPM_POLICY survived `upm run` without --policy"


@pytest.mark.parametrize("status", [0, 1, 7, 126])
def test_run_passes_exit_status(procs, upm_bin, status):
    r = procs.run([upm_bin, "run", "--", "/bin/sh", "-c", f"exit {status}"])
    assert r.returncode == status, r.stderr


def test_run_passes_arguments_and_stdin(procs, upm_bin):
    args = ["a b", "", "--policy", "*", "é"]
    r = procs.run([upm_bin, "run", "--", "/bin/sh", "-c", 'printf "[%s]" "$@"; cat', "sh", *args],
                  input="stdin data\n")
    assert r.returncode == 0, r.stderr
    assert r.stdout == "".join(f"[{a}]" for a in args) + "stdin data\n"


def test_run_missing_command(procs, upm_bin, tmp_path):
    r = procs.run([upm_bin, "run", "--", str(tmp_path / "no-such-program")])
    assert r.returncode == 127, f"exit {r.returncode}"
    assert "no-such-program" in r.stderr


# --- upm maps ----------------------------------------------------------------

MAPS_FIELDS = {"start", "end", "size", "perms", "path", "class", "advise", "reason", "mergeable"}


def maps_json(procs, upm_bin, pid: int, *extra) -> list[dict]:
    r = procs.run([upm_bin, "maps", str(pid), "--json", *extra])
    assert r.returncode == 0, f"`upm maps {pid} --json` exited {r.returncode}: {r.stderr}"
    return json.loads(r.stdout)


def test_maps_json_matches_kernel(procs, upm_bin, memhog):
    hog = procs.memhog(upm_run(upm_bin, memhog, mib=16))
    wait_until(lambda: hog.region().mergeable, 6, what="mg on the data region",
               describe=lambda: str(hog.region()))
    rows = maps_json(procs, upm_bin, hog.pid)
    kernel = {(r.start, r.end): r for r in smaps(hog.pid)}

    for row in rows:
        missing = MAPS_FIELDS - row.keys()
        assert not missing, f"row lacks {sorted(missing)}: {row}"
    # Rows are the kernel's VMAs, except that a .bss and memory the kernel
    # merged into its VMA come as two rows: rows joined per VMA = the VMAs.

    def vma_of(start):
        return next(((k.start, k.end) for k in kernel.values() if k.start <= start < k.end), (start, start))

    joined = {vma_of(int(r["start"], 16)) for r in rows}
    covered = sum(int(r["end"], 16) - int(r["start"], 16) for r in rows)
    assert covered == sum(e - s for s, e in joined), "rows overlap or leave part of a VMA out"
    assert all(int(r["end"], 16) <= vma_of(int(r["start"], 16))[1] for r in rows), "a row crosses a VMA boundary"
    ranges = joined
    assert ranges == set(kernel), (f"regions differ from /proc/{hog.pid}/smaps: only upm "
                                   f"{sorted(ranges - set(kernel))}, only kernel {sorted(set(kernel) - ranges)}")
    for row in rows:
        start = int(row["start"], 16)
        k = next(k for k in kernel.values() if k.start <= start < k.end)
        assert row["perms"] == k.perms
        assert row["mergeable"] == k.mergeable, f"mergeable disagrees with VmFlags: {row} vs {k}"
        if (start, int(row["end"], 16)) in kernel:
            assert row["size"] == k.size
    data = next(r for r in rows if int(r["start"], 16) <= hog.addr < int(r["end"], 16))
    assert data["class"] == "heap" and data["advise"] is True and data["mergeable"] is True, data


def test_maps_text(procs, upm_bin, memhog):
    hog = procs.memhog(upm_run(upm_bin, memhog, mib=16))
    r = procs.run([upm_bin, "maps", str(hog.pid)])
    assert r.returncode == 0, r.stderr
    region = hog.region()
    assert f"{region.start:x}" in r.stdout, f"the data region is not listed: {r.stdout}"


def test_maps_policy_changes_decision(procs, upm_bin, memhog, write_policy):
    hog = procs.memhog([memhog, "--mib", "16", "--hold-until-signal"])
    policy = write_policy("libdata-only", classes=["libdata"])
    rows = maps_json(procs, upm_bin, hog.pid, "--policy", policy)
    data = next(r for r in rows if int(r["start"], 16) <= hog.addr < int(r["end"], 16))
    assert data["advise"] is False and data["reason"], data
    assert data["mergeable"] is False, "a process not run under upm has mg"
    rows = maps_json(procs, upm_bin, hog.pid)
    data = next(r for r in rows if int(r["start"], 16) <= hog.addr < int(r["end"], 16))
    assert data["advise"] is True, data


def test_maps_missing_process(procs, upm_bin):
    pid = 2 ** 22 + 12345   # above the largest pid_max
    r = procs.run([upm_bin, "maps", str(pid)])
    assert r.returncode == 1, f"exit {r.returncode}"
    assert str(pid) in r.stderr, r.stderr


# --- upm status --------------------------------------------------------------


def stable_merging_pages(pid: int) -> int:
    prev = [-1]

    def same_twice():
        now = ksm_merging_pages(pid)
        ok = now == prev[0]
        prev[0] = now
        return ok

    wait_until(same_twice, 10, interval=0.3, what=f"a stable ksm_merging_pages of {pid}")
    return prev[0]


def test_status_agrees_with_kernel(ksm_fast, procs, upm_bin, memhog):
    hogs = [procs.memhog(upm_run(upm_bin, memhog, "--seed", "3", mib=32)) for _ in range(2)]
    wait_merged(hogs)
    want = {h.pid: stable_merging_pages(h.pid) for h in hogs}

    for h in hogs:
        r = procs.run([upm_bin, "status", "--json", str(h.pid)])
        assert r.returncode == 0, r.stderr
        doc = json.loads(r.stdout)
        rows = [p for p in doc["processes"] if p["pid"] == h.pid]
        assert len(rows) == 1, f"pid {h.pid} not in {doc['processes']}"
        got = rows[0]["ksm_merging_pages"]
        now = ksm_merging_pages(h.pid)
        assert got in (want[h.pid], now), f"upm status says {got}, the kernel {want[h.pid]}/{now}"
        assert rows[0]["saved_bytes"] == got * doc["node"]["page_size"]

    before = ksm_counters()
    r = procs.run([upm_bin, "status", "--json"])
    after = ksm_counters()
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    node = doc["node"]
    assert node["ksm_available"] is True
    for key in ("pages_sharing", "pages_shared", "full_scans"):
        lo, hi = sorted((before[key], after[key]))
        assert lo <= node["ksm"][key] <= hi, f"{key}: upm says {node['ksm'][key]}, kernel {before[key]}..{after[key]}"
    listed = {p["pid"] for p in doc["processes"]}
    assert {h.pid for h in hogs} <= listed, f"`upm status` without pids misses the memhogs: {sorted(listed)}"

    r = procs.run([upm_bin, "status", *(str(h.pid) for h in hogs)])
    assert r.returncode == 0 and all(str(h.pid) in r.stdout for h in hogs), r.stdout + r.stderr


def test_status_and_policy_check_say_what_a_domain_separates(procs, upm_bin, policies_dir):
    """On stock KSM ksmd merges across sharing domains (#18, finding 5):
    `upm status` says which scope merging has on this node, and `upm policy
    check` notes it for a policy whose domain settings suggest otherwise."""
    upm_kernel = Path("/sys/kernel/mm/upm").is_dir()
    ksm = Path("/sys/kernel/mm/ksm").is_dir()
    r = procs.run([upm_bin, "status"])
    assert r.returncode == 0, r.stderr
    if upm_kernel:
        assert "merging scope: per sharing domain" in r.stdout, r.stdout
    elif ksm:
        assert "merging scope: node-wide" in r.stdout and "docs/threat-model.md" in r.stdout, r.stdout
    r = procs.run([upm_bin, "status", "--json"])
    assert json.loads(r.stdout)["node"]["merging_scope"] == ("domain" if upm_kernel else "node" if ksm else "none")
    r = procs.run([upm_bin, "policy", "check", policies_dir / "python-shared.json"])
    assert r.returncode == 0, r.stdout + r.stderr
    assert ("ksmd merges across sharing domains" in r.stdout) == (not upm_kernel), r.stdout
    r = procs.run([upm_bin, "policy", "check", policies_dir / "default.json"])  # no domain setting: no note
    assert r.returncode == 0 and "note:" not in r.stdout, r.stdout


def test_status_missing_process(procs, upm_bin):
    pid = 2 ** 22 + 12345
    r = procs.run([upm_bin, "status", "--json", str(pid)])
    assert r.returncode == 1, f"exit {r.returncode}: {r.stdout}"
    assert str(pid) in r.stderr


def test_status_missing_and_live_process(procs, upm_bin, memhog):
    """A pid that cannot be read is named and makes the exit status 1; the
    others are still shown."""
    hog = procs.memhog([memhog, "--mib", "1", "--hold-until-signal"])
    pid = 2 ** 22 + 12345
    r = procs.run([upm_bin, "status", "--json", str(pid), str(hog.pid)])
    assert r.returncode == 1, f"exit {r.returncode}"
    assert str(pid) in r.stderr
    assert [p["pid"] for p in json.loads(r.stdout)["processes"]] == [hog.pid]


ABOVE_LIBRARY = r"""
import ctypes, sys, time
libc = ctypes.CDLL(None, use_errno=True)
libc.mmap.restype = ctypes.c_void_p
libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
SIZE = 16 << 20
rs = []
for line in open("/proc/self/maps"):
    f = line.split()
    lo, hi = (int(x, 16) for x in f[0].split("-"))
    rs.append((lo, hi, f[1], int(f[4]), f[5] if len(f) > 5 else ""))
for (lo, hi, perms, inode, path), nxt in zip(rs, rs[1:]):
    if perms == "rw-p" and inode and ".so" in path and nxt[0] >= hi + SIZE:
        if libc.mmap(hi, SIZE, 3, 0x02 | 0x20 | 0x100000, -1, 0) == hi:
            ctypes.memset(hi, 0x5a, SIZE)
            print(f"at {hi:x} above {path}", flush=True)
            break
else:
    print("no place", flush=True)
time.sleep(60)
"""


def test_maps_tells_a_bss_from_a_mapping_above_a_library(procs, upm_bin):
    """From outside, `upm maps` reads each library's ELF program headers to
    know its .bss: 16 MiB mapped right above a library's .data (where that
    library has no .bss mapping) is heap, not the library's .bss, while
    libc's real .bss stays libdata.  Before, both were `.bss of ...`."""
    p = procs.start(["/usr/bin/python3", "-c", ABOVE_LIBRARY])
    m, _ = p.wait_line(r"^(at ([0-9a-f]+) above (\S+)|no place)$", 30)
    if m[1] == "no place":
        pytest.skip("no library here has free address space above its .data")
    addr = int(m[2], 16)
    rows = maps_json(procs, upm_bin, p.popen.pid)
    data = next(r for r in rows if int(r["start"], 16) <= addr < int(r["end"], 16))
    assert data["class"] == "heap" and int(data["start"], 16) == addr, (m[3], data)
    libc_bss = [r for r in rows if r["class"] == "libdata" and r["path"] == "" and "`libc.so" in r["why"]]
    assert libc_bss, [r for r in rows if r["class"] == "libdata"]
