#!/usr/bin/env bash
# build.sh -- build the small x86_64 upm test kernel (bzImage) of one kernel
# line (6.1, the default, or 6.12) from Debian's linux-source-LINE tarball
# plus module/ (overlay files and the line's patch series).
#
# Steps: extract the tarball once per source version (cached), copy it to a
# per-line, per-flavour build tree, apply the line's patch series
# (module/patches/LINE/series; 6.1: module/patches/series until it moves) in
# order on top of the overlay module/{mm,include,Documentation} (overlaid
# only when the series lists a patch: the patches wire it in), `make
# tinyconfig` + module/configs/upm.config (+ upm-LINE.config) (+ debug.config
# (+ debug-LINE.config) for --debug), olddefconfig, verify every fragment
# option took effect (the last fragment that names an option wins), build
# bzImage with -j$(nproc).  The result is cached under
#   ${UPM_CACHE_DIR:-/var/cache/upm}/kernel/<key>/bzImage
# where <key> hashes the line, its source package version, the overlay (if
# applied) and the line's patch directory, the fragments, this script,
# lib.sh and the flavour.  A cached image is reused.
# Progress goes to stderr; the LAST line on stdout is the bzImage path.
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

# The body is one compound command, so bash parses all of it before running:
# editing this file while it runs cannot derail a running instance.
{

usage() {
	cat <<EOF
usage: test/kernel/build.sh [--line 6.1|6.12] [--debug|--debug-extra] [--force] [--clean] [--print-key] [--config-only] [--help]

Build (or reuse from cache) the upm test kernel; print its bzImage path as
the last line on stdout.

  --line LINE  kernel line: 6.1 (default; \$UPM_KERNEL_LINE overrides the
               default) or 6.12 (linux-source-6.12; no upm patches yet)
  --debug      add module/configs/debug.config (KASAN, lockdep, DEBUG_VM, ...)
  --debug-extra  the stress-only flavour: debug.config, then
               module/configs/debug-extra.config (no KASAN, no preemption,
               KCSAN, kmemleak, fault injection, io_uring); own build tree
               build-debug-extra and own lock, so it never blocks the
               normal/debug trees
  --force      rebuild even if the cache has this key
  --clean      rebuild in a fresh build tree (implies --force)
  --print-key  print the cache key and exit
  --config-only  prepare the tree, configure and verify the fragments, print
               the .config path and exit (no compile, nothing cached): a
               quick check of module/configs/ on a line
  --help       this text

Environment:
  UPM_CACHE_DIR     cache root (default /var/cache/upm); images go to
                    \$UPM_CACHE_DIR/kernel/<key>/, build trees to
                    \$UPM_CACHE_DIR/kernel/build-{normal,debug,debug-extra}/
                    (6.1) and \$UPM_CACHE_DIR/kernel/build-6.12-FLAVOUR/
  UPM_KERNEL_LINE   default for --line
  UPM_KERNEL_JOBS   make -j value (default: nproc)
  UPM_NO_CCACHE=1   do not use ccache even if installed
EOF
}

DEBUG=0 EXTRA=0 FORCE=0 PRINT_KEY=0 CLEAN=0 CONFIG_ONLY=0
while (($#)); do
	case $1 in
	--line) set_line "${2:?--line needs 6.1 or 6.12}"; shift ;;
	--line=*) set_line "${1#*=}" ;;
	--debug) DEBUG=1 ;;
	--debug-extra) DEBUG=1 EXTRA=1 ;;
	--force) FORCE=1 ;;
	--clean) CLEAN=1 FORCE=1 ;;
	--print-key) PRINT_KEY=1 ;;
	--config-only) CONFIG_ONLY=1 FORCE=1 ;;
	-h | --help) usage; exit 0 ;;
	*) usage >&2; die "unknown argument '$1'" ;;
	esac
	shift
done

ensure_deps build

MOD="$UPM_REPO/module"
LINE=$UPM_LINE
CONF="$MOD/configs"
# Fragments in merge order; a per-line fragment (upm-LINE.config,
# debug-LINE.config) follows its common one and overrides it.
FRAGS=("$CONF/upm.config")
[[ -f $CONF/upm-$LINE.config ]] && FRAGS+=("$CONF/upm-$LINE.config")
if ((DEBUG)); then
	FRAGS+=("$CONF/debug.config")
	[[ -f $CONF/debug-$LINE.config ]] && FRAGS+=("$CONF/debug-$LINE.config")
fi
if ((EXTRA)); then
	FRAGS+=("$CONF/debug-extra.config")
	[[ -f $CONF/debug-extra-$LINE.config ]] && FRAGS+=("$CONF/debug-extra-$LINE.config")
fi
FLAVOUR=normal
((DEBUG)) && FLAVOUR=debug
((EXTRA)) && FLAVOUR=debug-extra
for f in "${FRAGS[@]}"; do [[ -f $f ]] || die "config fragment $f is missing"; done
VERSION=$(src_version)
[[ -n $VERSION ]] || die "$UPM_SRC_PKG is not installed (packaging/install-deps.sh kernel)"

# 6.1 keeps the tree names it always had (build-normal, build-debug, lock
# .build.lock); other lines get their own trees and lock, so a 6.12 build
# never waits for a 6.1 build (or holds its lock).  The debug-extra flavour
# (a cold build of an hour) has its own tree and its own lock on every line
# (.build-debug-extra.lock, .build-LINE-debug-extra.lock): it neither waits
# for nor blocks the normal/debug builds, which keep the line's lock (older
# copies of this script, in other worktrees, take that same lock).
tree_name() { # FLAVOUR
	if [[ $LINE == 6.1 ]]; then echo "build-$1"; else echo "build-$LINE-$1"; fi
}
LOCKNAME=.build.lock
[[ $LINE == 6.1 ]] || LOCKNAME=.build-$LINE.lock
((EXTRA)) && LOCKNAME=.$(tree_name debug-extra).lock

# The line's patch series.  Patches live in $UPM_PATCH_DIR (lib.sh):
# module/patches/LINE/, or for 6.1 module/patches/ until its series moves.
PDIR=$UPM_PATCH_DIR
PDIR_REL=${PDIR#"$UPM_REPO"/}
if [[ $LINE == 6.1 && -d $MOD/patches/6.1 && -f $MOD/patches/series ]]; then
	die "both module/patches/series and module/patches/6.1/series exist: the 6.1 series must be in one place"
fi
series_patches() { line_patches; } # lib.sh: the names in $PDIR/series, in order
NPATCHES=$(series_patches | wc -l)
# The overlay (new files: mm/upm.c, include/.../upm.h, ...) is dead code
# until a patch wires it into Kconfig/Makefile, and it is written for the
# lines that have an engine: overlay it only when the series lists patches.
OVERLAY=0
((NPATCHES > 0)) && OVERLAY=1

# module_files: every file under module/ that can change this line's kernel:
# the overlay (when applied) and the line's patch directory (for the legacy
# 6.1 place module/patches/, only its top level).  Sorted, repo-relative.
module_files() {
	[[ -d $MOD ]] || return 0
	(
		cd "$UPM_REPO" || exit 1
		if ((OVERLAY)); then
			for d in mm include Documentation; do
				[[ -d module/$d ]] && find "module/$d" -type f ! -name '*~' ! -name '.*.swp' -print
			done
		fi
		if [[ -d $PDIR_REL ]]; then
			find "$PDIR_REL" -maxdepth 1 -type f ! -name 'README*' ! -name '*~' ! -name '.*.swp' -print
		fi
	) | LC_ALL=C sort
}

compute_key() {
	{
		echo "line $LINE"
		echo "source-version $VERSION"
		echo "debug $DEBUG"
		# only the extra flavour hashes its fragments (an edit of
		# debug-extra.config does not change the other keys)
		((EXTRA)) && echo "flavour debug-extra"
		echo "build.sh $(sha256sum <"$UPM_KDIR/build.sh" | cut -d' ' -f1)"
		echo "lib.sh $(sha256sum <"$UPM_KDIR/lib.sh" | cut -d' ' -f1)"
		local f
		for f in "$CONF/upm.config" "$CONF/upm-$LINE.config" "$CONF/debug.config" "$CONF/debug-$LINE.config"; do
			[[ -f $f ]] && echo "${f#"$UPM_REPO"/} $(sha256sum <"$f" | cut -d' ' -f1)"
		done
		if ((EXTRA)); then
			for f in "$CONF/debug-extra.config" "$CONF/debug-extra-$LINE.config"; do
				[[ -f $f ]] && echo "${f#"$UPM_REPO"/} $(sha256sum <"$f" | cut -d' ' -f1)"
			done
		fi
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
	log "cached $LINE $FLAVOUR kernel (key $KEY)"
	echo "$OUT/bzImage"
	exit 0
fi

# One kernel build per line at a time (the line's trees are shared).
exec 9>"$UPM_CACHE/$LOCKNAME"
if ! flock -n 9; then
	log "another $LINE kernel build is running; waiting for $UPM_CACHE/$LOCKNAME"
	flock 9
fi
if ((!FORCE)) && [[ -f $OUT/bzImage ]]; then # built while we waited
	echo "$OUT/bzImage"
	exit 0
fi

T0=$(date +%s)

# --- pristine source, extracted once per package version -------------------
PSRC=$(pristine_src)

# --- build tree ----------------------------------------------------------------
# One persistent tree per flavour, created as a hard-link copy of the pristine
# source (cp -al; files are only ever replaced, never written in place, so
# the pristine tree is never modified).  The overlay and the patch series are
# applied in a small staging tree that holds pristine copies of just the
# paths they touch (plus those the previous build touched, listed in
# .upm-touched); then each of those paths is copied into the build tree (or
# deleted there) only if its content differs.  Unchanged files keep their
# mtime, so make recompiles only what really changed.  --clean starts afresh.
BUILD="$UPM_CACHE/$(tree_name "$FLAVOUR")"
TOUCHED="$BUILD/.upm-touched"
for old in "$BUILD".old.*; do # leftovers of an interrupted --clean of this tree (other trees may be in use)
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
	local d name
	if ((OVERLAY)); then
		for d in mm include Documentation; do
			[[ -d $MOD/$d ]] && (cd "$MOD" && find "$d" -type f)
		done
	fi
	while IFS= read -r name; do
		[[ -f $PDIR/$name ]] || continue
		# "--- a/X" followed by "+++ b/Y": both X and Y (-p1)
		awk '/^--- / { m = $2; next }
		     /^\+\+\+ / && m != "" { print m; print $2 } { m = "" }' "$PDIR/$name" |
			grep -v '^/dev/null$' | sed 's|^[^/]*/||'
	done < <(series_patches)
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
((OVERLAY)) || log "line $LINE: $PDIR_REL/series lists no patch: no overlay, no patches (unmodified $UPM_SRC_TOP)"
for d in mm include Documentation; do
	if ((OVERLAY)) && [[ -d $MOD/$d ]]; then
		n=$(find "$MOD/$d" -type f | wc -l)
		log "overlay module/$d ($n files)"
		mkdir -p "$STAGE/tree/$d"
		cp -r --remove-destination "$MOD/$d/." "$STAGE/tree/$d/"
	fi
done

# --- patch series ------------------------------------------------------------
PATCHES=()
if [[ -f $PDIR/series ]]; then
	while IFS= read -r name; do
		p="$PDIR/$name"
		[[ -f $p ]] || die "$PDIR_REL/series lists '$name' but $PDIR_REL/$name does not exist"
		log "applying patch $PDIR_REL/$name"
		if ! patch -p1 --forward --batch --no-backup-if-mismatch -s -d "$STAGE/tree" <"$p" >&2; then
			die "patch $PDIR_REL/$name FAILED to apply on $UPM_SRC_TOP on top of the overlay and the patches before it (order: $PDIR_REL/series)"
		fi
		PATCHES+=("$name")
	done < <(series_patches)
elif [[ -d $PDIR ]] && compgen -G "$PDIR/*.patch" >/dev/null; then
	die "$PDIR_REL/*.patch exist but $PDIR_REL/series is missing: list the patches in order there"
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

LOGF="$UPM_CACHE/$(tree_name "$FLAVOUR").log"
: >"$LOGF"
log "configuring: tinyconfig + ${FRAGS[*]##*/} (log: $LOGF)"
"${KMAKE[@]}" tinyconfig >>"$LOGF" 2>&1 || die "make tinyconfig failed; see $LOGF"
(cd "$BUILD" && ARCH=x86_64 scripts/kconfig/merge_config.sh -m .config "${FRAGS[@]}") >>"$LOGF" 2>&1 ||
	die "merge_config.sh failed; see $LOGF"
"${KMAKE[@]}" olddefconfig >>"$LOGF" 2>&1 || die "make olddefconfig failed; see $LOGF"

# Verify that every fragment option took effect: the wanted value of each
# option is the one of the LAST fragment that names it (as merge_config.sh
# merges them), so a per-line fragment may override a common option.
# CONFIG_UPM: a line whose series lists patches must define `config UPM` and
# have it =y; a line without patches (6.12 until its engine is ported,
# issue 14) must not define it, and CONFIG_UPM is not checked there.
TREE_HAS_UPM=0
if grep -rqs --include='Kconfig*' -E '^(menu)?config UPM$' "$BUILD/mm" "$BUILD/init" "$BUILD/arch/x86" "$BUILD/kernel" 2>/dev/null; then
	TREE_HAS_UPM=1
fi
if ((OVERLAY && !TREE_HAS_UPM)); then
	die "line $LINE: $PDIR_REL/series lists ${#PATCHES[@]} patch(es) but the tree defines no 'config UPM' afterwards"
fi
if ((!OVERLAY && TREE_HAS_UPM)); then
	die "line $LINE: the tree defines 'config UPM' although no patch was applied: stale build tree? (try --clean)"
fi
declare -A WANT=() WANT_FROM=()
for frag in "${FRAGS[@]}"; do
	while IFS= read -r line; do
		if [[ $line =~ ^(CONFIG_[A-Za-z0-9_]+)=(.*)$ ]]; then
			sym=${BASH_REMATCH[1]} want=${BASH_REMATCH[2]}
		elif [[ $line =~ ^#\ (CONFIG_[A-Za-z0-9_]+)\ is\ not\ set ]]; then
			sym=${BASH_REMATCH[1]} want=n
		else
			continue
		fi
		WANT[$sym]=$want
		WANT_FROM[$sym]=${frag##*/}
	done <"$frag"
done
bad=()
for sym in $(printf '%s\n' "${!WANT[@]}" | LC_ALL=C sort); do
	want=${WANT[$sym]}
	if [[ $sym == CONFIG_UPM ]] && ((!OVERLAY)); then
		log "line $LINE has no upm patches yet (issue 14): CONFIG_UPM not checked (the tree does not define it)"
		continue
	fi
	got=$(grep -E "^$sym=" "$BUILD/.config" | head -1 | cut -d= -f2- || true)
	[[ -z $got ]] && got=n
	[[ $got == "$want" ]] || bad+=("$sym: wanted $want, got $got (${WANT_FROM[$sym]})")
done
if ((${#bad[@]})); then
	printf '  %s\n' "${bad[@]}" >&2
	die "${#bad[@]} config option(s) from the fragments did not take effect on $LINE (dependencies missing? renamed on this line? then override it in module/configs/upm-$LINE.config); .config: $BUILD/.config"
fi
log "config verified for $LINE ($(grep -c '=y' "$BUILD/.config") options =y; UPM in tree: $TREE_HAS_UPM)"
if ((CONFIG_ONLY)); then
	echo "$BUILD/.config"
	exit 0
fi

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
# The functions of mm/ksm.c and of the overlay's mm/*.c (static ones too),
# one per line: run.sh tells console reports (KCSAN, kmemleak) that involve
# KSM/UPM code from the rest by them (there is no DEBUG_INFO for file:line).
{
	objs=("$BUILD/mm/ksm.o")
	if ((OVERLAY)); then
		for f in "$MOD"/mm/*.c; do
			[[ -f $f ]] || continue
			o="$BUILD/mm/$(basename "$f" .c).o"
			[[ -f $o ]] && objs+=("$o")
		done
	fi
	for o in "${objs[@]}"; do
		[[ -f $o ]] && nm "$o" | awk '$2 ~ /^[tT]$/ { print $3 }'
	done
} | LC_ALL=C sort -u >"$TMP/ksm-upm.syms" || true
{
	echo "key=$KEY"
	echo "line=$LINE"
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
log "built $LINE $FLAVOUR kernel in $((T2 - T0))s (compile $((T2 - T1))s): $OUT"
echo "$OUT/bzImage"
exit
}
