// The signal trigger.
//
// Installed only when the policy names a signal and the program left that
// signal at SIG_DFL (checked in the constructor, before main(); an inherited
// SIG_IGN or a handler installed by an earlier preloaded library is left
// alone, and the trigger is off).  Note that installing a handler changes
// the default action of the signal for this process: an unhandled SIGUSR2
// would have terminated it.  That is the policy's explicit choice.
//
// The handler is async-signal-safe: it sets an atomic flag and posts the
// worker's semaphore (sem_post(3) is async-signal-safe), saves and restores
// errno, allocates nothing, and then chains to the action that was there
// before, if that was a function.  A program that later installs its own
// handler simply replaces ours; its behaviour is then exactly its own.
#include <signal.h>

#include <cerrno>

#include <fmt/format.h>

#include "preload.hpp"

namespace upm::preload {

namespace {

struct sigaction g_prev;

void on_signal(int signo, siginfo_t* info, void* uctx) {
    int saved = errno;
    notify_signal_async();
    if (g_prev.sa_flags & SA_SIGINFO) {
        if (g_prev.sa_sigaction) g_prev.sa_sigaction(signo, info, uctx);
    } else if (g_prev.sa_handler != SIG_DFL && g_prev.sa_handler != SIG_IGN && g_prev.sa_handler != nullptr) {
        g_prev.sa_handler(signo);
    }
    errno = saved;
}

}  // namespace

bool install_signal_trigger(int signo) {
    struct sigaction cur {};
    if (::sigaction(signo, nullptr, &cur) != 0) return false;
    const bool dfl = !(cur.sa_flags & SA_SIGINFO) && cur.sa_handler == SIG_DFL;
    if (!dfl) {
        log_msg(kInfo, fmt::format("signal {} already has a handler or is ignored: signal trigger off", signo));
        return false;
    }
    struct sigaction sa {};
    sa.sa_sigaction = on_signal;
    sa.sa_flags = SA_SIGINFO | SA_RESTART | SA_ONSTACK;
    ::sigemptyset(&sa.sa_mask);
    if (::sigaction(signo, &sa, &g_prev) != 0) return false;
    log_msg(kDebug, fmt::format("signal {} triggers a run", signo));
    return true;
}

}  // namespace upm::preload
