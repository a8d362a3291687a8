#!/bin/bash
# SPDX-License-Identifier: GPL-2.0-or-later
# demo.sh -- several processes holding the same data, merged under upm.
#
#   test/demo/demo.sh --build DIR [--procs N] [--mib M] [--json PATH] [--timeout S]
#                     [--workloads memhog,numpy]
#
# Starts N (default 4) upm-memhog processes holding the same M MiB (default
# 128) twice: each under `upm run --backend ksm`, then without upm (the
# baseline), with ksmd switched to fast settings for the whole run; then the
# same with N python3 processes building the same numpy array (skipped, with
# the reason, when python3-numpy is missing).  Prints a table of memory
# before and after merging (PSS per process, ksm_merging_pages, saved MiB,
# node totals, time to 90% of the achievable savings, fraction of the ideal)
# and writes the same as JSON (path printed last).  Needs root (it switches
# ksmd) and a build (`make build`).
#
# The host's KSM settings are saved first and restored on exit, Ctrl-C or
# SIGTERM; every process the demo starts is stopped.
set -euo pipefail

usage() { sed -n '3,19p' "$0" | sed 's/^# \{0,1\}//'; }
die() { printf 'demo: error: %s\n' "$*" >&2; exit 1; }

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
build=build procs=4 mib=128 json="" timeout=30 workloads=memhog,numpy
while [ $# -gt 0 ]; do
	case $1 in
	--build) build=${2:?--build needs a directory}; shift 2 ;;
	--procs) procs=${2:?--procs needs a number}; shift 2 ;;
	--mib) mib=${2:?--mib needs a number}; shift 2 ;;
	--json) json=${2:?--json needs a path}; shift 2 ;;
	--timeout) timeout=${2:?--timeout needs seconds}; shift 2 ;;
	--workloads) workloads=${2:?--workloads needs a list}; shift 2 ;;
	-h|--help) usage; exit 0 ;;
	*) usage >&2; die "unknown argument \`$1\`" ;;
	esac
done
[[ $procs =~ ^[0-9]+$ && $procs -ge 2 && $procs -le 64 ]] || die "--procs wants 2..64, got \`$procs\`"
[[ $mib =~ ^[0-9]+$ && $mib -ge 1 ]] || die "--mib wants a positive integer, got \`$mib\`"
[[ $timeout =~ ^[0-9]+$ && $timeout -ge 1 ]] || die "--timeout wants whole seconds, got \`$timeout\`"
[[ $workloads =~ ^(memhog|numpy)(,(memhog|numpy))*$ ]] || die "--workloads wants memhog and/or numpy, got \`$workloads\`"

build=$(cd "$build" 2>/dev/null && pwd) || die "build directory \`$build\` does not exist (run \`make build\`)"
upm=""
for c in "$build/bin/upm" "$build/hooks/cli/upm"; do
	[ -x "$c" ] && { upm=$c; break; }
done
[ -n "$upm" ] || die "the \`upm\` CLI is not built in \`$build\` (run \`make build\`)"
memhog=$build/bin/upm-memhog
[ -x "$memhog" ] || die "\`$memhog\` is not built (run \`make build\`)"
python=/usr/bin/python3
[ -x $python ] || die "$python is missing (packaging/install-deps.sh test)"

ksm=/sys/kernel/mm/ksm
[ "$(id -u)" = 0 ] || die "the demo switches ksmd and must run as root"
[ -w $ksm/run ] || die "$ksm/run is missing or not writable (kernel without CONFIG_KSM?)"

avail_kib=$(awk '/^MemAvailable:/ {print $2}' /proc/meminfo)
need_kib=$((procs * mib * 1024 * 3 / 2))
[ "$need_kib" -lt "$avail_kib" ] ||
	die "$procs x $mib MiB needs about $((need_kib / 1024)) MiB but only $((avail_kib / 1024)) MiB are available; use --procs/--mib"

# Take turns with test runs that switch ksmd (test/integration/upmtest/ksm.py
# holds the same lock), so that nobody saves another's fast settings.
lock=/run/upm-test-ksm-saved.lock
exec 9>>"$lock"
if ! flock -n 9; then
	echo "demo: waiting for a test run to release $lock" >&2
	flock -w 900 9 || die "$lock stayed locked for 15 minutes"
fi

# Save every writable knob ("[none] scan-time" style knobs by their choice).
declare -A saved=()
for f in "$ksm"/*; do
	# root may open any file for writing; the owner's write bit tells knobs
	# from read-only counters
	[ -f "$f" ] && (((8#$(stat -c %a "$f")) & 8#200)) || continue
	v=$(cat "$f")
	[[ $v =~ \[([^]]+)\] ]] && v=${BASH_REMATCH[1]}
	saved[${f##*/}]=$v
done

child=""
restore() {
	local status=$? name cur
	trap - EXIT INT TERM
	if [ -n "$child" ] && kill -0 "$child" 2>/dev/null; then
		kill -TERM "$child" 2>/dev/null || true
		wait "$child" 2>/dev/null || true
	fi
	for name in "${!saved[@]}"; do
		[ "$name" = run ] && continue
		cur=$(cat "$ksm/$name")
		[[ $cur =~ \[([^]]+)\] ]] && cur=${BASH_REMATCH[1]}
		[ "$cur" = "${saved[$name]}" ] || echo "${saved[$name]}" >"$ksm/$name" 2>/dev/null ||
			echo "demo: warning: could not restore $ksm/$name to \`${saved[$name]}\`" >&2
	done
	echo "${saved[run]}" >"$ksm/run" || echo "demo: warning: could not restore $ksm/run" >&2
	echo "demo: restored the host's KSM settings (run=${saved[run]})" >&2
	exit "$status"
}
trap restore EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Fast ksmd for both phases: the scan-time advisor off (it overrides
# pages_to_scan), no smart-scan skipping, 10000 pages every 5 ms.
for kv in advisor_mode=none smart_scan=0 pages_to_scan=10000 sleep_millisecs=5 run=1; do
	[ -e "$ksm/${kv%%=*}" ] && echo "${kv#*=}" >"$ksm/${kv%%=*}"
done

[ -n "$json" ] || json=$build/demo/demo-$(date -u +%Y%m%dT%H%M%SZ).json
mkdir -p "$(dirname "$json")"

# In the background, so that the traps run as soon as a signal arrives.
$python "$here/demo.py" --upm "$upm" --memhog "$memhog" --procs "$procs" --mib "$mib" \
	--timeout "$timeout" --workloads "$workloads" --json "$json" &
child=$!
wait "$child"
