// maps parser: fixed fields are strict, paths are free-form.
#include <catch2/catch.hpp>

#include "upm/maps.hpp"

using namespace upm;

TEST_CASE("maps: a file-backed line", "[maps]") {
    auto r = parse_maps(
        "7f9029844000-7f902999a000 r-xp 00026000 fe:00 332835                     "
        "/usr/lib/x86_64-linux-gnu/libc.so.6\n");
    REQUIRE(r.ok());
    REQUIRE(r->size() == 1);
    const Region& g = r->front();
    CHECK(g.start == 0x7f9029844000);
    CHECK(g.end == 0x7f902999a000);
    CHECK(g.size() == 0x156000);
    CHECK((g.read && !g.write && g.exec && !g.shared));
    CHECK(g.offset == 0x26000);
    CHECK(g.dev_major == 0xfe);
    CHECK(g.dev_minor == 0);
    CHECK(g.inode == 332835);
    CHECK(g.path == "/usr/lib/x86_64-linux-gnu/libc.so.6");
    CHECK(!g.anonymous());
    CHECK(!g.deleted);
    CHECK(g.perms() == "r-xp");
}

TEST_CASE("maps: anonymous lines with and without trailing padding", "[maps]") {
    auto r = parse_maps("7f9027f3b000-7f9027f3c000 ---p 00000000 00:00 0 \n"
                        "7f9027f3c000-7f902873c000 rw-p 00000000 00:00 0\n"
                        "562b7efd0000-562b7eff1000 rw-p 00000000 00:00 0                          [heap]\n"
                        "7f0000000000-7f0000001000 rw-p 00000000 00:00 0                          [anon:v8 heap]");
    REQUIRE(r.ok());
    REQUIRE(r->size() == 4);
    CHECK((*r)[0].anonymous());
    CHECK((*r)[0].prot_none());
    CHECK((*r)[0].path.empty());
    CHECK((*r)[1].anonymous());
    CHECK((*r)[2].path == "[heap]");
    CHECK((*r)[2].pseudo());
    CHECK((*r)[3].anonymous());
    CHECK((*r)[3].path == "[anon:v8 heap]");
}

TEST_CASE("maps: paths with spaces and (deleted)", "[maps]") {
    auto r = parse_maps("7f0000000000-7f0000010000 r--p 00000000 08:01 42   /srv/my models/resnet 50.bin\n"
                        "7f0000010000-7f0000020000 rw-s 00000000 00:01 7    /memfd:shm pool (deleted)\n"
                        "7f0000020000-7f0000030000 r--p 00001000 103:02 9   /tmp/x (deleted)\n");
    REQUIRE(r.ok());
    REQUIRE(r->size() == 3);
    CHECK((*r)[0].path == "/srv/my models/resnet 50.bin");
    CHECK(!(*r)[0].deleted);
    CHECK((*r)[1].path == "/memfd:shm pool");
    CHECK((*r)[1].deleted);
    CHECK((*r)[1].shared);
    CHECK((*r)[2].dev_major == 0x103);
    CHECK((*r)[2].dev_minor == 2);
    CHECK((*r)[2].deleted);
}

TEST_CASE("maps: empty input is no regions", "[maps]") {
    auto r = parse_maps("");
    REQUIRE(r.ok());
    CHECK(r->empty());
}

TEST_CASE("maps: malformed lines are reported with their line number", "[maps]") {
    const std::string good = "7f0000000000-7f0000001000 rw-p 00000000 00:00 0\n";
    struct Bad {
        std::string line, message;
    };
    std::vector<Bad> bad = {
        {"7f0000000000 rw-p 00000000 00:00 0", "has no `-`"},
        {"7f00000000zz-7f0000001000 rw-p 00000000 00:00 0", "not hexadecimal"},
        {"7f0000001000-7f0000001000 rw-p 00000000 00:00 0", "empty or reversed"},
        {"7f0000002000-7f0000001000 rw-p 00000000 00:00 0", "empty or reversed"},
        {"7f0000000000-7f0000001000 rwp 00000000 00:00 0", "permissions `rwp`"},
        {"7f0000000000-7f0000001000 rw-q 00000000 00:00 0", "permissions `rw-q`"},
        {"7f0000000000-7f0000001000 rw-p 0000g000 00:00 0", "offset `0000g000`"},
        {"7f0000000000-7f0000001000 rw-p 00000000 0000 0", "device `0000`"},
        {"7f0000000000-7f0000001000 rw-p 00000000 00:00 x1", "inode `x1`"},
        {"7f0000000000-7f0000001000 rw-p 00000000 00:00", "inode ``"},
        {"", "has no `-`"},
    };
    for (const auto& b : bad) {
        INFO("line: " << b.line);
        auto r = parse_maps(good + good + b.line + "\n" + good);
        REQUIRE(!r.ok());
        CHECK_THAT(r.error().message, Catch::StartsWith("line 3: "));
        CHECK_THAT(r.error().message, Catch::Contains(b.message));
    }
}

TEST_CASE("maps: read_maps of this process", "[maps]") {
    auto r = read_maps(0);
    REQUIRE(r.ok());
    bool stack = false;
    for (const auto& g : *r) stack = stack || g.path == "[stack]";
    CHECK(stack);
    auto missing = read_maps(999999999);
    REQUIRE(!missing.ok());
    CHECK(missing.error().err == ENOENT);
}

TEST_CASE("maps: smaps VmFlags", "[maps]") {
    auto flags = parse_smaps_vmflags("7f0000000000-7f0000001000 rw-p 00000000 00:00 0 \n"
                                     "Size:                  4 kB\n"
                                     "VmFlags: rd wr mr mw me ac mg \n"
                                     "7f0000001000-7f0000002000 r--p 00000000 fe:00 12  /usr/lib/x y.so\n"
                                     "Size:                  4 kB\n"
                                     "VmFlags: rd mr mw me\n");
    REQUIRE(flags.ok());
    CHECK(flags->size() == 2);
    CHECK(has_vmflag(*flags, 0x7f0000000000, "mg"));
    CHECK(!has_vmflag(*flags, 0x7f0000001000, "mg"));
    CHECK(!has_vmflag(*flags, 0x1000, "mg"));
    CHECK(!parse_smaps_vmflags("VmFlags: rd\n").ok());
    auto self = read_smaps_vmflags(0);
    REQUIRE(self.ok());
    CHECK(!self->empty());
}
