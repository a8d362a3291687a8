# SPDX-License-Identifier: GPL-2.0-or-later
"""The Debian package on a clean Debian 12: install, use, remove, purge.

A minimal Debian 12 (debootstrap --variant=minbase, plus runc, which the
package depends on) is built once and cached as a tarball under
/var/cache/upm/debootstrap/ (keyed by suite, variant and extra packages);
each run unpacks a fresh copy into a temporary directory and works in it
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

import fcntl
import glob
import os
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

SOURCE = Path(os.environ.get("UPM_SOURCE_DIR", Path(__file__).resolve().parents[2]))
CACHE = Path(os.environ.get("UPM_CACHE_DIR", "/var/cache/upm")) / "debootstrap"
SUITE, VARIANT, INCLUDE = "bookworm", "minbase", "runc,init-system-helpers"
MIRROR = "http://deb.debian.org/debian"
# Paths whose content changes with any dpkg run, not with the package.
VOLATILE = ("/proc", "/dev", "/run", "/tmp", "/var/lib/dpkg", "/var/cache", "/var/log/dpkg.log",
            "/var/log/apt", "/var/log/alternatives.log")


def find_deb() -> Path | None:
    if os.environ.get("UPM_DEB"):
        return Path(os.environ["UPM_DEB"])
    debs = sorted(glob.glob(str(SOURCE / "build-package" / "package" / "upm_*.deb")))
    return Path(debs[-1]) if debs else None


def base_tarball() -> Path:
    """The cached minimal Debian 12, built on first use (a few minutes, from the Debian archive)."""
    tarball = CACHE / f"{SUITE}-{VARIANT}-{INCLUDE.replace(',', '+')}.tar.gz"
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if tarball.exists():
            return tarball
        work = CACHE / "work"
        shutil.rmtree(work, ignore_errors=True)
        r = subprocess.run(["debootstrap", f"--variant={VARIANT}", f"--include={INCLUDE}", SUITE, str(work), MIRROR],
                           capture_output=True, text=True, timeout=1800)
        if r.returncode != 0:
            shutil.rmtree(work, ignore_errors=True)
            pytest.skip(f"debootstrap of {SUITE} from {MIRROR} failed (no network to the Debian archive?): "
                        f"{r.stderr.strip()[-300:]}")
        tmp = tarball.with_suffix(".tmp")
        subprocess.run(["tar", "-C", str(work), "-czf", str(tmp), "."], check=True)
        tmp.rename(tarball)
        shutil.rmtree(work)
        return tarball


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
