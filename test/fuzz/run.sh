#!/bin/sh
# Builds the libFuzzer target of upm-runtime's parsers with clang (ASan and
# UBSan) into $OUT (default /tmp/upm-fuzz-spec) and runs it for $SECONDS_
# seconds (default 60) on a copy of the seed corpus (the fixture bundles).
# Exit status: libFuzzer's (0 = nothing found).  Needs clang and
# libclang-rt (Debian: clang, which brings libFuzzer).
set -eu
here=$(cd "$(dirname "$0")" && pwd)
src=$(cd "$here/../../.." && pwd)
out=${OUT:-/tmp/upm-fuzz-spec}
seconds=${SECONDS_:-60}
mkdir -p "$out/corpus"
for f in "$src"/test/fixtures/bundles/*/config.json; do
    cp "$f" "$out/corpus/$(basename "$(dirname "$f")").json"
done
cp "$src/config/node/config.json" "$out/corpus/node-config.json"
printf -- '--root\n/run/runc\n--log\n/l\ncreate\n--bundle\n/b\nid\n' > "$out/corpus/argv"
spdlog_inc=$(dirname "$(find /usr/include -maxdepth 2 -name spdlog -type d | head -1)")
core="$src/shim/core/src"
clang++ -std=c++20 -O1 -g -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined \
    -DSPDLOG_FMT_EXTERNAL -DFMT_HEADER_ONLY \
    -DUPM_POLICY_DIR='"/usr/share/upm/policies"' -DUPM_INSTALL_LIBDIR='"lib"' \
    -DUPM_BUILD_PRELOAD='"/nonexistent/libupm-preload.so"' \
    -I"$src/shim/core/include" -I"$src/module/include/uapi" -I"$spdlog_inc" \
    "$here/fuzz_spec.cpp" "$core/spec.cpp" "$core/nodeconfig.cpp" "$core/policy.cpp" "$core/io.cpp" \
    "$core/launch.cpp" "$core/classify.cpp" "$core/maps.cpp" \
    -o "$out/fuzz_spec"
exec "$out/fuzz_spec" -max_total_time="$seconds" -max_len=65536 -timeout=10 "$out/corpus"
