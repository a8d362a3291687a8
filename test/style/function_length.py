#!/usr/bin/python3
# SPDX-License-Identifier: GPL-2.0-or-later
"""No function of the product's C and C++ (shim/, hooks/) is longer than
LIMIT lines (default 80), from the line of its opening brace's declaration
to its closing brace; a longer one is a pipeline of named steps waiting to
be written.

    test/style/function_length.py [--limit N] SOURCE_DIR

Prints every function over the limit (file:line, length, its signature)
and exits 1 when there is one.  The scan is textual: comments, strings and
raw strings are blanked, then every brace block whose head has a `(` and is
not a control statement, a namespace, class, struct, enum or union is a
function (a lambda inside a function counts as part of it).  Universal
ctags agrees on the tree as of this writing.
"""
from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

ROOTS = ("shim", "hooks")
SUFFIXES = (".c", ".cpp", ".h", ".hpp")
CONTROL = re.compile(r"^(if|for|while|switch|catch|else|do)\b")
AGGREGATE = re.compile(r"\b(namespace|class|struct|enum|union)\b")


def blank(src: str) -> str:
    """The text with comments, strings, character literals and preprocessor
    lines blanked, newlines kept."""
    out, i, n = [], 0, len(src)
    while i < n:
        if src[i] == "#" and src[src.rfind("\n", 0, i) + 1:i].strip() == "":
            j = i
            while True:   # to the end of the line, continuations included
                j = src.find("\n", j)
                if j < 0 or src[j - 1] != "\\":
                    break
                j += 1
            j = n if j < 0 else j
        elif src.startswith("//", i):
            j = src.find("\n", i)
            j = n if j < 0 else j
        elif src.startswith("/*", i):
            j = src.find("*/", i + 2)
            j = n if j < 0 else j + 2
        elif src.startswith('R"', i) and (m := re.match(r'R"([^(\s]*)\(', src[i:])):
            end = ")" + m.group(1) + '"'
            j = src.find(end, i)
            j = n if j < 0 else j + len(end)
        elif src[i] in "\"'" and not (src[i] == "'" and i > 0 and src[i - 1].isalnum()):  # 1'000 separators
            q, j = src[i], i + 1
            while j < n and src[j] != q and src[j] != "\n":
                j += 2 if src[j] == "\\" else 1
            j = min(j + 1, n)
        else:
            out.append(src[i])
            i += 1
            continue
        out.append(re.sub(r"[^\n]", " ", src[i:j]))
        i = j
    return "".join(out)


def functions(text: str):
    """(first line, last line, head) of every outermost function body."""
    stack, last, line = [], 0, 1
    for i, c in enumerate(text):
        if c == "\n":
            line += 1
        elif c == "{":
            head = text[last:i].strip()
            tail = head.split("\n")[-1].strip()
            fn = "(" in head and not CONTROL.match(tail) and not AGGREGATE.search(head)
            inside = any(kind == "fn" for kind, _, _ in stack)
            start = line - head.count("\n") if fn and not inside else line
            stack.append(("fn" if fn and not inside else "block", start, " ".join(head.split())))
            last = i + 1
        elif c == "}":
            if stack:
                kind, start, head = stack.pop()
                if kind == "fn":
                    yield start, line, head
            last = i + 1
        elif c == ";":
            last = i + 1


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--limit", type=int, default=80)
    ap.add_argument("source_dir", type=Path)
    a = ap.parse_args()
    long = []
    for root in ROOTS:
        for path in sorted((a.source_dir / root).rglob("*")):
            if path.suffix not in SUFFIXES or not path.is_file():
                continue
            text = blank(path.read_text(errors="replace"))
            for start, end, head in functions(text):
                if end - start + 1 > a.limit:
                    long.append((end - start + 1, path.relative_to(a.source_dir), start, head[-100:]))
    for length, path, start, head in sorted(long, reverse=True):
        print(f"{path}:{start}: {length} lines: {head}")
    if long:
        print(f"function-length: {len(long)} function(s) over {a.limit} lines in {', '.join(ROOTS)}: "
              "split each into named steps", file=sys.stderr)
        return 1
    print(f"function-length: no function over {a.limit} lines in {', '.join(ROOTS)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
