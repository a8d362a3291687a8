#!/usr/bin/env bash
# run.sh -- boot the upm test kernel in QEMU (TCG) with the test initramfs
# and report the in-guest tests.
#
# Builds the kernel through build.sh (unless --kernel) and the initramfs
# through initramfs.sh, boots `qemu-system-x86_64 -nographic -no-reboot -m 2G
# -smp 2 -cpu max` with two NUMA nodes, saves the console log,
# prints each "upm-test: NAME PASS|FAIL|SKIP" line, and ends with exactly one
# line "N passed, M failed, K skipped".  The console must also be clean of
# kernel splats (pseudo-test console-clean) and the guest must reach its end
# marker (pseudo-test guest-finished).
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

# The body is one compound command, so bash parses all of it before running:
# editing this file while it runs cannot derail a running instance.
{

usage() {
	cat <<EOF
usage: test/kernel/run.sh [--line 6.1|6.12] [--debug [--keep-going] | --debug-extra] [--kernel BZIMAGE]
                          [--stress SECONDS] [--bench] [--timeout SECONDS] [--kvm] [TEST...]

Boot the upm test kernel under QEMU and run the in-guest tests.

  --line LINE        kernel line: 6.1 (default, or \$UPM_KERNEL_LINE) or
                     6.12; selects the kernel build.sh builds and the
                     line's own KSM selftests in the initramfs.  6.12 has
                     no MADV_UPM engine yet: its upm_* tests are reported
                     as SKIP with that reason, only the selftests run

  --debug            use the debug kernel (build.sh --debug) and boot with
                     panic_on_warn=1; time limits x4 (UPM_DEBUG_TIME_SCALE)
  --keep-going       with --debug: no panic_on_warn (run every test even
                     after a kernel warning; console-clean still fails)
  --debug-extra      the stress-only flavour (build.sh --debug-extra: no
                     preemption, KCSAN, kmemleak, fault injection,
                     io_uring; not in make check): runs the check suite,
                     upm_stress SECONDS (--stress, default 120), the same
                     stress with fault injection for its workers
                     (upm_stress_faults) and a kmemleak scan (upm_kmemleak);
                     time limits x4, no panic_on_warn.  Adds the
                     pseudo-tests kcsan-ksm-upm and kmemleak-ksm-upm (a
                     KCSAN or kmemleak report with a function of mm/ksm.c
                     or mm/upm.c fails them; other reports are listed, and
                     KCSAN reports do not fail console-clean)
  --kernel BZIMAGE   boot this bzImage instead of building/reusing one
  --stress SECONDS   also run upm_stress for SECONDS (after the check suite)
  --bench            run only the benchmark (upm_bench); its JSON is saved
  --bench-args A:B   arguments for upm_bench, ':'-separated (e.g. 4:32 =
                     4 processes x 32 MiB)
  --timeout SECONDS  overall QEMU timeout (default: check 1100, stress
                     SECONDS+1500, bench 4800; doubled with --debug)
  --kvm              use KVM instead of TCG (faster; not the reference setup)
  TEST...            run only these tests (names from test/kernel/tests/SUITE)

Output: per-test lines, the console log path, and as the LAST line
"N passed, M failed, K skipped".  Exit 0 if nothing failed, 1 otherwise,
77 if a prerequisite is missing and cannot be installed.
Logs go to \${UPM_KERNEL_LOG_DIR:-\$UPM_CACHE_DIR/kernel/logs} (default
UPM_CACHE_DIR=/var/cache/upm).
EOF
}

DEBUG=0 EXTRA=0 KEEP_GOING=0 KERNEL='' STRESS='' BENCH=0 TIMEOUT='' ACCEL=${UPM_QEMU_ACCEL:-tcg} BENCH_ARGS=''
TESTS=()
while (($#)); do
	case $1 in
	--line) set_line "${2:?--line needs 6.1 or 6.12}"; shift ;;
	--line=*) set_line "${1#*=}" ;;
	--debug) DEBUG=1 ;;
	--debug-extra) DEBUG=1 EXTRA=1 ;;
	--keep-going) KEEP_GOING=1 ;;
	--kernel) KERNEL=${2:?--kernel needs a path}; shift ;;
	--stress) STRESS=${2:?--stress needs SECONDS}; shift ;;
	--bench) BENCH=1 ;;
	--bench-args) BENCH_ARGS=${2:?}; shift ;;
	--timeout) TIMEOUT=${2:?}; shift ;;
	--kvm) ACCEL=kvm ;;
	-h | --help) usage; exit 0 ;;
	-*) usage >&2; die "unknown option '$1'" ;;
	*) TESTS+=("$1") ;;
	esac
	shift
done
[[ -z $STRESS || $STRESS =~ ^[0-9]+$ ]] || die "--stress wants a number of seconds, got '$STRESS'"

if [[ -n $(missing_deps run) ]] && [[ ! -f $UPM_REPO/packaging/install-deps.sh ]]; then
	log "SKIP: missing $(missing_deps run | tr '\n' ' ')and packaging/install-deps.sh is absent"
	exit 77
fi
ensure_deps run

MODE=check
[[ -n $STRESS ]] && MODE=stress
if ((EXTRA)); then
	((BENCH)) && die "--bench and --debug-extra do not go together"
	MODE=extra
	STRESS=${STRESS:-120}
fi
((BENCH)) && MODE=bench
if [[ -z $TIMEOUT ]]; then
	case $MODE in
	check) TIMEOUT=1100 ;;
	stress) TIMEOUT=$((STRESS + 1500)) ;;
	extra) TIMEOUT=$((2 * STRESS + 2400)) ;;
	bench) TIMEOUT=4800 ;;
	esac
	((DEBUG)) && TIMEOUT=$((TIMEOUT * 2))
fi

# --- kernel and initramfs ------------------------------------------------------
if [[ -n $KERNEL ]]; then
	[[ -f $KERNEL ]] || die "--kernel $KERNEL: no such file"
	KERNEL=$(readlink -f "$KERNEL")
else
	bargs=(--line "$UPM_LINE")
	((DEBUG)) && bargs+=(--debug)
	((EXTRA)) && bargs=(--line "$UPM_LINE" --debug-extra)
	KERNEL=$("$UPM_KDIR/build.sh" "${bargs[@]}" | tail -n 1)
	[[ -f $KERNEL ]] || die "build.sh did not produce a bzImage"
fi
INITRD=$("$UPM_KDIR/initramfs.sh" --line "$UPM_LINE" | tail -n 1)
[[ -f $INITRD ]] || die "initramfs.sh did not produce an image"

LOGDIR=${UPM_KERNEL_LOG_DIR:-$UPM_CACHE/logs}
mkdir -p "$LOGDIR"
STAMP=$(date +%Y%m%d-%H%M%S)
FLAV=normal
((DEBUG)) && FLAV=debug
((EXTRA)) && FLAV=debug-extra
LOG="$LOGDIR/console-$STAMP-$UPM_LINE-$FLAV-$MODE.log"

# no_timer_check: on a loaded host the TCG guest can fail the IO-APIC timer
# check and panic at boot ("IO-APIC + timer doesn't work!")
APPEND="console=ttyS0 panic=-1 no_timer_check upm.mode=$MODE"
((DEBUG)) && APPEND+=" upm.scale=${UPM_DEBUG_TIME_SCALE:-4}"
# debug-extra: no panic_on_warn -- under fault injection a warning far from
# KSM/UPM must not end the run; console-clean still reports every one
((DEBUG && !KEEP_GOING && !EXTRA)) && APPEND+=" panic_on_warn=1"
[[ -n $STRESS ]] && APPEND+=" upm.stress=$STRESS"
[[ -n $BENCH_ARGS ]] && APPEND+=" upm.bench=$BENCH_ARGS"
if ((${#TESTS[@]})); then
	APPEND+=" upm.tests=$(IFS=,; echo "${TESTS[*]}")"
fi

# two NUMA nodes of 1 GiB, one CPU (socket) each (ksm_tests -N, merge_across_nodes);
# merge=off keeps the guest RAM out of the host's KSM, so host-KSM tests and
# the guest do not slow each other down
QEMU=(qemu-system-x86_64 -nographic -no-reboot -m 2G -smp 2,sockets=2,cores=1,threads=1 -cpu max -accel "$ACCEL"
	-object memory-backend-ram,id=m0,size=1G,merge=off -object memory-backend-ram,id=m1,size=1G,merge=off
	-numa node,nodeid=0,cpus=0,memdev=m0 -numa node,nodeid=1,cpus=1,memdev=m1
	-kernel "$KERNEL" -initrd "$INITRD" -append "$APPEND")
log "line:    $UPM_LINE$(line_has_engine || echo " (no MADV_UPM engine yet: upm_* tests skipped)")"
log "kernel:  $KERNEL"
log "initrd:  $INITRD"
log "console: $LOG"
log "booting ($ACCEL, mode $MODE, timeout ${TIMEOUT}s): ${QEMU[*]}"

T0=$(date +%s)
timeout -k 10 "$TIMEOUT" "${QEMU[@]}" </dev/null >"$LOG" 2>&1 &
QPID=$!
# live progress: the per-test result lines as they appear
tail -n +1 -F --pid="$QPID" "$LOG" 2>/dev/null | tr -d '\r' |
	grep --line-buffered -aoE 'upm-test: [A-Za-z0-9_.-]+ (PASS|FAIL|SKIP)( \(.*\))?' || true &
TPID=$!
trap 'kill "$QPID" 2>/dev/null || true' EXIT INT TERM
# A guest that printed its end marker but does not power off within 30 s
# (e.g. a hung shutdown) is stopped here.
END_SEEN=0
while kill -0 "$QPID" 2>/dev/null; do
	if ((END_SEEN == 0)) && grep -aq 'upm-test: END' "$LOG"; then
		END_SEEN=$(date +%s)
	fi
	if ((END_SEEN && $(date +%s) - END_SEEN > 30)); then
		log "guest finished but did not power off; stopping QEMU"
		kill "$QPID" 2>/dev/null || true
	fi
	sleep 2
done
QRC=0
wait "$QPID" || QRC=$?
wait "$TPID" 2>/dev/null || true
T1=$(date +%s)
log "guest ran $((T1 - T0))s (qemu exit $QRC)"

CLEAN=$(mktemp)
trap 'rm -f "$CLEAN"' EXIT
tr -d '\r' <"$LOG" >"$CLEAN"

pass=0 fail=0 skip=0
while IFS= read -r line; do
	case $line in
	*" PASS"*) pass=$((pass + 1)) ;;
	*" FAIL"*) fail=$((fail + 1)) ;;
	*" SKIP"*) skip=$((skip + 1)) ;;
	esac
done < <(grep -aoE 'upm-test: [A-Za-z0-9_.-]+ (PASS|FAIL|SKIP)( \(.*\))?' "$CLEAN" | grep -v -E 'upm-test: (START|SUMMARY|BEGIN|END) ')

# pseudo-test: the guest reached its end marker
if grep -aq 'upm-test: END' "$CLEAN"; then
	:
else
	why="no end marker"
	((QRC == 124 || QRC == 137)) && why="overall timeout ${TIMEOUT}s hit"
	grep -aq 'Kernel panic' "$CLEAN" && why="kernel panic"
	echo "upm-test: guest-finished FAIL ($why; see $LOG)"
	fail=$((fail + 1))
fi

# debug-extra: KCSAN and kmemleak reports, sorted by whether they involve
# KSM/UPM code (the functions of mm/ksm.o and the overlay's objects, saved by
# build.sh as ksm-upm.syms next to the bzImage)
if ((EXTRA)); then
	SYMS="$(dirname "$KERNEL")/ksm-upm.syms"
	if [[ ! -s $SYMS ]]; then
		log "no $SYMS: KSM/UPM reports are recognised by the names ksm/upm only"
		SYMS=/dev/null
	fi
	# report_blocks KIND: one line per report, "INVOLVED<TAB>HEADLINE<TAB>FUNCS"
	report_blocks() {
		awk -v kind="$1" -v symfile="$SYMS" '
		BEGIN { while ((getline s < symfile) > 0) sym[s] = 1 }
		# KSM checksums pages that user space may be writing (ksmd and
		# MADV_UPM alike, by design: every merge compares again under write
		# protection), so a KCSAN race of calc_checksum with an unknown
		# (user-space) writer is intended, not a failure.
		function flush(   tag) {
			tag = hit ? "KSM/UPM" : "other"
			if (kind == "kcsan" && unk && funcs ~ /(^|,)calc_checksum(,|$)/) tag = "intended"
			if (inb) print tag "	" head "	" funcs
			inb = 0; hit = 0; unk = 0; funcs = ""
		}
		function scan(line,   n, i, t, f, a) {
			n = split(line, a, /[^A-Za-z0-9_.+\/]+/)
			for (i = 1; i <= n; i++) {
				t = a[i]
				if (t !~ /\+0x/) continue
				f = t; sub(/\+0x.*/, "", f); sub(/\.(constprop|isra|part|cold)\..*$/, "", f)
				if (f == "") continue
				if (!(f in seen)) { seen[f] = 1; funcs = funcs (funcs == "" ? "" : ",") f }
				if ((f in sym) || f ~ /(^|_)(ksm|upm)(_|$)/) hit = 1
			}
		}
		kind == "kcsan" {
			if ($0 ~ /BUG: KCSAN:/) { flush(); inb = 1; delete seen; head = $0; sub(/.*BUG: /, "", head)
				if (head ~ /(^|[ _])(ksm|upm)(_|$)/) hit = 1
				n = split(head, h, /[ \/]+/); for (i = 1; i <= n; i++) if (h[i] in sym) hit = 1
				next }
			if (inb && $0 ~ /====================/) { flush(); next }
			if (inb && $0 ~ /race at unknown origin/) unk = 1
			if (inb) scan($0)
		}
		kind == "kmemleak" {
			if ($0 ~ /upm-kmemleak: BEGIN/) { on = 1; next }
			if ($0 ~ /upm-kmemleak: END/) { flush(); on = 0; next }
			if (!on) next
			if ($0 ~ /unreferenced object/) { flush(); inb = 1; delete seen; head = $0; sub(/^[ 	]+/, "", head); next }
			if (inb) scan($0)
		}
		END { flush() }' "$CLEAN"
	}
	for kind in kcsan kmemleak; do
		name=$kind-ksm-upm
		rep=$(report_blocks "$kind")
		nall=0 nhit=0
		[[ -n $rep ]] && nall=$(wc -l <<<"$rep") && nhit=$(grep -c '^KSM/UPM' <<<"$rep" || true)
		if [[ -n $rep ]]; then
			echo "$kind: $nall report(s), $nhit involving KSM/UPM code ([intended]: calc_checksum racing a user-space write):"
			awk -F'\t' '{ printf "  [%s] %s (%s)\n", $1, $2, substr($3, 1, 200) }' <<<"$rep" | sort | uniq -c | sort -rn | head -40
		fi
		if [[ $kind == kmemleak ]] && ! grep -aq 'upm-kmemleak: BEGIN' "$CLEAN"; then
			echo "upm-test: $name SKIP (no kmemleak scan in this run: upm_kmemleak did not run or skipped)"
			skip=$((skip + 1))
		elif ((nhit)); then
			echo "upm-test: $name FAIL ($nhit of $nall $kind report(s) involve KSM/UPM functions; see above and $LOG)"
			fail=$((fail + 1))
		else
			echo "upm-test: $name PASS ($nall $kind report(s), none in KSM/UPM code)"
			pass=$((pass + 1))
		fi
	done
	nfi=$(grep -ac 'FAULT_INJECTION: forcing a failure' "$CLEAN" || true)
	echo "fault injection: $nfi 'forcing a failure' console line(s) (rate-limited); counters: $(grep -aoE 'fault injection: [a-z_]+ injected -?[0-9]+ failures' "$CLEAN" | sed 's/fault injection: //' | paste -sd';' || true)"
	# KCSAN reports are judged above, not as console splats
	awk '/BUG: KCSAN:/ { k = 1 } k && /====================/ { k = 0; next } !k' "$CLEAN" >"$CLEAN.nokcsan"
	mv "$CLEAN.nokcsan" "$CLEAN"
fi

# pseudo-test: console clean of kernel splats
SPLAT='WARNING:|BUG:|KASAN|possible circular locking|possible recursive locking|inconsistent lock state|suspicious RCU usage|Kernel panic|sleeping function called from invalid context|Bad page'
if first=$(grep -naE "$SPLAT" "$CLEAN" | head -n 1) && [[ -n $first ]]; then
	nsplat=$(grep -caE "$SPLAT" "$CLEAN" || true)
	echo "upm-test: console-clean FAIL ($nsplat splat line(s); first at line ${first%%:*}: ${first#*:})"
	fail=$((fail + 1))
else
	echo "upm-test: console-clean PASS"
	pass=$((pass + 1))
fi

if ((BENCH)); then
	JSON="$LOGDIR/bench-$STAMP-$UPM_LINE-$FLAV.json"
	sed -n '/UPM-BENCH-JSON-BEGIN/,/UPM-BENCH-JSON-END/p' "$CLEAN" | sed '1d;$d' | sed 's/^    //' >"$JSON"
	if [[ -s $JSON ]]; then
		sed -n '/UPM-BENCH-TABLE-BEGIN/,/UPM-BENCH-TABLE-END/p' "$CLEAN" | sed '1d;$d' | sed 's/^    //'
		echo "benchmark JSON: $JSON"
	else
		rm -f "$JSON"
		echo "benchmark produced no JSON (see $LOG)"
	fi
fi

echo "console log: $LOG"
if ((skip)); then
	echo "$pass passed, $fail failed, $skip skipped"
else
	echo "$pass passed, $fail failed"
fi
((fail == 0))
exit
}
