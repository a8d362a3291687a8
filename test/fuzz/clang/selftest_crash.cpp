// A fuzz target that crashes on one input: `test/fuzz/run.sh selftest` (ctest
// `fuzz-harness`) checks with it that a crash fails the run and leaves the
// input as the reproducer.  Not a fuzz target of upm (no fuzz_ prefix).
#include <cstdint>
#include <cstdlib>
#include <cstring>

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    static const char kCrash[] = "upm-selftest-crash";
    if (size == sizeof kCrash - 1 && std::memcmp(data, kCrash, size) == 0) std::abort();
    return 0;
}
