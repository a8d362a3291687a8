# shellcheck shell=bash
# lib.sh -- helpers shared by test/kernel/build.sh and test/kernel/run.sh.
#
# Sourced, never executed.  Provides: logging to stderr (stdout is reserved
# for the scripts' machine-readable last line), repository/cache locations,
# and the dependency check that defers to packaging/install-deps.sh.

UPM_REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
# shellcheck disable=SC2034 # used by the sourcing scripts
UPM_KDIR="$UPM_REPO/test/kernel"
# shellcheck disable=SC2034
UPM_CACHE="${UPM_CACHE_DIR:-/var/cache/upm}/kernel"
UPM_SRC_PKG=linux-source-6.1
UPM_SRC_TARBALL=/usr/src/linux-source-6.1.tar.xz

log() { printf '%s: %s\n' "${0##*/}" "$*" >&2; }
die() { printf '%s: error: %s\n' "${0##*/}" "$*" >&2; exit 1; }

# missing_deps KIND... -- print the Debian packages (one per line) whose
# tools/files are absent.  KIND: build (kernel build) or run (initramfs+QEMU).
missing_deps() {
	local kind
	for kind in "$@"; do
		case $kind in
		build)
			dpkg-query -W -f='${Status}' "$UPM_SRC_PKG" 2>/dev/null | grep -q 'install ok installed' &&
				[[ -f $UPM_SRC_TARBALL ]] || echo "$UPM_SRC_PKG"
			command -v gcc >/dev/null || echo gcc
			command -v make >/dev/null || echo make
			command -v bc >/dev/null || echo bc
			command -v bison >/dev/null || echo bison
			command -v flex >/dev/null || echo flex
			command -v xz >/dev/null || echo xz-utils
			command -v perl >/dev/null || echo perl
			[[ -f /usr/include/libelf.h || -f /usr/include/gelf.h ]] || echo libelf-dev
			[[ -f /usr/include/openssl/ssl.h ]] || echo libssl-dev
			;;
		run)
			command -v gcc >/dev/null || echo gcc
			command -v cpio >/dev/null || echo cpio
			command -v gzip >/dev/null || echo gzip
			command -v qemu-system-x86_64 >/dev/null || echo qemu-system-x86
			[[ -x /bin/busybox ]] && file_is_static /bin/busybox || echo busybox-static
			[[ -f /usr/lib/x86_64-linux-gnu/libnuma.a && -f /usr/include/numa.h ]] || echo libnuma-dev
			;;
		esac
	done | sort -u
}

file_is_static() {
	# busybox (dynamic) and busybox-static both install /bin/busybox; only the
	# static one works inside the initramfs.
	! LC_ALL=C readelf -l "$1" 2>/dev/null | grep -q 'Requesting program interpreter'
}

# ensure_deps KIND... -- install what is missing through the project's
# packaging/install-deps.sh, or fail saying exactly what to install.
ensure_deps() {
	local missing
	missing=$(missing_deps "$@" | tr '\n' ' ')
	missing=${missing% }
	[[ -z $missing ]] && return 0
	local inst="$UPM_REPO/packaging/install-deps.sh"
	if [[ -x $inst || -f $inst ]]; then
		log "missing: $missing; running packaging/install-deps.sh kernel"
		bash "$inst" kernel >&2 || die "packaging/install-deps.sh kernel failed; install by hand: apt-get install -y $missing"
		missing=$(missing_deps "$@" | tr '\n' ' ')
		missing=${missing% }
		[[ -z $missing ]] && return 0
		die "still missing after packaging/install-deps.sh kernel: $missing (apt-get install -y $missing)"
	fi
	die "missing Debian packages: $missing; packaging/install-deps.sh does not exist yet, so install them by hand: apt-get install -y $missing"
}

src_version() { dpkg-query -W -f='${Version}' "$UPM_SRC_PKG"; }
