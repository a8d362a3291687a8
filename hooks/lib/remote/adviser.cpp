// upmd's remote adviser: the worker thread (upm/remote_adviser.hpp).
#include "upm/remote_adviser.hpp"

#include "upm/advice_route.hpp"

#include <pthread.h>
#include <signal.h>
#include <time.h>

#include <algorithm>
#include <cerrno>
#include <chrono>

namespace upm::remote {

namespace {

double thread_cpu_seconds() {
    timespec ts{};
    ::clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return static_cast<double>(ts.tv_sec) + static_cast<double>(ts.tv_nsec) / 1e9;
}

}  // namespace

Adviser::Adviser(AdviserOptions o) : o_(o) {
    // The worker takes no signal: upmd reads its signals from a signalfd.
    sigset_t all, old;
    ::sigfillset(&all);
    ::pthread_sigmask(SIG_SETMASK, &all, &old);
    worker_ = std::thread([this] { run(); });
    ::pthread_sigmask(SIG_SETMASK, &old, nullptr);
}

Adviser::~Adviser() { stop(); }

void Adviser::stop() {
    {
        std::lock_guard lock(mu_);
        stop_ = true;
    }
    cv_.notify_all();
    if (worker_.joinable()) worker_.join();
}

bool Adviser::submit(std::vector<Request> requests) {
    {
        std::lock_guard lock(mu_);
        if (stop_ || queue_.size() + requests.size() > o_.max_queued) return false;
        for (auto& r : requests) {
            if (std::any_of(queue_.begin(), queue_.end(), [&](const Request& q) { return q.pid == r.pid; })) {
                totals_.already_queued++;
                continue;
            }
            queue_.push_back(std::move(r));
        }
        totals_.queued = queue_.size();
    }
    cv_.notify_all();
    return true;
}

std::vector<AdviceResult> Adviser::take_results() {
    std::lock_guard lock(mu_);
    std::vector<AdviceResult> out;
    out.swap(results_);
    return out;
}

AdviserTotals Adviser::totals() {
    std::lock_guard lock(mu_);
    AdviserTotals t = totals_;
    t.busy = busy_;
    return t;
}

bool Adviser::wait_idle(double seconds) {
    std::unique_lock lock(mu_);
    return cv_.wait_for(lock, std::chrono::duration<double>(seconds), [&] { return queue_.empty() && !busy_; });
}

// Sleeps so that `bytes` advised in `seconds` keep within bytes_per_second.
void Adviser::pace(std::uint64_t bytes, double seconds) {
    if (o_.bytes_per_second == 0) return;
    double due = static_cast<double>(bytes) / static_cast<double>(o_.bytes_per_second) - seconds;
    if (due <= 0) return;
    std::unique_lock lock(mu_);
    cv_.wait_for(lock, std::chrono::duration<double>(due), [&] { return stop_; });
}

AdviceResult Adviser::advise_one(Request& r) {
    AdviceResult res;
    res.pid = r.pid;
    res.container = r.container;
    auto target = open_target(r.pid);
    if (!target) {
        res.error = target.error().message;
        res.outcome.target_exited = target.error().err == ESRCH;
        return res;
    }
    if (r.unless_preloaded && maps_preload(target->regions)) {
        res.preloaded = true;
        res.outcome.done = true;
        return res;
    }
    Plan p = plan(r.policy, target->regions, r.pid);
    res.ranges = p.ranges.size();
    Job job(std::move(*target), std::move(p.ranges), o_.advice);
    while (!job.finished()) {
        const auto t0 = std::chrono::steady_clock::now();
        const std::uint64_t before = job.outcome().bytes_advised;
        job.step(o_.step_bytes);
        pace(std::max<std::uint64_t>(job.outcome().bytes_advised - before, 4096),
             std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
        std::lock_guard lock(mu_);
        if (stop_) break;
    }
    res.outcome = job.outcome();
    return res;
}

void Adviser::run() {
    ::pthread_setname_np(::pthread_self(), "upmd-advise");
    std::unique_lock lock(mu_);
    for (;;) {
        cv_.wait(lock, [&] { return stop_ || !queue_.empty(); });
        if (stop_) return;
        Request r = std::move(queue_.front());
        queue_.pop_front();
        totals_.queued = queue_.size();
        busy_ = true;
        lock.unlock();
        const double cpu0 = thread_cpu_seconds();
        AdviceResult res = advise_one(r);
        const double cpu = thread_cpu_seconds() - cpu0;
        lock.lock();
        busy_ = false;
        totals_.jobs_done++;
        totals_.cpu_seconds += cpu;
        totals_.bytes_advised += res.outcome.bytes_advised;
        totals_.calls += res.outcome.calls;
        totals_.advise_seconds += res.outcome.seconds;
        if (res.preloaded) totals_.skipped_preloaded++;
        if (res.outcome.target_exited) totals_.targets_exited++;
        else if (!res.error.empty() || res.outcome.error) totals_.failures++;
        if (results_.size() >= o_.results_kept) results_.erase(results_.begin());
        results_.push_back(std::move(res));
        cv_.notify_all();
    }
}

}  // namespace upm::remote
