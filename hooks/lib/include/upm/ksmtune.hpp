// KSM burst tuning: ksmd runs fast while newly advised memory is being
// merged and returns to an idle setting once merging is done.
//
// Two layers:
//   * KsmBurstLogic -- the pure decision logic.  It is fed counter samples
//     (KsmSample) and kicks, and answers with the knobs ksmd should have
//     (KsmDecision).  No I/O, no clock of its own: unit-testable.
//   * KsmTuner -- the sysfs side: records the host's original settings
//     (persisted in a state file so that a crashed agent's successor restores
//     the true originals, not our burst values), samples
//     /sys/kernel/mm/ksm and /proc, applies decisions, restores on stop().
//
// The algorithm, its defaults and how it compares with ksm-throttler and
// ksmtuned: docs/ksm-tuning.md.
#pragma once

#include <chrono>
#include <cstdint>
#include <deque>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>

#include "upm/result.hpp"

namespace upm {

using KsmClock = std::chrono::steady_clock;

// The ksmd settings the tuner manages.  -1 / "" = absent (not managed, or
// not present on this kernel).
struct KsmKnobs {
    long run = -1;              // 0 stop, 1 run, 2 stop and unmerge
    long pages_to_scan = -1;
    long sleep_millisecs = -1;
    std::string advisor_mode;   // "none" | "scan-time" (kernels >= 6.7), "" = absent
    bool operator==(const KsmKnobs&) const = default;
};

std::string to_string(const KsmKnobs& k);   // "run=1 pages_to_scan=100 sleep_millisecs=20 advisor_mode=none"

struct KsmTunerOptions {
    std::string sysfs = "/sys/kernel/mm/ksm";
    std::string state_file = "/run/upm/ksm-original.json";
    std::string proc = "/proc";                 // meminfo, ksmd's stat, boot_id

    // Idle: between bursts.  run=-1 means "follow the original": ksmd keeps
    // running at the idle rate if it was running (run=1) before the tuner
    // started, and stays stopped (run=0, merged pages stay merged) if it was
    // stopped -- then ksmd runs only during bursts.  pages_to_scan /
    // sleep_millisecs -1 = the original values.
    // advisor_mode "" = the original: an admin who runs ksmd with the
    // scan-time advisor keeps it between bursts (it is switched off for
    // bursts and trickles, which it would slow down).
    KsmKnobs idle{-1, 100, 20, ""};
    // Burst: pages_to_scan=-1 = sized from AnonPages so that one full scan
    // takes about target_scan_time (ksm-throttler sizes from AnonPages too).
    KsmKnobs burst{1, -1, 10, "none"};
    std::chrono::milliseconds target_scan_time{1000};
    long min_burst_pages_to_scan = 1000;
    long max_burst_pages_to_scan = 16000;

    // End of a burst: at least settle_full_scans full scans since the last
    // kick AND the savings (pages_sharing, pages_shared, general_profit) grew
    // by at most max(settle_pages, settle_fraction * pages_sharing) pages
    // over the last full scan.  Not before min_burst (the memory of a
    // container that just registered may be advised a moment later).
    int settle_full_scans = 2;
    long settle_pages = 64;
    double settle_fraction = 0.002;
    std::chrono::milliseconds min_burst{2000};    // a burst lasts at least this long

    // What a burst may cost, in ksmd CPU-seconds (measured, not wall time):
    // burst_cpu_base + burst_cpu_per_gib per GiB advised during the burst
    // (the bytes the kicks announced, or the growth of the node's AnonPages
    // since the burst began, whichever is larger); and at most
    // max_cpu_per_minute in any 60 s.  A burst over either bound does not
    // stop: it goes on at the trickle rate until the advised memory has
    // been scanned (the settle criterion above), so advised memory is
    // never left unmerged; a kick in a trickle bursts again once the last
    // minute's CPU is under the bound.
    double burst_cpu_base = 10.0;
    double burst_cpu_per_gib = 8.0;
    double max_cpu_per_minute = 40.0;
    // Trickle: run=1, the kernel's default rate.  advisor_mode as burst.
    KsmKnobs trickle{1, 100, 20, "none"};
    // A trickle (or a burst) that has not settled after this long is ended
    // anyway: the memory then is not being merged (e.g. advice the kernel
    // ignores), and scanning it for ever would be the ksmd we replace.
    std::chrono::milliseconds max_merging{std::chrono::minutes(30)};

    // tick() cadence.
    std::chrono::milliseconds burst_tick{250};
    std::chrono::milliseconds idle_tick{2000};
};

// One sample of the node's KSM counters (what the decision logic sees).
struct KsmSample {
    KsmClock::time_point when{};
    long full_scans = 0;
    long pages_shared = 0;
    long pages_sharing = 0;
    long pages_unshared = 0;
    long pages_volatile = 0;
    std::optional<long> general_profit;     // bytes, kernels >= 6.1 with CONFIG_PROC_FS
    long anon_pages = 0;                    // /proc/meminfo AnonPages, in pages
    double ksmd_cpu = -1;                   // ksmd's utime+stime, seconds; < 0 unknown
};

// idle: between bursts; burst: fast; trickle: over the CPU budget, slow
// until the advised memory has been scanned; stopped: not managing.
enum class KsmMode { idle, burst, trickle, stopped };
std::string_view to_string(KsmMode m);

struct KsmBurstRecord {
    KsmClock::time_point started{}, ended{};
    std::chrono::milliseconds duration{0};
    unsigned kicks = 0;                     // kicks that started or extended it
    long full_scans = 0;                    // full scans during the burst
    long pages_sharing_gained = 0;
    long pages_to_scan = 0;                 // the burst rate used
    double cpu_seconds = 0;                 // ksmd CPU during the burst (trickle included)
    double cpu_budget = 0;                  // the budget it had (base + per GiB advised)
    std::uint64_t advised_bytes = 0;        // advised during it (kicks, or AnonPages growth)
    std::chrono::milliseconds trickle_duration{0};   // part of `duration` spent trickling
    std::string trickle_reason;             // "" | "budget" | "rate": why it went to trickle
    std::string end_reason;                 // "settled" | "timeout" | "stopped"
    std::string first_reason;               // the kick that started it
};

struct KsmDecision {
    KsmMode mode = KsmMode::idle;
    KsmKnobs knobs;                         // what ksmd should have now
    std::chrono::milliseconds next{0};      // when to sample again
    bool burst_started = false;
    bool burst_ended = false;
    bool trickle_started = false;           // over budget: slow until settled
};

// The pure state machine.  `idle` must be resolved already (no -1 left for
// the knobs the node has).
class KsmBurstLogic {
public:
    KsmBurstLogic(KsmTunerOptions options, KsmKnobs idle);

    // New advised memory arrived (`bytes`, 0 = unknown).  Takes effect at the
    // next step(): starts a burst, or extends the running one (the settle
    // criterion restarts from the full_scans of that sample).
    void kick(std::string_view reason, std::uint64_t bytes = 0);

    KsmDecision step(const KsmSample& s);

    KsmMode mode() const { return mode_; }
    const KsmKnobs& idle_knobs() const { return idle_; }
    const KsmKnobs& burst_knobs() const { return burst_; }
    const KsmKnobs& trickle_knobs() const { return trickle_; }
    unsigned long bursts() const { return bursts_; }
    const std::optional<KsmBurstRecord>& last_burst() const { return last_; }
    const std::optional<KsmBurstRecord>& current_burst() const { return cur_; }
    bool kick_pending() const { return pending_; }

    // pages_to_scan of a burst for `anon_pages` of anonymous memory (clamped).
    long burst_pages_to_scan(long anon_pages, std::uint64_t extra_bytes) const;

private:
    KsmDecision decision(bool started, bool ended) const;
    static long growth(const KsmSample& a, const KsmSample& b, long page_size);
    void start_burst(const KsmSample& s);
    void end_burst(const KsmSample& s, std::string reason);
    void to_trickle(const KsmSample& s, std::string reason);
    double cpu_last_minute(const KsmSample& s);   // also records s in the window
    double budget(const KsmSample& s) const;

    KsmTunerOptions o_;
    KsmKnobs idle_, burst_, trickle_;
    KsmMode mode_ = KsmMode::idle;
    bool pending_ = false;
    std::string pending_reason_;
    std::uint64_t pending_bytes_ = 0;
    unsigned pending_kicks_ = 0;
    unsigned long bursts_ = 0;
    std::deque<std::pair<KsmClock::time_point, double>> cpu_window_;   // (when, ksmd_cpu), last 60 s
    // during a burst
    long kick_scans_ = 0;           // full_scans at the latest kick
    std::optional<KsmSample> start_, boundary_, prev_boundary_;
    KsmClock::time_point trickle_since_{};
    std::uint64_t kicked_bytes_ = 0;    // announced by the kicks since the budget began
    double budget_cpu0_ = -1;           // ksmd CPU when the budget began (burst start or re-burst)
    long budget_anon0_ = 0;             // AnonPages then
    bool rekick_ = false;               // a kick came during the trickle
    std::optional<KsmBurstRecord> cur_, last_;
};

struct KsmTunerStatus {
    std::string mode = "stopped";           // "idle" | "burst" | "stopped"
    unsigned long bursts = 0;
    unsigned long kicks = 0;
    double ksmd_cpu_seconds = 0;            // ksmd's utime+stime since start()
    double ksmd_cpu_seconds_bursts = 0;     // ... of it during bursts and trickles
    KsmKnobs current, original, idle, burst, trickle;
    bool recovered = false;                 // originals came from a state file
    std::optional<KsmBurstRecord> last_burst;
    long full_scans = 0, pages_sharing = 0, pages_shared = 0;
    std::optional<long> general_profit;
    std::string last_error;                 // the last failed write, "" if none
};

// JSON object text of a status (times as milliseconds).
std::string to_json(const KsmTunerStatus& s);

class KsmTuner {
public:
    explicit KsmTuner(KsmTunerOptions options);
    ~KsmTuner();
    KsmTuner(const KsmTuner&) = delete;
    KsmTuner& operator=(const KsmTuner&) = delete;

    // Records the original settings (or recovers them from state_file, left
    // by an agent that crashed in this boot), persists them atomically, and
    // applies the idle setting.  On failure nothing stays changed.
    // The destructor does not restore (a crash does not either): call stop().
    Status start();
    // New advised memory arrived: start or extend a burst (thread-safe; it
    // samples and writes the burst knobs at once, like a tick()).
    void kick(std::string_view reason, std::uint64_t bytes = 0);
    // Samples the counters, decides, writes the knobs that change; returns
    // the delay until the next call.
    std::chrono::milliseconds tick();
    // Restores the original settings; removes the state file when they were
    // all written back (kept otherwise, for the next start()).
    Status stop();
    KsmTunerStatus status() const;

private:
    Result<KsmSample> sample() const;
    Result<KsmKnobs> read_knobs() const;
    Status apply(const KsmKnobs& want, const KsmKnobs& have);
    Status persist_originals() const;
    double ksmd_cpu();

    KsmTunerOptions o_;
    mutable std::mutex mu_;
    std::optional<KsmBurstLogic> logic_;
    KsmTunerStatus st_;
    int ksmd_pid_ = 0;
    double cpu_start_ = 0, cpu_last_ = 0;
    bool started_ = false;
    bool warned_foreign_ = false;
};

// ksmd's CPU time (utime+stime, seconds) from `proc`/PID/stat; the pid is
// cached in *pid (0 = look it up).  nullopt when no ksmd thread exists.
std::optional<double> ksmd_cpu_seconds(const std::string& proc, int* pid);

}  // namespace upm
