# SPDX-License-Identifier: GPL-2.0-or-later
"""Region classes: a policy advises exactly the classes it enables.

A upm-memhog runs under `upm run --policy P` for several policies that
enable a subset of the classes.  `upm maps PID --policy P --json` gives the
class of every region and whether the policy advises it; the kernel's
VmFlags "mg" (/proc/PID/smaps) is the oracle for what was really advised:
  * a region whose class P disables never carries mg,
  * a region P advises carries mg once the preload's start or periodic
    trigger has run,
  * text and never-advised regions (shared, [vdso], guards...) never carry mg,
  * memhog's data region carries mg exactly when its class is enabled: heap
    for the usual read-write region, anonymous for a read-write-executable one
    (upm-memhog --exec).

Policies whose classes are heap+anonymous+stack with no path filter may use
PR_SET_MEMORY_MERGE, which makes every compatible mapping mergeable, file
mappings included; they are left out of the negative checks on purpose.
No ksmd activity is needed: mg is set by the advice itself.
"""

from __future__ import annotations

import json
import time

import pytest

from upmtest.process import wait_until
from upmtest.procfs import smaps

POLICIES = {
    "default": ["heap", "anonymous", "libdata"],
    "heap-only": ["heap"],
    "no-heap": ["anonymous", "libdata"],
    "libdata-only": ["libdata"],
    "rodata-only": ["rodata"],
    "stack-only": ["stack"],
    "anonymous-only": ["anonymous"],
    "heap-stack": ["heap", "stack"],
    "nothing": [],
}
ALWAYS_UNADVISED = {"text", "never"}
ADVISE_WAIT = 6.0   # the default periodic trigger re-advises every second
AFTER_SETTLE = 1.5


def maps_json(procs, upm_bin, pid: int, policy) -> list[dict]:
    r = procs.run([upm_bin, "maps", str(pid), "--policy", policy, "--json"], timeout=30)
    assert r.returncode == 0, f"`upm maps {pid} --json` failed ({r.returncode}): {r.stderr}"
    rows = json.loads(r.stdout)
    assert isinstance(rows, list) and rows, f"unexpected `upm maps --json` output: {r.stdout[:500]}"
    return rows


def vmflags_by_start(pid: int) -> dict[int, frozenset]:
    return {r.start: r.vmflags for r in smaps(pid)}


def unadvised_mergeable(rows, flags, enabled: set[str]) -> list[str]:
    bad = []
    for row in rows:
        start = int(row["start"], 16)
        if start not in flags:
            continue
        if (row["class"] not in enabled or row["class"] in ALWAYS_UNADVISED) and "mg" in flags[start]:
            bad.append(f"{row['start']}-{row['end']} {row['perms']} {row['path'] or '[anon]'} "
                       f"class {row['class']} ({row['why']}) has mg")
    return bad


def advised_not_mergeable(rows, flags) -> list[str]:
    return [f"{row['start']}-{row['end']} {row['perms']} {row['path'] or '[anon]'} class {row['class']}: "
            f"advise=true ({row['reason']}) but no mg"
            for row in rows
            if row["advise"] and int(row["start"], 16) in flags and "mg" not in flags[int(row["start"], 16)]]


def settled_state(procs, upm_bin, hog, policy, name):
    """Waits until everything the policy advises in `hog` carries mg (the
    periodic trigger catches the data region, allocated after start-up),
    then one more periodic pass so that a wrong advice has its chance too;
    returns (rows of `upm maps --json`, VmFlags by start, seconds)."""

    def settled():
        rows = maps_json(procs, upm_bin, hog.pid, policy)
        flags = vmflags_by_start(hog.pid)
        return (rows, flags) if not advised_not_mergeable(rows, flags) else None

    try:
        _, took = wait_until(settled, ADVISE_WAIT, interval=0.25, what="every advised region to carry mg")
    except AssertionError:
        rows = maps_json(procs, upm_bin, hog.pid, policy)
        flags = vmflags_by_start(hog.pid)
        pytest.fail(f"policy {name}: " + "; ".join(advised_not_mergeable(rows, flags)), pytrace=False)
    time.sleep(AFTER_SETTLE)
    rows = maps_json(procs, upm_bin, hog.pid, policy)
    flags = vmflags_by_start(hog.pid)
    assert not advised_not_mergeable(rows, flags), f"policy {name}"
    return rows, flags, took


@pytest.mark.parametrize("name", sorted(POLICIES))
def test_only_enabled_classes_are_advised(procs, upm_bin, memhog, write_policy, name):
    """Two memhogs per policy: a read-write data region (class heap) and a
    read-write-executable one (class anonymous, like a JIT cache).  (A region
    made read-only after filling is no good here: advice taken while it was
    read-write, as a heap, stays.)"""
    enabled = set(POLICIES[name])
    policy = write_policy(name, classes=POLICIES[name])
    hogs = {cls: procs.memhog([upm_bin, "run", "--policy", policy, "--",
                               memhog, "--mib", "32", "--hold-until-signal", *extra])
            for cls, extra in (("heap", []), ("anonymous", ["--exec"]))}

    for data_class, hog in hogs.items():
        rows, flags, took = settled_state(procs, upm_bin, hog, policy, name)
        classes = sorted({row["class"] for row in rows})
        print(f"policy {name} {sorted(enabled)}, memhog with {data_class} data: settled in {took:.2f} s; "
              f"classes seen: {classes}; advised {sum(r['advise'] for r in rows)} of {len(rows)} regions")
        for row in rows:
            if row["advise"]:
                assert row["class"] in enabled, f"advises a region of disabled class: {row}"

        bad = unadvised_mergeable(rows, flags, enabled)
        assert not bad, f"policy {name}: " + "; ".join(bad)

        data = next(r for r in rows if int(r["start"], 16) <= hog.addr < int(r["end"], 16))
        assert data["class"] == data_class, f"memhog's data region is classified {data['class']}: {data}"
        assert hog.region().mergeable == (data_class in enabled), str(hog.region())


def test_all_anonymous_policy_advises_data(procs, upm_bin, memhog, policies_dir):
    """all-anonymous (may use PR_SET_MEMORY_MERGE): the data region and the
    stack are mergeable."""
    policy = policies_dir / "all-anonymous.json"
    hog = procs.memhog([upm_bin, "run", "--policy", policy, "--",
                        memhog, "--mib", "32", "--hold-until-signal"])
    wait_until(lambda: hog.region().mergeable, ADVISE_WAIT, what="mg on the data region",
               describe=lambda: str(hog.region()))
    def stack():
        return next(r for r in smaps(hog.pid) if r.path == "[stack]")

    wait_until(lambda: stack().mergeable, ADVISE_WAIT, what="mg on [stack]", describe=lambda: str(stack()))


def test_min_region_size(procs, upm_bin, memhog, write_policy):
    """Regions below min_region_kib are never advised."""
    policy = write_policy("big-only", classes=["heap", "anonymous", "libdata"], min_region_kib=65536)
    hog = procs.memhog([upm_bin, "run", "--policy", policy, "--",
                        memhog, "--mib", "32", "--hold-until-signal"])
    time.sleep(1 + AFTER_SETTLE)
    rows = maps_json(procs, upm_bin, hog.pid, policy)
    flags = vmflags_by_start(hog.pid)
    for row in rows:
        if row["size"] < 65536 * 1024:
            assert not row["advise"], row
            start = int(row["start"], 16)
            assert "mg" not in flags.get(start, frozenset()), f"small region advised: {row}"
