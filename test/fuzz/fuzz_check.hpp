// Property checks of the fuzz targets: a violated property prints what was
// violated and aborts, so that libFuzzer keeps the input as a crash
// reproducer (test/fuzz/README.md says how to re-run it).
#pragma once

#include <cstdio>
#include <cstdlib>

#define UPM_FUZZ_CHECK(cond, what)                                                                  \
    do {                                                                                            \
        if (!(cond)) {                                                                              \
            std::fprintf(stderr, "upm fuzz: property violated: %s (%s, %s:%d)\n", what, #cond,      \
                         __FILE__, __LINE__);                                                       \
            std::abort();                                                                           \
        }                                                                                           \
    } while (0)
