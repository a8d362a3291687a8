# SPDX-License-Identifier: GPL-2.0-or-later
"""The node setting ksm_single_namespace (issue 18, finding 5): on the KSM
backend (stock kernel: MADV_MERGEABLE and ksmd) a sharing domain does not
scope merging, ksmd merges every advised page of the node with every
identical one.  With the setting on (the default) upm-runtime asks upmd
(`ksm-claim`) before it injects the preload into a container that carries a
Kubernetes namespace, and a container of a second namespace starts without
the preload while upmd has a container of another namespace.

Real runc containers through upm-runtime, with the real upm-hook
registering them with a real upmd; three upm-memhog containers hold the
same 32 MiB (same seed): two of namespace team-a, one of team-b.  The
oracle is the kernel's: /proc/PID/ksm_merging_pages and the smaps `mg` flag
of the data region.  ksm_fast switches ksmd to fast settings under the host
lock and restores them.  This kernel has no MADV_UPM (else the setting does
not apply and the suite skips)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from upmtest.agent import Agent
from upmtest.containers import Node
from upmtest.merge import wait_full_scans, wait_merged
from upmtest.process import wait_until

MEMHOG = ["/opt/upm-memhog", "--mib", "32", "--seed", "18", "--hold-until-signal"]
NS_KEY = "io.kubernetes.cri.sandbox-namespace"


def upm_kernel() -> bool:
    return Path("/sys/kernel/mm/upm").is_dir()


@pytest.fixture
def node(procs, agent, tmp_path, hook_bin, runtime_bin, preload_lib, policies_dir, memhog, base_spec):
    if upm_kernel():
        pytest.skip("this kernel has MADV_UPM (/sys/kernel/mm/upm): the KSM-backend setting does not apply")
    n = Node("runc", tmp_path, runtime_bin, preload_lib, policies_dir, memhog, base_spec, procs)
    n.use_hook(hook_bin, agent.socket)
    yield n
    procs.cleanup()
    n.cleanup()


def start(node: Node, namespace: str):
    ann = {"upm.enabled": "true", "upm.domain": "fn", NS_KEY: namespace}
    bundle = node.bundle(MEMHOG, ann)
    hog = node.start_memhog(bundle)
    spec = json.loads((bundle / "config.json").read_text())
    return hog, spec


def injected(spec: dict) -> bool:
    return any(e.startswith("LD_PRELOAD=") for e in spec["process"]["env"])


def registered(agent: Agent, ids) -> bool:
    return {c["id"] for c in agent.call({"op": "list"})["containers"]} >= set(ids)


def test_second_namespace_is_not_advised(ksm_fast, node, agent, upm_bin, report):
    """Setting on (the default, not written in the node configuration): the
    two team-a containers merge with each other; the team-b one is started
    without the preload, its region never becomes mergeable and
    ksm_merging_pages stays 0 through two more full scans; the node log says
    why and what to do; upmd names team-a as the holder."""
    assert "ksm_single_namespace" not in node.settings
    a1, spec_a1 = start(node, "team-a")
    a2, _ = start(node, "team-a")
    b1, spec_b1 = start(node, "team-b")
    # team-b's container has no preload and no hooks: never registered
    wait_until(lambda: registered(agent, node.ids[:2]), 10, what="the team-a containers registered",
               describe=node.our_log)
    took = wait_merged([a1, a2], timeout=60)
    wait_full_scans(2, timeout=60)
    assert b1.merging_pages() == 0, f"team-b container merged {b1.merging_pages()} pages"
    assert not b1.region().mergeable
    assert injected(spec_a1) and not injected(spec_b1), spec_b1["process"]["env"]
    log = node.our_log()
    assert "namespace `team-b` may not use the KSM backend: namespace `team-a` holds it" in log, log[-3000:]
    assert "use the upm kernel" in log and '"ksm_single_namespace": false' in log
    st = agent.call({"op": "status"})
    assert st["ksm_namespace"]["holder"] == "team-a" and st["ksm_namespace"]["containers"] == 2, st["ksm_namespace"]
    rows = {c["id"]: c for c in st["containers"]}
    assert rows[node.ids[0]]["ksm_namespace"] == "team-a" and node.ids[2] not in rows
    env = {**os.environ, **node.env()}
    text = subprocess.run([upm_bin, "status"], capture_output=True, text=True, env=env, timeout=60).stdout
    assert "ksm_single_namespace: on" in text and "namespace `team-a` (2 containers)" in text, text
    report(f"ksm_single_namespace on: team-a x2 merged in {took:.1f} s "
           f"({a1.merging_pages()}/{a2.merging_pages()} pages), team-b not injected, 0 pages after 2 more full scans")


def test_namespace_released_when_its_containers_end(ksm_fast, node, agent):
    """Once the holder's containers are gone, another namespace may take
    the KSM backend."""
    a1, _ = start(node, "team-a")
    wait_until(lambda: registered(agent, node.ids), 10, what="team-a registered", describe=node.our_log)
    a1.stop()
    wait_until(lambda: agent.call({"op": "status"})["ksm_namespace"]["holder"] is None, 15,
               what="team-a's claim released")
    _, spec_b = start(node, "team-b")
    assert injected(spec_b), node.our_log()[-2000:]


def test_fail_closed_policy_refuses_the_container(node, agent):
    """A policy with "on_error": "closed" refuses the team-b container
    rather than running it without merging."""
    (node.policy_dir / "closed.json").write_text(json.dumps({"on_error": "closed"}))
    start(node, "team-a")
    ann = {"upm.enabled": "true", "upm.policy": "closed", NS_KEY: "team-b"}
    r, _ = node.run(node.bundle(["/bin/true"], ann))
    assert r.returncode != 0
    assert "refused: namespace `team-b` may not use the KSM backend" in node.our_log()


def test_setting_off_every_namespace_merges(ksm_fast, node, agent, report):
    """Setting off: the team-b container is advised too and merges with the
    team-a ones (what ksmd does across namespaces)."""
    node.write_config(ksm_single_namespace=False)
    a1, _ = start(node, "team-a")
    a2, _ = start(node, "team-a")
    b1, spec_b1 = start(node, "team-b")
    assert injected(spec_b1)
    took = wait_merged([a1, a2, b1], timeout=60)
    assert b1.merging_pages() > 0
    report(f"ksm_single_namespace off: team-a x2 and team-b merged in {took:.1f} s (team-b {b1.merging_pages()} pages)")
