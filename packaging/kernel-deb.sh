#!/usr/bin/env bash
# kernel-deb.sh -- a Debian kernel package (linux-image-*-upm) with MADV_UPM:
# Debian's own kernel configuration for amd64 plus CONFIG_UPM, built with
# the kernel's `make bindeb-pkg` from Debian's linux-source-LINE tarball and
# module/ (overlay + patch series, as module/tools/apply.sh does).
#
# Not a test kernel: the full distribution configuration (thousands of
# modules), meant to be installed on nodes.  Deviations from Debian's
# config, all forced by building outside Debian's packaging: no debug info
# (Debian builds it for its -dbg packages; here it would triple the build),
# no Debian signing keys (SYSTEM_TRUSTED_KEYS / REVOCATION_KEYS point into
# Debian's build tree; modules are signed with a key generated at build
# time instead), LOCALVERSION -upm.
#
# Progress goes to stderr; the LAST stdout line is the linux-image .deb.
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/../test/kernel/lib.sh"

{

usage() {
	cat <<EOF
usage: packaging/kernel-deb.sh [--line 6.1|6.12] [--jobs N] [--out DIR] [--compile-check] [--help]

Build a Debian kernel package of the newest kernel line that has the
MADV_UPM engine (or --line), from Debian's amd64 configuration plus
CONFIG_UPM=y; print the linux-image .deb path as the last stdout line.

  --line LINE      kernel line (default: the newest with the engine)
  --jobs N         make -j value (default: nproc)
  --out DIR        where the .deb files go (default:
                   \$UPM_CACHE_DIR/kernel-deb/out-LINE, UPM_CACHE_DIR=/var/cache/upm)
  --compile-check  configure, then compile only the UPM objects (mm/ksm.o,
                   mm/upm.o, mm/madvise.o, mm/rmap.o) under Debian's
                   configuration and stop: minutes instead of hours
  --help           this text

Environment: UPM_CACHE_DIR (default /var/cache/upm), UPM_NO_CCACHE=1 (no
ccache; by default it uses its own, \$UPM_CACHE_DIR/kernel-deb/ccache, 12G).

Needs: packaging/install-deps.sh kernel kernel-deb.  Takes hours on a
small machine (the time of the last build is in docs/install.md).
EOF
}

JOBS=$(nproc) OUT="" CHECK_ONLY=0 LINE=""
while (($#)); do
	case $1 in
	--line) LINE=${2:?--line needs 6.1 or 6.12}; shift ;;
	--line=*) LINE=${1#*=} ;;
	--jobs) JOBS=${2:?--jobs needs a number}; shift ;;
	--out) OUT=${2:?--out needs a directory}; shift ;;
	--compile-check) CHECK_ONLY=1 ;;
	-h | --help) usage; exit 0 ;;
	*) usage >&2; die "unknown argument '$1'" ;;
	esac
	shift
done

# The newest line with the engine, unless asked.
if [[ -z $LINE ]]; then
	for ((i = ${#UPM_LINES[@]} - 1; i >= 0; i--)); do
		set_line "${UPM_LINES[i]}"
		if line_has_engine; then LINE=$UPM_LINE; break; fi
	done
	[[ -n $LINE ]] || die "no kernel line has the MADV_UPM engine (module/patches/)"
fi
set_line "$LINE"
line_has_engine || die "kernel line $LINE has no MADV_UPM engine yet (module/README.md, \"Kernel lines\"): a package of it would not have MADV_UPM; use --line 6.1"

DEBCONF=/usr/src/linux-config-$LINE/config.amd64_none_amd64.xz
[[ -f $DEBCONF ]] || die "$DEBCONF is missing: run packaging/install-deps.sh kernel-deb (Debian package linux-config-$LINE)"
[[ -f $UPM_SRC_TARBALL ]] || die "$UPM_SRC_TARBALL is missing: run packaging/install-deps.sh kernel"
command -v dpkg-buildpackage >/dev/null || die "dpkg-buildpackage is missing: run packaging/install-deps.sh kernel-deb"

ROOT="${UPM_CACHE_DIR:-/var/cache/upm}/kernel-deb"
TREE=$ROOT/tree-$LINE
OUT=${OUT:-$ROOT/out-$LINE}
mkdir -p "$ROOT" "$OUT"
exec 9>"$ROOT/.lock-$LINE"
flock -n 9 || { log "another kernel-deb build of $LINE runs; waiting"; flock 9; }

# A fresh tree whenever module/ changed: patches edit files in place, so
# the tree is a real copy (apply.sh), never hard links to the cache.
KEY=$({
	stat -c '%n %s %Y' "$UPM_SRC_TARBALL"
	cd "$UPM_REPO" && find module -type f -print0 | sort -z | xargs -0 sha256sum
} | sha256sum | cut -c1-16)
if [[ $(cat "$TREE/.upm-key" 2>/dev/null) != "$KEY" ]]; then
	log "preparing $TREE (linux-source-$LINE $(src_version) + module/)"
	rm -rf "$TREE"
	PSRC=$(pristine_src)
	"$UPM_REPO/module/tools/apply.sh" "$PSRC" "$TREE"
	echo "$KEY" >"$TREE/.upm-key"
fi

cd "$TREE"
log "configuring from $DEBCONF + CONFIG_UPM=y"
xz -dc "$DEBCONF" >.config
scripts/config --enable UPM \
	--set-str LOCALVERSION "-upm" --disable LOCALVERSION_AUTO \
	--set-str SYSTEM_TRUSTED_KEYS "" --set-str SYSTEM_REVOCATION_KEYS "" \
	--disable DEBUG_INFO --disable DEBUG_INFO_DWARF_TOOLCHAIN_DEFAULT \
	--disable DEBUG_INFO_DWARF4 --disable DEBUG_INFO_DWARF5 --disable DEBUG_INFO_BTF \
	--enable DEBUG_INFO_NONE
make -s olddefconfig >&2
for opt in CONFIG_UPM=y CONFIG_KSM=y CONFIG_MEMCG=y; do
	grep -qx "$opt" .config || die "$opt did not survive olddefconfig in $TREE/.config"
done

# ccache of its own (the distribution configuration would evict the test
# kernels' objects from the shared one): a tree recreated after a change
# of module/ recompiles from it, and an interrupted build resumes.
KMAKE=(make -j"$JOBS")
if [[ ${UPM_NO_CCACHE:-0} != 1 ]] && command -v ccache >/dev/null; then
	export CCACHE_DIR="$ROOT/ccache" CCACHE_BASEDIR="$TREE" CCACHE_NOHASHDIR=1
	export CCACHE_MAXSIZE="${CCACHE_MAXSIZE:-12G}"
	KMAKE+=(CC="ccache gcc")
fi

T0=$(date +%s)
if ((CHECK_ONLY)); then
	log "compiling the UPM objects only (-j$JOBS)"
	"${KMAKE[@]}" prepare >&2
	"${KMAKE[@]}" mm/ksm.o mm/upm.o mm/madvise.o mm/rmap.o >&2
	log "compile check passed in $(($(date +%s) - T0)) s"
	echo "$TREE/mm/upm.o"
	exit 0
fi

VER=$(make -s kernelversion)
log "building linux-image-$VER-upm (-j$JOBS): this takes hours on a small machine"
rm -f ../linux-*.deb ../linux-upload*.changes ../linux-*.buildinfo
"${KMAKE[@]}" bindeb-pkg KDEB_PKGVERSION="$VER-upm1" >&2
mv ../linux-*"$VER"-upm*.deb "$OUT"/
rm -f ../linux-*.changes ../linux-*.buildinfo
T=$(($(date +%s) - T0))
log "built in $T s ($((T / 60)) min):"
ls -l "$OUT"/*"$VER"-upm*.deb >&2
IMAGE=$(ls "$OUT"/linux-image-"$VER"-upm_*.deb)
[[ -f $IMAGE ]] || die "bindeb-pkg produced no linux-image package in $OUT"
echo "$IMAGE"
exit 0
}
