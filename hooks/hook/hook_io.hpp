// upm-hook's node log and its bounded stdin (internal to hooks/hook/).
#pragma once

#include <unistd.h>

#include <cerrno>
#include <memory>
#include <spdlog/logger.h>
#include <string>
#include <string_view>

#include "upm/node_log.hpp"
#include "upm/nodeconfig.hpp"
#include "upm/ocistate.hpp"

namespace upm_hook {

// The node log file, through the same sink as upm-runtime's
// (upm/node_log.hpp): "TIME upm-hook[PID] LEVEL: MESSAGE".
class HookLog {
public:
    explicit HookLog(const upm::NodeConfig& config) {
        try {
            if (auto sink = upm::make_node_log_sink(config)) {
                logger_ = std::make_shared<spdlog::logger>("upm-hook", std::move(sink));
                logger_->set_level(upm::node_log_level(config.log_level));
            }
        } catch (...) {
            logger_.reset();  // no logging; the hook still does its work
        }
    }
    void write(upm::Level level, const std::string& message) {
        if (!logger_) return;
        try {
            logger_->log(upm::to_spdlog(level), std::string_view(message));
        } catch (...) {
        }
    }

private:
    std::shared_ptr<spdlog::logger> logger_;
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
