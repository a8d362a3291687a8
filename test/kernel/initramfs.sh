#!/usr/bin/env bash
# initramfs.sh -- build the upm test initramfs (gzip'd newc cpio).
#
# Contents: /bin/busybox (static; /init runs `busybox --install -s`),
# /init (test/kernel/initramfs/init), /tests/SUITE, the static test programs
# compiled from test/kernel/tests/*.c (gcc -static -O2 -Wall with
# module/include/uapi on the include path), the kselftest wrapper `ksft`,
# the kernel line's own KSM selftests built statically (with libnuma.a) from
# the same linux-source-LINE package -- 6.1: tools/testing/selftests/vm/
# ksm_tests.c (against the host's 6.1 UAPI headers); 6.12:
# tools/testing/selftests/mm/ksm_tests.c and ksm_functional_tests.c (with
# vm_util.c, thp_settings.c, against 6.12's own UAPI headers, installed once
# per source version by `make headers_install O=...` into
# $UPM_CACHE_DIR/kernel/uapi-VERSION/) -- and /tests/LINE (the line and
# whether it has the MADV_UPM engine, read by /init).
# The image is cached as $UPM_CACHE_DIR/kernel/initramfs/<key>.cpio.gz
# (key = hash of every input, the line included); the LAST line on stdout is
# its path.
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

# The body is one compound command, so bash parses all of it before running:
# editing this file while it runs cannot derail a running instance.
{

usage() {
	cat <<EOF
usage: test/kernel/initramfs.sh [--line 6.1|6.12] [--force] [--help]

Build (or reuse) the test initramfs; print its path as the last stdout line.
  --line LINE  the kernel line whose KSM selftests go in (default 6.1 or
               \$UPM_KERNEL_LINE)
  --force      rebuild even if cached
EOF
}

FORCE=0
while (($#)); do
	case $1 in
	--line) set_line "${2:?--line needs 6.1 or 6.12}"; shift ;;
	--line=*) set_line "${1#*=}" ;;
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

ENGINE=0
line_has_engine && ENGINE=1

KEY=$({
	echo "line $UPM_LINE engine $ENGINE"
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
# read by /init: which line's selftests these are, and whether the upm_*
# tests can run (a line without the engine skips them, saying why)
printf 'UPM_LINE=%s\nUPM_ENGINE=%s\nUPM_PATCH_DIR=%s\n' "$UPM_LINE" "$ENGINE" "${UPM_PATCH_DIR#"$UPM_REPO"/}" >"$ROOT/tests/LINE"
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

# --- the line's own KSM selftests, from the same kernel source ----------------
ksft_cc() { # OUTPUT SOURCES...: one static kselftest program in /tests
	local out=$1
	shift
	# upstream code: -Wno-maybe-uninitialized (6.12's ksm_tests main() has one)
	if gcc -static -O2 -Wall -Wno-maybe-uninitialized "${KSFT_INC[@]}" -o "$ROOT/tests/$out" "$@" \
		-lnuma -lrt -lpthread 2>"$WORK/cc.log"; then
		grep -v -e getaddrinfo -e 'in function .affinity_ip' "$WORK/cc.log" >&2 || true
	else
		cat "$WORK/cc.log" >&2
		die "building $out (static, -lnuma) from $UPM_SRC_TOP failed; is libnuma-dev installed (libnuma.a)?"
	fi
}
case $UPM_LINE in
6.1)
	KSRC="$UPM_CACHE/src-$VERSION/$UPM_SRC_TOP"
	if [[ ! -f $UPM_CACHE/src-$VERSION/.complete ]]; then
		log "extracting ksm_tests sources from $UPM_SRC_TARBALL"
		tar -xf "$UPM_SRC_TARBALL" -C "$WORK" \
			"$UPM_SRC_TOP/tools/testing/selftests/vm" \
			"$UPM_SRC_TOP/tools/testing/selftests/kselftest.h" \
			"$UPM_SRC_TOP/include/vdso/time64.h" ||
			die "cannot extract ksm_tests sources from $UPM_SRC_TARBALL"
		KSRC="$WORK/$UPM_SRC_TOP"
	fi
	VMT="$KSRC/tools/testing/selftests/vm"
	KSFT_INC=(-I "$KSRC" -I "$VMT")
	ksft_cc ksm_tests "$VMT/ksm_tests.c"
	;;
*)
	# 6.12's selftests use UAPI newer than the host's 6.1 linux-libc-dev
	# (PR_SET_MEMORY_MERGE, PAGEMAP_SCAN, ...): install the tree's own UAPI
	# headers once per source version (out of tree: the pristine source
	# stays untouched), as kselftest's KHDR_INCLUDES does.
	KSRC=$(pristine_src)
	HDR="$UPM_CACHE/uapi-$VERSION"
	if [[ ! -f $HDR/.complete ]]; then
		log "installing $UPM_SRC_TOP's UAPI headers to $HDR (once per version)"
		rm -rf "$HDR"
		make -s -C "$KSRC" O="$HDR/obj" ARCH=x86_64 INSTALL_HDR_PATH="$HDR" headers_install >"$WORK/hdr.log" 2>&1 ||
			{ cat "$WORK/hdr.log" >&2; die "make headers_install of $KSRC failed"; }
		rm -rf "$HDR/obj"
		touch "$HDR/.complete"
	fi
	MMT="$KSRC/tools/testing/selftests/mm"
	KSFT_INC=(-isystem "$HDR/include" -I "$KSRC" -I "$MMT")
	ksft_cc ksm_tests "$MMT/ksm_tests.c" "$MMT/vm_util.c" "$MMT/thp_settings.c"
	ksft_cc ksm_functional_tests "$MMT/ksm_functional_tests.c" "$MMT/vm_util.c" "$MMT/thp_settings.c"
	;;
esac
log "built the $UPM_LINE KSM selftests: $(cd "$ROOT/tests" && echo ksm_*)"

(cd "$ROOT" && find . -print0 | LC_ALL=C sort -z | cpio --null -o -H newc --owner 0:0 --quiet) |
	gzip -1 >"$WORK/initramfs.cpio.gz"
mv "$WORK/initramfs.cpio.gz" "$OUT"
log "initramfs ($UPM_LINE, engine $ENGINE) $(du -h "$OUT" | cut -f1): $OUT"
echo "$OUT"
exit
}
