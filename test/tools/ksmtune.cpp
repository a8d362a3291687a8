// upm-ksmtune: runs libupm-host's KSM burst tuner (upm/ksmtune.hpp) on the
// host, for the integration test and the benchmark until upmd drives it.
// A test tool, not installed.
//
//   upm-ksmtune [--kick-on-start] [--state-file F] [--sysfs DIR]
//               [--idle-run N] [--idle-pages-to-scan N] [--idle-sleep-millisecs N]
//               [--cpu-budget S] [--cpu-per-minute S] [--min-burst-ms N] [--log LEVEL]
//
// Prints one JSON status line (upm::to_json plus "t", seconds since start,
// and "event") at start, after every tick and at exit.  SIGUSR1 = kick
// (new advised memory); SIGTERM / SIGINT / SIGHUP = stop: restore the
// original settings and exit (0 if they were restored, 1 if not).
#include <signal.h>
#include <time.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>

#include "upm/ksmtune.hpp"
#include "upm/log.hpp"

namespace {

void usage(FILE* f) {
    std::fputs(
        "usage: upm-ksmtune [--kick-on-start] [--state-file F] [--sysfs DIR]\n"
        "                   [--idle-run N] [--idle-pages-to-scan N] [--idle-sleep-millisecs N]\n"
        "                   [--cpu-budget S] [--cpu-per-minute S] [--min-burst-ms N] [--log LEVEL]\n"
        "Runs the KSM burst tuner; JSON status lines on stdout; SIGUSR1 kicks,\n"
        "SIGTERM/SIGINT/SIGHUP restore the original settings and exit.\n",
        f);
}

long to_long(const char* opt, const char* v) {
    char* end = nullptr;
    errno = 0;
    long n = std::strtol(v, &end, 10);
    if (errno || !end || *end || end == v) {
        std::fprintf(stderr, "upm-ksmtune: %s: not a number: `%s`\n", opt, v);
        std::exit(2);
    }
    return n;
}

}  // namespace

int main(int argc, char** argv) {
    upm::KsmTunerOptions o;
    bool kick_on_start = false;
    std::string level = "info";
    for (int i = 1; i < argc; ++i) {
        std::string a = argv[i];
        auto value = [&]() -> const char* {
            if (i + 1 >= argc) {
                std::fprintf(stderr, "upm-ksmtune: %s needs a value\n", a.c_str());
                std::exit(2);
            }
            return argv[++i];
        };
        if (a == "--kick-on-start") kick_on_start = true;
        else if (a == "--state-file") o.state_file = value();
        else if (a == "--sysfs") o.sysfs = value();
        else if (a == "--idle-run") o.idle.run = to_long(a.c_str(), value());
        else if (a == "--idle-pages-to-scan") o.idle.pages_to_scan = to_long(a.c_str(), value());
        else if (a == "--idle-sleep-millisecs") o.idle.sleep_millisecs = to_long(a.c_str(), value());
        else if (a == "--cpu-budget") o.burst_cpu_base = static_cast<double>(to_long(a.c_str(), value()));
        else if (a == "--cpu-per-minute") o.max_cpu_per_minute = static_cast<double>(to_long(a.c_str(), value()));
        else if (a == "--min-burst-ms") o.min_burst = std::chrono::milliseconds(to_long(a.c_str(), value()));
        else if (a == "--log") level = value();
        else if (a == "-h" || a == "--help") {
            usage(stdout);
            return 0;
        } else {
            std::fprintf(stderr, "upm-ksmtune: unknown argument `%s`\n", a.c_str());
            usage(stderr);
            return 2;
        }
    }
    upm::setup_logging("upm-ksmtune", level);

    // A closed stdout must not kill us before the settings are restored.
    signal(SIGPIPE, SIG_IGN);

    sigset_t set;
    sigemptyset(&set);
    for (int s : {SIGUSR1, SIGTERM, SIGINT, SIGHUP}) sigaddset(&set, s);
    sigprocmask(SIG_BLOCK, &set, nullptr);

    const auto t0 = std::chrono::steady_clock::now();
    upm::KsmTuner tuner(o);
    auto emit = [&](const char* event) {
        std::string j = upm::to_json(tuner.status());
        double t = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        std::printf("{\"t\":%.3f,\"event\":\"%s\",%s\n", t, event, j.c_str() + 1);
        std::fflush(stdout);
    };

    if (auto st = tuner.start(); !st) {
        std::fprintf(stderr, "upm-ksmtune: %s\n", st.error().message.c_str());
        return 1;
    }
    emit("start");
    if (kick_on_start) {
        tuner.kick("--kick-on-start");
        emit("kick");
    }
    std::chrono::milliseconds next = tuner.tick();
    emit("tick");
    for (;;) {
        timespec ts{static_cast<time_t>(next.count() / 1000), static_cast<long>(next.count() % 1000) * 1000000L};
        int sig = sigtimedwait(&set, nullptr, &ts);
        if (sig == SIGUSR1) {
            tuner.kick("SIGUSR1");
            emit("kick");
            next = o.burst_tick;   // the kick ticked already
            continue;
        }
        if (sig == SIGTERM || sig == SIGINT || sig == SIGHUP) break;
        if (sig < 0 && errno != EAGAIN && errno != EINTR) {
            std::perror("upm-ksmtune: sigtimedwait");
            break;
        }
        next = tuner.tick();
        emit("tick");
    }
    auto st = tuner.stop();
    emit("stop");
    if (!st) {
        std::fprintf(stderr, "upm-ksmtune: %s\n", st.error().message.c_str());
        return 1;
    }
    return 0;
}
