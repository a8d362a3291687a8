# SPDX-License-Identifier: GPL-2.0-or-later
"""upmd advises containers on its own on the upm kernel (issue 17,
docs/remote-advice.md): the test kernel (test/kernel/build.sh, CONFIG_UPM,
cached) booted under QEMU in the hostroot mode (the host's / read-only over
virtio-9p, the guest runs the build tree's upmd), one boot.

In the guest (remote_guest.py): policies `remote` (`"advice": "remote"`)
and `auto` (`"advice": "auto"`), each with the start trigger and delays,
no periodic; instances of remote_twin.c: two built static and two built
dynamic, without the preload, registered with policy `remote`; two static
ones registered with `auto`; two dynamic ones started by `upm run --policy
auto` (the preload; upm run registers them itself).  upmd advises the first
six from outside through the adviser thread and skips the last two, which
map the preload.  The oracle is the guest kernel's
/proc/PID/ksm_merging_pages of every instance once upmd's jobs are done
(>= 99% of its pages; each pair shares its data, the pairs differ), then a
write to every 16th page (copy-on-write of merged pages) and a check of
every page of every instance.
Needs root, qemu-system-x86_64 and the cached test kernel (never built
here: the test skips, saying how to build it).
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest

HERE = Path(__file__).parent
KDIR = HERE.parent / "kernel"
SOURCE_DIR = HERE.parent.parent
MIB = 16


def cached_image(script: str) -> str:
    """The path test/kernel/SCRIPT prints when its image is cached; "" when
    it would have to build it (not here: minutes to hours)."""
    r = subprocess.run([str(KDIR / script)], stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, text=True, timeout=120)
    out = r.stdout.strip().splitlines()
    return out[-1] if r.returncode == 0 and out and Path(out[-1]).is_file() else ""


def build(compiler: str, src: Path, out: Path, *flags: str) -> None:
    r = subprocess.run([compiler, "-O2", "-Wall", "-Werror", *flags, "-o", str(out), str(src)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def qemu_argv(kernel: str, initrd: str, work: Path) -> list[str]:
    """The hostroot boot of `upm bench --modes ...,upm-kernel`, one implementation."""
    spec = importlib.util.spec_from_file_location("upm_bench", SOURCE_DIR / "hooks" / "bench" / "upm_bench.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    return bench.hostroot_qemu_argv("qemu-system-x86_64", "1G", 2, kernel, initrd, work,
                                    accel=os.environ.get("UPM_QEMU_ACCEL", "tcg"))


def test_upmd_advises_static_and_dynamic_twins_in_the_guest(build_dir: Path, tmp_path, report):
    if os.geteuid() != 0:
        pytest.skip("needs root (QEMU's 9p export of / as root, the guest driver runs as root)")
    if not shutil.which("qemu-system-x86_64"):
        pytest.skip("qemu-system-x86_64 is missing (packaging/install-deps.sh kernel)")
    compiler = shutil.which("cc") or shutil.which("gcc")
    if not compiler:
        pytest.fail("no C compiler (cc) to build remote_twin.c", pytrace=False)
    kernel, initrd = cached_image("build.sh"), cached_image("initramfs.sh")
    if not kernel or not initrd:
        pytest.skip("the test kernel or its initramfs is not built: run `make kernel` (test/kernel/README.md)")
    work = Path(tmp_path) / "guest"
    work.mkdir()
    os.chmod(work, 0o755)
    build(compiler, HERE / "remote_twin.c", work / "twin-static", "-static")
    build(compiler, HERE / "remote_twin.c", work / "twin-dynamic")
    (work / "policies").mkdir()
    for name, advice, delays in (("remote", "remote", [3000]), ("auto", "auto", [1000, 3000])):
        (work / "policies" / f"{name}.json").write_text(json.dumps({
            "version": 1, "advice": advice, "classes": ["heap", "anonymous"],
            "triggers": {"start": True, "delays_ms": delays, "periodic": None}}))
    (work / "node-config.json").write_text(json.dumps({"policy_dir": str(work / "policies")}))
    static, dynamic = str(work / "twin-static"), str(work / "twin-dynamic")
    upm_run = [str(build_dir / "bin" / "upm"), "run", "--policy", "auto", "--"]
    instances = [{"kind": "static", "argv": [static], "seed": 1, "register": "remote"}] * 2 + \
                [{"kind": "dynamic", "argv": [dynamic], "seed": 2, "register": "remote"}] * 2 + \
                [{"kind": "static-auto", "argv": [static], "seed": 3, "register": "auto"}] * 2 + \
                [{"kind": "preloaded-auto", "argv": upm_run + [dynamic], "seed": 4, "register": None}] * 2
    (work / "args.json").write_text(json.dumps({"upmd": str(build_dir / "bin" / "upmd"), "mib": MIB,
                                                "instances": instances}))
    (work / "guest.sh").write_text(f"#!/bin/sh\nexec /usr/bin/python3 -u {HERE / 'remote_guest.py'} {work}\n")
    (work / "guest.sh").chmod(0o755)
    t0 = time.monotonic()
    r = subprocess.run(qemu_argv(kernel, initrd, work), stdin=subprocess.DEVNULL, capture_output=True, text=True,
                       errors="replace", timeout=900)
    took = time.monotonic() - t0
    console = r.stdout + r.stderr
    (tmp_path / "console.log").write_text(console)
    upmd_log = (work / "upmd.log").read_text() if (work / "upmd.log").exists() else ""
    assert re.search(r"upm-guest: END rc=0", console), f"guest failed:\n{console[-4000:]}\nupmd:\n{upmd_log[-3000:]}"
    doc = json.loads((work / "result.json").read_text())
    st = doc["status"]
    assert st["available"] is True, f"remote advice unavailable in the guest: {st}"
    assert st["containers_scheduled"] == 8 and st["jobs_done"] >= 16 and st["failures"] == 0, st
    assert "upmd advises every process from outside" in upmd_log, upmd_log[-3000:]
    # auto: upmd leaves the processes that map the preload to it (the
    # preload's MADV_UPM merges them), and advises the static ones
    assert st["skipped_preloaded"] >= 2, st
    for inst in doc["instances"]:
        assert inst["registered"], inst
        skipped = f"pid {inst['pid']}: the preload advises it, skipped" in upmd_log
        assert skipped == (inst["kind"] == "preloaded-auto"), (inst, upmd_log[-3000:])
        assert inst["merging_pages"] >= 0.99 * inst["pages"], (inst, upmd_log[-3000:])
        assert inst["check"] == "ok", inst
        # (ksm_merging_pages after the writes is reported, not asserted: the
        # counter follows copy-on-write breaks only when the rmap items are
        # next looked at, so it may still count the pages just written)
    gib = st["bytes_advised"] / (1 << 30)
    report(f"guest: upmd advised 2 static + 2 dynamic twins (remote) and 2 static (auto) on its own, 2 left to the "
           f"preload (auto), {MIB} MiB each: merged "
           f"{[i['merging_pages'] for i in doc['instances']]} of {doc['instances'][0]['pages']} pages, "
           f"after the COW writes {[i['merging_after_cow'] for i in doc['instances']]}, {st['jobs_done']} jobs, {st['bytes_advised'] >> 20} MiB advised, agent CPU {st['cpu_seconds']:.3f} s "
           f"({st['cpu_seconds_per_gib'] or 0:.2f} s/GiB, {gib:.3f} GiB), guest boot+run {took:.0f} s")
