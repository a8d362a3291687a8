// Building blocks of upm's spdlog set-up, shared by the stderr logger
// (log.cpp), upm-runtime's file and runtime-log sinks, and the preload's
// one-line notices.  Include only where spdlog is used anyway.
#pragma once

#include <unistd.h>

#include <cerrno>
#include <cstddef>
#include <iterator>
#include <memory>
#include <spdlog/pattern_formatter.h>
#include <string_view>

#include "upm/io.hpp"
#include "upm/problem.hpp"

namespace upm {

// Writes all of `data` to `fd`, retrying on EINTR and short writes; gives up
// silently on any other error.  errno is left as it was (loggers must not
// change what the program sees).
inline void write_all(int fd, std::string_view data) {
    int saved = errno;
    (void)detail::write_all(fd, data);
    errno = saved;
}

inline spdlog::level::level_enum to_spdlog(Level level) {
    switch (level) {
        case Level::debug: return spdlog::level::debug;
        case Level::info: return spdlog::level::info;
        case Level::warn: return spdlog::level::warn;
        case Level::error: return spdlog::level::err;
    }
    return spdlog::level::info;
}

// The `%*` pattern flag: short lowercase level names ("warn", not
// "warning"), as every upm program prints them.
class LevelFlag final : public spdlog::custom_flag_formatter {
public:
    void format(const spdlog::details::log_msg& msg, const std::tm&, spdlog::memory_buf_t& dest) override {
        static constexpr std::string_view names[] = {"trace", "debug", "info", "warn", "error", "critical", "off"};
        auto i = static_cast<std::size_t>(msg.level);
        auto name = i < std::size(names) ? names[i] : std::string_view("log");
        dest.append(name.data(), name.data() + name.size());
    }
    std::unique_ptr<custom_flag_formatter> clone() const override { return std::make_unique<LevelFlag>(); }
};

}  // namespace upm
