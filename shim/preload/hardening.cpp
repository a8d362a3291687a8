// The preload's part of the hardening settings (docs/hardening.md):
//
// - trim: return the allocator's free memory to the kernel before a run
//   advises (policy key `trim`), and measure what that released;
// - the thread stack size under a per-domain layout: the launcher raised
//   the soft RLIMIT_STACK before exec to move the mmap base, and glibc
//   derives its default thread stack size from RLIMIT_STACK while the
//   dynamic loader starts the program (__libc_early_init, before any
//   constructor of ours).  The launcher exports the value the program would
//   have had as UPM_STACK_RLIMIT; here the default is set back to what glibc
//   would have chosen from it, with pthread_setattr_default_np().  The rlimit
//   itself stays raised: a program this one execs must get the domain's
//   layout too (restoring it would give descendants the `fixed` layout,
//   identical in every domain).
#include <dlfcn.h>
#include <fcntl.h>
#include <malloc.h>
#include <pthread.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string_view>

#include <fmt/format.h>

#include "preload.hpp"

namespace upm::preload {

namespace {

// Anonymous resident memory (RssAnon) in bytes, from /proc/self/statm
// (resident - shared): one small read, no allocation.
std::int64_t anon_resident() {
    int fd = ::open("/proc/self/statm", O_RDONLY | O_CLOEXEC);
    if (fd < 0) return -1;
    char buf[128];
    ssize_t n = ::read(fd, buf, sizeof buf - 1);
    ::close(fd);
    if (n <= 0) return -1;
    buf[n] = '\0';
    unsigned long long size = 0, resident = 0, shared = 0;
    if (std::sscanf(buf, "%llu %llu %llu", &size, &resident, &shared) != 3) return -1;
    return static_cast<std::int64_t>((resident - shared) * page_size());
}

using mallctl_fn = int (*)(const char*, void*, std::size_t*, void*, std::size_t);
using void_fn = void (*)();
using mi_collect_fn = void (*)(bool);

// Which allocator serves malloc() in this process, and trims it.  Returns
// the allocator's name, or nullptr when none we know of is in use.
const char* trim_allocator(std::string& detail) {
    if (auto mallctl = reinterpret_cast<mallctl_fn>(::dlsym(RTLD_DEFAULT, "mallctl"))) {
        // jemalloc: purge every arena (MALLCTL_ARENAS_ALL = 4096).
        int rc = mallctl("arena.4096.purge", nullptr, nullptr, nullptr, 0);
        if (rc != 0) detail = fmt::format("mallctl(arena.4096.purge): {}", std::strerror(rc));
        return "jemalloc";
    }
    if (auto release = reinterpret_cast<void_fn>(::dlsym(RTLD_DEFAULT, "MallocExtension_ReleaseFreeMemory"))) {
        release();  // gperftools tcmalloc
        return "tcmalloc";
    }
    if (auto collect = reinterpret_cast<mi_collect_fn>(::dlsym(RTLD_DEFAULT, "mi_collect"))) {
        collect(true);  // mimalloc
        return "mimalloc";
    }
    // glibc: malloc() is libc.so.6's (a non-PIE executable's PLT entry is
    // the canonical address of an imported function: dladdr names the
    // executable then).  When another object defines malloc (an allocator
    // we do not know), malloc_trim() still runs -- it only touches glibc's
    // arenas, harmlessly -- and the report names that object.
    Dl_info info{};
    void* m = ::dlsym(RTLD_DEFAULT, "malloc");
    std::string lib = m && ::dladdr(m, &info) && info.dli_fname ? info.dli_fname : "";
    char exe[4096];
    ssize_t n = ::readlink("/proc/self/exe", exe, sizeof exe - 1);
    std::string self = n > 0 ? std::string(exe, static_cast<std::size_t>(n)) : std::string();
    auto base = [](const std::string& p) { return p.substr(p.rfind('/') == std::string::npos ? 0 : p.rfind('/') + 1); };
    ::malloc_trim(0);   // every arena, free chunks inside the heap too (glibc >= 2.8)
    char real[4096];
    std::string lib_real = !lib.empty() && ::realpath(lib.c_str(), real) ? std::string(real) : lib;
    if (!lib.empty() && !base(lib).starts_with("libc.so") && lib_real != self)
        detail = fmt::format("malloc() is defined in `{}`, not in libc: glibc's malloc_trim() may release nothing",
                             lib);
    return "glibc";
}

}  // namespace

void trim_before_advice(const char* trigger) {
    struct timespec t0, t1;
    ::clock_gettime(CLOCK_MONOTONIC, &t0);
    std::int64_t before = anon_resident();
    std::string detail;
    const char* which = trim_allocator(detail);
    if (!which) {  // kept for allocators that cannot be trimmed at all
        log_msg(kInfo, fmt::format("trim (trigger {}): not supported: malloc() is not glibc's and no "
                                   "jemalloc, tcmalloc or mimalloc entry point was found",
                                   trigger));
        return;
    }
    std::int64_t after = anon_resident();
    ::clock_gettime(CLOCK_MONOTONIC, &t1);
    const double ms = static_cast<double>(t1.tv_sec - t0.tv_sec) * 1e3 + static_cast<double>(t1.tv_nsec - t0.tv_nsec) / 1e6;
    constexpr double kMiB = 1024.0 * 1024.0;
    if (before < 0 || after < 0) {
        log_msg(kInfo, fmt::format("trim ({}, trigger {}): done; /proc/self/statm unreadable, not measured", which,
                                   trigger));
        return;
    }
    std::int64_t released = before > after ? before - after : 0;
    log_msg(kInfo, fmt::format("trim ({}, trigger {}): released {:.1f} MiB (anonymous resident {:.1f} -> {:.1f} "
                               "MiB) in {:.2f} ms{}",
                               which, trigger, static_cast<double>(released) / kMiB,
                               static_cast<double>(before) / kMiB, static_cast<double>(after) / kMiB, ms,
                               detail.empty() ? "" : "; " + detail));
}

void restore_thread_stack_default() {
    // secure_getenv: never from the caller of a set-user-ID program (the
    // constructor does not even call this function there).
    const char* v = ::secure_getenv("UPM_STACK_RLIMIT");
    if (!v || !*v) return;
    struct rlimit now {};
    if (::getrlimit(RLIMIT_STACK, &now) != 0) return;
    std::uint64_t orig = 0;
    bool unlimited = std::strcmp(v, "unlimited") == 0;
    if (!unlimited) {
        char* end = nullptr;
        errno = 0;
        unsigned long long n = std::strtoull(v, &end, 10);
        if (errno != 0 || !end || *end != '\0' || n == 0) return;
        orig = n;
        if (now.rlim_cur == orig) return;   // nothing was raised
    }
    // glibc's rule (nptl __pthread_early_init): unlimited -> the
    // architecture's ARCH_STACK_DEFAULT_SIZE (2 MiB on x86-64), else the
    // rlimit, at least PTHREAD_STACK_MIN, rounded up to a page.
    std::uint64_t size = unlimited ? 2u << 20 : orig;
    if (size < static_cast<std::uint64_t>(PTHREAD_STACK_MIN)) size = PTHREAD_STACK_MIN;
    std::uint64_t ps = page_size();
    size = (size + ps - 1) / ps * ps;
    pthread_attr_t attr;
    if (::pthread_getattr_default_np(&attr) != 0) return;
    if (::pthread_attr_setstacksize(&attr, size) == 0) (void)::pthread_setattr_default_np(&attr);
    ::pthread_attr_destroy(&attr);
}

}  // namespace upm::preload
