# SPDX-License-Identifier: GPL-2.0-or-later
"""Readers of the kernel's own counters: /sys/kernel/mm/ksm, /proc/PID/
ksm_merging_pages, ksm_stat, smaps (the per-region "KSM:" line and the
VmFlags "mg" flag), pagemap frames, ksmd's CPU time, and process memory
through /proc/PID/mem.  Read-only except write_process_memory; no pytest, so
that the demo scripts can use them too."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

KSM_DIR = Path("/sys/kernel/mm/ksm")
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")
TICK = os.sysconf("SC_CLK_TCK")


# ---------------------------------------------------------------------------
# /sys/kernel/mm/ksm


def read_knob(path: Path) -> str:
    text = path.read_text().strip()
    # Choice knobs print every choice with the current one in brackets:
    # "[none] scan-time".
    m = re.search(r"\[([^\]]+)\]", text)
    return m.group(1) if m else text


def ksm_writable_knobs() -> list[str]:
    return sorted(p.name for p in KSM_DIR.iterdir()
                  if p.is_file() and p.stat().st_mode & 0o200)


def knobs() -> dict[str, str]:
    """Every writable KSM knob and its value."""
    return {k: read_knob(KSM_DIR / k) for k in ksm_writable_knobs()}


def ksm_counters() -> dict[str, int]:
    """Every numeric file of /sys/kernel/mm/ksm (counters and knobs)."""
    out = {}
    for p in KSM_DIR.iterdir():
        try:
            out[p.name] = int(p.read_text().strip())
        except (ValueError, OSError):
            pass
    return out


def ksmd_cpu() -> float:
    """CPU-seconds (utime + stime) of the ksmd thread; 0 without one."""
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            if (d / "comm").read_text().strip() != "ksmd":
                continue
            f = (d / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        return (int(f[11]) + int(f[12])) / TICK
    return 0.0


# ---------------------------------------------------------------------------
# /proc/PID


def ksm_merging_pages(pid: int) -> int:
    return int(Path(f"/proc/{pid}/ksm_merging_pages").read_text().strip())


def ksm_stat(pid: int) -> dict[str, int]:
    out = {}
    try:
        for line in Path(f"/proc/{pid}/ksm_stat").read_text().splitlines():
            k, _, v = line.partition(" ")
            out[k] = int(v)
    except (OSError, ValueError):
        pass
    return out


def rss_kib(pid: int) -> int:
    """VmRSS of /proc/PID/status, in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS in /proc/{pid}/status")


@dataclass
class SmapsRegion:
    start: int
    end: int
    perms: str
    offset: int
    inode: int
    path: str
    fields: dict[str, int] = field(default_factory=dict)   # kB values: Rss, Pss, KSM, ...
    vmflags: frozenset[str] = frozenset()

    @property
    def size(self) -> int:
        return self.end - self.start

    def contains(self, addr: int) -> bool:
        return self.start <= addr < self.end

    @property
    def mergeable(self) -> bool:
        return "mg" in self.vmflags

    def __str__(self) -> str:
        return (f"{self.start:x}-{self.end:x} {self.perms} {self.path or '[anon]'} "
                f"VmFlags: {' '.join(sorted(self.vmflags))}")


_SMAPS_HEADER = re.compile(
    r"^([0-9a-f]+)-([0-9a-f]+)\s+(\S{4})\s+([0-9a-f]+)\s+\S+\s+(\d+)\s*(.*)$")


def smaps(pid: int) -> list[SmapsRegion]:
    regions: list[SmapsRegion] = []
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        m = _SMAPS_HEADER.match(line)
        if m:
            regions.append(SmapsRegion(int(m[1], 16), int(m[2], 16), m[3], int(m[4], 16),
                                       int(m[5]), m[6]))
            continue
        if not regions:
            continue
        key, _, value = line.partition(":")
        if key == "VmFlags":
            regions[-1].vmflags = frozenset(value.split())
        else:
            parts = value.split()
            if parts and parts[0].isdigit():
                regions[-1].fields[key] = int(parts[0])
    return regions


def smaps_region(pid: int, addr: int) -> SmapsRegion:
    for r in smaps(pid):
        if r.contains(addr):
            return r
    raise AssertionError(f"no mapping of pid {pid} contains {addr:#x}")


def smaps_rollup(pid: int) -> dict[str, int]:
    out = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
        key, _, value = line.partition(":")
        parts = value.split()
        if parts and parts[0].isdigit():
            out[key] = int(parts[0])
    return out


def region_ksm_pages(pid: int, addr: int, length: int) -> int | None:
    """Pages of [addr, addr+length) that are KSM pages (smaps "KSM:" line),
    or None on kernels without that line (before 6.9)."""
    total = 0
    seen = False
    for r in smaps(pid):
        if r.end <= addr or r.start >= addr + length:
            continue
        if "KSM" not in r.fields:
            return None
        seen = True
        total += r.fields["KSM"] * 1024 // PAGE_SIZE
    return total if seen else None


def region_pfns(pid: int, addr: int, length: int) -> list[int]:
    """Page frame numbers backing [addr, addr+length) of `pid`, from
    /proc/PID/pagemap (root only; 0 for a page that is not present)."""
    pfns = []
    with open(f"/proc/{pid}/pagemap", "rb", buffering=0) as f:
        f.seek(addr // PAGE_SIZE * 8)
        data = f.read(length // PAGE_SIZE * 8)
    for i in range(0, len(data), 8):
        e = int.from_bytes(data[i:i + 8], "little")
        pfns.append(e & ((1 << 55) - 1) if e >> 63 else 0)
    return pfns


def frames_saved(hogs) -> int:
    """Pages the hogs' data regions save by sharing frames: present pages
    minus distinct frames.  Exact, and blind to other processes on the host
    (unlike pages_sharing)."""
    present = [pfn for h in hogs for pfn in region_pfns(h.pid, h.addr, h.length) if pfn]
    return len(present) - len(set(present))


def read_process_memory(pid: int, addr: int, length: int) -> bytes:
    with open(f"/proc/{pid}/mem", "rb", buffering=0) as f:
        f.seek(addr)
        return f.read(length)


def write_process_memory(pid: int, addr: int, data: bytes) -> None:
    with open(f"/proc/{pid}/mem", "r+b", buffering=0) as f:
        f.seek(addr)
        f.write(data)


# ---------------------------------------------------------------------------
# upm-memhog's page content, reimplemented (see test/tools/memhog.c), so that
# tests can check a process's memory from outside through /proc/PID/mem.

_M64 = (1 << 64) - 1
_GOLDEN = 0x9E3779B97F4A7C15


def _mix64(z: int) -> int:
    z &= _M64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _M64
    return z ^ (z >> 31)


def memhog_page(seed: int, index: int, generation: int = 0, page_size: int = PAGE_SIZE) -> bytes:
    """The content upm-memhog --pattern distinct gives page `index`."""
    key = _mix64(seed) ^ _mix64(index * _GOLDEN + generation)
    words = [_mix64(key + (j + 1) * _GOLDEN) for j in range(page_size // 8)]
    return b"".join(w.to_bytes(8, "little") for w in words)
