// Remote advice: the node advises another process's memory through a pidfd
// and process_madvise(MADV_UPM), without a preload (issue 17,
// docs/remote-advice.md).
//
// The regions are chosen by the preload's own code: plan() is
// decide(policy, classify(regions)) of libupm-inproc (upm/policy.hpp,
// upm/classify.hpp), the one implementation the preload, `upm maps`, `upm
// advise` and upmd share; it only adds the coalescing of adjacent advised
// regions into the ranges process_madvise() takes.
//
// The target is pinned by a pidfd opened before its maps are read (a reused
// pid can never be advised: process_madvise() acts on the pidfd's process,
// and the maps are checked to be that process's by polling the pidfd after
// the read).  A job advises its ranges in steps of a bounded number of
// bytes, so that a caller (upmd's event loop) keeps the rate and never
// blocks on one target; a target that exits between or during steps ends
// its job with `target_exited`, nothing else.
//
// Only a upm kernel accepts MADV_UPM in process_madvise(); availability()
// probes it once and says why not ("remote advice unavailable: ...").
#pragma once

#include <sys/types.h>
#include <sys/uio.h>

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "upm/io.hpp"
#include "upm/maps.hpp"
#include "upm/policy.hpp"
#include "upm/result.hpp"

namespace upm::remote {

struct Availability {
    bool available = false;
    std::string why;             // the reason, for "remote advice unavailable: WHY" (or how it works)
};

// Probes the running kernel (cached per process): /sys/kernel/mm/upm,
// process_madvise() and MADV_UPM on a scratch page of this process through
// its own pidfd.  Never throws.
Availability availability();
// The probe itself, uncached (tests).
Availability probe_availability();

struct Range {
    std::uintptr_t start = 0, end = 0;
    std::uint64_t size() const { return end - start; }
};

struct Plan {
    std::vector<Decision> decisions;   // every region, in address order (what `upm maps` shows)
    std::vector<Range> ranges;         // the advised regions, adjacent ones coalesced
    std::uint64_t bytes = 0;           // sum of the ranges
    std::size_t regions = 0;           // advised regions
};

// What the preload would advise in process `pid` with these regions (its
// libraries' .bss read from their ELF headers, upm/object_bss.hpp, as the
// preload learns them from its loader).
Plan plan(const Policy& policy, const std::vector<Region>& regions, pid_t pid);
// The plan of decisions already made (`upm maps --remote` has them).
Plan plan(std::vector<Decision> decisions);

// The process calls the ranges take: at most kMaxIov ranges and
// kMaxCallBytes bytes a call (a range larger than that is split).
inline constexpr std::size_t kMaxIov = 1024;                        // UIO_MAXIOV
inline constexpr std::uint64_t kMaxCallBytes = std::uint64_t(1) << 30;
std::size_t calls_for(const std::vector<Range>& ranges, std::uint64_t step_bytes = kMaxCallBytes);

// A process pinned by a pidfd, with the maps read after the pidfd was
// opened.  Errors: ESRCH when the process does not exist or exited before
// its maps were read; EPERM/EACCES when we may not read its maps.
struct Target {
    pid_t pid = 0;
    detail::Fd pidfd;
    std::vector<Region> regions;
    bool exited() const;               // the pidfd polls readable: the process has exited
};
Result<Target> open_target(pid_t pid);

struct Outcome {
    std::uint64_t bytes_planned = 0;
    std::uint64_t bytes_advised = 0;   // what process_madvise() reported advised
    std::uint64_t bytes_skipped = 0;   // ranges unmapped since the maps were read (ENOMEM), skipped
    std::size_t calls = 0;
    double seconds = 0;                // wall time spent inside process_madvise()
    bool done = false;                 // every range advised
    bool target_exited = false;        // the target exited before or during the advice
    int error = 0;                     // errno of the call that stopped the job (0: none)
    std::string message;               // what stopped it, "" when done
};

// Advises `ranges` of `target` with `advice` (MADV_UPM; the tests use an
// advice every kernel accepts remotely, MADV_COLD, to drive the machinery).
class Job {
public:
    Job(Target target, std::vector<Range> ranges, int advice);
    // Advises at most `budget` bytes (at least one page when some are
    // left); true when the job has ended (done, exited or failed).
    bool step(std::uint64_t budget);
    bool finished() const { return finished_; }
    const Outcome& outcome() const { return out_; }
    pid_t pid() const { return target_.pid; }

private:
    bool fail(int err);
    void advance(std::uint64_t bytes, bool skip_rest);
    std::vector<struct ::iovec> batch(std::uint64_t budget) const;
    Target target_;
    std::vector<Range> ranges_;
    std::size_t next_ = 0;             // index of the next range
    std::uintptr_t offset_ = 0;        // bytes of ranges_[next_] already advised
    int advice_;
    bool finished_ = false;
    Outcome out_;
};

// The MADV_UPM value of the upm kernel's UAPI (linux/upm.h).
int madv_upm();

}  // namespace upm::remote
