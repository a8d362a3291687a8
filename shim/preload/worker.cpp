// The worker thread, the trigger timeline and the fork handlers.
//
// One worker thread per process does every automatic run.  It sleeps on a
// POSIX semaphore (sem_clockwait on CLOCK_MONOTONIC) until the next timed
// trigger or until somebody posts it: the signal handler (sem_post is
// async-signal-safe), the dlopen() wrapper, or quiesce_worker().  A
// semaphore rather than an eventfd or a pipe: no file descriptor that a
// program closing "all other fds" could close or -- worse -- reuse for one
// of its own files, and nothing to leak across exec.  The worker blocks
// every signal, so the program's signals are never delivered to it.
//
// Timeline: times are measured from the origin (the constructor, or the
// fork for a child).  "start" runs kStartDelayMs (10 ms) after the origin
// (about when main() starts), each delay once, periodic runs at origin +
// k*interval while k*interval <= duration (0 = forever), then every
// then_interval_ms when set (upm::next_periodic_ms); missed periods are
// skipped, not replayed.  The worker ends when no timed trigger is left and
// no signal trigger is armed; the dlopen() wrapper starts it again when
// needed.
//
// Fork: the child has only the forking thread.  The prepare handler takes
// g_ctl and the log lock (1 s timeout each), so the child inherits them in a
// known state and re-initialises them; the semaphore is re-initialised.  The
// child does not repeat "start" (its regions were advised in the parent and
// the kernel keeps VM_MERGEABLE across fork); its delays and periodic runs
// restart at the fork, and a worker is started in the child only if such
// timed triggers (or a signal trigger) exist.  vfork() and posix_spawn()
// children run no fork handlers and nothing of upm runs in them before exec.
#include <dlfcn.h>
#include <link.h>
#include <pthread.h>
#include <semaphore.h>
#include <signal.h>
#include <sys/personality.h>
#include <sys/prctl.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <climits>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

#include <fmt/format.h>

#include "preload.hpp"

namespace upm::preload {

namespace {

constexpr std::size_t kWorkerStack = 512 * 1024;
// "start" fires this long after the constructor: main() has begun by then,
// and a process that is done sooner (ls, cat, a shell helper) pays for
// nothing but the thread.
constexpr std::int64_t kStartDelayMs = 10;

// ---- state -----------------------------------------------------------------

pthread_mutex_t g_ctl = PTHREAD_MUTEX_INITIALIZER;     // protects the three below
pthread_t g_worker;
bool g_running = false;         // a worker thread exists and has not decided to end
bool g_joinable = false;        // g_worker must be joined before starting another

sem_t g_wake;
std::atomic<bool> g_stop{false};
std::atomic<bool> g_pending_signal{false};
std::atomic<bool> g_pending_dlopen{false};
std::atomic<bool> g_armed{false};           // arm_triggers() ran with automatic triggers
std::atomic<bool> g_dlopen_armed{false};
std::atomic<bool> g_signal_armed{false};
std::atomic<bool> g_passive{false};         // fork child that could not take the locks: do nothing

// The timeline: read and written by the worker, or by others only when no
// worker exists (constructor, fork child, after a successful quiesce).
struct Timeline {
    std::int64_t origin_ns = 0;             // CLOCK_MONOTONIC
    bool start_pending = false;
    std::size_t next_delay = 0;             // index into g_delays
    std::int64_t periodic_after = 0;        // periodic ticks up to this time (ms) are handled
};
Timeline g_tl;
std::vector<std::int64_t>* g_delays = nullptr;     // sorted, ms; never freed
Triggers* g_periodic = nullptr;     // the policy's triggers, for the periodic schedule; never freed
unsigned long long g_last_adds = 0;     // dl_iterate_phdr's load counter at the last dlopen run

std::atomic<pid_t> g_worker_tid{0};   // kernel thread id of the current worker

// The process whose worker this is: set by arm_triggers() and in the fork
// child.  A vfork() child shares our memory but is another process; the
// wrappers of interpose.cpp must neither stop the parent's worker from
// there nor start a thread in it (quiesce_worker/resume_worker do nothing).
std::atomic<pid_t> g_owner_pid{0};
// Wrappers between quiesce_worker() and resume_worker() (g_ctl): the worker
// restarts only when the last one resumes.
int g_holds = 0;

bool in_owner_process() { return ::getpid() == g_owner_pid.load(std::memory_order_relaxed); }

bool g_fork_ctl_locked = false;
bool g_fork_log_locked = false;

std::int64_t mono_ns() {
    struct timespec ts;
    ::clock_gettime(CLOCK_MONOTONIC, &ts);
    return static_cast<std::int64_t>(ts.tv_sec) * 1000000000LL + ts.tv_nsec;
}

std::int64_t elapsed_ms() { return (mono_ns() - g_tl.origin_ns) / 1000000LL; }

// The time (ms from origin) of the next timed trigger, or INT64_MAX.
std::int64_t next_timed() {
    std::int64_t next = INT64_MAX;
    if (g_tl.start_pending) return kStartDelayMs;
    if (g_delays && g_tl.next_delay < g_delays->size()) next = (*g_delays)[g_tl.next_delay];
    if (g_periodic) next = std::min(next, next_periodic_ms(*g_periodic, g_tl.periodic_after));
    return next;
}

bool needs_worker() {
    return g_armed && !g_passive &&
           (next_timed() != INT64_MAX || g_signal_armed || g_pending_dlopen.load() || g_pending_signal.load());
}

// ---- dlopen synchronisation -------------------------------------------------

int count_adds(struct dl_phdr_info* info, std::size_t size, void* data) {
    if (size >= offsetof(struct dl_phdr_info, dlpi_adds) + sizeof info->dlpi_adds)
        *static_cast<unsigned long long*>(data) = info->dlpi_adds;
    return 1;   // the counter is the same in every entry: stop after the first
}

unsigned long long loads_so_far() {
    unsigned long long adds = 0;
    ::dl_iterate_phdr(count_adds, &adds);
    return adds;
}

// The dlopen() wrapper wakes the worker before the real dlopen() runs (it
// must tail-call it, see interpose.cpp).  glibc holds its loader lock for
// the whole dlopen(), constructors included, and dladdr() takes the same
// lock, so dladdr() returns only once a dlopen() in progress has finished;
// the load counter tells whether it has started at all.  Bounded: ~60 ms.
void wait_for_loads() {
    for (int attempt = 0; attempt < 5 && !g_stop.load(); attempt++) {
        Dl_info info;
        (void)::dladdr(reinterpret_cast<void*>(&wait_for_loads), &info);
        if (loads_so_far() != g_last_adds) break;
        struct timespec ts = {0, (2L << attempt) * 1000000L};
        ::nanosleep(&ts, nullptr);
    }
    g_last_adds = loads_so_far();
}

// ---- the worker ---------------------------------------------------------------

// Without address-space randomisation (a `fixed` or `shared-per-domain`
// layout, docs/hardening.md) the worker's first steps -- the backend probe's
// scratch page and the malloc arena glibc creates for the thread -- would
// otherwise map memory at a moment that depends on scheduling, and every
// later mapping of the program would move with them.  The constructor then
// waits (at most 50 ms) until they are done, so that they happen at the same
// point of every instance's start-up.
sem_t g_warm;
std::atomic<bool> g_warm_wanted{false};

void warm_done() {
    if (g_warm_wanted.exchange(false)) ::sem_post(&g_warm);
}

void* worker_main(void*) {
    ::prctl(PR_SET_NAME, "upm-worker", 0, 0, 0);
    g_worker_tid.store(::gettid());
    const BackendKind kind = backend().kind;
    ::free(::malloc(64));   // the thread's malloc arena, now
    warm_done();
    if (kind == BackendKind::none) {
        // Nothing can be advised: disarm everything and end.
        ::pthread_mutex_lock(&g_ctl);
        g_running = false;
        g_armed = false;
        g_dlopen_armed = false;
        ::pthread_mutex_unlock(&g_ctl);
        return nullptr;
    }
    for (;;) {
        if (g_stop.load()) break;
        const char* why = nullptr;
        std::int64_t now = elapsed_ms();
        if (g_tl.start_pending && now >= kStartDelayMs) {
            g_tl.start_pending = false;
            why = "start";
        }
        while (g_delays && g_tl.next_delay < g_delays->size() && (*g_delays)[g_tl.next_delay] <= now) {
            g_tl.next_delay++;
            if (!why) why = "delay";
        }
        if (g_periodic && next_periodic_ms(*g_periodic, g_tl.periodic_after) <= now) {
            g_tl.periodic_after = now;  // one run for however many ticks were missed
            if (!why) why = "periodic";
        }
        if (g_pending_signal.exchange(false)) why = "signal";
        if (g_pending_dlopen.exchange(false)) {
            wait_for_loads();
            why = "dlopen";
        }
        if (why) {
            try {
                (void)run_policy(why);
            } catch (...) {
            }
            continue;   // re-evaluate: time passed during the run
        }

        std::int64_t next = next_timed();
        if (next == INT64_MAX && !g_signal_armed) {
            ::pthread_mutex_lock(&g_ctl);
            bool more = g_pending_dlopen.load() || g_pending_signal.load() || g_stop.load();
            if (!more) g_running = false;
            ::pthread_mutex_unlock(&g_ctl);
            if (!more) return nullptr;
            continue;
        }
        int rc;
        if (next == INT64_MAX) {
            rc = ::sem_wait(&g_wake);
        } else {
            std::int64_t at = g_tl.origin_ns + next * 1000000LL;
            struct timespec ts = {static_cast<time_t>(at / 1000000000LL), static_cast<long>(at % 1000000000LL)};
            rc = ::sem_clockwait(&g_wake, CLOCK_MONOTONIC, &ts);
        }
        (void)rc;   // timeout, EINTR or a post: the loop looks at the flags and the clock
        while (::sem_trywait(&g_wake) == 0) {
        }
    }
    ::pthread_mutex_lock(&g_ctl);
    g_running = false;
    ::pthread_mutex_unlock(&g_ctl);
    return nullptr;
}

// Starts the worker; g_ctl held (or single-threaded).
void spawn_locked() {
    if (g_running || g_passive) return;
    if (g_joinable) {
        ::pthread_join(g_worker, nullptr);  // it has decided to end: returns at once
        g_joinable = false;
    }
    pthread_attr_t attr;
    if (::pthread_attr_init(&attr) != 0) return;
    ::pthread_attr_setstacksize(&attr, kWorkerStack);
    // Start with every signal blocked: the program's signals must never be
    // delivered to our thread (glibc keeps its internal ones deliverable).
    sigset_t all, old;
    ::sigfillset(&all);
    ::pthread_sigmask(SIG_SETMASK, &all, &old);
    int rc = ::pthread_create(&g_worker, &attr, worker_main, nullptr);
    ::pthread_sigmask(SIG_SETMASK, &old, nullptr);
    ::pthread_attr_destroy(&attr);
    if (rc == 0) {
        g_running = true;
        g_joinable = true;
    } else {
        log_msg(kWarn, fmt::format("cannot start the worker thread: {}: automatic triggers are off",
                                   std::strerror(rc)));
    }
}

// ---- fork handlers ------------------------------------------------------------

void fork_prepare() {
    struct timespec deadline;
    ::clock_gettime(CLOCK_REALTIME, &deadline);
    deadline.tv_sec += 1;
    g_fork_ctl_locked = ::pthread_mutex_timedlock(&g_ctl, &deadline) == 0;
    g_fork_log_locked = log_lock_for_fork();
}

void fork_parent() {
    if (g_fork_log_locked) log_unlock_after_fork();
    if (g_fork_ctl_locked) ::pthread_mutex_unlock(&g_ctl);
}

void fork_child() {
    g_owner_pid.store(::getpid());
    g_holds = 0;
    const bool usable = g_fork_ctl_locked && g_fork_log_locked;
    ::pthread_mutex_init(&g_ctl, nullptr);
    log_reset_in_child(g_fork_log_locked);
    ::sem_init(&g_wake, 0, 0);
    g_running = false;
    g_joinable = false;     // the parent's worker does not exist here
    g_stop.store(false);
    g_pending_signal.store(false);
    g_pending_dlopen.store(false);
    if (!usable) {
        g_passive = true;
        return;
    }
    g_tl.origin_ns = mono_ns();
    g_tl.start_pending = false;
    g_tl.next_delay = 0;
    g_tl.periodic_after = 0;
    if (needs_worker()) spawn_locked();
}

}  // namespace

void arm_triggers(const Config& c) {
    g_owner_pid.store(::getpid());
    ::sem_init(&g_wake, 0, 0);
    ::pthread_atfork(fork_prepare, fork_parent, fork_child);
    if (!c.automatic) return;

    const Triggers& t = c.policy.triggers;
    g_delays = new std::vector<std::int64_t>;
    for (auto d : t.delays) g_delays->push_back(d.count());
    std::sort(g_delays->begin(), g_delays->end());
    if (t.periodic_interval.count() > 0) g_periodic = new Triggers(t);
    g_tl.origin_ns = mono_ns();
    g_tl.start_pending = t.at_start;
    g_dlopen_armed = t.after_dlopen;
    if (g_dlopen_armed) g_last_adds = loads_so_far();
    if (t.signal) g_signal_armed = install_signal_trigger(t.signal);
    g_armed = true;
    if (needs_worker()) {
        int pers = ::personality(0xffffffff);
        const bool deterministic = pers != -1 && (pers & ADDR_NO_RANDOMIZE);
        if (deterministic) {
            ::sem_init(&g_warm, 0, 0);
            g_warm_wanted.store(true);
        }
        ::pthread_mutex_lock(&g_ctl);
        spawn_locked();
        const bool started = g_running;
        ::pthread_mutex_unlock(&g_ctl);
        if (deterministic && started) {
            struct timespec ts;
            ::clock_gettime(CLOCK_MONOTONIC, &ts);
            ts.tv_nsec += 50 * 1000000L;
            if (ts.tv_nsec >= 1000000000L) {
                ts.tv_sec++;
                ts.tv_nsec -= 1000000000L;
            }
            while (::sem_clockwait(&g_warm, CLOCK_MONOTONIC, &ts) != 0 && errno == EINTR) {
            }
        }
        g_warm_wanted.store(false);
    }
}

void notify_dlopen() {
    if (!g_dlopen_armed || g_passive) return;
    g_pending_dlopen.store(true);
    if (::pthread_mutex_lock(&g_ctl) != 0) return;
    if (g_running)
        ::sem_post(&g_wake);
    else if (!g_stop.load())
        spawn_locked();
    ::pthread_mutex_unlock(&g_ctl);
}

void notify_signal_async() {
    g_pending_signal.store(true);
    ::sem_post(&g_wake);
}

bool quiesce_worker(int timeout_ms) {
    if (!in_owner_process()) return true;   // a vfork() child: not our thread to stop
    ::pthread_mutex_lock(&g_ctl);
    g_holds++;
    if (!g_joinable) {
        g_stop.store(true);     // keeps notify_dlopen() from starting one meanwhile
        ::pthread_mutex_unlock(&g_ctl);
        return true;
    }
    g_stop.store(true);
    ::sem_post(&g_wake);
    pthread_t t = g_worker;
    ::pthread_mutex_unlock(&g_ctl);

    struct timespec deadline;
    ::clock_gettime(CLOCK_REALTIME, &deadline);
    deadline.tv_sec += timeout_ms / 1000;
    deadline.tv_nsec += (timeout_ms % 1000) * 1000000L;
    if (deadline.tv_nsec >= 1000000000L) {
        deadline.tv_sec++;
        deadline.tv_nsec -= 1000000000L;
    }
    if (::pthread_timedjoin_np(t, nullptr, &deadline) != 0) return false;
    ::pthread_mutex_lock(&g_ctl);
    g_joinable = false;
    g_running = false;
    ::pthread_mutex_unlock(&g_ctl);
    // pthread_join() returns when the kernel clears the thread's tid, which
    // is slightly before the thread leaves the thread group (what
    // unshare(CLONE_NEWUSER) checks).  Wait until its /proc entry is gone
    // (at most 100 ms; without /proc there is nothing to wait for).
    if (pid_t tid = g_worker_tid.exchange(0); tid > 0) {
        char path[64];
        std::snprintf(path, sizeof path, "/proc/self/task/%d", static_cast<int>(tid));
        for (int i = 0; i < 5000 && ::access(path, F_OK) == 0; i++) {
            struct timespec ts = {0, 20000};
            ::nanosleep(&ts, nullptr);
        }
    }
    return true;
}

void resume_worker() {
    if (!in_owner_process()) return;
    ::pthread_mutex_lock(&g_ctl);
    if (g_holds > 0) g_holds--;
    if (g_holds == 0) {
        g_stop.store(false);
        // The new thread is a clone of the calling one: it gets the
        // program's credentials as they are now (uid, gid, groups,
        // capabilities, securebits), whatever per-thread changes the
        // program made meanwhile.
        if (!g_running && needs_worker()) spawn_locked();
    }
    ::pthread_mutex_unlock(&g_ctl);
}

}  // namespace upm::preload
