# SPDX-License-Identifier: GPL-2.0-or-later
"""Where the sources and the build products are.

UPM_SOURCE_DIR and UPM_BUILD_DIR (set by ctest) win; otherwise the checkout
this file is in, and its build/.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable

import pytest


def source_dir() -> Path:
    env = os.environ.get("UPM_SOURCE_DIR")
    return Path(env).resolve() if env else Path(__file__).resolve().parents[3]


def build_dir() -> Path:
    env = os.environ.get("UPM_BUILD_DIR")
    return Path(env).resolve() if env else source_dir() / "build"


def find_built(what: str, candidates: Iterable[Path]) -> Path:
    """The first of `candidates` that is built (executable; readable for a
    .so); fails the test, naming every place it looked, when none is."""
    candidates = list(candidates)
    for c in candidates:
        if c.is_file() and os.access(c, os.X_OK if c.suffix != ".so" else os.R_OK):
            return c
    pytest.fail(
        f"{what} is not built: looked for "
        + ", ".join(f"`{c}`" for c in candidates)
        + f" (build with `make build`, or set UPM_BUILD_DIR; now `{build_dir()}`)",
        pytrace=False,
    )
