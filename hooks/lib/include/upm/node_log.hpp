// The node's log file: `log_file` of the node configuration (default
// /var/log/upm/runtime.log), written by upm-runtime and upm-hook alike, one
// line per message:
//   "2026-11-26T12:00:00.123456Z upm-hook[PID] warn: container `ID`: ..."
// (NAME[PID] is the spdlog logger's name).  The file is opened on the first
// line only (a call with nothing to say opens nothing), with O_APPEND and
// O_NOFOLLOW, mode 0640, its directory created one level deep; every line is
// one write(2), so concurrent writers never interleave inside a line.
// Host programs only: it brings spdlog's sink machinery.
#pragma once

#include <sys/types.h>

#include <memory>
#include <spdlog/details/null_mutex.h>
#include <spdlog/sinks/base_sink.h>
#include <string>

#include "upm/log_sinks.hpp"
#include "upm/nodeconfig.hpp"

namespace upm {

// A file opened on the first line written to it (and never again after a
// failed open); format_line() makes the line, one write(2) writes it.
class LazyFileSink : public spdlog::sinks::base_sink<spdlog::details::null_mutex> {
public:
    LazyFileSink(std::string path, int flags, mode_t mode);
    ~LazyFileSink() override;

protected:
    virtual void format_line(const spdlog::details::log_msg& msg, spdlog::memory_buf_t& out) = 0;
    virtual void before_open() {}
    void sink_it_(const spdlog::details::log_msg& msg) override;
    void flush_() override {}

    std::string path_;

private:
    int flags_;
    mode_t mode_;
    int fd_ = -1;
};

// The node's log level: "off", "error", "warn", "info" (anything else), "debug".
spdlog::level::level_enum node_log_level(const std::string& level);

// The sink of the node's log file at the configured level; nullptr when the
// configuration names no file or the level is "off".
std::shared_ptr<spdlog::sinks::sink> make_node_log_sink(const NodeConfig& config);

}  // namespace upm
