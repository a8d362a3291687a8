// Backend probes and selection; see backend.hpp.
//
// Each probe maps one private anonymous page, asks the kernel, and undoes
// everything it did (MADV_UNMERGEABLE, munmap), so that probing leaves no
// trace in the process.  Results are cached per process in atomics, not in
// function-local statics: a static's initialisation guard held by one
// thread at fork() stays "in progress" in the child forever, and the
// child's first probe would block on it (the preload's worker probes while
// the program may fork).  Two threads may probe at once; both get the same
// answer.  After fork the child inherits the answer, which stays true.
#include "upm/backend.hpp"

#include <linux/upm.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>

#include "upm/io.hpp"

#ifndef MADV_MERGEABLE
#define MADV_MERGEABLE 12
#define MADV_UNMERGEABLE 13
#endif
#ifndef PR_SET_MEMORY_MERGE
#define PR_SET_MEMORY_MERGE 67
#define PR_GET_MEMORY_MERGE 68
#endif
#ifndef PR_GET_NO_NEW_PRIVS
#define PR_GET_NO_NEW_PRIVS 39
#endif

namespace upm {

namespace {

// madvise(advice) on a scratch page; true when the kernel accepts it.
bool probe_madvise(int advice) {
    long page = ::sysconf(_SC_PAGESIZE);
    if (page <= 0) page = 4096;
    void* p = ::mmap(nullptr, static_cast<std::size_t>(page), PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS,
                     -1, 0);
    if (p == MAP_FAILED) return false;
    int saved = errno;
    bool ok = ::madvise(p, static_cast<std::size_t>(page), advice) == 0;
    if (ok) ::madvise(p, static_cast<std::size_t>(page), MADV_UNMERGEABLE);
    ::munmap(p, static_cast<std::size_t>(page));
    errno = saved;
    return ok;
}

// A probe's answer, computed at most a few times (racing threads) and never
// under a lock or an initialisation guard (see the top of the file).
constexpr int kUnknown = 0, kNo = 1, kYes = 2;

template <typename Probe>
bool cached(std::atomic<int>& cache, Probe probe) {
    int v = cache.load(std::memory_order_acquire);
    if (v == kUnknown) {
        v = probe() ? kYes : kNo;
        cache.store(v, std::memory_order_release);
    }
    return v == kYes;
}

}  // namespace

std::string_view to_string(BackendKind k) {
    switch (k) {
        case BackendKind::upm: return "upm";
        case BackendKind::ksm: return "ksm";
        case BackendKind::ksm_process: return "ksm-process";
        case BackendKind::none: return "none";
    }
    return "none";
}

bool kernel_has_madv_upm() {
    static std::atomic<int> cache{kUnknown};
    return cached(cache, [] { return probe_madvise(MADV_UPM); });
}

bool kernel_has_ksm() {
    static std::atomic<int> cache{kUnknown};
    return cached(cache, [] { return probe_madvise(MADV_MERGEABLE); });
}

bool kernel_has_memory_merge_prctl() {
    static std::atomic<int> cache{kUnknown};
    return cached(cache, [] {
        int saved = errno;
        bool ok = ::prctl(PR_GET_MEMORY_MERGE, 0, 0, 0, 0) >= 0;
        errno = saved;
        return ok;
    });
}

bool no_new_privs() {
    int saved = errno;
    bool set = ::prctl(PR_GET_NO_NEW_PRIVS, 0, 0, 0, 0) == 1;
    errno = saved;
    return set;
}

// A upm kernel refuses MADV_UPM (EPERM) until root opts the node in; then
// the reason says so and how to enable it.
static std::string upm_refused() {
    auto text = detail::read_file("/sys/kernel/mm/upm/enabled", detail::kMaxSmallFile);
    if (!text || detail::trim(*text) != "0") return "";
    return "the kernel refused MADV_UPM: /sys/kernel/mm/upm/enabled is 0 (a node opt-in; root enables it with "
           "`echo 1 > /sys/kernel/mm/upm/enabled`)";
}

bool ksmd_running() {
    auto text = detail::read_file("/sys/kernel/mm/ksm/run", detail::kMaxSmallFile);
    return text && detail::trim(*text) == "1";
}

BackendInfo select_backend(BackendChoice choice, bool everything_anonymous) {
    try {
        auto ksm = [&](std::string why) -> BackendInfo {
            if (!ksmd_running())
                why += "; ksmd is stopped (/sys/kernel/mm/ksm/run is not 1): pages are marked but not merged "
                       "until it runs";
            if (everything_anonymous && kernel_has_memory_merge_prctl()) {
                // PR_SET_MEMORY_MERGE is inherited across fork *and exec*,
                // set-user-ID execs included: without no_new_privs, a
                // set-uid-root program started by this process would run
                // mergeable (its heap open to KSM timing probes).  Regions
                // advised with MADV_MERGEABLE lose the flag at exec.
                if (no_new_privs())
                    return {BackendKind::ksm_process,
                            why + "; the whole process is made mergeable (PR_SET_MEMORY_MERGE: no_new_privs is set, "
                                  "so no program it execs can gain privileges with the flag)"};
                return {BackendKind::ksm,
                        why + "; regions are advised one by one (MADV_MERGEABLE), not the whole process "
                              "(PR_SET_MEMORY_MERGE): the process does not have no_new_privs, and the whole-process "
                              "flag would survive the exec of set-user-ID programs"};
            }
            return {BackendKind::ksm, why};
        };
        switch (choice) {
            case BackendChoice::automatic:
                if (kernel_has_madv_upm()) return {BackendKind::upm, "kernel has MADV_UPM: merging synchronously"};
                if (kernel_has_ksm()) {
                    auto refused = upm_refused();
                    if (!refused.empty()) return ksm(refused + ": using KSM (ksmd merges in the background)");
                    return ksm("kernel has no MADV_UPM: using KSM (ksmd merges in the background)");
                }
                return {BackendKind::none,
                        "kernel has no KSM (CONFIG_KSM) and no MADV_UPM: nothing will be merged (boot a kernel "
                        "with CONFIG_KSM=y or the upm patch)"};
            case BackendChoice::upm:
                if (kernel_has_madv_upm()) return {BackendKind::upm, "kernel has MADV_UPM: merging synchronously"};
                if (auto refused = upm_refused(); !refused.empty())
                    return {BackendKind::none, "policy asks for backend `upm` but " + refused +
                                                   ": nothing will be merged (use backend `auto` to fall back to KSM)"};
                return {BackendKind::none,
                        "policy asks for backend `upm` but the kernel has no MADV_UPM: nothing will be merged "
                        "(use backend `auto` to fall back to KSM)"};
            case BackendChoice::ksm:
                if (kernel_has_ksm()) return ksm("policy asks for backend `ksm`");
                return {BackendKind::none,
                        "policy asks for backend `ksm` but the kernel has no KSM (CONFIG_KSM): nothing will be "
                        "merged"};
        }
    } catch (...) {
    }
    return {BackendKind::none, "backend selection failed"};
}

int advise_range(BackendKind kind, void* addr, std::size_t len) {
    int advice = 0;
    switch (kind) {
        case BackendKind::upm: advice = MADV_UPM; break;
        case BackendKind::ksm:
        case BackendKind::ksm_process: advice = MADV_MERGEABLE; break;
        case BackendKind::none: return ENOSYS;
    }
    int saved = errno;
    int rc = ::madvise(addr, len, advice) == 0 ? 0 : errno;
    errno = saved;
    return rc;
}

int enable_process_merge() {
    if (!no_new_privs()) return EPERM;     // see select_backend()
    int saved = errno;
    int rc = ::prctl(PR_SET_MEMORY_MERGE, 1, 0, 0, 0) == 0 ? 0 : errno;
    errno = saved;
    return rc;
}

}  // namespace upm
