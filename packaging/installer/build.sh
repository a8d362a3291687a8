#!/bin/sh
# build.sh DEB [TAG] -- build the upm installer image offline: a minimal
# Debian 12 with kubectl and runc (the package depends on a runtime;
# packaging/debian-base.sh), the package DEB
# installed into it with dpkg in a chroot, and upm-node-installer, imported
# into podman as one layer with its command set (`podman import`; no
# container runs during the build, so it works on any host podman works
# on).  TAG defaults to localhost/upm-installer:VERSION (the version of DEB).
# $UPM_PODMAN_ARGS: global podman options (e.g. --root/--storage-driver).
# Prints the tag last.  Push it to a registry the nodes can reach and name
# it in config/runtimes/kubernetes/upm-installer.yaml.
set -eu
case ${1:-} in -h | --help | "") sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//'; [ -n "${1:-}" ]; exit $? ;; esac
deb=$(realpath "$1")
here=$(cd "$(dirname "$0")" && pwd)
version=$(dpkg-deb -f "$deb" Version)
tag=${2:-localhost/upm-installer:$version}
base=$("$here/../debian-base.sh" --include kubernetes-client,util-linux,runc | tail -1)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir "$work/root"
tar -C "$work/root" -xzf "$base"
cp "$deb" "$work/root/tmp/upm.deb"
# No /proc, no systemd in the chroot: the package's scripts skip what needs them.
chroot "$work/root" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin dpkg -i /tmp/upm.deb >"$work/dpkg.log" 2>&1 ||
	{ cat "$work/dpkg.log" >&2; echo "build.sh: dpkg -i of $deb failed in the image" >&2; exit 1; }
rm -f "$work/root/tmp/upm.deb"
rm -rf "$work/root/var/cache/apt/archives/"*.deb "$work/root/var/lib/apt/lists/"*
install -m 0755 "$here/upm-node-installer" "$work/root/usr/bin/upm-node-installer"
tar -C "$work/root" -cf "$work/image.tar" .
# shellcheck disable=SC2086
podman ${UPM_PODMAN_ARGS:-} import \
	--change 'CMD ["/usr/bin/upm-node-installer", "run"]' \
	--change "LABEL org.opencontainers.image.title=upm-installer org.opencontainers.image.version=$version" \
	"$work/image.tar" "$tag" >/dev/null
echo "$tag"
