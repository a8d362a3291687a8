#!/bin/sh
# debian-base.sh [--include PKG,PKG...] -- a minimal Debian 12 root file
# system (debootstrap --variant=minbase bookworm from the Debian archive), as
# a tarball cached under ${UPM_CACHE_DIR:-/var/cache/upm}/debootstrap/, keyed
# by the package list; built on first use (a few minutes).  Prints the
# tarball's path as its last line.  Used by the clean-system test of the
# package (test/integration/test_package.py) and the installer image
# (packaging/installer/build.sh).
set -eu
INCLUDE=
case ${1:-} in
--include) INCLUDE=${2:?--include needs a list}; shift 2 ;;
--include=*) INCLUDE=${1#--include=}; shift ;;
-h | --help) sed -n '2,8p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
"") ;;
*) echo "debian-base.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
esac
SUITE=bookworm MIRROR=${UPM_DEBIAN_MIRROR:-http://deb.debian.org/debian}
CACHE=${UPM_CACHE_DIR:-/var/cache/upm}/debootstrap
command -v debootstrap >/dev/null || { echo "debian-base.sh: debootstrap is missing: packaging/install-deps.sh test" >&2; exit 1; }
mkdir -p "$CACHE"
tarball="$CACHE/$SUITE-minbase${INCLUDE:+-$(echo "$INCLUDE" | tr , +)}.tar.gz"
exec 9>"$tarball.lock"
flock 9
if [ ! -e "$tarball" ]; then
	work=$(mktemp -d "$CACHE/work.XXXXXX")
	trap 'rm -rf "$work"' EXIT
	echo "debian-base.sh: debootstrap $SUITE${INCLUDE:+ with $INCLUDE} from $MIRROR (cached in $tarball)" >&2
	debootstrap --variant=minbase ${INCLUDE:+--include="$INCLUDE"} "$SUITE" "$work/root" "$MIRROR" >"$work/log" 2>&1 ||
		{ tail -20 "$work/log" >&2; echo "debian-base.sh: debootstrap failed (no network to $MIRROR?)" >&2; exit 1; }
	tar -C "$work/root" -czf "$work/base.tar.gz" .
	mv "$work/base.tar.gz" "$tarball"
fi
echo "$tarball"
