// One policy run, and the logging gate of the preload.
//
// A run reads /proc/self/maps, classifies the regions (told by the loader
// where each object's .bss is, so that an unrelated mapping that lands
// right above a library is not taken for the library's data), applies the policy
// (upm::decide) and advises every selected region with the chosen backend,
// on the calling thread: the worker for automatic triggers, the program's
// own thread for upm_advise_all().  Runs may overlap (madvise is idempotent
// and the kernel serialises on mmap_lock); no lock is held while advising.
//
// Logging goes through log_msg(), which is the only place that touches
// spdlog: it is skipped unless a level was asked for, and it holds g_log_lock
// (read side) so that the fork prepare handler can make sure no thread is
// inside the logger (and its mutex) when the process forks.
#include <link.h>
#include <pthread.h>
#include <time.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <optional>
#include <vector>

#include <spdlog/spdlog.h>

#include "preload.hpp"
#include "upm/classify.hpp"
#include "upm/log_sinks.hpp"
#include "upm/log.hpp"
#include "upm/maps.hpp"

namespace upm::preload {

std::atomic<bool> g_exiting{false};
std::atomic<bool> g_log_on{false};

namespace {

std::atomic<int> g_inflight{0};
pthread_rwlock_t g_log_lock = PTHREAD_RWLOCK_INITIALIZER;
std::atomic<bool> g_log_usable{true};   // false in a child forked while the lock was busy

constexpr double kMiB = 1024.0 * 1024.0;

void on_exit_quiesce() {
    g_exiting.store(true);
    // Wait (bounded) for runs and log calls that are already inside library
    // code; new ones see g_exiting and back out.
    for (int i = 0; i < 200 && g_inflight.load() > 0; i++) {
        struct timespec ts = {0, 1000 * 1000};
        ::nanosleep(&ts, nullptr);
    }
}

// The .bss of every loaded object (main program, interpreter, libraries):
// where the loader (or the kernel, for the first two) mapped the zero-fill
// tail of each writable PT_LOAD segment, page-aligned as they map it.
// Nothing may be thrown through dl_iterate_phdr(), which holds the loader's
// lock: an allocation failure ends the walk and is reported.
struct BssWalk {
    std::vector<BssRange> ranges;
    bool failed = false;
};

int add_bss(struct dl_phdr_info* info, std::size_t, void* data) {
    auto* walk = static_cast<BssWalk*>(data);
    const std::uintptr_t page = page_size();
    auto page_up = [page](std::uintptr_t a) { return (a + page - 1) & ~(page - 1); };
    try {
        for (int i = 0; i < info->dlpi_phnum; i++) {
            const ElfW(Phdr)& ph = info->dlpi_phdr[i];
            if (ph.p_type != PT_LOAD || !(ph.p_flags & PF_W) || ph.p_memsz <= ph.p_filesz) continue;
            const std::uintptr_t seg = info->dlpi_addr + ph.p_vaddr;
            BssRange b{page_up(seg + ph.p_filesz), page_up(seg + ph.p_memsz)};
            if (b.end > b.start) walk->ranges.push_back(b);
        }
    } catch (...) {
        walk->failed = true;
        return 1;
    }
    return 0;
}

// Without a complete list (out of memory), nullopt: the classifier then
// falls back to its neighbour rule.
std::optional<std::vector<BssRange>> loaded_bss() {
    BssWalk walk;
    ::dl_iterate_phdr(add_bss, &walk);
    if (walk.failed) return std::nullopt;
    return std::move(walk.ranges);
}

}  // namespace

bool inflight_enter() {
    g_inflight.fetch_add(1);
    if (g_exiting.load()) {
        g_inflight.fetch_sub(1);
        return false;
    }
    return true;
}

void inflight_leave() { g_inflight.fetch_sub(1); }

void register_exit_handler() { std::atexit(on_exit_quiesce); }

bool log_enabled() { return g_log_on.load(std::memory_order_relaxed) && g_log_usable.load(std::memory_order_relaxed) && !g_exiting.load(); }

void log_msg(int lvl, const std::string& msg) {
    if (!log_enabled() || !inflight_enter()) return;
    if (::pthread_rwlock_rdlock(&g_log_lock) == 0) {
        try {
            upm::logger()->log(static_cast<spdlog::level::level_enum>(lvl), msg);
        } catch (...) {
        }
        ::pthread_rwlock_unlock(&g_log_lock);
    }
    inflight_leave();
}

bool log_lock_for_fork() {
    struct timespec deadline;
    ::clock_gettime(CLOCK_REALTIME, &deadline);
    deadline.tv_sec += 1;
    return ::pthread_rwlock_timedwrlock(&g_log_lock, &deadline) == 0;
}

void log_unlock_after_fork() { ::pthread_rwlock_unlock(&g_log_lock); }

void log_reset_in_child(bool usable) {
    g_log_lock = PTHREAD_RWLOCK_INITIALIZER;
    g_inflight.store(0);
    if (!usable) g_log_usable.store(false);
}

void say(std::string_view msg) {
    std::string line = "upm[" + std::to_string(::getpid()) + "]: ";
    line.append(msg);
    line.push_back('\n');
    write_all(STDERR_FILENO, line);
}

int run_policy(const char* trigger) {
    const Config& c = config();
    if (!c.active) return ENOSYS;
    const BackendKind kind = backend().kind;
    if (kind == BackendKind::none) return ENOSYS;
    if (!inflight_enter()) return 0;
    struct Leave {
        ~Leave() { inflight_leave(); }
    } leave;

    if (c.policy.trim) trim_before_advice(trigger);
    auto maps = read_maps(0);
    if (!maps) {
        int err = maps.error().err ? maps.error().err : EIO;
        log_msg(kError, fmt::format("trigger `{}`: reading /proc/self/maps: {}", trigger, maps.error().message));
        return err;
    }
    const std::optional<std::vector<BssRange>> bss = loaded_bss();
    std::vector<Decision> decisions = decide(c.policy, classify(*maps, bss ? &*bss : nullptr));

    const bool debug = c.log_debug && log_enabled();
    int first_err = 0;
    std::size_t advised = 0, failed = 0, vanished = 0;
    std::uint64_t bytes = 0;
    for (const Decision& d : decisions) {
        if (!d.advise) continue;
        if (g_exiting.load(std::memory_order_relaxed)) break;
        const Region& r = d.region.region;
        int rc = advise_range(kind, reinterpret_cast<void*>(r.start), r.size());
        if (rc == 0) {
            advised++;
            bytes += r.size();
        } else if (rc == ENOMEM) {
            vanished++;     // unmapped since maps was read: not an error
        } else {
            failed++;
            if (first_err == 0) first_err = rc;
        }
        if (debug || (rc != 0 && rc != ENOMEM))
            log_msg(rc != 0 && rc != ENOMEM ? kWarn : kDebug,
                    fmt::format("{:x}-{:x} {} `{}` class {}: {}{}", r.start, r.end, r.perms(), r.path,
                                to_string(d.region.cls), rc ? "advice failed: " : "advised",
                                rc ? std::strerror(rc) : ""));
    }
    log_msg(kInfo, fmt::format("advised {} regions, {:.1f} MiB (backend {}, trigger {}){}{}", advised,
                               static_cast<double>(bytes) / kMiB, to_string(kind), trigger,
                               failed ? fmt::format(", {} failed: {}", failed, std::strerror(first_err)) : "",
                               vanished ? fmt::format(", {} gone before advice", vanished) : ""));
    return first_err;
}

}  // namespace upm::preload
