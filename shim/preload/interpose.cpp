// Interposed libc functions: dlopen(), unshare(), setns(), and the
// credential changes (setuid() and its family, setgroups(), capset()).
//
// dlopen(): the wrapper must not change which library gets loaded.  glibc
// resolves a bare name through the RPATH/RUNPATH of the *calling* object,
// expands $ORIGIN relative to it, and picks the namespace from it; it finds
// the caller from dlopen()'s return address.  A C wrapper that calls the
// real dlopen() would make libupm-preload.so the caller and break programs
// whose libraries dlopen() their neighbours through RUNPATH.  So the wrapper
// is a small assembly trampoline (x86-64, AArch64) that calls
// upm_dlopen_prepare() -- which wakes the worker and returns the next
// dlopen() in the lookup order (RTLD_NEXT) -- and then *jumps* to it with the
// original arguments and the original return address.  The worker waits for
// the load to complete (see wait_for_loads() in worker.cpp).  On other
// architectures a C wrapper with a sibling call is used.  dlmopen() is not
// interposed: its loads are seen by the next timed run.
//
// unshare()/setns(): the kernel refuses unshare(CLONE_NEWUSER) and setns()
// into a user or mount namespace in a multi-threaded process.  Our worker
// must not make such a call fail, so these wrappers stop the worker (waiting
// at most 2 s), make the call, and let the worker resume.  Programs that
// issue the raw syscall bypass this (documented).
//
// Credentials (security finding #8).  Linux credentials belong to a thread;
// POSIX wants setuid() & co. to change the whole process, so glibc runs the
// syscall on the calling thread and then, by signal (SIGSETXID), on every
// other thread, and aborts the process if it fails on one of them after it
// succeeded on the caller ("Fatal glibc error: ... setxid").  Per-thread
// credential changes made before -- prctl(PR_SET_KEEPCAPS), capset(),
// securebits, which are never broadcast -- apply to the calling thread only.
// That is what privilege-dropping entrypoints do: `setpriv --reuid --regid`
// (and capsh --keep=1 --uid --caps --gid) sets KEEPCAPS on its thread,
// setresuid() (broadcast: every thread becomes uid 1000; the worker, which
// has no KEEPCAPS, loses all its capabilities), capset() to get CAP_SETGID
// back (its own thread only), then setresgid() -- which the worker, without
// CAP_SETGID, refuses: glibc aborted setpriv with status 134.  So each
// broadcast function stops the worker before the call and starts it again
// after, as a clone of the calling thread, with the credentials the
// program now has.  The minimal set is the functions glibc broadcasts and a
// program can reach through the PLT: setuid, setgid, seteuid, setegid,
// setreuid, setregid, setresuid, setresgid, setgroups (glibc's internal
// callers, e.g. initgroups(), bypass the wrappers but run before any uid
// change, when every thread still has every capability).  capset() is
// wrapped too, though it cannot abort anything: after a program dropped its
// capabilities with it (libcap-ng's capng_apply) and kept running, the
// worker would otherwise go on holding root's capabilities inside a program
// that gave them up.  setfsuid()/setfsgid() are not: they are per-thread,
// never broadcast, only change the caller's file-access checks and cannot
// make another call fail.  libcap's cap_setuid()/cap_setgroups() issue raw
// syscalls on the calling thread only (without libpsx): they bypass this.
#include <dlfcn.h>
#include <grp.h>
#include <linux/capability.h>
#include <sched.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>

#include "preload.hpp"

#define UPM_EXPORT __attribute__((visibility("default")))

namespace {

using dlopen_fn = void* (*)(const char*, int);

void* dlopen_unavailable(const char*, int) { return nullptr; }

std::atomic<void*> g_real_dlopen{nullptr};

// The next definition of `name` (RTLD_NEXT), looked up once and cached in
// `cache`: an atomic rather than a function-local static, whose
// initialisation guard, if another thread held it at fork(), would stay
// taken in the child forever.
template <typename Fn>
Fn next_symbol(std::atomic<void*>& cache, const char* name) {
    void* p = cache.load(std::memory_order_acquire);
    if (!p) {
        p = ::dlsym(RTLD_NEXT, name);
        cache.store(p, std::memory_order_release);
    }
    return reinterpret_cast<Fn>(p);
}

std::atomic<void*> g_real_unshare{nullptr};
std::atomic<void*> g_real_setns{nullptr};
std::atomic<void*> g_real_setuid{nullptr}, g_real_setgid{nullptr}, g_real_seteuid{nullptr},
    g_real_setegid{nullptr}, g_real_setreuid{nullptr}, g_real_setregid{nullptr}, g_real_setresuid{nullptr},
    g_real_setresgid{nullptr}, g_real_setgroups{nullptr}, g_real_capset{nullptr};

// Namespace-changing flags the kernel refuses in a multi-threaded process.
constexpr int kSingleThreadUnshare = CLONE_NEWUSER | CLONE_VM | CLONE_SIGHAND | CLONE_THREAD;
constexpr int kSingleThreadSetns = CLONE_NEWUSER | CLONE_NEWNS;
constexpr int kQuiesceTimeoutMs = 2000;

}  // namespace

extern "C" __attribute__((visibility("hidden"))) void* upm_dlopen_prepare() noexcept {
    int saved = errno;
    void* real = g_real_dlopen.load(std::memory_order_acquire);
    if (!real) {
        real = ::dlsym(RTLD_NEXT, "dlopen");
        if (!real) real = ::dlvsym(RTLD_NEXT, "dlopen", "GLIBC_2.2.5");
        if (!real) real = reinterpret_cast<void*>(&dlopen_unavailable);
        g_real_dlopen.store(real, std::memory_order_release);
    }
    try {
        upm::preload::notify_dlopen();
    } catch (...) {
    }
    errno = saved;
    return real;
}

#if defined(__x86_64__)
// Entry: %rsp = 8 mod 16.  Two pushes and 8 bytes make the call aligned.
asm(R"(
    .text
    .globl dlopen
    .type dlopen, @function
    .p2align 4
dlopen:
    .cfi_startproc
    endbr64
    pushq %rdi
    .cfi_adjust_cfa_offset 8
    pushq %rsi
    .cfi_adjust_cfa_offset 8
    subq $8, %rsp
    .cfi_adjust_cfa_offset 8
    call upm_dlopen_prepare
    addq $8, %rsp
    .cfi_adjust_cfa_offset -8
    popq %rsi
    .cfi_adjust_cfa_offset -8
    popq %rdi
    .cfi_adjust_cfa_offset -8
    jmp *%rax
    .cfi_endproc
    .size dlopen, .-dlopen
)");
#elif defined(__aarch64__)
asm(R"(
    .text
    .globl dlopen
    .type dlopen, %function
    .p2align 4
dlopen:
    .cfi_startproc
    hint 34
    stp x29, x30, [sp, #-32]!
    .cfi_def_cfa_offset 32
    .cfi_offset 29, -32
    .cfi_offset 30, -24
    mov x29, sp
    stp x0, x1, [sp, #16]
    bl upm_dlopen_prepare
    mov x16, x0
    ldp x0, x1, [sp, #16]
    ldp x29, x30, [sp], #32
    .cfi_restore 30
    .cfi_restore 29
    .cfi_def_cfa_offset 0
    br x16
    .cfi_endproc
    .size dlopen, .-dlopen
)");
#else
extern "C" UPM_EXPORT void* dlopen(const char* file, int mode) {
    auto real = reinterpret_cast<dlopen_fn>(upm_dlopen_prepare());
    return real(file, mode);    // a sibling call at -O2: the caller stays the caller
}
#endif

extern "C" UPM_EXPORT int unshare(int flags) {
    const auto real = next_symbol<int (*)(int)>(g_real_unshare, "unshare");
    const bool quiesce = (flags & kSingleThreadUnshare) != 0;
    if (quiesce) (void)upm::preload::quiesce_worker(kQuiesceTimeoutMs);
    int rc = real ? real(flags) : static_cast<int>(::syscall(SYS_unshare, flags));
    int saved = errno;
    if (quiesce) upm::preload::resume_worker();
    errno = saved;
    return rc;
}

extern "C" UPM_EXPORT int setns(int fd, int nstype) {
    const auto real = next_symbol<int (*)(int, int)>(g_real_setns, "setns");
    const bool quiesce = nstype == 0 || (nstype & kSingleThreadSetns) != 0;
    if (quiesce) (void)upm::preload::quiesce_worker(kQuiesceTimeoutMs);
    int rc = real ? real(fd, nstype) : static_cast<int>(::syscall(SYS_setns, fd, nstype));
    int saved = errno;
    if (quiesce) upm::preload::resume_worker();
    errno = saved;
    return rc;
}

namespace {

// Calls the next `name` (glibc's) with the worker stopped (see the top of
// the file).  Without a next definition (no libc?) the call fails with
// ENOSYS rather than bypassing glibc's all-thread broadcast.
template <typename... A>
int with_worker_stopped(std::atomic<void*>& cache, const char* name, A... args) {
    const auto real = next_symbol<int (*)(A...)>(cache, name);
    if (!real) {
        errno = ENOSYS;
        return -1;
    }
    (void)upm::preload::quiesce_worker(kQuiesceTimeoutMs);
    int rc = real(args...);
    int saved = errno;
    upm::preload::resume_worker();
    errno = saved;
    return rc;
}

}  // namespace

extern "C" UPM_EXPORT int setuid(uid_t uid) { return with_worker_stopped(g_real_setuid, "setuid", uid); }
extern "C" UPM_EXPORT int setgid(gid_t gid) { return with_worker_stopped(g_real_setgid, "setgid", gid); }
extern "C" UPM_EXPORT int seteuid(uid_t uid) { return with_worker_stopped(g_real_seteuid, "seteuid", uid); }
extern "C" UPM_EXPORT int setegid(gid_t gid) { return with_worker_stopped(g_real_setegid, "setegid", gid); }
extern "C" UPM_EXPORT int setreuid(uid_t r, uid_t e) { return with_worker_stopped(g_real_setreuid, "setreuid", r, e); }
extern "C" UPM_EXPORT int setregid(gid_t r, gid_t e) { return with_worker_stopped(g_real_setregid, "setregid", r, e); }
extern "C" UPM_EXPORT int setresuid(uid_t r, uid_t e, uid_t s) {
    return with_worker_stopped(g_real_setresuid, "setresuid", r, e, s);
}
extern "C" UPM_EXPORT int setresgid(gid_t r, gid_t e, gid_t s) {
    return with_worker_stopped(g_real_setresgid, "setresgid", r, e, s);
}
extern "C" UPM_EXPORT int setgroups(size_t n, const gid_t* groups) {
    return with_worker_stopped(g_real_setgroups, "setgroups", n, groups);
}
extern "C" UPM_EXPORT int capset(cap_user_header_t header, const cap_user_data_t data) {
    return with_worker_stopped(g_real_capset, "capset", header, data);
}
