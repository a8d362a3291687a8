// The ideal page-merging saving of a set of processes (`upm ideal`).
//
// What would be left if every identical anonymous page of the processes
// were one frame, counted from the kernel's own view of their memory:
//
//   /proc/PID/maps       the regions, classified as the policy does
//                        (upm/classify.hpp), so `--classes` means the same
//   /proc/PID/pagemap    per page: present (bit 63), file page or shared
//                        anonymous (bit 61), page frame number (bits 0-54;
//                        0 without CAP_SYS_ADMIN)
//   /proc/kpageflags     per frame: KPF_KSM (21), KPF_ANON (12),
//                        KPF_ZERO_PAGE (24)
//   /proc/PID/mem        the content of one mapping of every frame, hashed
//                        with XXH3-128 (a 128-bit hash: two different pages
//                        collide with probability ~2^-128, so no full compare)
//
// Only private anonymous pages count (pagemap bit 61 clear, KPF_ANON): the
// pages KSM and MADV_UPM can merge.  Page-cache pages of private file
// mappings, swapped-out pages and the kernel's shared zero page (which costs
// nothing) are not counted.  Every frame is counted once, however many
// mappings it has (fork COW, KSM), and hashed once.  Pages are 4 KiB frames
// even inside a transparent huge page (KSM splits THPs to merge them).
//
// Host-side only (runs as root on the node); never linked into shim/.
// The scan is not atomic: the processes keep running; a page that changes
// between the pagemap read and the content read is hashed as it is then.
#pragma once

#include <sys/types.h>

#include <array>
#include <cstdint>
#include <string>
#include <vector>

#include "upm/classify.hpp"
#include "upm/result.hpp"

namespace upm::ideal {

inline constexpr int kClasses = 7;  // RegionClass values, heap..never

// Counters over a set of frames (the totals, or one class).  Every name is
// the JSON field of `upm ideal --json` (docs/cli.md).
struct Counters {
    std::uint64_t anon_present_pages = 0;  // distinct frames
    std::uint64_t mappings = 0;            // (pid, vaddr) mappings of those frames
    std::uint64_t distinct_contents = 0;   // distinct contents among the readable frames
    std::uint64_t zero_pages = 0;          // frames whose content is all zero
    std::uint64_t ksm_pages_now = 0;       // frames that are KSM pages (KPF_KSM)
    std::uint64_t unmerged_pages = 0;      // frames with no KSM: a KSM frame counts once per mapping
    std::uint64_t unreadable_pages = 0;    // frames whose content could not be read (counted as distinct)

    std::uint64_t ideal_resident_pages() const { return distinct_contents + unreadable_pages; }
    // What merging could still save from the current state.
    std::int64_t ideal_saved_pages() const {
        return static_cast<std::int64_t>(anon_present_pages) - static_cast<std::int64_t>(ideal_resident_pages());
    }
    // What merging every identical page saves against no merging at all.
    std::int64_t ideal_saved_from_unmerged_pages() const {
        return static_cast<std::int64_t>(unmerged_pages) - static_cast<std::int64_t>(ideal_resident_pages());
    }
    // What KSM saves now (the frames it spared).
    std::int64_t merged_saved_pages() const {
        return static_cast<std::int64_t>(unmerged_pages) - static_cast<std::int64_t>(anon_present_pages);
    }
};

// ---------------------------------------------------------------------------
// The counting step, separate from /proc so that it can be tested alone.

// One present private anonymous page mapping.  `key` orders mappings by
// process, then address: (pid index << 48) | (virtual page number << 3) | class.
struct Mapping {
    std::uint64_t pfn = 0;
    std::uint64_t key = 0;

    static constexpr std::uint64_t kMaxPidIndex = 0xffff;
    static constexpr std::uint64_t kMaxVpn = (std::uint64_t{1} << 45) - 1;
    static std::uint64_t make_key(std::uint32_t pid_index, std::uint64_t vpn, RegionClass cls) {
        return (std::uint64_t{pid_index} << 48) | (vpn << 3) | static_cast<std::uint64_t>(cls);
    }
    std::uint32_t pid_index() const { return static_cast<std::uint32_t>(key >> 48); }
    std::uint64_t vpn() const { return (key >> 3) & kMaxVpn; }
    RegionClass cls() const { return static_cast<RegionClass>(key & 7); }
};

// One distinct frame.  Its mappings are mappings[first, next frame's first)
// of the mapping array sorted by pfn.
struct Frame {
    enum Flag : std::uint8_t {
        ksm = 1,         // KPF_KSM
        zero = 2,        // content all zero
        unreadable = 4,  // content could not be read
        excluded = 8,    // not counted: the kernel's zero page, or not an anonymous page
    };
    std::uint64_t pfn = 0;
    std::uint64_t hash_lo = 0, hash_hi = 0;  // XXH3-128 of the content
    std::uint32_t first = 0;                 // index of its first mapping
    std::uint8_t flags = 0;
    std::uint8_t classes = 0;                // set by tally(): one bit per class it is mapped from
};

struct Tally {
    Counters total;
    std::array<Counters, kClasses> by_class{};
    std::array<bool, kClasses> class_seen{};  // a class had at least one mapping
};

// Counts `frames` (sorted by pfn, as built from `mappings` sorted by pfn).
// by_class[c] is what a scan of class c alone would count: a frame mapped
// from several classes counts in each, so the classes need not add up to
// the total.  Leaves `frames` sorted by content (to count distinct contents
// without a copy), no longer matching `mappings`.
Tally tally(const std::vector<Mapping>& mappings, std::vector<Frame>& frames);

// ---------------------------------------------------------------------------
// The scan.

struct Options {
    std::vector<pid_t> pids;
    // Classes to scan, one bit per RegionClass (default: every class but `never`).
    unsigned class_mask = 0x7f & ~(1u << static_cast<unsigned>(RegionClass::never));
    std::uint64_t max_pages = std::uint64_t{1} << 26;  // mappings at most (256 GiB of 4 KiB pages)
};

struct PidError {
    pid_t pid = 0;
    std::string message;
};

struct Report {
    std::vector<pid_t> pids;            // scanned
    std::vector<PidError> errors;       // could not be scanned, and why
    std::uint64_t page_size = 4096;
    Tally tally;
    std::uint64_t kernel_zero_page_mappings = 0;  // mappings of the kernel's zero page (not counted)
    std::uint64_t non_anon_pages = 0;             // present, not file-backed in pagemap, but not KPF_ANON (not counted)
    double elapsed_s = 0;
    std::uint64_t bytes_read = 0;                 // page content read through /proc/PID/mem
};

// Scans the processes.  A process that cannot be read is listed in
// `errors` and the others are scanned; fails as a whole only when the
// node-wide parts cannot be read (/proc/kpageflags: root only) or the scan
// would exceed max_pages.
Result<Report> scan(const Options& opt);

// Every pid in DIR/cgroup.procs and in every cgroup below DIR (cgroup v2 or
// a v1 hierarchy), sorted, without duplicates.
Result<std::vector<pid_t>> cgroup_pids(const std::string& dir);

// Parses "heap,libdata,..." (also "anon" for anonymous, "text", "all") into a
// class mask.
Result<unsigned> parse_classes(const std::string& list);

}  // namespace upm::ideal
