#!/usr/bin/env bash
# build.sh -- build the small x86_64 upm test kernel (bzImage) from Debian's
# linux-source-6.1 tarball plus module/ (overlay files and patch series).
#
# Steps: extract the tarball once per source version (cached), copy it to a
# per-flavour build tree, overlay module/{mm,include,Documentation}, apply
# module/patches/series in order, `make tinyconfig` + module/configs/upm.config
# (+ debug.config for --debug), olddefconfig, verify every fragment option
# took effect, build bzImage with -j$(nproc).  The result is cached under
#   ${UPM_CACHE_DIR:-/var/cache/upm}/kernel/<key>/bzImage
# where <key> hashes the source package version, module/ (minus README/docs),
# the fragments, this script and the flavour.  A cached image is reused.
# Progress goes to stderr; the LAST line on stdout is the bzImage path.
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

# The body is one compound command, so bash parses all of it before running:
# editing this file while it runs cannot derail a running instance.
{

usage() {
	cat <<EOF
usage: test/kernel/build.sh [--debug] [--force] [--clean] [--print-key] [--help]

Build (or reuse from cache) the upm test kernel; print its bzImage path as
the last line on stdout.

  --debug      add module/configs/debug.config (KASAN, lockdep, DEBUG_VM, ...)
  --force      rebuild even if the cache has this key
  --clean      rebuild in a fresh build tree (implies --force)
  --print-key  print the cache key and exit
  --help       this text

Environment:
  UPM_CACHE_DIR     cache root (default /var/cache/upm); images go to
                    \$UPM_CACHE_DIR/kernel/<key>/, build trees to
                    \$UPM_CACHE_DIR/kernel/build-{normal,debug}/
  UPM_KERNEL_JOBS   make -j value (default: nproc)
  UPM_NO_CCACHE=1   do not use ccache even if installed
EOF
}

DEBUG=0 FORCE=0 PRINT_KEY=0 CLEAN=0
while (($#)); do
	case $1 in
	--debug) DEBUG=1 ;;
	--force) FORCE=1 ;;
	--clean) CLEAN=1 FORCE=1 ;;
	--print-key) PRINT_KEY=1 ;;
	-h | --help) usage; exit 0 ;;
	*) usage >&2; die "unknown argument '$1'" ;;
	esac
	shift
done

ensure_deps build

MOD="$UPM_REPO/module"
FRAGS=("$MOD/configs/upm.config")
((DEBUG)) && FRAGS+=("$MOD/configs/debug.config")
FLAVOUR=normal
((DEBUG)) && FLAVOUR=debug
for f in "${FRAGS[@]}"; do [[ -f $f ]] || die "config fragment $f is missing"; done
VERSION=$(src_version)

# module_files: every file under module/ that can change the kernel: all but
# README* and module/docs/.  Sorted, repo-relative.
module_files() {
	[[ -d $MOD ]] || return 0
	(cd "$UPM_REPO" && find module -type f ! -name 'README*' ! -path 'module/docs/*' \
		! -path 'module/configs/*' ! -name '*~' ! -name '.*.swp' -print | LC_ALL=C sort)
}

compute_key() {
	{
		echo "source-version $VERSION"
		echo "debug $DEBUG"
		echo "build.sh $(sha256sum <"$UPM_KDIR/build.sh" | cut -d' ' -f1)"
		local f
		for f in "$MOD/configs/upm.config" "$MOD/configs/debug.config"; do
			[[ -f $f ]] && echo "${f#"$UPM_REPO"/} $(sha256sum <"$f" | cut -d' ' -f1)"
		done
		while IFS= read -r f; do
			echo "$f $(sha256sum <"$UPM_REPO/$f" | cut -d' ' -f1)"
		done < <(module_files)
	} | sha256sum | cut -c1-32
}

KEY=$(compute_key)
if ((PRINT_KEY)); then echo "$KEY"; exit 0; fi
OUT="$UPM_CACHE/$KEY"

mkdir -p "$UPM_CACHE" || die "cannot create cache dir $UPM_CACHE (set UPM_CACHE_DIR to a writable place)"
if ((!FORCE)) && [[ -f $OUT/bzImage ]]; then
	log "cached $FLAVOUR kernel (key $KEY)"
	echo "$OUT/bzImage"
	exit 0
fi

# One kernel build at a time on this machine (2 cores shared).
exec 9>"$UPM_CACHE/.build.lock"
if ! flock -n 9; then
	log "another kernel build is running; waiting for $UPM_CACHE/.build.lock"
	flock 9
fi
if ((!FORCE)) && [[ -f $OUT/bzImage ]]; then # built while we waited
	echo "$OUT/bzImage"
	exit 0
fi

T0=$(date +%s)

# --- pristine source, extracted once per package version -------------------
PRISTINE="$UPM_CACHE/src-$VERSION"
if [[ ! -f $PRISTINE/.complete ]]; then
	log "extracting $UPM_SRC_TARBALL ($VERSION) to $PRISTINE"
	rm -rf "$PRISTINE"
	mkdir -p "$PRISTINE"
	tar -xf "$UPM_SRC_TARBALL" -C "$PRISTINE" || die "extracting $UPM_SRC_TARBALL failed"
	[[ -f $PRISTINE/linux-source-6.1/Makefile ]] || die "unexpected tarball layout in $UPM_SRC_TARBALL"
	touch "$PRISTINE/.complete"
fi
PSRC="$PRISTINE/linux-source-6.1"

# --- build tree ----------------------------------------------------------------
# One persistent tree per flavour, created as a hard-link copy of the pristine
# source (cp -al; files are only ever replaced, never written in place, so
# the pristine tree is never modified).  The overlay and the patch series are
# applied in a small staging tree that holds pristine copies of just the
# paths they touch (plus those the previous build touched, listed in
# .upm-touched); then each of those paths is copied into the build tree (or
# deleted there) only if its content differs.  Unchanged files keep their
# mtime, so make recompiles only what really changed.  --clean starts afresh.
BUILD="$UPM_CACHE/build-$FLAVOUR"
TOUCHED="$BUILD/.upm-touched"
for old in "$UPM_CACHE"/build-*.old.*; do # leftovers of an interrupted --clean
	[[ -d $old ]] && (rm -rf "$old" 9>&- &)
done
if ((CLEAN)) || [[ ! -f $BUILD/.upm-tree-ok ]]; then
	log "creating build tree $BUILD (hard links to $PSRC)"
	if [[ -e $BUILD ]]; then
		mv "$BUILD" "$BUILD.old.$$"
		(rm -rf "$BUILD.old.$$" 9>&- &)
	fi
	cp -al "$PSRC" "$BUILD"
	rm -f "$TOUCHED"
	touch "$BUILD/.upm-tree-ok"
else
	log "reusing build tree $BUILD (incremental)"
fi

# Paths (relative to the tree) touched by the overlay and by the patches.
touched_paths() {
	local d
	for d in mm include Documentation; do
		[[ -d $MOD/$d ]] && (cd "$MOD" && find "$d" -type f)
	done
	if [[ -f $MOD/patches/series ]]; then
		local name
		while read -r name _rest; do
			[[ -z $name || $name == \#* || ! -f $MOD/patches/$name ]] && continue
			# "--- a/X" followed by "+++ b/Y": both X and Y (-p1)
			awk '/^--- / { m = $2; next }
			     /^\+\+\+ / && m != "" { print m; print $2 } { m = "" }' "$MOD/patches/$name" |
				grep -v '^/dev/null$' | sed 's|^[^/]*/||'
		done <"$MOD/patches/series"
	fi
	return 0
}

STAGE=$(mktemp -d "$UPM_CACHE/stage.XXXXXX")
trap 'rm -rf "$STAGE"' EXIT
{ [[ -f $TOUCHED ]] && cat "$TOUCHED"; touched_paths; } | LC_ALL=C sort -u >"$STAGE.paths"
mv "$STAGE.paths" "$STAGE/.paths"
# stage pristine copies of every involved path
while IFS= read -r rel; do
	[[ -z $rel || $rel == *..* ]] && continue
	if [[ -f $PSRC/$rel ]]; then
		mkdir -p "$STAGE/tree/$(dirname "$rel")"
		cp "$PSRC/$rel" "$STAGE/tree/$rel"
	fi
done <"$STAGE/.paths"
mkdir -p "$STAGE/tree"

# --- overlay new files -------------------------------------------------------
for d in mm include Documentation; do
	if [[ -d $MOD/$d ]]; then
		n=$(find "$MOD/$d" -type f | wc -l)
		log "overlay module/$d ($n files)"
		mkdir -p "$STAGE/tree/$d"
		cp -r --remove-destination "$MOD/$d/." "$STAGE/tree/$d/"
	fi
done

# --- patch series ------------------------------------------------------------
PATCHES=()
if [[ -f $MOD/patches/series ]]; then
	while read -r name _rest; do
		[[ -z $name || $name == \#* ]] && continue
		p="$MOD/patches/$name"
		[[ -f $p ]] || die "module/patches/series lists '$name' but module/patches/$name does not exist"
		log "applying patch $name"
		if ! patch -p1 --forward --batch --no-backup-if-mismatch -s -d "$STAGE/tree" <"$p" >&2; then
			die "patch module/patches/$name FAILED to apply on top of the overlay and the patches before it (order: module/patches/series)"
		fi
		PATCHES+=("$name")
	done <"$MOD/patches/series"
elif [[ -d $MOD/patches ]] && compgen -G "$MOD/patches/*.patch" >/dev/null; then
	die "module/patches/*.patch exist but module/patches/series is missing: list the patches in order there"
fi

# --- sync the staged result into the build tree (changed files only) ---------
changed=0
while IFS= read -r rel; do
	[[ -z $rel || $rel == *..* ]] && continue
	if [[ -f $STAGE/tree/$rel ]]; then
		if ! cmp -s "$STAGE/tree/$rel" "$BUILD/$rel"; then
			mkdir -p "$BUILD/$(dirname "$rel")"
			cp --remove-destination "$STAGE/tree/$rel" "$BUILD/$rel"
			changed=$((changed + 1))
		fi
	elif [[ -e $BUILD/$rel ]]; then # created by an earlier overlay/patch, gone now
		rm -f "$BUILD/$rel"
		changed=$((changed + 1))
	fi
done <"$STAGE/.paths"
touched_paths | LC_ALL=C sort -u >"$TOUCHED"
log "$changed file(s) of the tree changed since its last build"

# --- configuration -----------------------------------------------------------
KMAKE=(make -C "$BUILD" ARCH=x86_64 KBUILD_BUILD_TIMESTAMP="upm-test" KBUILD_BUILD_USER=upm KBUILD_BUILD_HOST=upm)
USE_CCACHE=0
if [[ ${UPM_NO_CCACHE:-0} != 1 ]] && command -v ccache >/dev/null; then
	USE_CCACHE=1
	export CCACHE_DIR="${CCACHE_DIR:-${UPM_CACHE_DIR:-/var/cache/upm}/ccache}"
	export CCACHE_BASEDIR="$BUILD" CCACHE_NOHASHDIR=1 CCACHE_MAXSIZE="${CCACHE_MAXSIZE:-8G}"
	KMAKE+=(CC="ccache gcc")
fi

LOGF="$UPM_CACHE/build-$FLAVOUR.log"
: >"$LOGF"
log "configuring: tinyconfig + ${FRAGS[*]##*/} (log: $LOGF)"
"${KMAKE[@]}" tinyconfig >>"$LOGF" 2>&1 || die "make tinyconfig failed; see $LOGF"
(cd "$BUILD" && ARCH=x86_64 scripts/kconfig/merge_config.sh -m .config "${FRAGS[@]}") >>"$LOGF" 2>&1 ||
	die "merge_config.sh failed; see $LOGF"
"${KMAKE[@]}" olddefconfig >>"$LOGF" 2>&1 || die "make olddefconfig failed; see $LOGF"

# Verify that every fragment option took effect.
TREE_HAS_UPM=0
if grep -rqs --include='Kconfig*' -E '^(menu)?config UPM$' "$BUILD/mm" "$BUILD/init" "$BUILD/arch/x86" "$BUILD/kernel" 2>/dev/null; then
	TREE_HAS_UPM=1
fi
bad=()
for frag in "${FRAGS[@]}"; do
	while IFS= read -r line; do
		if [[ $line =~ ^(CONFIG_[A-Za-z0-9_]+)=(.*)$ ]]; then
			sym=${BASH_REMATCH[1]} want=${BASH_REMATCH[2]}
		elif [[ $line =~ ^#\ (CONFIG_[A-Za-z0-9_]+)\ is\ not\ set ]]; then
			sym=${BASH_REMATCH[1]} want=n
		else
			continue
		fi
		if [[ $sym == CONFIG_UPM ]] && ((!TREE_HAS_UPM)); then
			log "note: this tree defines no 'config UPM' (unpatched): CONFIG_UPM ignored"
			continue
		fi
		got=$(grep -E "^$sym=" "$BUILD/.config" | head -1 | cut -d= -f2- || true)
		[[ -z $got ]] && got=n
		[[ $got == "$want" ]] || bad+=("$sym: wanted $want, got $got (${frag##*/})")
	done <"$frag"
done
if ((${#bad[@]})); then
	printf '  %s\n' "${bad[@]}" >&2
	die "${#bad[@]} config option(s) from the fragments did not take effect (dependencies missing?); fix module/configs/*.config. .config: $BUILD/.config"
fi
log "config verified ($(grep -c '=y' "$BUILD/.config") options =y; UPM in tree: $TREE_HAS_UPM)"

# --- build -------------------------------------------------------------------
JOBS=${UPM_KERNEL_JOBS:-$(nproc)}
log "building bzImage with -j$JOBS (ccache: $USE_CCACHE) ..."
T1=$(date +%s)
if ! "${KMAKE[@]}" -j"$JOBS" bzImage >>"$LOGF" 2>&1; then
	grep -E 'error|Error' "$LOGF" | tail -30 >&2 || true
	die "kernel build failed; full log: $LOGF; tree: $BUILD"
fi
T2=$(date +%s)

TMP="$OUT.tmp.$$"
rm -rf "$TMP"
mkdir -p "$TMP"
cp "$BUILD/arch/x86/boot/bzImage" "$TMP/bzImage"
cp "$BUILD/.config" "$TMP/config"
cp "$BUILD/System.map" "$TMP/System.map"
{
	echo "key=$KEY"
	echo "flavour=$FLAVOUR"
	echo "source_version=$VERSION"
	echo "upm_in_tree=$TREE_HAS_UPM"
	echo "patches=${PATCHES[*]:-}"
	echo "build_seconds=$((T2 - T1))"
	echo "total_seconds=$((T2 - T0))"
	echo "built=$(date -u +%FT%TZ)"
	echo "build_tree=$BUILD"
} >"$TMP/info"
rm -rf "$OUT"
mv "$TMP" "$OUT"
log "built $FLAVOUR kernel in $((T2 - T0))s (compile $((T2 - T1))s): $OUT"
echo "$OUT/bzImage"
exit
}
