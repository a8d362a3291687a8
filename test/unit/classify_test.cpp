// Classifier on maps captured from real processes (test/fixtures/maps/,
// written by test/fixtures/capture-maps.sh) and on synthetic corner cases.
// Regions are found by path, permissions and offset, never by address, so
// the fixtures can be re-captured.
#include <catch2/catch.hpp>
#include <functional>

#include "helpers.hpp"
#include "upm/classify.hpp"

using namespace upm;

namespace {

std::vector<Classified> load(const std::string& name) {
    auto text = test::read_text(test::fixture("maps/" + name + ".maps"));
    auto regions = parse_maps(text);
    if (!regions) throw std::runtime_error(regions.error().message);
    return classify(*regions);
}

std::vector<Classified> from_text(const std::string& text) {
    auto regions = parse_maps(text);
    if (!regions) throw std::runtime_error(regions.error().message);
    return classify(*regions);
}

bool ends_with(const std::string& s, const std::string& suffix) { return s.ends_with(suffix); }

// The single region matching `pred`; fails the test if there is not exactly one.
const Classified& one(const std::vector<Classified>& all, const std::function<bool(const Region&)>& pred,
                      const std::string& what) {
    const Classified* found = nullptr;
    int n = 0;
    for (const auto& c : all)
        if (pred(c.region)) {
            found = &c;
            ++n;
        }
    INFO(what);
    REQUIRE(n == 1);
    return *found;
}

std::vector<const Classified*> all_of(const std::vector<Classified>& all,
                                      const std::function<bool(const Region&)>& pred) {
    std::vector<const Classified*> out;
    for (const auto& c : all)
        if (pred(c.region)) out.push_back(&c);
    return out;
}

// Index of the region matching pred (first).
std::size_t index_of(const std::vector<Classified>& all, const std::function<bool(const Region&)>& pred) {
    for (std::size_t i = 0; i < all.size(); ++i)
        if (pred(all[i].region)) return i;
    FAIL("no such region");
    return 0;
}

auto path_perms(const std::string& suffix, const std::string& perms) {
    return [=](const Region& r) { return ends_with(r.path, suffix) && r.perms() == perms; };
}

}  // namespace

TEST_CASE("classify: class names", "[classify]") {
    RegionClass c{};
    for (auto name : {"heap", "anonymous", "libdata", "rodata", "stack"}) {
        REQUIRE(parse_region_class(name, c));
        CHECK(to_string(c) == name);
    }
    CHECK(!parse_region_class("text", c));
    CHECK(!parse_region_class("never", c));
    CHECK(!parse_region_class("Heap", c));
    CHECK(to_string(RegionClass::text) == "text");
    CHECK(to_string(RegionClass::never) == "never");
}

TEST_CASE("classify: C++ program with threads", "[classify][fixture]") {
    auto all = load("cpp-threads");
    auto path_is = [](std::string p) { return [p](const Region& r) { return r.path == p; }; };
    CHECK(one(all, path_is("[heap]"), "[heap]").cls == RegionClass::heap);
    CHECK(one(all, path_is("[stack]"), "[stack]").cls == RegionClass::stack);
    CHECK(one(all, path_is("[vdso]"), "[vdso]").cls == RegionClass::never);
    CHECK(one(all, path_is("[vvar]"), "[vvar]").cls == RegionClass::never);
    CHECK(one(all, path_is("[vvar_vclock]"), "[vvar_vclock]").cls == RegionClass::never);
    CHECK(one(all, path_is("[vsyscall]"), "[vsyscall]").cls == RegionClass::never);

    // libc: text, .rodata, RELRO, .data and the anonymous .bss after it
    CHECK(one(all, path_perms("/libc.so.6", "r-xp"), "libc text").cls == RegionClass::text);
    CHECK(one(all, path_perms("/libc.so.6", "rw-p"), "libc .data").cls == RegionClass::libdata);
    auto libc_ro = all_of(all, path_perms("/libc.so.6", "r--p"));
    REQUIRE(libc_ro.size() == 3);  // ELF header + .rodata start, .rodata, RELRO
    CHECK(libc_ro[0]->cls == RegionClass::rodata);
    CHECK(libc_ro[1]->cls == RegionClass::rodata);
    CHECK(libc_ro[2]->cls == RegionClass::libdata);
    CHECK_THAT(libc_ro[2]->why, Catch::Contains("RELRO"));
    std::size_t data = index_of(all, path_perms("/libc.so.6", "rw-p"));
    REQUIRE(data + 1 < all.size());
    CHECK(all[data + 1].region.anonymous());
    CHECK(all[data + 1].cls == RegionClass::libdata);
    CHECK_THAT(all[data + 1].why, Catch::Contains(".bss of `libc.so.6`"));
    std::size_t stdcxx = index_of(all, path_perms("/libstdc++.so.6.0.30", "rw-p"));
    CHECK(all[stdcxx + 1].cls == RegionClass::libdata);

    // Two thread stacks of 8 MiB, each above a one-page PROT_NONE guard.
    auto stacks = all_of(all, [](const Region& r) { return r.anonymous() && r.size() == 8 << 20; });
    REQUIRE(stacks.size() == 2);
    for (auto* s : stacks) {
        CHECK(s->cls == RegionClass::stack);
        CHECK_THAT(s->why, Catch::Contains("thread stack"));
    }
    auto guards = all_of(all, [](const Region& r) { return r.anonymous() && r.prot_none(); });
    REQUIRE(guards.size() == 2);
    for (auto* g : guards) CHECK(g->cls == RegionClass::never);
    // The 8 MiB vector (malloc -> mmap; 8 MiB + one page) sits right above a
    // thread stack, not a guard: heap.
    CHECK(one(all, [](const Region& r) { return r.anonymous() && r.size() == (8 << 20) + 4096; }, "vector").cls ==
          RegionClass::heap);
    // The executable: .rodata and RELRO share the file offset but not the class.
    auto exe_ro = all_of(all, path_perms("/threads", "r--p"));
    REQUIRE(exe_ro.size() == 3);
    CHECK(exe_ro[1]->cls == RegionClass::rodata);
    CHECK(exe_ro[2]->cls == RegionClass::libdata);
}

TEST_CASE("classify: static busybox", "[classify][fixture]") {
    auto all = load("busybox-static");
    auto ro = all_of(all, path_perms("/busybox", "r--p"));
    REQUIRE(ro.size() == 3);
    CHECK(ro[2]->cls == RegionClass::libdata);  // RELRO
    std::size_t data = index_of(all, path_perms("/busybox", "rw-p"));
    CHECK(all[data].cls == RegionClass::libdata);
    CHECK(all[data + 1].cls == RegionClass::libdata);  // .bss
    CHECK(one(all, [](const Region& r) { return r.path == "[heap]"; }, "[heap]").cls == RegionClass::heap);
    CHECK(one(all, path_perms("/busybox", "r-xp"), "text").cls == RegionClass::text);
}

TEST_CASE("classify: python with numpy", "[classify][fixture]") {
    auto all = load("python-numpy");
    CHECK(one(all, path_perms("gconv-modules.cache", "r--s"), "gconv").cls == RegionClass::never);
    std::size_t data = index_of(all, path_perms("/python3.11", "rw-p"));
    CHECK(all[data].cls == RegionClass::libdata);
    CHECK(all[data + 1].cls == RegionClass::libdata);  // interpreter .bss
    CHECK(one(all, [](const Region& r) { return r.path == "[heap]"; }, "[heap]").cls == RegionClass::heap);
    // numpy's extension modules: .data is libdata, code is text
    for (auto* c : all_of(all, [](const Region& r) { return r.path.find("numpy") != std::string::npos; })) {
        if (c->region.exec) CHECK(c->cls == RegionClass::text);
        if (c->region.write) CHECK(c->cls == RegionClass::libdata);
    }
    // Nothing is left unclassified: every class is one of the seven.
    for (const auto& c : all) CHECK(!c.why.empty());
}

TEST_CASE("classify: python with torch", "[classify][fixture]") {
    auto all = load("python-torch");
    // The 16 MiB tensor lives in a big anonymous mapping (allocator): heap.
    auto big = all_of(all, [](const Region& r) { return r.anonymous() && r.path.empty() && r.size() >= 16 << 20; });
    REQUIRE(!big.empty());
    for (auto* b : big) CHECK(b->cls == RegionClass::heap);
    // libavcodec's .bss is 5.8 MiB of anonymous memory right after its .data.
    std::size_t avc = index_of(all, path_perms("/libavcodec.so.59.37.100", "rw-p"));
    CHECK(all[avc + 1].region.anonymous());
    CHECK(all[avc + 1].region.size() > 5 << 20);
    CHECK(all[avc + 1].cls == RegionClass::libdata);
    // Libraries' padding between segments (---p of the file) is never advised.
    for (auto* c : all_of(all, [](const Region& r) { return r.prot_none(); })) CHECK(c->cls == RegionClass::never);
    for (auto* c : all_of(all, [](const Region& r) { return r.shared; })) CHECK(c->cls == RegionClass::never);
    for (auto* c : all_of(all, [](const Region& r) { return r.path.ends_with(".so") && r.exec; }))
        CHECK(c->cls == RegionClass::text);
}

TEST_CASE("classify: node", "[classify][fixture]") {
    auto all = load("node");
    // V8 JIT code: rwx anonymous (here right above a PROT_NONE page) -> anonymous, not stack.
    auto rwx = all_of(all, [](const Region& r) { return r.anonymous() && r.perms() == "rwxp"; });
    REQUIRE(!rwx.empty());
    for (auto* c : rwx) CHECK(c->cls == RegionClass::anonymous);
    // read-only anonymous (V8 read-only space) -> anonymous
    auto ro = all_of(all, [](const Region& r) { return r.anonymous() && r.perms() == "r--p"; });
    REQUIRE(!ro.empty());
    for (auto* c : ro) CHECK(c->cls == RegionClass::anonymous);
    // libuv worker threads: 8 MiB stacks above one-page guards
    auto stacks = all_of(all, [](const Region& r) { return r.anonymous() && r.size() == 8 << 20 && r.write; });
    REQUIRE(stacks.size() >= 4);
    for (auto* c : stacks) CHECK(c->cls == RegionClass::stack);
    // A malloc arena above another arena's large PROT_NONE reserve is a heap, not a stack.
    std::size_t arenas = 0;
    for (std::size_t i = 1; i < all.size(); ++i) {
        const Region &below = all[i - 1].region, &r = all[i].region;
        if (r.anonymous() && r.perms() == "rw-p" && below.anonymous() && below.prot_none() && below.end == r.start &&
            below.size() > 64 * 1024) {
            ++arenas;
            CHECK(all[i].cls == RegionClass::heap);
        }
    }
    CHECK(arenas >= 1);
    CHECK(one(all, [](const Region& r) { return r.path == "[heap]"; }, "[heap]").cls == RegionClass::heap);
    CHECK(one(all, [](const Region& r) { return r.path == "[stack]"; }, "[stack]").cls == RegionClass::stack);
}

TEST_CASE("classify: synthetic corner cases", "[classify]") {
    auto all = from_text(
        "100000-101000 rw-s 00000000 00:05 12   /dev/dri/card0\n"                  // 0 shared device
        "101000-102000 rw-p 00000000 00:05 13   /dev/foo\n"                        // 1 private device
        "102000-103000 r--p 00000000 00:0e 14   anon_inode:[perf_event]\n"         // 2 special file
        "103000-104000 rw-p 00000000 00:00 0    [anon:v8 young]\n"                 // 3 named anonymous
        "104000-105000 r-xp 00000000 00:00 0    [uprobes]\n"                       // 4 kernel
        "105000-106000 rw-p 00000000 00:00 0    [something new]\n"                 // 5 unknown pseudo
        "106000-107000 r--p 00000000 fe:00 15   /srv/model.bin (deleted)\n"        // 6 deleted model file
        "107000-108000 rw-p 00000000 00:01 16   /memfd:arena (deleted)\n"          // 7 private memfd
        "108000-109000 rw-s 00000000 00:00 0 \n"                                   // 8 shared anonymous
        "109000-10a000 r-xp 00000000 00:00 0 \n"                                   // 9 anonymous code
        "10a000-10b000 rw-p 00000000 00:00 0    [stack:1234]\n"                    // 10 old-style thread stack
        "200000-300000 ---p 00000000 00:00 0 \n"                                   // 11 1 MiB reserve
        "300000-400000 rw-p 00000000 00:00 0 \n"                                   // 12 above a big reserve
        "400000-401000 ---p 00000000 fe:00 17   /usr/lib/libx.so\n"                // 13 file PROT_NONE
        "401000-402000 rw-p 00000000 00:00 0 \n");                                 // 14 above a file ---p
    REQUIRE(all.size() == 15);
    CHECK(all[0].cls == RegionClass::never);
    CHECK(all[0].why == "shared mapping");
    CHECK(all[1].cls == RegionClass::never);
    CHECK(all[1].why == "device mapping");
    CHECK(all[2].cls == RegionClass::never);
    CHECK(all[3].cls == RegionClass::anonymous);
    CHECK(all[4].cls == RegionClass::never);
    CHECK(all[5].cls == RegionClass::never);
    CHECK(all[6].cls == RegionClass::rodata);
    CHECK(all[7].cls == RegionClass::libdata);
    CHECK(all[8].cls == RegionClass::never);
    CHECK(all[9].cls == RegionClass::anonymous);
    CHECK(all[10].cls == RegionClass::stack);
    CHECK(all[11].cls == RegionClass::never);
    CHECK(all[12].cls == RegionClass::heap);
    CHECK(all[13].cls == RegionClass::never);
    CHECK(all[14].cls == RegionClass::heap);
}

// An anonymous mapping right above a library's .data is the library's .bss
// only as far as the loader says.  Seen for real: a 16 MiB mmap() of Python
// landed right above the .data of a library dlopen()ed later (which had no
// .bss page of its own), and was skipped as libdata by a heap-only policy.
TEST_CASE("classify: .bss bounded by what the loader mapped", "[classify]") {
    const std::string text =
        "7f0000000000-7f0000002000 r--p 00000000 fe:00 21   /usr/lib/libone.so\n"
        "7f0000002000-7f0000003000 rw-p 00002000 fe:00 21   /usr/lib/libone.so\n"
        "7f0000003000-7f0001003000 rw-p 00000000 00:00 0 \n"                  // 16 MiB above libone
        "7f0002000000-7f0002001000 rw-p 00001000 fe:00 22   /usr/lib/libtwo.so\n"
        "7f0002001000-7f0002103000 rw-p 00000000 00:00 0 \n";                 // libtwo .bss (8 KiB) + 1 MiB
    auto regions = parse_maps(text);
    REQUIRE(regions);

    SECTION("without the loader's view every such region is a .bss") {
        auto all = classify(*regions);
        REQUIRE(all.size() == 5);
        CHECK(all[2].cls == RegionClass::libdata);
        CHECK(all[4].cls == RegionClass::libdata);
    }
    SECTION("with it, only the .bss is libdata") {
        std::vector<BssRange> bss{{0x7f0002001000, 0x7f0002003000}};
        auto all = classify(*regions, &bss);
        REQUIRE(all.size() == 6);
        CHECK(all[2].cls == RegionClass::heap);     // libone has no .bss mapping
        CHECK(all[2].region.size() == 16u << 20);
        CHECK(all[4].cls == RegionClass::libdata);
        CHECK(all[4].region.start == 0x7f0002001000);
        CHECK(all[4].region.end == 0x7f0002003000);
        CHECK_THAT(all[4].why, Catch::Contains(".bss of `libtwo.so`"));
        CHECK(all[5].cls == RegionClass::heap);     // merged into the .bss VMA
        CHECK(all[5].region.start == 0x7f0002003000);
        CHECK(all[5].region.end == 0x7f0002103000);
        CHECK_THAT(all[5].why, Catch::Contains("merged into the VMA of the .bss"));
    }
    SECTION("a .bss that is the whole region stays one entry") {
        std::vector<BssRange> bss{{0x7f0002001000, 0x7f0002103000}};
        auto all = classify(*regions, &bss);
        REQUIRE(all.size() == 5);
        CHECK(all[4].cls == RegionClass::libdata);
        CHECK(all[4].region.end == 0x7f0002103000);
    }
}
