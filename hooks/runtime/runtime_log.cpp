// upm-runtime's two log sinks; see runtime_log.hpp.
#include "runtime_log.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <ctime>
#include <spdlog/details/null_mutex.h>
#include <spdlog/pattern_formatter.h>
#include <spdlog/sinks/base_sink.h>
#include <spdlog/spdlog.h>

#include "upm/node_log.hpp"

namespace upm::runtime {

namespace {

// The real runtime's --log file, in logrus's json or text format.
class RuntimeLogSink final : public LazyFileSink {
public:
    RuntimeLogSink(const std::string& path, bool json)
        : LazyFileSink(path, O_WRONLY | O_APPEND | O_CREAT | O_NONBLOCK | O_NOCTTY | O_CLOEXEC, 0644), json_(json) {}

protected:
    void format_line(const spdlog::details::log_msg& msg, spdlog::memory_buf_t& out) override {
        std::string level = msg.level <= spdlog::level::debug ? "debug"
                            : msg.level == spdlog::level::info ? "info"
                            : msg.level == spdlog::level::warn ? "warning"
                                                               : "error";
        std::time_t t = std::chrono::system_clock::to_time_t(msg.time);
        std::tm tm {};
        ::gmtime_r(&t, &tm);
        char when[32];
        std::strftime(when, sizeof when, "%Y-%m-%dT%H:%M:%SZ", &tm);
        std::string text = "upm-runtime: " + std::string(msg.payload.data(), msg.payload.size());
        std::string line;
        if (json_)
            line = "{\"level\":\"" + level + "\",\"msg\":" + quote(text, true) + ",\"time\":\"" + when + "\"}\n";
        else
            line = "time=\"" + std::string(when) + "\" level=" + level + " msg=" + quote(text, false) + "\n";
        out.append(line.data(), line.data() + line.size());
    }

private:
    static std::string quote(const std::string& s, bool json) {
        static constexpr char hex[] = "0123456789abcdef";
        std::string out = "\"";
        for (unsigned char c : s) {
            if (c == '"' || c == '\\') {
                out += '\\';
                out += static_cast<char>(c);
            } else if (c == '\n') {
                out += "\\n";
            } else if (c < 0x20 || c == 0x7f) {
                out += json ? "\\u00" : "\\x";
                out += hex[c >> 4];
                out += hex[c & 15];
            } else {
                out += static_cast<char>(c);
            }
        }
        return out + "\"";
    }
    bool json_;
};

}  // namespace

Log::Log(const NodeConfig& config, const RuntimeArgs& args) {
    try {
        std::vector<spdlog::sink_ptr> sinks;
        auto lowest = spdlog::level::off;
        if (auto sink = make_node_log_sink(config)) {
            lowest = std::min(lowest, sink->level());
            sinks.push_back(std::move(sink));
        }
        if (!args.log_file.empty()) {
            auto sink = std::make_shared<RuntimeLogSink>(args.log_file, args.log_format == "json");
            sink->set_level(args.debug ? spdlog::level::debug : spdlog::level::warn);
            lowest = std::min(lowest, sink->level());
            sinks.push_back(std::move(sink));
        }
        logger_ = std::make_shared<spdlog::logger>("upm-runtime", sinks.begin(), sinks.end());
        logger_->set_level(lowest);
    } catch (...) {
        logger_.reset();  // out of memory: no logging, the container still starts
    }
}

void Log::write(Level level, const std::string& message) {
    if (!logger_) return;
    try {
        logger_->log(to_spdlog(level), std::string_view(message));
    } catch (...) {
    }
}

}  // namespace upm::runtime
