// KSM burst tuning (see upm/ksmtune.hpp and docs/ksm-tuning.md).
#include "upm/ksmtune.hpp"

#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <memory>

#include <nlohmann/json.hpp>
#include <spdlog/spdlog.h>

#include "upm/atomic_file.hpp"
#include "upm/io.hpp"
#include "upm/stats.hpp"
#include "upm/log.hpp"

namespace upm {

using namespace std::chrono;
using detail::parse_int;
using detail::read_file;
using detail::trim;

namespace {

long page_size_pages() {
    long ps = ::sysconf(_SC_PAGESIZE);
    return ps > 0 ? ps : 4096;
}

// "[none] scan-time" -> "none"; a plain value is returned trimmed.
std::string choice_value(std::string_view text) {
    text = trim(text);
    auto open = text.find('[');
    auto close = text.find(']', open == std::string_view::npos ? 0 : open);
    if (open != std::string_view::npos && close != std::string_view::npos)
        return std::string(text.substr(open + 1, close - open - 1));
    return std::string(text);
}

std::optional<long> read_long(const std::string& path) {
    auto text = read_file(path, detail::kMaxSmallFile);
    if (!text) return std::nullopt;
    auto v = parse_int(trim(*text));
    if (!v) return std::nullopt;
    return static_cast<long>(*v);
}

// Writes a knob like `echo VALUE > PATH` does (O_TRUNC, which sysfs
// ignores; it matters for the plain files of the unit tests).
Status write_knob(const std::string& path, const std::string& value) {
    int fd = ::open(path.c_str(), O_WRONLY | O_TRUNC | O_CLOEXEC | O_NOCTTY);
    if (fd < 0) return Error::sys(errno, "open `" + path + "`");
    std::string text = value + "\n";
    std::size_t done = 0;
    while (done < text.size()) {
        ssize_t n = ::write(fd, text.data() + done, text.size() - done);
        if (n < 0) {
            if (errno == EINTR) continue;
            int e = errno;
            ::close(fd);
            return Error::sys(e, "write");
        }
        done += static_cast<std::size_t>(n);
    }
    if (::close(fd) != 0) return Error::sys(errno, "close");
    return Ok{};
}

bool exists(const std::string& path) {
    struct stat st {};
    return ::stat(path.c_str(), &st) == 0;
}

// Fields of `want` that are set (-1 / "" = don't care) equal those of `have`.
// pages_to_scan is the kernel's own while the scan-time advisor runs.
bool knobs_match(const KsmKnobs& want, const KsmKnobs& have) {
    if (want.run >= 0 && want.run != have.run) return false;
    if (want.sleep_millisecs >= 0 && want.sleep_millisecs != have.sleep_millisecs) return false;
    if (!want.advisor_mode.empty() && !have.advisor_mode.empty() && want.advisor_mode != have.advisor_mode)
        return false;
    bool advisor_on = (want.advisor_mode.empty() ? have.advisor_mode : want.advisor_mode) == "scan-time";
    if (!advisor_on && want.pages_to_scan >= 0 && want.pages_to_scan != have.pages_to_scan) return false;
    return true;
}

nlohmann::json knobs_json(const KsmKnobs& k) {
    nlohmann::json j = nlohmann::json::object();
    if (k.run >= 0) j["run"] = k.run;
    if (k.pages_to_scan >= 0) j["pages_to_scan"] = k.pages_to_scan;
    if (k.sleep_millisecs >= 0) j["sleep_millisecs"] = k.sleep_millisecs;
    if (!k.advisor_mode.empty()) j["advisor_mode"] = k.advisor_mode;
    return j;
}

KsmKnobs knobs_from_json(const nlohmann::json& j) {
    KsmKnobs k;
    if (!j.is_object()) return k;
    auto num = [&](const char* key, long& out) {
        auto it = j.find(key);
        if (it != j.end() && it->is_number_integer()) out = it->get<long>();
    };
    num("run", k.run);
    num("pages_to_scan", k.pages_to_scan);
    num("sleep_millisecs", k.sleep_millisecs);
    auto it = j.find("advisor_mode");
    if (it != j.end() && it->is_string()) k.advisor_mode = it->get<std::string>();
    return k;
}

std::string boot_id(const std::string& proc) {
    auto t = read_file(proc + "/sys/kernel/random/boot_id", detail::kMaxSmallFile);
    return t ? std::string(trim(*t)) : std::string();
}


}  // namespace

std::string to_string(const KsmKnobs& k) {
    std::string s;
    auto add = [&](const char* name, const std::string& v) {
        if (!s.empty()) s += ' ';
        s += name;
        s += '=';
        s += v;
    };
    if (k.run >= 0) add("run", std::to_string(k.run));
    if (k.pages_to_scan >= 0) add("pages_to_scan", std::to_string(k.pages_to_scan));
    if (k.sleep_millisecs >= 0) add("sleep_millisecs", std::to_string(k.sleep_millisecs));
    if (!k.advisor_mode.empty()) add("advisor_mode", k.advisor_mode);
    return s;
}

std::string_view to_string(KsmMode m) {
    switch (m) {
        case KsmMode::idle: return "idle";
        case KsmMode::burst: return "burst";
        case KsmMode::trickle: return "trickle";
        case KsmMode::stopped: return "stopped";
    }
    return "?";
}

// ---------------------------------------------------------------------------
// KsmBurstLogic

KsmBurstLogic::KsmBurstLogic(KsmTunerOptions options, KsmKnobs idle)
    : o_(std::move(options)), idle_(std::move(idle)), burst_(o_.burst), trickle_(o_.trickle) {
    if (burst_.run < 0) burst_.run = 1;
    if (burst_.sleep_millisecs < 0) burst_.sleep_millisecs = 10;
    if (burst_.pages_to_scan < 0) burst_.pages_to_scan = o_.min_burst_pages_to_scan;
    if (trickle_.run < 0) trickle_.run = 1;
    if (trickle_.pages_to_scan < 0) trickle_.pages_to_scan = 100;
    if (trickle_.sleep_millisecs < 0) trickle_.sleep_millisecs = 20;
    if (idle_.advisor_mode.empty()) {   // node without the advisor
        burst_.advisor_mode.clear();
        trickle_.advisor_mode.clear();
    }
    // ksmd already runs at least this fast between bursts: trickle at that rate.
    if (idle_.run == 1 && idle_.pages_to_scan >= 0 && idle_.sleep_millisecs > 0 && trickle_.sleep_millisecs > 0 &&
        idle_.pages_to_scan * trickle_.sleep_millisecs >= trickle_.pages_to_scan * idle_.sleep_millisecs) {
        trickle_.pages_to_scan = idle_.pages_to_scan;
        trickle_.sleep_millisecs = idle_.sleep_millisecs;
    }
}

long KsmBurstLogic::burst_pages_to_scan(long anon_pages, std::uint64_t extra_bytes) const {
    if (o_.burst.pages_to_scan >= 0) return o_.burst.pages_to_scan;
    long sleep = std::max(1L, burst_.sleep_millisecs);
    long target = std::max<long>(1, static_cast<long>(o_.target_scan_time.count()));
    double pages = static_cast<double>(std::max(0L, anon_pages)) +
                   static_cast<double>(extra_bytes) / static_cast<double>(page_size_pages());
    // One cycle scans pages_to_scan and sleeps `sleep` ms: target/sleep
    // cycles per full scan (an upper bound on the rate, scanning takes time).
    double per_cycle = pages * static_cast<double>(sleep) / static_cast<double>(target);
    long n = static_cast<long>(std::min(per_cycle, 1e12));
    return std::clamp(n, o_.min_burst_pages_to_scan, std::max(o_.min_burst_pages_to_scan, o_.max_burst_pages_to_scan));
}

void KsmBurstLogic::kick(std::string_view reason, std::uint64_t bytes) {
    if (mode_ == KsmMode::stopped) return;
    if (!pending_) pending_reason_ = std::string(reason);
    pending_ = true;
    pending_bytes_ += bytes;
    ++pending_kicks_;
}

long KsmBurstLogic::growth(const KsmSample& a, const KsmSample& b, long page_size) {
    long g = std::max(b.pages_sharing - a.pages_sharing, b.pages_shared - a.pages_shared);
    if (a.general_profit && b.general_profit)
        g = std::max(g, (*b.general_profit - *a.general_profit) / std::max(1L, page_size));
    return g;
}

double KsmBurstLogic::cpu_last_minute(const KsmSample& s) {
    if (s.ksmd_cpu < 0) return 0;
    cpu_window_.emplace_back(s.when, s.ksmd_cpu);
    // Keep one sample at or before the window's start, so the window is whole.
    while (cpu_window_.size() > 1 && cpu_window_[1].first <= s.when - minutes(1)) cpu_window_.pop_front();
    return std::max(0.0, s.ksmd_cpu - cpu_window_.front().second);
}

double KsmBurstLogic::budget(const KsmSample& s) const {
    std::uint64_t grown = s.anon_pages > budget_anon0_
                              ? static_cast<std::uint64_t>(s.anon_pages - budget_anon0_) *
                                    static_cast<std::uint64_t>(page_size_pages())
                              : 0;
    double gib = static_cast<double>(std::max(kicked_bytes_, grown)) / (1024.0 * 1024.0 * 1024.0);
    return o_.burst_cpu_base + o_.burst_cpu_per_gib * gib;
}

void KsmBurstLogic::start_burst(const KsmSample& s) {
    mode_ = KsmMode::burst;
    ++bursts_;
    burst_.pages_to_scan = burst_pages_to_scan(s.anon_pages, pending_bytes_);
    start_ = s;
    boundary_ = s;
    prev_boundary_.reset();
    kick_scans_ = s.full_scans;
    kicked_bytes_ = pending_bytes_;
    budget_cpu0_ = s.ksmd_cpu;
    budget_anon0_ = s.anon_pages;
    cur_ = KsmBurstRecord{};
    cur_->started = s.when;
    cur_->kicks = pending_kicks_;
    cur_->first_reason = pending_reason_;
    cur_->pages_to_scan = burst_.pages_to_scan;
    pending_ = false;
    pending_kicks_ = 0;
    pending_bytes_ = 0;
}

void KsmBurstLogic::to_trickle(const KsmSample& s, std::string reason) {
    mode_ = KsmMode::trickle;
    rekick_ = false;
    trickle_since_ = s.when;
    if (cur_) cur_->trickle_reason = std::move(reason);
}

void KsmBurstLogic::end_burst(const KsmSample& s, std::string reason) {
    if (cur_) {
        cur_->ended = s.when;
        cur_->duration = duration_cast<milliseconds>(s.when - cur_->started);
        if (mode_ == KsmMode::trickle) cur_->trickle_duration += duration_cast<milliseconds>(s.when - trickle_since_);
        cur_->full_scans = s.full_scans - start_->full_scans;
        cur_->pages_sharing_gained = s.pages_sharing - start_->pages_sharing;
        if (s.ksmd_cpu >= 0 && start_->ksmd_cpu >= 0) cur_->cpu_seconds = s.ksmd_cpu - start_->ksmd_cpu;
        cur_->end_reason = std::move(reason);
        last_ = cur_;
        cur_.reset();
    }
    mode_ = KsmMode::idle;
    start_.reset();
    boundary_.reset();
    prev_boundary_.reset();
}

KsmDecision KsmBurstLogic::decision(bool started, bool ended) const {
    KsmDecision d;
    d.mode = mode_;
    d.burst_started = started;
    d.burst_ended = ended;
    if (mode_ == KsmMode::burst) {
        d.knobs = burst_;
        d.next = o_.burst_tick;
    } else if (mode_ == KsmMode::trickle) {
        d.knobs = trickle_;
        d.next = o_.burst_tick;
    } else {
        d.knobs = idle_;
        d.next = o_.idle_tick;
    }
    return d;
}

KsmDecision KsmBurstLogic::step(const KsmSample& s) {
    if (mode_ == KsmMode::stopped) return decision(false, false);
    const double minute_cpu = cpu_last_minute(s);
    const bool rate_ok = minute_cpu < o_.max_cpu_per_minute;

    if (mode_ == KsmMode::idle) {
        if (!pending_) return decision(false, false);
        start_burst(s);
        if (!rate_ok) {
            // The last minute's ksmd CPU is spent: merge, but slowly.
            to_trickle(s, "rate");
            auto d = decision(true, false);
            d.trickle_started = true;
            return d;
        }
        return decision(true, false);
    }

    // In a burst or a trickle.
    bool trickle_started = false;
    if (pending_) {
        // A kick extends the burst: the settle criterion starts over from
        // this sample, the rate grows if there is more memory now.
        kick_scans_ = s.full_scans;
        boundary_ = s;
        prev_boundary_.reset();
        burst_.pages_to_scan = std::max(burst_.pages_to_scan, burst_pages_to_scan(s.anon_pages, pending_bytes_));
        kicked_bytes_ += pending_bytes_;
        cur_->kicks += pending_kicks_;
        cur_->pages_to_scan = burst_.pages_to_scan;
        if (mode_ == KsmMode::trickle) rekick_ = true;
        pending_ = false;
        pending_kicks_ = 0;
        pending_bytes_ = 0;
    } else if (s.full_scans > boundary_->full_scans) {
        prev_boundary_ = boundary_;
        boundary_ = s;
    }
    if (mode_ == KsmMode::trickle && rekick_ && rate_ok) {
        // New advice during the trickle, and the last minute allows it:
        // fast again, with a budget that counts from now.
        cur_->trickle_duration += duration_cast<milliseconds>(s.when - trickle_since_);
        mode_ = KsmMode::burst;
        rekick_ = false;
        budget_cpu0_ = s.ksmd_cpu;
        budget_anon0_ = s.anon_pages;
    }
    cur_->advised_bytes = std::max(cur_->advised_bytes, kicked_bytes_);

    long scans = s.full_scans - kick_scans_;
    if (scans >= o_.settle_full_scans && prev_boundary_ && s.when - start_->when >= o_.min_burst) {
        long limit = std::max(o_.settle_pages,
                              static_cast<long>(o_.settle_fraction * static_cast<double>(boundary_->pages_sharing)));
        if (growth(*prev_boundary_, *boundary_, page_size_pages()) <= limit) {
            end_burst(s, "settled");
            return decision(false, true);
        }
    }
    if (s.when - cur_->started >= o_.max_merging) {
        end_burst(s, "timeout");
        return decision(false, true);
    }
    if (mode_ == KsmMode::burst && s.ksmd_cpu >= 0 && budget_cpu0_ >= 0) {
        double spent = s.ksmd_cpu - budget_cpu0_;
        cur_->cpu_budget = budget(s);
        if (spent > cur_->cpu_budget) {
            to_trickle(s, "budget");
            trickle_started = true;
        } else if (!rate_ok) {
            to_trickle(s, "rate");
            trickle_started = true;
        }
    }
    auto d = decision(false, false);
    d.trickle_started = trickle_started;
    return d;
}

// ---------------------------------------------------------------------------
// ksmd's CPU time

std::optional<double> ksmd_cpu_seconds(const std::string& proc, int* pid) {
    static const double tick = [] {
        long t = ::sysconf(_SC_CLK_TCK);
        return t > 0 ? static_cast<double>(t) : 100.0;
    }();
    auto read_stat = [&](int p) -> std::optional<double> {
        std::string dir = proc + "/" + std::to_string(p);
        auto comm = read_file(dir + "/comm", detail::kMaxSmallFile);
        if (!comm || trim(*comm) != "ksmd") return std::nullopt;
        auto stat = read_proc_stat(dir);
        if (!stat) return std::nullopt;
        return static_cast<double>(stat->utime + stat->stime) / tick;
    };
    if (pid && *pid > 0) {
        if (auto v = read_stat(*pid)) return v;
        *pid = 0;
    }
    std::unique_ptr<DIR, int (*)(DIR*)> d(::opendir(proc.c_str()), ::closedir);
    if (!d) return std::nullopt;
    while (dirent* e = ::readdir(d.get())) {
        auto p = parse_int(e->d_name);
        if (!p || *p <= 0) continue;
        // kernel threads are children of kthreadd (pid 2); cheap filter by comm.
        if (auto v = read_stat(static_cast<int>(*p))) {
            if (pid) *pid = static_cast<int>(*p);
            return v;
        }
    }
    return std::nullopt;
}

// ---------------------------------------------------------------------------
// JSON

std::string to_json(const KsmTunerStatus& s) {
    nlohmann::json j;
    j["mode"] = s.mode;
    j["bursts"] = s.bursts;
    j["kicks"] = s.kicks;
    j["ksmd_cpu_seconds"] = s.ksmd_cpu_seconds;
    j["ksmd_cpu_seconds_bursts"] = s.ksmd_cpu_seconds_bursts;
    j["current"] = knobs_json(s.current);
    j["original"] = knobs_json(s.original);
    j["idle"] = knobs_json(s.idle);
    j["burst"] = knobs_json(s.burst);
    j["trickle"] = knobs_json(s.trickle);
    j["recovered"] = s.recovered;
    j["full_scans"] = s.full_scans;
    j["pages_sharing"] = s.pages_sharing;
    j["pages_shared"] = s.pages_shared;
    j["general_profit"] = s.general_profit ? nlohmann::json(*s.general_profit) : nlohmann::json(nullptr);
    if (s.last_burst) {
        const auto& b = *s.last_burst;
        j["last_burst"] = {{"duration_ms", b.duration.count()},
                           {"kicks", b.kicks},
                           {"full_scans", b.full_scans},
                           {"pages_sharing_gained", b.pages_sharing_gained},
                           {"pages_to_scan", b.pages_to_scan},
                           {"cpu_seconds", b.cpu_seconds},
                           {"cpu_budget", b.cpu_budget},
                           {"advised_bytes", b.advised_bytes},
                           {"trickle_ms", b.trickle_duration.count()},
                           {"trickle_reason", b.trickle_reason},
                           {"end_reason", b.end_reason},
                           {"reason", b.first_reason}};
    } else {
        j["last_burst"] = nullptr;
    }
    j["last_error"] = s.last_error;
    return j.dump();
}

// ---------------------------------------------------------------------------
// KsmTuner

KsmTuner::KsmTuner(KsmTunerOptions options) : o_(std::move(options)) {}

KsmTuner::~KsmTuner() = default;

Result<KsmKnobs> KsmTuner::read_knobs() const {
    KsmKnobs k;
    auto run = read_long(o_.sysfs + "/run");
    if (!run) return Error::sys(errno ? errno : EIO, "reading `" + o_.sysfs + "/run`");
    k.run = *run;
    k.pages_to_scan = read_long(o_.sysfs + "/pages_to_scan").value_or(-1);
    k.sleep_millisecs = read_long(o_.sysfs + "/sleep_millisecs").value_or(-1);
    if (auto adv = read_file(o_.sysfs + "/advisor_mode", detail::kMaxSmallFile)) k.advisor_mode = choice_value(*adv);
    return k;
}

Result<KsmSample> KsmTuner::sample() const {
    KsmSample s;
    s.when = KsmClock::now();
    auto fs = read_long(o_.sysfs + "/full_scans");
    if (!fs) return Error::msg("reading `" + o_.sysfs + "/full_scans` failed");
    s.full_scans = *fs;
    s.pages_shared = read_long(o_.sysfs + "/pages_shared").value_or(0);
    s.pages_sharing = read_long(o_.sysfs + "/pages_sharing").value_or(0);
    s.pages_unshared = read_long(o_.sysfs + "/pages_unshared").value_or(0);
    s.pages_volatile = read_long(o_.sysfs + "/pages_volatile").value_or(0);
    s.general_profit = read_long(o_.sysfs + "/general_profit");
    if (auto mi = read_file(o_.proc + "/meminfo", detail::kMaxSmallFile)) {
        auto pos = mi->find("\nAnonPages:");
        if (pos != std::string::npos) {
            auto end = mi->find('\n', pos + 1);
            std::string_view line(mi->data() + pos + 11, (end == std::string::npos ? mi->size() : end) - pos - 11);
            line = trim(line);
            auto sp = line.find(' ');
            if (auto kb = parse_int(line.substr(0, sp))) s.anon_pages = static_cast<long>(*kb * 1024 / page_size_pages());
        }
    }
    return s;
}

Status KsmTuner::apply(const KsmKnobs& want, const KsmKnobs& have) {
    std::optional<Error> first;
    auto write = [&](const char* name, const std::string& value) {
        std::string path = o_.sysfs + "/" + name;
        auto st = write_knob(path, value);
        if (!st) {
            // EBUSY/EINVAL (a knob the kernel refuses now): keep going with
            // the others, report the first failure.
            auto e = st.error().wrap("setting `" + path + "` to `" + value + "`");
            // The same refusal again (a knob the kernel keeps refusing) is
            // logged once, not at every tick.
            if (e.message != st_.last_error) logger()->warn("ksm tuning: {}", e.message);
            else logger()->debug("ksm tuning: {}", e.message);
            if (!first) first = e;
        }
    };
    bool adv_change = !want.advisor_mode.empty() && !have.advisor_mode.empty() && want.advisor_mode != have.advisor_mode;
    // Leaving the advisor resets pages_to_scan to the kernel default: first.
    if (adv_change && want.advisor_mode == "none") write("advisor_mode", want.advisor_mode);
    // The rates are written while the advisor is off: it was switched off
    // just now, or it is switched on only after them, or it is off anyway.
    bool adv_now_none = adv_change || have.advisor_mode != "scan-time";
    if (want.pages_to_scan >= 0 && adv_now_none && (want.pages_to_scan != have.pages_to_scan || adv_change))
        write("pages_to_scan", std::to_string(want.pages_to_scan));
    if (want.sleep_millisecs >= 0 && want.sleep_millisecs != have.sleep_millisecs)
        write("sleep_millisecs", std::to_string(want.sleep_millisecs));
    // Entering the advisor (restoring an original "scan-time"): after the
    // rates, since the advisor owns pages_to_scan from then on.
    if (adv_change && want.advisor_mode != "none") write("advisor_mode", want.advisor_mode);
    if (want.run >= 0 && want.run != have.run) write("run", std::to_string(want.run));
    if (first) {
        st_.last_error = first->message;
        return *first;
    }
    return Ok{};
}

Status KsmTuner::persist_originals() const {
    nlohmann::json j;
    j["version"] = 1;
    j["boot_id"] = boot_id(o_.proc);
    j["pid"] = static_cast<long>(::getpid());
    j["knobs"] = knobs_json(st_.original);
    std::string text = j.dump() + "\n";
    std::string path = o_.state_file;
    if (std::string dir = detail::dirname(path); dir != "." && dir != "/") {
        // mkdir -p of the parent (typically /run/upm).
        for (std::size_t p = 1; p <= dir.size(); ++p) {
            if (p == dir.size() || dir[p] == '/') {
                std::string part = dir.substr(0, p);
                if (::mkdir(part.c_str(), 0755) != 0 && errno != EEXIST)
                    return Error::sys(errno, "creating `" + part + "`");
            }
        }
    }
    // 0644: `upm status` and the tests read it without root.
    return write_file_atomic(path, text, {.mode = 0644});
}

double KsmTuner::ksmd_cpu() {
    auto v = ksmd_cpu_seconds(o_.proc, &ksmd_pid_);
    return v ? *v : cpu_last_;
}

Status KsmTuner::start() {
    std::lock_guard lock(mu_);
    if (started_) return Ok{};
    if (!exists(o_.sysfs + "/run")) return Error{ENOENT, "`" + o_.sysfs + "/run` does not exist (kernel without CONFIG_KSM)"};
    auto cur = read_knobs();
    if (!cur) return cur.error().wrap("ksm tuning");

    // Originals: from the state file of a predecessor that did not restore
    // (same boot only: the kernel resets the knobs at boot), else now.
    st_.recovered = false;
    if (auto text = read_file(o_.state_file, detail::kMaxSmallFile)) {
        try {
            auto j = nlohmann::json::parse(*text);
            std::string file_boot = j.value("boot_id", std::string());
            std::string now_boot = boot_id(o_.proc);
            KsmKnobs k = knobs_from_json(j.value("knobs", nlohmann::json::object()));
            if (k.run >= 0 && (file_boot.empty() || now_boot.empty() || file_boot == now_boot)) {
                if (k.advisor_mode.empty()) k.advisor_mode = cur->advisor_mode;
                st_.original = k;
                st_.recovered = true;
                logger()->warn("ksm tuning: recovered the original ksm settings ({}) from `{}`, left by pid {}",
                               to_string(k), o_.state_file, j.value("pid", 0L));
            } else {
                logger()->info("ksm tuning: ignoring `{}` from another boot", o_.state_file);
            }
        } catch (const std::exception& e) {
            logger()->warn("ksm tuning: ignoring unreadable `{}`: {}", o_.state_file, e.what());
        }
    }
    if (!st_.recovered) st_.original = *cur;
    if (auto st = persist_originals(); !st) return st.error().wrap("ksm tuning: saving the original settings");

    // Resolve the idle setting against the originals.
    KsmKnobs idle = o_.idle;
    if (idle.run < 0) idle.run = st_.original.run == 1 ? 1 : 0;
    if (idle.pages_to_scan < 0) idle.pages_to_scan = st_.original.pages_to_scan;
    if (idle.sleep_millisecs < 0) idle.sleep_millisecs = st_.original.sleep_millisecs;
    if (cur->advisor_mode.empty()) idle.advisor_mode.clear();
    else if (idle.advisor_mode.empty()) idle.advisor_mode = st_.original.advisor_mode;
    KsmTunerOptions opts = o_;
    if (cur->advisor_mode.empty()) opts.burst.advisor_mode.clear();
    logic_.emplace(opts, idle);
    st_.idle = idle;
    st_.burst = logic_->burst_knobs();
    st_.trickle = logic_->trickle_knobs();

    if (auto st = apply(idle, *cur); !st) {
        // Put back what was written, and do not leave a state file behind
        // for settings that are the originals again.
        if (auto now = read_knobs(); now && apply(st_.original, *now) && read_knobs() &&
                                     knobs_match(st_.original, *read_knobs()))
            ::unlink(o_.state_file.c_str());
        logic_.reset();
        return st.error().wrap("ksm tuning: applying the idle setting");
    }
    cpu_start_ = cpu_last_ = ksmd_cpu();
    started_ = true;
    st_.mode = "idle";
    if (auto k = read_knobs()) st_.current = *k;
    logger()->info("ksm tuning: started; original {}{}, idle {}", to_string(st_.original),
                   st_.recovered ? " (recovered)" : "", to_string(idle));
    return Ok{};
}

void KsmTuner::kick(std::string_view reason, std::uint64_t bytes) {
    {
        std::lock_guard lock(mu_);
        if (!started_ || !logic_) return;
        logic_->kick(reason, bytes);
        ++st_.kicks;
    }
    // Act now rather than at the next scheduled tick: a burst starts at once.
    (void)tick();
}

std::chrono::milliseconds KsmTuner::tick() {
    std::lock_guard lock(mu_);
    if (!started_ || !logic_) return o_.idle_tick;
    auto s = sample();
    if (!s) {
        st_.last_error = s.error().message;
        return o_.idle_tick;
    }
    bool was_merging = logic_->mode() == KsmMode::burst || logic_->mode() == KsmMode::trickle;
    double cpu = ksmd_cpu();
    s->ksmd_cpu = cpu;
    auto d = logic_->step(*s);
    if (was_merging) st_.ksmd_cpu_seconds_bursts += cpu - cpu_last_;
    cpu_last_ = cpu;
    st_.ksmd_cpu_seconds = cpu - cpu_start_;

    auto have = read_knobs();
    if (have && !knobs_match(d.knobs, *have)) {
        if (!d.burst_started && !d.burst_ended && !warned_foreign_) {
            logger()->warn("ksm tuning: ksm settings changed behind our back ({}), writing {}", to_string(*have),
                           to_string(d.knobs));
            warned_foreign_ = true;
        }
        (void)apply(d.knobs, *have);
        have = read_knobs();
    }
    if (d.burst_started || d.burst_ended) warned_foreign_ = false;
    if (d.burst_started)
        logger()->info("ksm tuning: burst {} ({}): {}", logic_->bursts(),
                       logic_->current_burst() ? logic_->current_burst()->first_reason : "", to_string(d.knobs));
    if (d.trickle_started && logic_->current_burst()) {
        const auto& b = *logic_->current_burst();
        logger()->info("ksm tuning: burst {} over its {} ({}), trickling until the advised memory is scanned: {}",
                       logic_->bursts(), b.trickle_reason == "rate" ? "CPU rate (per minute)" : "CPU budget",
                       b.trickle_reason == "rate" ? fmt::format("max {:.1f} CPU-s per minute", o_.max_cpu_per_minute)
                                                  : fmt::format("{:.1f} CPU-s for {:.0f} MiB advised", b.cpu_budget,
                                                                static_cast<double>(b.advised_bytes) / (1 << 20)),
                       to_string(d.knobs));
    }
    if (d.burst_ended && logic_->last_burst()) {
        const auto& b = *logic_->last_burst();
        logger()->info("ksm tuning: burst ended ({}) after {} ms ({} ms trickling), {} full scans, pages_sharing {:+}, "
                       "ksmd {:.2f} CPU-s",
                       b.end_reason, b.duration.count(), b.trickle_duration.count(), b.full_scans,
                       b.pages_sharing_gained, b.cpu_seconds);
    }
    if (have) st_.current = *have;
    st_.mode = std::string(to_string(logic_->mode()));
    st_.bursts = logic_->bursts();
    st_.burst = logic_->burst_knobs();
    st_.trickle = logic_->trickle_knobs();
    st_.last_burst = logic_->last_burst();
    st_.full_scans = s->full_scans;
    st_.pages_sharing = s->pages_sharing;
    st_.pages_shared = s->pages_shared;
    st_.general_profit = s->general_profit;
    return d.next;
}

Status KsmTuner::stop() {
    std::lock_guard lock(mu_);
    if (!started_) return Ok{};
    double cpu = ksmd_cpu();
    if (logic_ && (logic_->mode() == KsmMode::burst || logic_->mode() == KsmMode::trickle))
        st_.ksmd_cpu_seconds_bursts += cpu - cpu_last_;
    st_.ksmd_cpu_seconds = cpu - cpu_start_;
    auto have = read_knobs();
    if (!have) return have.error().wrap("ksm tuning: restoring the original settings");
    auto st = apply(st_.original, *have);
    auto after = read_knobs();
    started_ = false;
    st_.mode = "stopped";
    if (after) st_.current = *after;
    if (!st) return st.error().wrap("ksm tuning: restoring the original settings (state file `" + o_.state_file + "` kept)");
    if (!after || !knobs_match(st_.original, *after))
        return Error::msg("ksm tuning: the settings read back as `" + (after ? to_string(*after) : std::string("?")) +
                          "`, not the original `" + to_string(st_.original) + "` (state file `" + o_.state_file +
                          "` kept)");
    ::unlink(o_.state_file.c_str());
    logger()->info("ksm tuning: stopped; restored {}", to_string(st_.original));
    return Ok{};
}

KsmTunerStatus KsmTuner::status() const {
    std::lock_guard lock(mu_);
    return st_;
}

}  // namespace upm
