// Logging set-up: one spdlog logger writing "upm[1234] warn: message" lines
// to stderr.
//
// The sink formats each message into a local buffer and emits it with a
// single write(2) to fd 2, without a lock of its own: it runs inside
// arbitrary host processes (the preload), where a mutex held by another
// thread at fork() would deadlock the child forever.  Lines from different
// threads never interleave because each is one write.  The formatter is
// cloned per message, since spdlog's pattern formatter caches state and is
// not thread-safe; upm logs rarely, so the cost does not matter.
#include "upm/log.hpp"
#include "upm/log_sinks.hpp"
#include "upm/problem.hpp"

#include <unistd.h>

#include <cerrno>
#include <mutex>
#include <spdlog/details/null_mutex.h>
#include <spdlog/pattern_formatter.h>
#include <spdlog/sinks/base_sink.h>
#include <spdlog/spdlog.h>
#include <string>

namespace upm {

namespace {

class StderrSink final : public spdlog::sinks::base_sink<spdlog::details::null_mutex> {
protected:
    void sink_it_(const spdlog::details::log_msg& msg) override {
        spdlog::memory_buf_t buf;
        formatter_->clone()->format(msg, buf);
        write_all(STDERR_FILENO, std::string_view(buf.data(), buf.size()));
    }
    void flush_() override {}
};

spdlog::level::level_enum parse_level(std::string_view level) {
    if (level == "off") return spdlog::level::off;
    if (level == "error") return spdlog::level::err;
    if (level == "warn" || level == "warning") return spdlog::level::warn;
    if (level == "info") return spdlog::level::info;
    if (level == "debug") return spdlog::level::debug;
    if (level == "trace") return spdlog::level::trace;
    return spdlog::level::warn;
}

std::mutex g_mutex;  // protects g_logger (set-up only; never held while logging)
std::shared_ptr<spdlog::logger> g_logger;

std::shared_ptr<spdlog::logger> make_logger(std::string_view name, std::string_view level) {
    auto sink = std::make_shared<StderrSink>();
    auto formatter = std::make_unique<spdlog::pattern_formatter>();
    formatter->add_flag<LevelFlag>('*');
    formatter->set_pattern("%n[%P] %*: %v");
    sink->set_formatter(std::move(formatter));
    auto logger = std::make_shared<spdlog::logger>(std::string(name), std::move(sink));
    logger->set_level(parse_level(level));
    return logger;
}

}  // namespace

std::shared_ptr<spdlog::logger> setup_logging(std::string_view name, std::string_view level) {
    try {
        auto logger = make_logger(name, level);
        std::lock_guard lock(g_mutex);
        g_logger = logger;
        return logger;
    } catch (...) {
        return logger();
    }
}

std::shared_ptr<spdlog::logger> logger() {
    std::lock_guard lock(g_mutex);
    if (!g_logger) {
        try {
            g_logger = make_logger("upm", "warn");
        } catch (...) {
            // Out of memory: fall back to a logger without sinks below.
        }
    }
    if (!g_logger) {
        static auto silent = std::make_shared<spdlog::logger>("upm");
        return silent;
    }
    return g_logger;
}

std::string printable(std::string_view value, std::size_t max) {
    static constexpr char hex[] = "0123456789abcdef";
    std::string out;
    try {
        for (unsigned char c : value) {
            if (out.size() >= max) {
                out += "...";
                break;
            }
            if (c < 0x20 || c >= 0x7f || c == '`' || c == '\\') {
                out += "\\x";
                out += hex[c >> 4];
                out += hex[c & 15];
            } else {
                out += static_cast<char>(c);
            }
        }
    } catch (...) {
    }
    return out;
}

std::string_view to_string(Level level) {
    switch (level) {
        case Level::debug: return "debug";
        case Level::info: return "info";
        case Level::warn: return "warn";
        case Level::error: return "error";
    }
    return "info";
}

Level parse_level(std::string_view name, Level fallback) {
    if (name == "debug") return Level::debug;
    if (name == "info") return Level::info;
    if (name == "warn" || name == "warning") return Level::warn;
    if (name == "error") return Level::error;
    return fallback;
}

}  // namespace upm
