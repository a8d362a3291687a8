// Internal interface of libupm-preload.so (not installed).
//
// The library is split by responsibility:
//   init.cpp       the constructor: configuration from the environment, the
//                  policy, the backend; fail-open / fail-closed
//   run.cpp        one policy run: maps -> classify -> decide -> advise, and
//                  the logging gate every other file uses
//   worker.cpp     the worker thread, the trigger timeline, fork handling
//   signal.cpp     the signal trigger (async-signal-safe handler)
//   interpose.cpp  dlopen(), unshare(), setns() wrappers
//   api.cpp        the public C API (upm.h)
//
// Threads and locks (outermost first; a thread never takes an earlier lock
// while holding a later one):
//   g_ctl       (worker.cpp) pthread mutex: the worker's life cycle (running,
//               joinable, handle).  Held for microseconds; never while
//               logging or advising.
//   g_log_lock  (run.cpp) pthread rwlock: readers are log calls (libupm-inproc's
//               logger mutex and whatever spdlog locks live inside); the
//               writer is the fork prepare handler, so no other thread holds
//               those locks at fork and the child can log.
// Madvise calls and /proc reads run under no lock at all.  The fork prepare
// handler takes both with a timeout (1 s); if it cannot, the child is marked
// "tainted" and stays passive (no logging, no worker) instead of risking a
// deadlock.
//
// Exit: an atexit handler registered at the end of the constructor (so it
// runs before the destructors of the statics the library created) sets
// g_exiting and waits (at most 200 ms) for in-flight runs and log calls; they
// check g_exiting and stop touching library state.
#pragma once

#include <atomic>
#include <cstddef>
#include <string>
#include <string_view>

#include "upm/backend.hpp"
#include "upm/policy.hpp"

namespace upm::preload {

// Immutable once published by init (allocated once, never freed, so that
// threads still running at exit never see it destroyed).
struct Config {
    bool disabled = false;      // UPM_DISABLE=1
    bool active = false;        // valid policy, not disabled: advice may be possible
    bool automatic = false;     // loaded through LD_PRELOAD: arm the policy's triggers
    bool log_on = false;        // a log level other than "off" was asked for
    bool log_debug = false;     // ... and it is debug or trace (per-region lines)
    Policy policy;
    std::string policy_name;    // path of the policy file, or "default"
    BackendChoice choice = BackendChoice::automatic;  // policy's, or UPM_BACKEND
    bool choice_explicit = false;   // upm or ksm asked for by name (missing: warn)
    bool closed = false;        // fail closed (on_error "closed" or UPM_FAIL_CLOSED=1)
    std::string domain;         // UPM_DOMAIN or the policy's domain (informational)
};

// The backend, selected on first use (see select_once() in init.cpp).
struct BackendState {
    BackendKind kind = BackendKind::none;
    std::string reason;
};
const BackendState& backend();

// Runs the one-time initialisation (idempotent, thread-safe) and returns the
// configuration.  May call _exit(127) when the policy fails closed.
const Config& config();

// Registers the fork handlers and, when the library was preloaded, arms the
// triggers the policy asks for (constructor only).
void arm_triggers(const Config& c);

// ---- run.cpp -------------------------------------------------------------

// Applies the policy to the whole process on the calling thread.  `trigger`
// names the cause for the log ("start", "dlopen", "api", ...).
// Returns 0 or the errno value of the first failure; ENOSYS when inactive.
int run_policy(const char* trigger);

// Logging gate: true when logging is on and the process is not exiting.
bool log_enabled();
// Logs one message at spdlog level `lvl` (0 trace .. 6 off) if enabled.
void log_msg(int lvl, const std::string& msg);
enum : int { kTrace = 0, kDebug = 1, kInfo = 2, kWarn = 3, kError = 4 };

// Writes "upm[PID]: " + msg + "\n" to stderr with write(2), whatever the
// log level (for the messages that must always be seen).
void say(std::string_view msg);

// In-flight accounting for exit (see above).  enter() returns false when the
// process is exiting; then the caller must not touch library state.
bool inflight_enter();
void inflight_leave();
extern std::atomic<bool> g_exiting;
extern std::atomic<bool> g_log_on;     // set by init once the logger exists
void register_exit_handler();
// The lock taken by the fork handlers around log calls.
bool log_lock_for_fork();       // prepare: true if taken
void log_unlock_after_fork();   // parent
void log_reset_in_child(bool usable);   // child

// ---- worker.cpp ----------------------------------------------------------

// Wakes the worker after a dlopen() (spawning it again if it had ended).
void notify_dlopen();
// Wakes the worker from the signal handler (async-signal-safe).
void notify_signal_async();
// Stops the worker and waits for it (at most timeout_ms); true when no
// worker thread is left.  resume_worker() restarts it if triggers remain
// (after the last of overlapping quiesce/resume pairs), as a clone of the
// calling thread.  Both do nothing in a vfork() child.
bool quiesce_worker(int timeout_ms);
void resume_worker();

// ---- signal.cpp ----------------------------------------------------------

// Installs the handler for the policy's signal if the program left the
// signal at SIG_DFL; returns true when installed.
bool install_signal_trigger(int signo);

// ---- hardening.cpp ---------------------------------------------------------

// policy `trim`: returns the allocator's free memory to the kernel and logs
// how much anonymous resident memory that released.
void trim_before_advice(const char* trigger);
// Under a per-domain layout (UPM_STACK_RLIMIT set by the launcher): gives
// glibc's threads the default stack size of the original RLIMIT_STACK.
void restore_thread_stack_default();

// ---- helpers ---------------------------------------------------------------

std::size_t page_size();
const char* backend_name(BackendKind k);     // static strings for the C API

}  // namespace upm::preload
