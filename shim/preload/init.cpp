// Initialisation: the constructor of libupm-preload.so.
//
// Runs once per process image (again after exec, since LD_PRELOAD is
// inherited), before main().  It must stay well under a millisecond, so it
// only reads the environment and the policy file and arms the triggers;
// probing the kernel for a backend, reading maps and advising happen later
// on the worker thread (or in the first C API call).
//
// Environment:
//   UPM_DISABLE=1      do nothing at all (the C API returns ENOSYS)
//   UPM_POLICY=PATH    policy file; empty: the built-in default; unset: the
//                      file upm-hook's hooks.d mode mounts (/dev/upm/policy.json,
//                      a container without the variable) if it is a regular
//                      file, else the built-in default
//   UPM_BACKEND=auto|upm|ksm|none   overrides the policy's backend
//   UPM_DOMAIN=NAME    sharing domain (informational until the kernel takes one)
//   UPM_LOG=LEVEL      off|error|warn|info|debug|trace; overrides log_level
//   UPM_FAIL_CLOSED=1  treat any policy or backend error as fatal (exit 127)
//   UPM_STACK_RLIMIT   set by upm-exec under a per-domain layout (hardening.cpp)
//
// Secure-execution programs (set-user-ID, set-group-ID, file capabilities:
// getauxval(AT_SECURE) != 0) get none of this: the library does nothing at
// all in them, not even reading its variables -- they come from the
// unprivileged caller.  Every variable is read with secure_getenv(), which
// returns NULL in such a process, so that a future reader that forgets the
// AT_SECURE check still cannot be steered.
//
// Errors: fail open by default -- say why once on stderr (even when logging
// is off) and leave the program alone; fail closed (on_error "closed" or
// UPM_FAIL_CLOSED=1) -- say why and _exit(127) before main() runs.
#include <dlfcn.h>
#include <pthread.h>
#include <sys/auxv.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>

#include <fmt/format.h>

#include "preload.hpp"
#include "upm/classify.hpp"
#include "upm/log.hpp"
#include "upm/maps.hpp"

namespace upm::preload {

namespace {

// A secure-execution process (AT_SECURE): set-user-ID or set-group-ID, file
// capabilities, or an LSM transition.  The kernel sets it per exec.
bool secure_process() { return ::getauxval(AT_SECURE) != 0; }

pthread_once_t g_once = PTHREAD_ONCE_INIT;
Config* g_cfg = nullptr;    // written once inside g_once
pthread_once_t g_backend_once = PTHREAD_ONCE_INIT;
BackendState* g_backend = nullptr;     // written once inside g_backend_once

bool env_flag(const char* name) {
    const char* v = ::secure_getenv(name);
    return v && *v && std::strcmp(v, "0") != 0;
}

const char* env_str(const char* name) {
    const char* v = ::secure_getenv(name);
    return v && *v ? v : nullptr;
}

std::string_view basename_of(std::string_view p) {
    auto slash = p.rfind('/');
    return slash == std::string_view::npos ? p : p.substr(slash + 1);
}

// True when this library was loaded through LD_PRELOAD or /etc/ld.so.preload
// (then the policy's triggers are armed), false when a program linked or
// dlopen()ed it only for the C API.
bool loaded_by_preload() {
    std::string self = "libupm-preload.so";
    Dl_info info{};
    if (::dladdr(reinterpret_cast<void*>(&loaded_by_preload), &info) && info.dli_fname && *info.dli_fname)
        self = std::string(basename_of(info.dli_fname));
    auto listed = [&](std::string_view list) {
        std::size_t i = 0;
        while (i < list.size()) {
            std::size_t j = list.find_first_of(": \t\n", i);
            if (j == std::string_view::npos) j = list.size();
            if (j > i && basename_of(list.substr(i, j - i)) == self) return true;
            i = j + 1;
        }
        return false;
    };
    if (const char* env = ::secure_getenv("LD_PRELOAD"); env && listed(env)) return true;
    // /etc/ld.so.preload: read only when the environment did not say.
    FILE* f = std::fopen("/etc/ld.so.preload", "re");
    if (!f) return false;
    char buf[4096];
    std::size_t n = std::fread(buf, 1, sizeof buf - 1, f);
    std::fclose(f);
    return listed(std::string_view(buf, n));
}

std::string first_problem(const PolicyCheck& chk) {
    for (const auto& p : chk.problems) {
        if (p.warning()) continue;
        std::string s = p.where.empty() ? p.message : p.where + ": " + p.message;
        if (!p.fix.empty()) s += " (fix: " + p.fix + ")";
        return s;
    }
    return "unknown error";
}

// Reports a policy that cannot be used; returns normally only when failing open.
void policy_failed(const std::string& name, const PolicyCheck& chk, bool closed) {
    std::size_t n = chk.error_count();
    if (n == 0) n = 1;
    say(fmt::format("policy `{}`: {} error{}, {}: {}", name, n, n == 1 ? "" : "s",
                    closed ? "stopping the program (fail-closed)" : "dedup is off", first_problem(chk)));
    if (closed) ::_exit(127);
}

void setup_log(Config& c) {
    const char* lvl = env_str("UPM_LOG");
    std::string level = lvl ? lvl : c.policy.log_level;
    if (level.empty() || level == "off") return;
    upm::setup_logging("upm", level);
    c.log_on = true;
    c.log_debug = level == "debug" || level == "trace";
    g_log_on.store(true);
}

// Where upm-hook's createRuntime mode puts the policy (it cannot set UPM_POLICY).
constexpr const char* kHookPolicy = "/dev/upm/policy.json";

void init_once() {
    auto* c = new Config;
    g_cfg = c;
    // Set-user-ID and file-capability programs (AT_SECURE): glibc never
    // loads an LD_PRELOAD path into them, but it does load
    // /etc/ld.so.preload (upm-hook's hooks.d mode).  Stay inert there: the
    // caller's environment (UPM_POLICY, UPM_LOG, ...) must not steer a
    // privileged process, and its memory is not offered to merging.
    if (secure_process() || env_flag("UPM_DISABLE")) {
        c->disabled = true;
        return;
    }
    const bool force_closed = env_flag("UPM_FAIL_CLOSED");
    c->automatic = loaded_by_preload();

    const char* path = env_str("UPM_POLICY");
    struct stat hook_policy {};
    if (!path && !::secure_getenv("UPM_POLICY") && ::stat(kHookPolicy, &hook_policy) == 0 && S_ISREG(hook_policy.st_mode))
        path = kHookPolicy;
    if (path) {
        c->policy_name = path;
        // load_policy_file() reads only regular files (a FIFO cannot block us).
        PolicyCheck chk = load_policy_file(path);
        if (!chk.policy) {
            policy_failed(path, chk, force_closed || chk.declared_on_error == FailMode::closed);
            return;
        }
        c->policy = std::move(*chk.policy);
        setup_log(*c);
        for (const auto& p : chk.problems)
            if (p.warning()) log_msg(kWarn, fmt::format("policy `{}`: {}: {}", path, p.where, p.message));
    } else {
        c->policy_name = "default";
        c->policy = default_policy();
        setup_log(*c);
    }
    const bool closed = force_closed || c->policy.on_error == FailMode::closed;

    c->domain = c->policy.domain;
    if (const char* d = env_str("UPM_DOMAIN")) {
        if (valid_domain(d))
            c->domain = d;
        else
            log_msg(kWarn, fmt::format("UPM_DOMAIN `{}` is not a valid domain name, ignored", d));
    }

    c->closed = closed;
    c->choice = c->policy.backend;
    if (const char* b = env_str("UPM_BACKEND")) {
        if (std::strcmp(b, "none") == 0 || std::strcmp(b, "off") == 0) {
            log_msg(kInfo, "backend `none` (UPM_BACKEND=none): nothing is advised");
            return;
        }
        if (!parse_backend_choice(b, c->choice)) {
            say(fmt::format("UPM_BACKEND `{}` is not one of auto, upm, ksm, none: {}", b,
                            closed ? "stopping the program (fail-closed)" : "dedup is off"));
            if (closed) ::_exit(127);
            return;
        }
        c->choice_explicit = true;
    } else {
        c->choice_explicit = c->choice != BackendChoice::automatic;
    }
    c->active = true;
}

// Probes the kernel (a few syscalls on a scratch page and a sysfs read), so
// it runs on first use -- on the worker, or in the first C API call -- and in
// the constructor only when failing closed (the program must not start then).
void select_once() {
    auto* b = new BackendState;
    g_backend = b;
    const Config& c = *g_cfg;
    if (!c.active) {
        b->reason = c.disabled ? "disabled (UPM_DISABLE, or a set-user-ID or file-capability program)" : "inactive";
        return;
    }
    BackendInfo bi = select_backend(c.choice, everything_anonymous(c.policy));
    if (bi.kind == BackendKind::ksm_process) {
        // Once per process: every present and future anonymous mapping is
        // mergeable (inherited by fork and exec; the regions are still
        // advised too).  Only with no_new_privs (select_backend): the flag
        // would otherwise reach set-user-ID programs this process execs.
        if (int rc = enable_process_merge(); rc != 0) {
            bi.reason += fmt::format("; prctl(PR_SET_MEMORY_MERGE) failed: {}, advising regions instead",
                                     std::strerror(rc));
            bi.kind = BackendKind::ksm;
        }
    }
    b->kind = bi.kind;
    b->reason = bi.reason;
    if (bi.kind == BackendKind::none) {
        if (c.closed) {
            say(fmt::format("no backend: {}: stopping the program (fail-closed)", bi.reason));
            ::_exit(127);
        }
        log_msg(c.choice_explicit ? kWarn : kInfo, fmt::format("no backend: {}: dedup is off", bi.reason));
        return;
    }
    log_msg(kInfo, fmt::format("policy `{}`, backend `{}` ({}){}{}", c.policy_name, to_string(bi.kind), bi.reason,
                               c.domain.empty() ? "" : fmt::format(", domain `{}`", c.domain),
                               c.automatic ? "" : ", triggers off (not loaded through LD_PRELOAD)"));
}

}  // namespace

const Config& config() {
    ::pthread_once(&g_once, init_once);
    return *g_cfg;
}

const BackendState& backend() {
    (void)config();
    ::pthread_once(&g_backend_once, select_once);
    return *g_backend;
}

// No function-local static (its guard is not fork-safe); sysconf() reads a
// value the loader keeps.
std::size_t page_size() {
    long p = ::sysconf(_SC_PAGESIZE);
    return p > 0 ? static_cast<std::size_t>(p) : std::size_t{4096};
}

const char* backend_name(BackendKind k) {
    return to_string(k).data();  // views of string literals: NUL-terminated
}

}  // namespace upm::preload

namespace {

// Creates the statics with destructors that the worker will use, so that
// their destructors are registered before our exit handler and therefore
// run after it.  (maps/classify/decide have none; default_policy() was
// built by init; the logger only exists when logging is on.)
void warm_up(const upm::preload::Config& c) {
    if (c.log_on) (void)upm::logger();
}

}  // namespace

// Called by the constructor in ctor.c, which the build places last in the
// library's .init_array (see CMakeLists.txt): by then every static of
// libupm-inproc, spdlog and the static libstdc++ is constructed, and their
// destructors are registered before our exit handler, so they run after it.
extern "C" __attribute__((visibility("hidden"))) void upm_preload_start(void) {
    try {
        // Set-user-ID and file-capability programs: nothing at all, not even
        // the stack size from UPM_STACK_RLIMIT (an unprivileged caller set a
        // set-uid-root program's thread stacks to 16 KiB through it).
        // config() records the process as disabled for the C API.
        if (::getauxval(AT_SECURE) != 0) {
            (void)upm::preload::config();
            return;
        }
        upm::preload::restore_thread_stack_default();   // before main() can start threads
        const auto& c = upm::preload::config();
        if (!c.active) return;
        if (c.closed) (void)upm::preload::backend();   // may _exit(127) before main()
        warm_up(c);
        upm::preload::register_exit_handler();
        upm::preload::arm_triggers(c);
    } catch (...) {
        // Never let an exception escape into the dynamic loader.
    }
}
