// upmd's remote adviser (docs/remote-advice.md): a worker thread that runs
// remote-advice jobs (upm/remote.hpp) at a bounded rate, so that upmd's
// event loop only queues work and never waits on a target (reading a
// process's maps takes its mmap_lock, and MADV_UPM merges inside the call).
//
// submit() is called from the loop: it never blocks beyond a mutex held for
// queue operations only, and refuses work when the queue is full.  The
// worker opens each target by pidfd, reads its maps, plans with the
// preload's decide(classify()) and advises in steps of at most
// `step_bytes`, sleeping so that it advises at most `bytes_per_second`.
// A target that exits before or during its job ends it (counted, logged
// by the caller from results()).
#pragma once

#include <sys/types.h>

#include <condition_variable>
#include <cstdint>
#include <deque>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "upm/policy.hpp"
#include "upm/remote.hpp"

namespace upm::remote {

struct AdviserOptions {
    std::uint64_t bytes_per_second = std::uint64_t(1) << 30;   // 1 GiB/s
    std::uint64_t step_bytes = std::uint64_t(64) << 20;        // per process_madvise call
    std::size_t max_queued = 1024;                             // processes waiting
    std::size_t results_kept = 32;
    int advice = madv_upm();                                   // tests: MADV_COLD
};

struct Request {
    pid_t pid = 0;
    std::string container;       // "" = a bare pid
    Policy policy;
    bool unless_preloaded = false;   // skip a process that maps the preload (policy `advice` `auto`)
};

struct AdviceResult {
    pid_t pid = 0;
    std::string container;
    std::size_t ranges = 0;
    Outcome outcome;
    std::string error;           // the target could not be opened ("" = it was)
    bool preloaded = false;      // skipped: the preload advises it (Request::unless_preloaded)
};

struct AdviserTotals {
    std::size_t queued = 0, jobs_done = 0, targets_exited = 0, failures = 0;
    std::size_t skipped_preloaded = 0;   // processes left to their preload
    std::size_t already_queued = 0;      // requests for a pid that was waiting already (dropped)
    std::uint64_t bytes_advised = 0, calls = 0;
    double advise_seconds = 0;   // in process_madvise()
    double cpu_seconds = 0;      // the worker thread's CPU time
    bool busy = false;           // a job is running now
};

class Adviser {
public:
    explicit Adviser(AdviserOptions o = {});
    ~Adviser();
    Adviser(const Adviser&) = delete;
    Adviser& operator=(const Adviser&) = delete;

    // Queues the requests (a pid already waiting is not queued twice);
    // false (nothing queued) when the queue is full.
    bool submit(std::vector<Request> requests);
    // The results since the last call (the caller logs them).
    std::vector<AdviceResult> take_results();
    AdviserTotals totals();
    // Waits until the queue is empty and the worker idle (tests), at most `seconds`.
    bool wait_idle(double seconds);
    void stop();

private:
    void run();
    AdviceResult advise_one(Request& r);
    void pace(std::uint64_t bytes, double seconds);

    AdviserOptions o_;
    std::mutex mu_;
    std::condition_variable cv_;
    std::deque<Request> queue_;
    std::vector<AdviceResult> results_;
    AdviserTotals totals_;
    bool busy_ = false, stop_ = false;
    std::thread worker_;
};

}  // namespace upm::remote
