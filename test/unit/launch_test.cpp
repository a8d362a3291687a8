// LD_PRELOAD composition and preload lookup.
#include <stdlib.h>

#include <catch2/catch.hpp>

#include "helpers.hpp"
#include "upm/launch.hpp"

using namespace upm;

TEST_CASE("launch: LD_PRELOAD is appended to, never replaced", "[launch]") {
    const std::string ours = "/usr/lib/upm/libupm-preload.so";
    CHECK(append_ld_preload("", ours) == ours);
    CHECK(append_ld_preload("/lib/a.so", ours) == "/lib/a.so:" + ours);
    CHECK(append_ld_preload("/lib/a.so /lib/b.so", ours) == "/lib/a.so /lib/b.so:" + ours);
    CHECK(append_ld_preload("/lib/a.so:", ours) == "/lib/a.so:" + ours);
    CHECK(append_ld_preload(": ", ours) == ours);
    // not added twice
    CHECK(append_ld_preload(ours, ours) == ours);
    CHECK(append_ld_preload("/lib/a.so:" + ours + " /lib/b.so", ours) == "/lib/a.so:" + ours + " /lib/b.so");
    // an entry that is a different spelling of the same file counts as present
    CHECK(append_ld_preload("/etc/../etc/hostname", "/etc/hostname") == "/etc/../etc/hostname");
}

TEST_CASE("launch: find_preload honours $UPM_PRELOAD", "[launch]") {
    std::string file = test::fixture("README.md");
    ::setenv("UPM_PRELOAD", file.c_str(), 1);
    auto found = find_preload();
    REQUIRE(found.ok());
    CHECK(found->front() == '/');
    CHECK(found->ends_with("/fixtures/README.md"));
    ::setenv("UPM_PRELOAD", "/nonexistent/libupm-preload.so", 1);
    auto missing = find_preload();
    REQUIRE(!missing.ok());
    CHECK(missing.error().err == ENOENT);
    CHECK_THAT(missing.error().message, Catch::Contains("$UPM_PRELOAD names `/nonexistent/libupm-preload.so`"));
    ::unsetenv("UPM_PRELOAD");
    auto fallback = find_preload();  // depends on the build; either found or a list of what was tried
    if (!fallback.ok()) CHECK_THAT(fallback.error().message, Catch::Contains("set $UPM_PRELOAD"));
}
