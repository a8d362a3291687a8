# SPDX-License-Identifier: GPL-2.0-or-later
"""`upm bench` as the bench suites run it: small, with a JSON result and,
when matplotlib is there, a plot."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

PY = "/usr/bin/python3"


def require_pil() -> None:
    """Skips, saying why, without python3-pil (the thumb function needs it)."""
    if subprocess.run([PY, "-c", "import PIL"], capture_output=True).returncode != 0:
        pytest.skip("python3-pil is missing (packaging/install-deps.sh workloads)")


def run_bench(upm_bin: Path, tmp: Path, args: list[str], timeout: float,
              stderr_tail: int = 4000) -> tuple[subprocess.CompletedProcess, dict]:
    """`upm bench ARGS --cache TMP/cache --json TMP/bench.json [--plot
    TMP/bench.png]`: asserts it succeeded (and drew a plot, when asked);
    returns its output and the JSON document."""
    out = tmp / "bench.json"
    plot = tmp / "bench.png"
    argv = [upm_bin, "bench", *args, "--cache", str(tmp / "cache"), "--json", str(out)]
    if subprocess.run([PY, "-c", "import matplotlib"], capture_output=True).returncode == 0:
        argv += ["--plot", str(plot)]
    r = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, f"upm bench failed ({r.returncode}):\n{r.stdout}\n{r.stderr[-stderr_tail:]}"
    if "--plot" in argv:
        assert plot.stat().st_size > 10000
    return r, json.loads(out.read_text())
