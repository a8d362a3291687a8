// upm-hook: the OCI hook upm-runtime adds to annotated containers
// (`upm-hook poststart`, `upm-hook poststop`; docs/runtime.md).
//
// Reads the container state the runtime writes on stdin (runtime-spec
// "state": ociVersion, id, status, pid, bundle, annotations; at most 1 MiB),
// checks it, and writes one line per event to the node log file
// (`log_file` of the node configuration, the same file as upm-runtime's):
//   "TIME upm-hook[PID] info: container `ID`: poststart, pid 123, policy `p`, domain `d`".
// Annotation values and ids are untrusted: logged through printable(); no
// environment value is ever logged.
//
// poststart would register the container with the node agent
// (/run/upm/upmd.sock); the agent does not exist yet, so it only logs that.
//
// Exit status: always 0 for poststart and poststop, even on malformed input
// (the error goes to the log): runc kills the container when a poststart
// hook fails.  Usage errors (no or an unknown command) exit non-zero.
#include <fcntl.h>
#include <limits.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <cerrno>
#include <cstdio>
#include <ctime>
#include <string>
#include <string_view>

#include "upm/nodeconfig.hpp"
#include "upm/ocistate.hpp"
#include "upm/spec.hpp"

namespace {

constexpr const char* kAgentSocket = "/run/upm/upmd.sock";

int level_rank(std::string_view level) {
    if (level == "off") return 100;
    if (level == "error") return 3;
    if (level == "warn") return 2;
    if (level == "debug") return 0;
    return 1;  // info
}

// The node log file, opened on the first line; one write(2) per line.
class HookLog {
public:
    explicit HookLog(const upm::NodeConfig& config) : path_(config.log_file), min_(level_rank(config.log_level)) {}
    ~HookLog() {
        if (fd_ >= 0) ::close(fd_);
    }
    void write(std::string_view level, const std::string& message) {
        if (path_.empty() || level_rank(level) < min_) return;
        if (fd_ == -1) {
            auto slash = path_.rfind('/');
            if (slash != std::string::npos && slash > 0) ::mkdir(path_.substr(0, slash).c_str(), 0750);
            fd_ = ::open(path_.c_str(), O_WRONLY | O_APPEND | O_CREAT | O_NOFOLLOW | O_NONBLOCK | O_NOCTTY | O_CLOEXEC,
                         0640);
            if (fd_ < 0) fd_ = -2;  // do not try again
        }
        if (fd_ < 0) return;
        struct timespec ts {};
        ::clock_gettime(CLOCK_REALTIME, &ts);
        struct tm tm {};
        ::gmtime_r(&ts.tv_sec, &tm);
        char when[64];
        std::size_t n = std::strftime(when, sizeof when, "%Y-%m-%dT%H:%M:%S", &tm);
        std::snprintf(when + n, sizeof when - n, ".%06ldZ", ts.tv_nsec / 1000);
        std::string line = std::string(when) + " upm-hook[" + std::to_string(::getpid()) + "] " + std::string(level) +
                           ": " + message + "\n";
        const char* p = line.data();
        std::size_t left = line.size();
        while (left > 0) {
            ssize_t w = ::write(fd_, p, left);
            if (w < 0 && errno == EINTR) continue;
            if (w <= 0) return;
            p += w;
            left -= static_cast<std::size_t>(w);
        }
    }

private:
    std::string path_;
    int min_;
    int fd_ = -1;
};

// Reads at most kMaxContainerState bytes; more is an error.
upm::Result<std::string> read_stdin() {
    std::string text;
    char buf[65536];
    for (;;) {
        ssize_t n = ::read(STDIN_FILENO, buf, sizeof buf);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) return upm::Error::sys(errno, "read");
        if (n == 0) break;
        if (text.size() + static_cast<std::size_t>(n) > upm::kMaxContainerState)
            return upm::Error::msg("more than " + std::to_string(upm::kMaxContainerState) + " bytes");
        text.append(buf, static_cast<std::size_t>(n));
    }
    if (text.empty()) return upm::Error::msg("empty");
    return text;
}

int run_event(const std::string& event, const upm::NodeConfigLoad& load) {
    HookLog log(load.config);
    try {
        std::string file = load.config.source.empty() ? upm::kNodeConfigPath : load.config.source;
        for (const auto& problem : load.problems)
            log.write(problem.warning ? "warn" : "error", upm::format_problem(file, problem));
        auto text = read_stdin();
        if (!text) {
            log.write("error", event + ": container state on stdin: " + text.error().message);
            return 0;
        }
        auto state = upm::parse_container_state(*text, event == "poststart");
        if (!state) {
            log.write("error", event + ": container state on stdin: " + state.error().message);
            return 0;
        }
        std::string line = "container `" + upm::printable(state->id) + "`: " + event;
        if (state->pid > 0) line += ", pid " + std::to_string(state->pid);
        if (!state->status.empty()) line += ", status `" + upm::printable(state->status, 16) + "`";
        line += ", policy `" + (state->policy.empty() ? std::string("(default)") : upm::printable(state->policy)) + "`";
        if (!state->domain.empty()) line += ", domain `" + upm::printable(state->domain) + "`";
        if (!state->enabled) line += " (not annotated upm.enabled=true)";
        log.write("info", line);
        if (event == "poststart") {
            struct stat st {};
            if (::stat(kAgentSocket, &st) == 0 && S_ISSOCK(st.st_mode))
                log.write("info", "container `" + upm::printable(state->id) + "`: node agent at `" + kAgentSocket +
                                      "` found, but registration is not implemented yet; not registered");
            else
                log.write("debug", "container `" + upm::printable(state->id) + "`: no node agent at `" + kAgentSocket +
                                       "`, not registered");
        }
    } catch (const std::exception& e) {
        log.write("error", event + ": " + e.what());
    } catch (...) {
        log.write("error", event + ": unexpected failure");
    }
    return 0;
}

std::string self_exe() {
    char buf[PATH_MAX];
    ssize_t n = ::readlink("/proc/self/exe", buf, sizeof buf - 1);
    return n > 0 ? std::string(buf, static_cast<std::size_t>(n)) : std::string();
}

}  // namespace

int main(int argc, char** argv) {
    // The runtime calls exactly `upm-hook poststart|poststop`: answer those
    // without CLI11, so that nothing in argument parsing can fail them.
    if (argc >= 2 && (std::string_view(argv[1]) == "poststart" || std::string_view(argv[1]) == "poststop") &&
        !(argc >= 3 && (std::string_view(argv[2]) == "--help" || std::string_view(argv[2]) == "-h"))) {
        try {
            return run_event(argv[1], upm::load_node_config(self_exe()));
        } catch (...) {
            return 0;
        }
    }

    CLI::App app{"upm-hook: the OCI hook of upm (User-guided Page Merging), added by upm-runtime.\n"
                 "Reads the container state (JSON, at most 1 MiB) on stdin and logs to the node log file\n"
                 "(node configuration: $UPM_CONFIG or /etc/upm/config.json).  Always exits 0 for\n"
                 "poststart and poststop.  Documentation: docs/runtime.md.",
                 "upm-hook"};
    app.set_version_flag("--version", "upm-hook " UPM_VERSION);
    app.require_subcommand(1);
    app.add_subcommand("poststart", "the container's process started: register it with the node agent (when one runs)");
    app.add_subcommand("poststop", "the container stopped: clean up");
    CLI11_PARSE(app, argc, argv);
    return 0;
}
