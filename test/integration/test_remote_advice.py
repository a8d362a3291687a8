# SPDX-License-Identifier: GPL-2.0-or-later
"""Remote advice (issue 17, docs/remote-advice.md) on the host: what can be
tested without a upm kernel.

- `upm maps PID` on a process whose layout we control (remote_layout.c: a
  private anonymous region, a shared one, a private read-only file
  mapping): the regions, classes and decisions, checked against
  /proc/PID/maps; `--remote` adds the plan remote advice would use.
- a policy with `"advice": "remote"` on a kernel without MADV_UPM: real
  runc containers through upm-runtime and upm-hook get the preload anyway
  (fail open), the node log and upmd say why, and the preload's advice
  merges them (ksmd, ksm_fast);
- on a kernel without MADV_UPM, `upm advise PID` and upmd's `advise` say
  "remote advice unavailable: WHY", exit 2 / error reply, and change
  nothing: the target's regions stay unmergeable (smaps `mg`) and
  ksm_merging_pages stays 0; upmd keeps answering.

The pidfd and exit races are unit-tested with real child processes
(test/unit/remote_test.cpp).  The merging itself needs the upm kernel: the
QEMU guest tests of issue 17.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from upmtest.agent import Agent
from upmtest.containers import PRELOAD_IN_CONTAINER, Node
from upmtest.merge import wait_merged
from upmtest.procfs import ksm_merging_pages, smaps, smaps_region
from upmtest.process import wait_until

HERE = Path(__file__).parent


def upm_kernel() -> bool:
    return Path("/sys/kernel/mm/upm").is_dir()


@pytest.fixture(scope="module")
def layout_bin(tmp_path_factory) -> Path:
    compiler = shutil.which("cc") or shutil.which("gcc")
    if not compiler:
        pytest.fail("no C compiler (cc) to build remote_layout.c", pytrace=False)
    out = tmp_path_factory.mktemp("remote") / "remote-layout"
    r = subprocess.run([compiler, "-O2", "-Wall", "-Werror", "-o", str(out), str(HERE / "remote_layout.c")],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    return out


@pytest.fixture
def target(procs, layout_bin, tmp_path):
    data = tmp_path / "model.bin"
    data.write_bytes(bytes(range(256)) * 4096)        # 1 MiB, mapped MAP_PRIVATE read-only
    p = procs.start([layout_bin, data], stdin=subprocess.PIPE)
    m, _ = p.wait_line(r"^\{.*\}$", 10)
    info = json.loads(m[0])
    info["pid"] = p.pid
    info["data"] = str(data)
    yield info
    p.popen.stdin.close()


def rows_at(rows, addr):
    return [r for r in rows if int(r["start"], 16) <= addr < int(r["end"], 16)]


def test_maps_shows_the_controlled_layout(procs, upm_bin, target):
    """Every region of /proc/PID/maps appears once; the private anonymous
    region is advised, the shared one never, the read-only file mapping is
    rodata and not advised by the default policy."""
    r = procs.run([upm_bin, "maps", target["pid"], "--json"])
    assert r.returncode == 0, r.stderr
    rows = json.loads(r.stdout)
    assert [(int(x["start"], 16), int(x["end"], 16)) for x in rows] == \
        [(s.start, s.end) for s in smaps(target["pid"])]
    (anon,) = rows_at(rows, target["anon"])
    assert anon["advise"] and anon["class"] in ("heap", "anonymous"), anon
    (shared,) = rows_at(rows, target["shared"])
    assert shared["class"] == "never" and not shared["advise"] and "shared" in shared["why"], shared
    (model,) = rows_at(rows, target["file"])
    assert model["class"] == "rodata" and model["path"] == target["data"] and not model["advise"], model


def test_maps_remote_shows_the_plan(procs, upm_bin, target):
    """`--remote`: the ranges remote advice would give process_madvise();
    they cover the anonymous region, not the shared one, and their sum is
    the advised regions' size; the availability is stated."""
    r = procs.run([upm_bin, "maps", target["pid"], "--remote", "--json"])
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    remote = doc["remote"]
    ranges = [(int(x["start"], 16), int(x["end"], 16)) for x in remote["ranges"]]
    a, n = target["anon"], target["anon_len"]
    assert any(s <= a and a + n <= e for s, e in ranges), ranges
    s0, n0 = target["shared"], target["shared_len"]
    assert not any(s < s0 + n0 and s0 < e for s, e in ranges), ranges
    advised = sum(int(x["end"], 16) - int(x["start"], 16) for x in doc["regions"] if x["advise"])
    assert remote["bytes"] == advised == sum(e - s for s, e in ranges)
    assert remote["available"] == upm_kernel() or remote["available"] is False
    text = procs.run([upm_bin, "maps", target["pid"], "--remote"]).stdout
    assert "remote advice:" in text and f"{len(ranges)} range" in text, text
    if not upm_kernel():
        assert "remote advice unavailable:" in text


@pytest.mark.skipif(upm_kernel(), reason="this kernel has MADV_UPM: the unavailable path cannot be shown")
def test_advise_unavailable_changes_nothing(procs, upm_bin, target):
    """Stock kernel: exit 2, the reason on stderr, and the target untouched."""
    before = smaps_region(target["pid"], target["anon"])
    assert not before.mergeable
    r = procs.run([upm_bin, "advise", target["pid"]])
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert "remote advice unavailable:" in r.stderr and "MADV_UPM" in r.stderr, r.stderr
    assert "nothing was changed" in r.stderr
    assert not smaps_region(target["pid"], target["anon"]).mergeable
    assert ksm_merging_pages(target["pid"]) == 0
    j = procs.run([upm_bin, "advise", target["pid"], "--json"])
    assert j.returncode == 2 and json.loads(j.stdout)["available"] is False


@pytest.mark.skipif(upm_kernel(), reason="this kernel has MADV_UPM: the unavailable path cannot be shown")
def test_agent_advise_unavailable(procs, upmd_bin, upm_bin, tmp_path, target):
    """upmd on a stock kernel: `advise` gets "remote advice unavailable",
    status says why, the agent keeps answering, `upm advise --container`
    exits 2; the target is untouched."""
    agent = Agent(procs, upmd_bin, tmp_path).start()
    try:
        reg = agent.call({"op": "register", "id": "remote-1", "pid": target["pid"]})
        assert reg["ok"], reg
        reply = agent.call({"op": "advise", "id": "remote-1"})
        assert reply["ok"] is False and reply["error"].startswith("remote advice unavailable: "), reply
        st = agent.call({"op": "status"})
        assert st["remote"]["available"] is False and "MADV_UPM" in st["remote"]["why"], st["remote"]
        assert agent.call({"op": "ping"})["ok"]
        r = procs.run([upm_bin, "advise", "--container", "remote-1"], env={"UPM_AGENT_SOCKET": str(agent.socket)})
        assert r.returncode == 2 and "remote advice unavailable:" in r.stderr, (r.stdout, r.stderr)
        assert not smaps_region(target["pid"], target["anon"]).mergeable
        assert "remote advice unavailable:" in agent.proc.stderr
    finally:
        assert agent.stop() == 0


@pytest.mark.skipif(upm_kernel(), reason="this kernel has MADV_UPM: the fallback to the preload cannot be shown")
def test_remote_policy_falls_back_to_the_preload(ksm_fast, procs, upmd_bin, tmp_path, hook_bin, runtime_bin,
                                                 preload_lib, policies_dir, memhog, base_spec, report):
    """Stock kernel, policy `"advice": "remote"`: upm-runtime injects the
    preload and logs why at warn (remote advice unavailable), upmd says the
    same when upm-hook registers the containers and schedules nothing, and
    the two containers' identical memory is merged by the preload's advice."""
    n = Node("runc", tmp_path, runtime_bin, preload_lib, policies_dir, memhog, base_spec, procs)
    agent = Agent(procs, upmd_bin, tmp_path)
    try:
        (n.policy_dir / "remote-only.json").write_text('{"version": 1, "advice": "remote"}\n')
        n.use_hook(hook_bin, agent.socket)
        agent.start(env={"UPM_CONFIG": str(n.config)})
        argv = ["/opt/upm-memhog", "--mib", "16", "--seed", "7", "--hold-until-signal"]
        hogs = [n.start_memhog(n.bundle(argv, {"upm.enabled": "true", "upm.policy": "remote-only"}))
                for _ in range(2)]
        ids = n.ids[-2:]
        for h in hogs:
            maps = Path(f"/proc/{h.pid}/maps").read_text()
            assert "libupm-preload.so" in maps, f"pid {h.pid}: the preload is not mapped"
        log = n.our_log()
        for cid in ids:
            want = (f"container `{cid}`: policy `remote-only`: policy `advice` is `remote`, but remote advice "
                    "unavailable: ")
            line = next((ln for ln in log.splitlines() if want in ln), None)
            assert line is not None and "falling back to the preload" in line, log
            assert " warn: " in line, line
            assert f"container `{cid}`: injected `{PRELOAD_IN_CONTAINER}`" in log, log
        wait_until(lambda: all(f"container `{cid}`: policy `advice` is `remote`, but remote advice unavailable"
                               in agent.proc.stderr for cid in ids), 10,
                   what="upmd's fallback line for both containers", describe=lambda: agent.proc.stderr[-2000:])
        st = agent.call({"op": "status"})["remote"]
        assert st["available"] is False and "containers_scheduled" not in st, st
        took = wait_merged(hogs, timeout=60)
        merged = [ksm_merging_pages(h.pid) for h in hogs]
        assert all(m >= 0.9 * h.pages for m, h in zip(merged, hogs)), merged
        report(f"advice remote on a stock kernel: preload injected, fallback logged, 2 x 16 MiB merged "
               f"by the preload in {took:.1f} s ({merged} pages)")
        for h in hogs:
            h.stop()
    finally:
        procs.cleanup()
        n.cleanup()
        if agent.proc is not None and agent.proc.popen.poll() is None:
            assert agent.stop() == 0
