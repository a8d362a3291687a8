# SPDX-License-Identifier: GPL-2.0-or-later
"""Policy files: JSON with // and /* */ comments."""

from __future__ import annotations

import json
from pathlib import Path


def strip_json_comments(text: str) -> str:
    """Removes // and /* */ comments outside strings (policy files allow them)."""
    out, i, n = [], 0, len(text)
    in_str = False
    while i < n:
        c = text[i]
        if in_str:
            out.append(c)
            if c == "\\" and i + 1 < n:
                out.append(text[i + 1])
                i += 1
            elif c == '"':
                in_str = False
        elif c == '"':
            in_str = True
            out.append(c)
        elif text.startswith("//", i):
            while i < n and text[i] != "\n":
                i += 1
            continue
        elif text.startswith("/*", i):
            end = text.find("*/", i + 2)
            i = n if end < 0 else end + 2
            continue
        else:
            out.append(c)
        i += 1
    return "".join(out)


def load_policy(path: Path) -> dict:
    return json.loads(strip_json_comments(Path(path).read_text()))
