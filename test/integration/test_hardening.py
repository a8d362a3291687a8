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
import signal
import stat
from pathlib import Path

import pytest

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
                      r"\(anonymous resident ([\d.]+) -> ([\d.]+) MiB\)", text)
        assert m, text
        assert float(m[1]) > 100, text
        assert after < before - 100 * 1024, f"RssAnon {before} -> {after} KiB"
    else:
        assert "trim (" not in text, text
        assert after > before - 10 * 1024, f"RssAnon {before} -> {after} KiB without trim"
    # the program's result does not depend on trimming
    expected = procs.run([PY, prog, os.devnull], timeout=120, env={"UPM_DISABLE": "1"})
    assert checksum == expected.stdout.splitlines()[0]
