// The node's log file; see node_log.hpp.
#include "upm/node_log.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <spdlog/pattern_formatter.h>

#include "upm/log_sinks.hpp"

namespace upm {

LazyFileSink::LazyFileSink(std::string path, int flags, mode_t mode)
    : path_(std::move(path)), flags_(flags), mode_(mode) {}

LazyFileSink::~LazyFileSink() {
    if (fd_ >= 0) ::close(fd_);
}

void LazyFileSink::sink_it_(const spdlog::details::log_msg& msg) {
    if (fd_ == -1) {
        before_open();
        fd_ = ::open(path_.c_str(), flags_, mode_);
        if (fd_ < 0) fd_ = -2;  // do not try again
    }
    if (fd_ < 0) return;
    spdlog::memory_buf_t buf;
    format_line(msg, buf);
    write_all(fd_, std::string_view(buf.data(), buf.size()));
}

namespace {

// "TIME NAME[PID] LEVEL: MESSAGE".
class NodeLogSink final : public LazyFileSink {
public:
    explicit NodeLogSink(const std::string& path)
        : LazyFileSink(path, O_WRONLY | O_APPEND | O_CREAT | O_NOFOLLOW | O_NONBLOCK | O_NOCTTY | O_CLOEXEC, 0640) {
        auto f = std::make_unique<spdlog::pattern_formatter>(spdlog::pattern_time_type::utc);
        f->add_flag<LevelFlag>('*');
        f->set_pattern("%Y-%m-%dT%H:%M:%S.%fZ %n[%P] %*: %v");
        formatter_ = std::move(f);
    }

protected:
    void before_open() override {
        // /var/log/upm may not exist yet on a fresh node; create that one level.
        ::mkdir(detail::dirname(path_).c_str(), 0750);   // EEXIST for "." and "/"
    }
    void format_line(const spdlog::details::log_msg& msg, spdlog::memory_buf_t& out) override {
        formatter_->format(msg, out);
    }
};

}  // namespace

spdlog::level::level_enum node_log_level(const std::string& level) {
    if (level == "off") return spdlog::level::off;
    if (level == "error") return spdlog::level::err;
    if (level == "warn") return spdlog::level::warn;
    if (level == "debug") return spdlog::level::debug;
    return spdlog::level::info;
}

std::shared_ptr<spdlog::sinks::sink> make_node_log_sink(const NodeConfig& config) {
    if (config.log_file.empty() || config.log_level == "off") return nullptr;
    auto sink = std::make_shared<NodeLogSink>(config.log_file);
    sink->set_level(node_log_level(config.log_level));
    return sink;
}

}  // namespace upm
