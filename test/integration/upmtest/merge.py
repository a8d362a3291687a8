# SPDX-License-Identifier: GPL-2.0-or-later
"""upm-memhog under `upm run`: the merge scenarios' shared steps and the
failure messages that describe the KSM state."""

from __future__ import annotations

from .procfs import PAGE_SIZE, ksm_counters, region_ksm_pages
from .process import wait_until

MIB = 64                    # region of each memhog in the merge scenarios
PAGES = MIB * 1024 * 1024 // PAGE_SIZE
MERGE_TIMEOUT = 10.0        # seconds from the last ready line
FRACTION = 0.95             # of the region's pages that must merge


def upm_run(upm_bin, memhog, *memhog_args, policy=None, backend=None, mib=MIB) -> list:
    """argv of `upm run [--policy P] [--backend B] -- upm-memhog --mib MIB --hold-until-signal ARGS`."""
    argv = [upm_bin, "run"]
    if policy is not None:
        argv += ["--policy", policy]
    if backend is not None:
        argv += ["--backend", backend]
    return argv + ["--", memhog, "--mib", str(mib), "--hold-until-signal", *memhog_args]


def describe(hogs) -> str:
    """The KSM state of some memhogs and of the node, for failure messages."""
    c = ksm_counters()
    per = ", ".join(f"pid {h.pid}: region {h.region_ksm_pages()} ksm pages, "
                    f"process {h.merging_pages()}, mg={h.region().mergeable}" for h in hogs)
    return (f"{per}; pages_sharing={c.get('pages_sharing')} pages_shared={c.get('pages_shared')} "
            f"full_scans={c.get('full_scans')}")


def assert_not_merged(hog) -> None:
    """No page of the hog's data region is a KSM page.  Exact with the smaps
    KSM line; without it (kernel < 6.9) the process count may include a few
    pages of library data, so allow 1% of the region."""
    exact = region_ksm_pages(hog.pid, hog.addr, hog.length)
    if exact is not None:
        assert exact == 0, f"pid {hog.pid}: {describe([hog])}"
    else:
        assert hog.merging_pages() < 0.01 * hog.pages, f"pid {hog.pid}: {describe([hog])}"


def wait_merged(hogs, fraction=FRACTION, timeout=MERGE_TIMEOUT):
    """Waits until every hog's region has `fraction` of its pages merged;
    returns the seconds it took."""
    _, took = wait_until(lambda: all(h.region_ksm_pages() >= fraction * h.pages for h in hogs),
                         timeout, what=f"{fraction:.0%} of every region merged",
                         describe=lambda: describe(hogs))
    return took


def wait_full_scans(n: int, timeout: float = 30.0) -> None:
    """Waits until ksmd has finished `n` more full scans."""
    start = ksm_counters()["full_scans"]
    wait_until(lambda: ksm_counters()["full_scans"] >= start + n, timeout,
               what=f"{n} more full scans of ksmd")
