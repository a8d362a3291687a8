// upm-hook's node log and its bounded stdin (internal to hooks/hook/).
#pragma once

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <ctime>
#include <string>
#include <string_view>

#include "upm/nodeconfig.hpp"
#include "upm/ocistate.hpp"

namespace upm_hook {

inline int level_rank(std::string_view level) {
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

// Reads at most `max` bytes of stdin; more is an error.
inline upm::Result<std::string> read_stdin(std::size_t max = upm::kMaxContainerState) {
    std::string text;
    char buf[65536];
    for (;;) {
        ssize_t n = ::read(STDIN_FILENO, buf, sizeof buf);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) return upm::Error::sys(errno, "read");
        if (n == 0) break;
        if (text.size() + static_cast<std::size_t>(n) > max)
            return upm::Error::msg("more than " + std::to_string(max) + " bytes");
        text.append(buf, static_cast<std::size_t>(n));
    }
    if (text.empty()) return upm::Error::msg("empty");
    return text;
}

// createRuntime (and prestart): the injection through /etc/ld.so.preload
// (upm/rootfs_inject.hpp).  0 = the container may start; 1 = refused (a
// fail-closed policy).
int run_create_runtime(const std::string& stage, const upm::NodeConfigLoad& load);

// podman's precreate: the spec on stdin, the edited (or the same) spec on
// stdout.  0, or 1 when a fail-closed policy refuses the container.
int run_precreate(const upm::NodeConfigLoad& load);

}  // namespace upm_hook
