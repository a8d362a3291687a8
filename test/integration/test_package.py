# SPDX-License-Identifier: GPL-2.0-or-later
"""The Debian package on a clean Debian 12: install, use, remove, purge.

A minimal Debian 12 (packaging/debian-base.sh: debootstrap --variant=minbase,
plus runc, which the package depends on) is built once and cached as a
tarball under /var/cache/upm/debootstrap/; each run unpacks a fresh copy into a temporary directory and works in it
with chroot, inside a private mount namespace for /proc and /dev.  The
package is build-package/package/upm_*.deb from `make package` (`make check`
builds it first); $UPM_DEB names another.

Checked: dpkg installs it with nothing but the minimal system; `upm
--version`, `upm policy check` of every shipped policy, `upm-runtime
--upm-version` and `upmd --help` work; /etc/upm/config.json is a conffile;
upmd is enabled, not started; removal takes out what `upm install-runtime`
wrote into an engine's configuration and leaves only the conffile; purge
leaves exactly the files the system had before.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

from upmtest.paths import source_dir

SOURCE = source_dir()
INCLUDE = "runc,init-system-helpers"
# Paths whose content changes with any dpkg run, not with the package.
VOLATILE = ("/proc", "/dev", "/run", "/tmp", "/var/lib/dpkg", "/var/cache", "/var/log/dpkg.log",
            "/var/log/apt", "/var/log/alternatives.log")


def find_deb() -> Path | None:
    if os.environ.get("UPM_DEB"):
        return Path(os.environ["UPM_DEB"])
    debs = sorted(glob.glob(str(SOURCE / "build-package" / "package" / "upm_*.deb")))
    return Path(debs[-1]) if debs else None


def base_tarball() -> Path:
    """The cached minimal Debian 12 (packaging/debian-base.sh; a few minutes the first time)."""
    r = subprocess.run([str(SOURCE / "packaging" / "debian-base.sh"), "--include", INCLUDE],
                       capture_output=True, text=True, timeout=1800)
    if r.returncode != 0:
        pytest.skip(f"no minimal Debian 12 to test in (packaging/debian-base.sh): {r.stderr.strip()[-300:]}")
    return Path(r.stdout.strip().splitlines()[-1])


def in_root(root: Path, script: str, check: bool = True) -> subprocess.CompletedProcess:
    """sh -c SCRIPT chrooted into ROOT with /proc and /dev, in a private mount namespace."""
    outer = ('mount -t proc proc "$1/proc" && mount --bind /dev "$1/dev" && '
             'exec chroot "$1" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin /bin/sh -c "$2"')
    r = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", outer, "sh", str(root), script],
                       capture_output=True, text=True, timeout=300)
    if check and r.returncode != 0:
        pytest.fail(f"in the clean system: `{script}` exited {r.returncode}\nstdout:\n{r.stdout}\nstderr:\n{r.stderr}")
    return r


def files(root: Path) -> set[str]:
    out = set()
    for dirpath, dirnames, filenames in os.walk(root):
        rel = "/" + os.path.relpath(dirpath, root).lstrip(".")
        rel = rel if rel != "/" else ""
        dirnames[:] = [d for d in dirnames if not f"{rel}/{d}".startswith(VOLATILE)]
        for name in dirnames + filenames:
            if not f"{rel}/{name}".startswith(VOLATILE):
                out.add(f"{rel}/{name}")
    return out


@pytest.fixture(scope="module")
def clean_root(tmp_path_factory) -> Path:
    if shutil.which("debootstrap") is None:
        pytest.skip("debootstrap not installed (packaging/install-deps.sh test)")
    root = tmp_path_factory.mktemp("clean-debian")
    with tarfile.open(base_tarball()) as t:
        t.extractall(root, numeric_owner=True)
    return root


def test_install_use_remove_purge(clean_root: Path) -> None:
    deb = find_deb()
    if deb is None:
        pytest.skip("no build-package/package/upm_*.deb: run `make package` (make check builds it)")
    shutil.copy(deb, clean_root / "tmp" / "upm.deb")
    before = files(clean_root)

    r = in_root(clean_root, "dpkg -i /tmp/upm.deb")
    assert "upm: installed." in r.stdout
    assert in_root(clean_root, "upm --version").stdout.strip().startswith("upm ")
    for policy in sorted((SOURCE / "config" / "policies").glob("*.json")):
        in_root(clean_root, f"upm policy check {policy.stem}")
    assert "real runtime: /usr/bin/runc" in in_root(clean_root, "upm-runtime --upm-version").stdout
    in_root(clean_root, "upmd --help")
    for page in ("man1/upm.1.gz", "man1/upm-runtime.1.gz", "man1/upm-hook.1.gz", "man8/upmd.8.gz"):
        assert (clean_root / "usr/share/man" / page).stat().st_size > 300, page
    conffiles = in_root(clean_root, "dpkg-query -W -f='${Conffiles}' upm").stdout
    assert "/etc/upm/config.json" in conffiles
    assert (clean_root / "etc/systemd/system/multi-user.target.wants/upmd.service").is_symlink()

    # An engine configured through upm: removal takes the runtime out again.
    in_root(clean_root, "upm install-runtime --engine containerd --containerd-config-version 3")
    assert (clean_root / "etc/containerd/conf.d/99-upm.toml").exists()
    r = in_root(clean_root, "dpkg -r upm")
    assert "removed /etc/containerd/conf.d/99-upm.toml" in r.stdout
    left = files(clean_root) - before
    assert not (clean_root / "etc/containerd/config.toml").exists()
    assert not any(p.startswith(("/usr/", "/etc/containerd/conf.d/99-upm")) for p in left), sorted(left)
    assert "/etc/upm/config.json" in left  # a conffile stays until purge

    in_root(clean_root, "dpkg -P upm")
    after = files(clean_root)
    assert after - before == set() or after - before == {"/etc/containerd", "/etc/containerd/conf.d"}, \
        sorted(after - before)
    assert before - after == set(), sorted(before - after)
