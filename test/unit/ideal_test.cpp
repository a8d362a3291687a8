// The counting step of `upm ideal` (hooks/cli/ideal_scan.hpp): frames,
// mappings, KSM frames and classes in, counters out.  The /proc side is
// tested with real processes in test/integration/test_ideal.py.
#include <catch2/catch.hpp>

#include <algorithm>

#include "ideal_scan.hpp"

using namespace upm;
using namespace upm::ideal;

namespace {

struct Page {
    std::uint64_t pfn;
    std::uint32_t pid;
    std::uint64_t vpn;
    RegionClass cls;
    std::uint64_t content;  // stands for the hash
    std::uint8_t flags = 0; // Frame flags of the frame (the same on every mapping)
};

// Builds the sorted mappings and frames the scanner would build.
Tally run(std::vector<Page> pages) {
    std::sort(pages.begin(), pages.end(), [](const Page& a, const Page& b) { return a.pfn < b.pfn; });
    std::vector<Mapping> mappings;
    std::vector<Frame> frames;
    for (std::size_t i = 0; i < pages.size(); ++i) {
        const Page& p = pages[i];
        mappings.push_back({p.pfn, Mapping::make_key(p.pid, p.vpn, p.cls)});
        if (i == 0 || pages[i - 1].pfn != p.pfn) {
            Frame f;
            f.pfn = p.pfn;
            f.hash_lo = p.content;
            f.hash_hi = ~p.content;
            f.first = static_cast<std::uint32_t>(i);
            f.flags = p.flags;
            frames.push_back(f);
        }
    }
    return tally(mappings, frames);
}

int idx(RegionClass c) { return static_cast<int>(c); }

}  // namespace

TEST_CASE("ideal: the mapping key keeps process, address and class") {
    auto k = Mapping::make_key(65535, Mapping::kMaxVpn, RegionClass::stack);
    Mapping m{1, k};
    CHECK(m.pid_index() == 65535);
    CHECK(m.vpn() == Mapping::kMaxVpn);
    CHECK(m.cls() == RegionClass::stack);
    // Ordered by process, then address.
    CHECK(Mapping::make_key(0, 5, RegionClass::never) < Mapping::make_key(0, 6, RegionClass::heap));
    CHECK(Mapping::make_key(0, Mapping::kMaxVpn, RegionClass::never) < Mapping::make_key(1, 0, RegionClass::heap));
}

TEST_CASE("ideal: identical pages in separate frames are what merging saves") {
    // 3 processes, 4 pages each of the same content A..D, plus one unique page each.
    std::vector<Page> pages;
    std::uint64_t pfn = 100;
    for (std::uint32_t p = 0; p < 3; ++p) {
        for (std::uint64_t v = 0; v < 4; ++v) pages.push_back({pfn++, p, v, RegionClass::heap, 1000 + v});
        pages.push_back({pfn++, p, 10, RegionClass::heap, 2000 + p});
    }
    auto t = run(pages);
    CHECK(t.total.anon_present_pages == 15);
    CHECK(t.total.mappings == 15);
    CHECK(t.total.distinct_contents == 7);
    CHECK(t.total.ideal_resident_pages() == 7);
    CHECK(t.total.ideal_saved_pages() == 8);
    CHECK(t.total.unmerged_pages == 15);
    CHECK(t.total.ideal_saved_from_unmerged_pages() == 8);
    CHECK(t.total.merged_saved_pages() == 0);
    CHECK(t.total.ksm_pages_now == 0);
    CHECK(t.class_seen[idx(RegionClass::heap)]);
    CHECK_FALSE(t.class_seen[idx(RegionClass::stack)]);
    CHECK(t.by_class[idx(RegionClass::heap)].ideal_saved_pages() == 8);
}

TEST_CASE("ideal: a KSM frame counts once now and once per mapping without merging") {
    std::vector<Page> pages;
    // Content A merged by KSM into frame 7, mapped by 3 processes.
    for (std::uint32_t p = 0; p < 3; ++p) pages.push_back({7, p, 0, RegionClass::heap, 1, Frame::ksm});
    // Content B: one frame shared by fork COW in 2 processes (not KSM), plus
    // an unmerged copy in a third.
    pages.push_back({8, 0, 1, RegionClass::heap, 2});
    pages.push_back({8, 1, 1, RegionClass::heap, 2});
    pages.push_back({9, 2, 1, RegionClass::heap, 2});
    auto t = run(pages);
    CHECK(t.total.anon_present_pages == 3);
    CHECK(t.total.mappings == 6);
    CHECK(t.total.ksm_pages_now == 1);
    CHECK(t.total.distinct_contents == 2);
    CHECK(t.total.ideal_saved_pages() == 1);        // frame 9 could still go
    CHECK(t.total.unmerged_pages == 3 + 2);          // KSM frame as 3, fork-shared frame 8 once, frame 9
    CHECK(t.total.ideal_saved_from_unmerged_pages() == 3);
    CHECK(t.total.merged_saved_pages() == 2);
}

TEST_CASE("ideal: zero, unreadable and excluded frames") {
    std::vector<Page> pages = {
        {1, 0, 0, RegionClass::heap, 0, Frame::zero},
        {2, 0, 1, RegionClass::heap, 0, Frame::zero},
        {3, 1, 0, RegionClass::heap, 0, Frame::zero},
        {4, 0, 2, RegionClass::heap, 55, Frame::unreadable},
        {5, 1, 2, RegionClass::heap, 55, Frame::unreadable},
        {6, 0, 3, RegionClass::heap, 0, Frame::excluded},  // e.g. the kernel's zero page
        {6, 1, 3, RegionClass::heap, 0, Frame::excluded},
    };
    auto t = run(pages);
    CHECK(t.total.anon_present_pages == 5);
    CHECK(t.total.mappings == 5);
    CHECK(t.total.zero_pages == 3);
    CHECK(t.total.unreadable_pages == 2);
    CHECK(t.total.distinct_contents == 1);           // the zero content
    CHECK(t.total.ideal_resident_pages() == 3);      // unreadable frames count as distinct
    CHECK(t.total.ideal_saved_pages() == 2);
}

TEST_CASE("ideal: by_class is what a scan of that class alone would count") {
    std::vector<Page> pages = {
        // Content 1 in the heap of two processes and on a stack.
        {10, 0, 0, RegionClass::heap, 1},
        {11, 1, 0, RegionClass::heap, 1},
        {12, 1, 50, RegionClass::stack, 1},
        // A KSM frame mapped from a heap and a stack.
        {20, 0, 1, RegionClass::heap, 2, Frame::ksm},
        {20, 1, 51, RegionClass::stack, 2, Frame::ksm},
        // Library data, unique.
        {30, 0, 90, RegionClass::libdata, 3},
    };
    auto t = run(pages);
    CHECK(t.total.anon_present_pages == 5);
    CHECK(t.total.distinct_contents == 3);
    CHECK(t.total.ideal_saved_pages() == 2);
    CHECK(t.total.unmerged_pages == 6);
    const auto& heap = t.by_class[idx(RegionClass::heap)];
    CHECK(heap.anon_present_pages == 3);
    CHECK(heap.mappings == 3);
    CHECK(heap.distinct_contents == 2);
    CHECK(heap.ideal_saved_pages() == 1);
    CHECK(heap.unmerged_pages == 3);
    CHECK(heap.ksm_pages_now == 1);
    const auto& stack = t.by_class[idx(RegionClass::stack)];
    CHECK(stack.anon_present_pages == 2);
    CHECK(stack.distinct_contents == 2);
    CHECK(stack.ideal_saved_pages() == 0);
    const auto& lib = t.by_class[idx(RegionClass::libdata)];
    CHECK(lib.anon_present_pages == 1);
    CHECK(lib.ideal_saved_pages() == 0);
    CHECK_FALSE(t.class_seen[idx(RegionClass::anonymous)]);
}

TEST_CASE("ideal: class lists") {
    auto bit = [](RegionClass c) { return 1u << static_cast<unsigned>(c); };
    auto m = parse_classes("heap,anon, stack");
    REQUIRE(m);
    CHECK(*m == (bit(RegionClass::heap) | bit(RegionClass::anonymous) | bit(RegionClass::stack)));
    auto all = parse_classes("all");
    REQUIRE(all);
    CHECK(*all == Options{}.class_mask);
    CHECK_FALSE(*all & bit(RegionClass::never));
    CHECK(*all & bit(RegionClass::text));
    auto bad = parse_classes("heap,never");
    REQUIRE_FALSE(bad);
    CHECK(bad.error().message.find("unknown class `never`") != std::string::npos);
    CHECK_FALSE(parse_classes(""));
    CHECK_FALSE(parse_classes(" , "));
}
