#!/bin/sh
# The fuzz targets of test/fuzz (libFuzzer, clang, ASan + UBSan).
#
#   test/fuzz/run.sh build BUILD_DIR                 configure and build them in BUILD_DIR/fuzz
#   test/fuzz/run.sh run BUILD_DIR TARGET SECONDS    fuzz TARGET (spec, policy, ...) for SECONDS
#   test/fuzz/run.sh replay BUILD_DIR TARGET         run TARGET once on each seed and reproducer
#   test/fuzz/run.sh all BUILD_DIR SECONDS           build, then fuzz every target for SECONDS (make fuzz)
#   test/fuzz/run.sh selftest BUILD_DIR              check that a crash fails, with its reproducer
#   test/fuzz/run.sh list                            the targets
#
# BUILD_DIR is the main build directory (ctest passes it); everything goes to
# BUILD_DIR/fuzz: the clang build, the corpus each run adds to
# (fuzz/corpus/TARGET, seeded from test/fuzz/corpus/TARGET, which is only
# read), and what a run finds (fuzz/artifacts/TARGET/crash-*, leak-*,
# timeout-*, oom-*).  `replay` runs the target once on every seed of
# test/fuzz/corpus/TARGET and every reproducer in fuzz/artifacts/TARGET (no
# mutation, nothing written but a new reproducer): what `make check` runs.
# Exit status: 0 nothing found, 1 a finding (its reproducer and how to re-run
# it are printed) or a build failure.
# Environment: UPM_FUZZ_CXX (default clang++), UPM_FUZZ_JOBS (build jobs,
# default 2), UPM_FUZZ_ARGS (more libFuzzer options).  See
# test/fuzz/README.md.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
src=$(cd "$here/../.." && pwd)
cxx=${UPM_FUZZ_CXX:-clang++}

die() { echo "upm fuzz: $*" >&2; exit 1; }
hint="install it with \`sudo packaging/install-deps.sh test\` (Debian packages clang and libclang-rt-dev)"

targets() {
    for f in "$here"/fuzz_*.cpp; do
        n=$(basename "$f" .cpp); echo "${n#fuzz_}"
    done
}

# report NAME BIN SEEDS ARTIFACTS MARKER STATUS: 0 when libFuzzer exited 0
# and wrote no reproducer since MARKER was made, else 1 after printing the
# reproducers and how to re-run them.
report() {
    name=$1 bin=$2 seeds=$3 artifacts=$4 marker=$5 status=$6
    found=$(find "$artifacts" -maxdepth 1 -type f -newer "$marker" ! -name '.*' | sort)
    rm -f "$marker"
    if [ "$status" -ne 0 ] || [ -n "$found" ]; then
        echo "upm fuzz: \`$name\` FAILED (libFuzzer exit status $status)" >&2
        for f in $found; do
            echo "upm fuzz: reproducer: $f" >&2
            echo "upm fuzz:   re-run:   $bin $f" >&2
        done
        [ -n "$found" ] || echo "upm fuzz: no reproducer was written; see libFuzzer's output above" >&2
        echo "upm fuzz: once fixed, add the reproducer to the seeds: cp REPRODUCER $seeds/" >&2
        return 1
    fi
}

# fuzz NAME BIN SEEDS WORK ARTIFACTS SECONDS: runs BIN on WORK (new inputs go
# there) and SEEDS (only read); 0 when nothing was found, else 1 after
# printing the reproducers and how to re-run them.
fuzz() {
    name=$1 bin=$2 seeds=$3 work=$4 artifacts=$5 seconds=$6
    mkdir -p "$work" "$artifacts"
    marker=$artifacts/.start
    : >"$marker"
    # -timeout: one input taking longer is a finding (a parser must be fast);
    # -rss_limit_mb: a parser that needs more is a finding too.
    # libFuzzer's own exit codes (77 crash, 70 timeout, 71 OOM) become 1, so
    # that ctest never mistakes a finding for a skip.
    status=0
    # shellcheck disable=SC2086
    ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1} \
    UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1} \
        "$bin" -max_total_time="$seconds" -timeout=20 -rss_limit_mb=2048 -max_len=65536 \
        -print_final_stats=1 -artifact_prefix="$artifacts/" ${UPM_FUZZ_ARGS:-} "$work" "$seeds" || status=$?
    report "$name" "$bin" "$seeds" "$artifacts" "$marker" "$status" || return 1
    echo "upm fuzz: \`$name\`: nothing found in ${seconds}s ($(ls "$work" | wc -l) inputs in $work)"
}

# replay NAME BIN SEEDS ARTIFACTS: runs BIN once on every file of SEEDS and
# every reproducer left in ARTIFACTS (libFuzzer's file mode: no mutation,
# nothing written but the reproducer of a new finding), with the limits of
# fuzz(); 0 when each passed, else 1 as fuzz() reports.
replay() {
    name=$1 bin=$2 seeds=$3 artifacts=$4
    mkdir -p "$artifacts"
    inputs=$(find "$seeds" "$artifacts" -maxdepth 1 -type f ! -name '.*' | sort)
    [ -n "$inputs" ] || die "\`$name\`: nothing to replay in $seeds"
    marker=$artifacts/.start
    : >"$marker"
    status=0
    # shellcheck disable=SC2086
    ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1} \
    UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1} \
        "$bin" -timeout=20 -rss_limit_mb=2048 -artifact_prefix="$artifacts/" ${UPM_FUZZ_ARGS:-} $inputs \
        >"$artifacts/.replay.log" 2>&1 || status=$?
    if [ "$status" -ne 0 ]; then
        # File mode writes no new reproducer: the input that failed is the last one run.
        cat "$artifacts/.replay.log" >&2
        failed=$(sed -n 's/^Running: //p' "$artifacts/.replay.log" | tail -n 1)
        rm -f "$marker"
        echo "upm fuzz: \`$name\` FAILED on replay (libFuzzer exit status $status)" >&2
        echo "upm fuzz: reproducer: $failed" >&2
        echo "upm fuzz:   re-run:   $bin $failed" >&2
        return 1
    fi
    report "$name" "$bin" "$seeds" "$artifacts" "$marker" "$status" || return 1
    echo "upm fuzz: \`$name\`: replayed $(echo "$inputs" | wc -l) inputs (seeds and reproducers), nothing found"
}

# check_target BUILD_DIR TARGET: sets out, target and bin; dies when TARGET
# is not a target, is not built or has no seeds.
check_target() {
    out=$1/fuzz
    target=$2
    bin=$out/fuzz_$target
    [ -f "$here/fuzz_$target.cpp" ] || die "no fuzz target \`$target\` (have: $(targets | tr '\n' ' '))"
    [ -x "$bin" ] || die "\`$bin\` is not built: run \`$0 build $1\` (ctest runs it as \`fuzz-build\`); it needs clang: $hint"
    [ -d "$here/corpus/$target" ] || die "no seed corpus \`$here/corpus/$target\`"
}

case "${1:-}" in
build)
    [ $# -eq 2 ] || die "usage: $0 build BUILD_DIR"
    # Absolute: cmake reads the list of sources from the clang project's directory.
    abs=$(cd "$2" 2>/dev/null && pwd) || die "no build directory \`$2\`"
    set -- "$1" "$abs"
    out=$2/fuzz
    command -v "$cxx" >/dev/null 2>&1 || die "\`$cxx\` not found: the fuzz targets need clang with libFuzzer; $hint"
    cxx=$(command -v "$cxx")
    sources=$2/test/fuzz/upm-lib-sources.cmake
    [ -f "$sources" ] || die "\`$sources\` is missing: configure the main build in $2 first (cmake -S $src -B $2)"
    mkdir -p "$out"
    # Another compiler than the cached one: configure from scratch.
    if [ -f "$out/CMakeCache.txt" ] && ! grep -qx "CMAKE_CXX_COMPILER:[A-Z]*=$cxx" "$out/CMakeCache.txt"; then
        rm -rf "$out/CMakeCache.txt" "$out/CMakeFiles"
    fi
    # Configuring again is cheap (a second or two) and keeps the compiler and
    # the list of the libraries' sources current.
    # ccache (as in the Makefile's build): a clean clone's fuzz build takes
    # minutes without it, seconds with a warm cache outside the repository.
    launcher=
    if [ -z "${UPM_NO_CCACHE:-}" ] && command -v ccache >/dev/null 2>&1; then
        export CCACHE_DIR="${CCACHE_DIR:-${UPM_CACHE_DIR:-/var/cache/upm}/ccache}"
        export CCACHE_BASEDIR="${CCACHE_BASEDIR:-$src}" CCACHE_NOHASHDIR="${CCACHE_NOHASHDIR:-1}"
        launcher=-DCMAKE_CXX_COMPILER_LAUNCHER=$(command -v ccache)
    fi
    cmake -S "$here/clang" -B "$out" -DCMAKE_CXX_COMPILER="$cxx" -DCMAKE_BUILD_TYPE=Fuzz $launcher \
        -DUPM_LIB_SOURCES_FILE="$sources" >"$out/configure.log" 2>&1 || {
        cat "$out/configure.log" >&2
        die "configuring the fuzz targets with \`$cxx\` failed (above); if libFuzzer is missing, $hint"
    }
    cmake --build "$out" -j "${UPM_FUZZ_JOBS:-2}" || die "building the fuzz targets failed"
    echo "upm fuzz: built $(targets | tr '\n' ' ')in $out"
    ;;
run)
    [ $# -eq 4 ] || die "usage: $0 run BUILD_DIR TARGET SECONDS"
    check_target "$2" "$3"
    fuzz "$target" "$bin" "$here/corpus/$target" "$out/corpus/$target" "$out/artifacts/$target" "$4"
    ;;
replay)
    [ $# -eq 3 ] || die "usage: $0 replay BUILD_DIR TARGET"
    check_target "$2" "$3"
    replay "$target" "$bin" "$here/corpus/$target" "$out/artifacts/$target"
    ;;
all)
    # make fuzz: every target for SECONDS each, one after the other; the
    # first finding stops the run.
    [ $# -eq 3 ] || die "usage: $0 all BUILD_DIR SECONDS"
    "$0" build "$2"
    for t in $(targets); do
        "$0" run "$2" "$t" "$3"
    done
    ;;
selftest)
    # The harness itself: a target that crashes on one input (clang/selftest_crash.cpp),
    # with that input as its only seed, must fail and leave that input as
    # the reproducer with the re-run command.
    [ $# -eq 2 ] || die "usage: $0 selftest BUILD_DIR"
    out=$2/fuzz
    bin=$out/selftest_crash
    [ -x "$bin" ] || die "\`$bin\` is not built: run \`$0 build $2\` (ctest: \`fuzz-build\`); it needs clang: $hint"
    dir=$out/selftest
    rm -rf "$dir"
    mkdir -p "$dir/seeds"
    printf 'upm-selftest-crash' >"$dir/seeds/crash"
    printf '{}' >"$dir/seeds/harmless"
    status=0
    fuzz selftest "$bin" "$dir/seeds" "$dir/work" "$dir/artifacts" 30 >"$dir/output" 2>&1 || status=$?
    repro=$(find "$dir/artifacts" -maxdepth 1 -type f -name 'crash-*' | head -1)
    fail=
    [ "$status" -eq 1 ] || fail="exit status $status, not 1"
    [ -n "$repro" ] && cmp -s "$repro" "$dir/seeds/crash" || fail="${fail:+$fail; }no reproducer equal to the crashing input"
    grep -q "re-run:   $bin $repro" "$dir/output" || fail="${fail:+$fail; }no re-run line"
    if [ -n "$fail" ]; then
        cat "$dir/output" >&2
        die "the harness did not report a crash: $fail"
    fi
    rm -rf "$dir"
    echo "upm fuzz: harness self-test passed: a crash fails with status 1, its reproducer and the re-run command"
    ;;
list)
    targets
    ;;
*)
    sed -n '2,24p' "$0" | sed 's/^# \{0,1\}//'
    [ "${1:-}" = -h ] || [ "${1:-}" = --help ] || exit 2
    ;;
esac
