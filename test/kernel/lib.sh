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

log() { printf '%s: %s\n' "${0##*/}" "$*" >&2; }
die() { printf '%s: error: %s\n' "${0##*/}" "$*" >&2; exit 1; }

# The kernel lines the harness knows, oldest first; the first is the default.
# shellcheck disable=SC2034
UPM_LINES=(6.1 6.12)

# set_line LINE -- select a kernel line (6.1 or 6.12): its Debian source
# package (linux-source-LINE, /usr/src/linux-source-LINE.tar.xz, top
# directory linux-source-LINE) and its patch series directory (see
# module/README.md, "Kernel lines").  The default is $UPM_KERNEL_LINE, else
# 6.1; the scripts' --line option calls set_line again.
set_line() {
	case $1 in
	6.1 | 6.12) ;;
	*) die "unknown kernel line '$1' (known: ${UPM_LINES[*]})" ;;
	esac
	UPM_LINE=$1
	UPM_SRC_PKG=linux-source-$1
	UPM_SRC_TARBALL=/usr/src/linux-source-$1.tar.xz
	UPM_SRC_TOP=linux-source-$1
	# The line's patch series: module/patches/LINE/series.  6.1's series is
	# still at module/patches/series (the legacy place) until it is moved to
	# module/patches/6.1/; build.sh takes whichever exists (not both).
	UPM_PATCH_DIR=$UPM_REPO/module/patches/$1
	if [[ $1 == 6.1 && ! -d $UPM_PATCH_DIR ]]; then
		UPM_PATCH_DIR=$UPM_REPO/module/patches
	fi
}
set_line "${UPM_KERNEL_LINE:-6.1}"

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

src_version() { dpkg-query -W -f='${Version}' "$UPM_SRC_PKG" 2>/dev/null; }

# line_patches -- the patch names of the selected line's series, in order
# (none when the line has no series or an empty one).
line_patches() {
	[[ -f $UPM_PATCH_DIR/series ]] || return 0
	local name _rest
	while read -r name _rest; do
		[[ -z $name || $name == \#* ]] && continue
		echo "$name"
	done <"$UPM_PATCH_DIR/series"
}

# line_has_engine -- true if the selected line's series lists a patch, i.e.
# its kernel has the MADV_UPM engine (6.12: not yet, issue 14).
line_has_engine() { [[ -n $(line_patches) ]]; }

# pristine_src -- print the path of the selected line's pristine source tree,
# $UPM_CACHE/src-VERSION/linux-source-LINE, extracting the package's tarball
# there first if needed (once per package version; flock so that concurrent
# callers extract it once).  The tree is never written afterwards.
pristine_src() {
	local version dir
	version=$(src_version)
	[[ -n $version ]] || die "$UPM_SRC_PKG is not installed (packaging/install-deps.sh kernel)"
	dir="$UPM_CACHE/src-$version"
	if [[ ! -f $dir/.complete ]]; then
		mkdir -p "$UPM_CACHE"
		(
			flock 8
			if [[ ! -f $dir/.complete ]]; then
				log "extracting $UPM_SRC_TARBALL ($version) to $dir"
				rm -rf "$dir"
				mkdir -p "$dir"
				tar -xf "$UPM_SRC_TARBALL" -C "$dir" || die "extracting $UPM_SRC_TARBALL failed"
				[[ -f $dir/$UPM_SRC_TOP/Makefile ]] || die "unexpected tarball layout in $UPM_SRC_TARBALL (no $UPM_SRC_TOP/Makefile)"
				touch "$dir/.complete"
			fi
		) 8>"$UPM_CACHE/.extract-$UPM_LINE.lock" || exit 1
	fi
	echo "$dir/$UPM_SRC_TOP"
}
