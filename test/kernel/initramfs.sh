#!/usr/bin/env bash
# initramfs.sh -- build the upm test initramfs (gzip'd newc cpio).
#
# Contents: /bin/busybox (static; /init runs `busybox --install -s`),
# /init (test/kernel/initramfs/init), /tests/SUITE, the static test programs
# compiled from test/kernel/tests/*.c (gcc -static -O2 -Wall with
# module/include/uapi on the include path), the kselftest wrapper `ksft`, and
# the tree's own tools/testing/selftests/vm/ksm_tests.c built statically
# (with libnuma.a) from the same linux-source-6.1 package.
# The image is cached as $UPM_CACHE_DIR/kernel/initramfs/<key>.cpio.gz
# (key = hash of every input); the LAST line on stdout is its path.
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

# The body is one compound command, so bash parses all of it before running:
# editing this file while it runs cannot derail a running instance.
{

usage() {
	cat <<EOF
usage: test/kernel/initramfs.sh [--force] [--help]

Build (or reuse) the test initramfs; print its path as the last stdout line.
  --force   rebuild even if cached
EOF
}

FORCE=0
while (($#)); do
	case $1 in
	--force) FORCE=1 ;;
	-h | --help) usage; exit 0 ;;
	*) usage >&2; die "unknown argument '$1'" ;;
	esac
	shift
done

ensure_deps run build
VERSION=$(src_version)
TESTS_DIR="$UPM_KDIR/tests"
UAPI="$UPM_REPO/module/include/uapi"
CFLAGS=(-static -O2 -Wall -Wextra -Wno-unused-function -Wno-unused-parameter -I"$UAPI")

KEY=$({
	echo "version $VERSION"
	sha256sum /bin/busybox | cut -d' ' -f1
	gcc --version | head -1
	for f in "$UPM_KDIR/initramfs.sh" "$UPM_KDIR/lib.sh" "$UPM_KDIR/initramfs/init" "$TESTS_DIR"/* "$UAPI"/linux/*.h; do
		[[ -f $f ]] && echo "${f#"$UPM_REPO"/} $(sha256sum <"$f" | cut -d' ' -f1)"
	done
} | sha256sum | cut -c1-32)
OUTDIR="$UPM_CACHE/initramfs"
OUT="$OUTDIR/$KEY.cpio.gz"
mkdir -p "$OUTDIR"
if ((!FORCE)) && [[ -f $OUT ]]; then
	log "cached initramfs $OUT"
	echo "$OUT"
	exit 0
fi

WORK=$(mktemp -d "$OUTDIR/build.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
ROOT="$WORK/root"
mkdir -p "$ROOT"/{bin,sbin,usr/bin,usr/sbin,proc,sys,dev,tmp,run,tests,etc}
cp /bin/busybox "$ROOT/bin/busybox"
install -m 0755 "$UPM_KDIR/initramfs/init" "$ROOT/init"
install -m 0644 "$TESTS_DIR/SUITE" "$ROOT/tests/SUITE"
install -m 0755 "$TESTS_DIR/ksft" "$ROOT/tests/ksft"
printf 'root:x:0:0:root:/:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/sh\n' >"$ROOT/etc/passwd"
printf 'root:x:0:\nnogroup:x:65534:\n' >"$ROOT/etc/group"

# --- our test programs ---------------------------------------------------------
n=0
for src in "$TESTS_DIR"/*.c; do
	[[ -e $src ]] || continue
	name=$(basename "$src" .c)
	gcc "${CFLAGS[@]}" -o "$ROOT/tests/$name" "$src" -lpthread 2>"$WORK/cc.log" ||
		{ cat "$WORK/cc.log" >&2; die "compiling test/kernel/tests/$name.c failed"; }
	[[ -s $WORK/cc.log ]] && cat "$WORK/cc.log" >&2
	n=$((n + 1))
done
log "compiled $n test programs"

# --- ksm_tests from the same kernel source -----------------------------------
KSRC="$UPM_CACHE/src-$VERSION/linux-source-6.1"
if [[ ! -f $UPM_CACHE/src-$VERSION/.complete ]]; then
	log "extracting ksm_tests sources from $UPM_SRC_TARBALL"
	tar -xf "$UPM_SRC_TARBALL" -C "$WORK" \
		linux-source-6.1/tools/testing/selftests/vm \
		linux-source-6.1/tools/testing/selftests/kselftest.h \
		linux-source-6.1/include/vdso/time64.h ||
		die "cannot extract ksm_tests sources from $UPM_SRC_TARBALL"
	KSRC="$WORK/linux-source-6.1"
fi
VMT="$KSRC/tools/testing/selftests/vm"
if gcc -static -O2 -Wall -I "$KSRC" -I "$VMT" -o "$ROOT/tests/ksm_tests" "$VMT/ksm_tests.c" \
	-lnuma -lrt -lpthread 2>"$WORK/cc.log"; then
	grep -v -e getaddrinfo -e 'in function .affinity_ip' "$WORK/cc.log" >&2 || true
else
	cat "$WORK/cc.log" >&2
	die "building ksm_tests (static, -lnuma) failed; is libnuma-dev installed (libnuma.a)?"
fi

(cd "$ROOT" && find . -print0 | LC_ALL=C sort -z | cpio --null -o -H newc --owner 0:0 --quiet) |
	gzip -1 >"$WORK/initramfs.cpio.gz"
mv "$WORK/initramfs.cpio.gz" "$OUT"
log "initramfs $(du -h "$OUT" | cut -f1): $OUT"
echo "$OUT"
exit
}
