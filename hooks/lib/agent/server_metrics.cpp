// upmd's metrics (server.hpp, upm/metrics.hpp): the loopback HTTP endpoint
// (GET /metrics) and the node-exporter textfile.
#include "server.hpp"

#include "upm/atomic_file.hpp"

namespace upm::agent::internal {

AgentInfo Server::agent_info() {
    AgentInfo info = info_;
    info.connections = conns_.size();
    if (tuner_) {
        auto s = tuner_->status();
        info.tuner_mode = s.mode;
        info.tuner_modes = {"idle", "burst", "trickle", "stopped"};
        info.tuner_counters["bursts"] = static_cast<double>(s.bursts);
        info.tuner_counters["kicks"] = static_cast<double>(s.kicks);
        info.tuner_counters["growth_kicks"] = static_cast<double>(growth_kicks_);
        info.tuner_counters["ksmd_cpu_seconds"] = s.ksmd_cpu_seconds;
        info.tuner_counters["ksmd_burst_cpu_seconds"] = s.ksmd_cpu_seconds_bursts;
        if (s.last_burst) info.tuner_gauges["last_burst_seconds"] = static_cast<double>(s.last_burst->duration.count()) / 1000.0;
    }
    return info;
}

void Server::handle_http(Conn& c) {
    auto end = c.in.find("\r\n\r\n");
    if (end == std::string::npos) end = c.in.find("\n\n");
    auto respond = [&](const char* status, const std::string& type, const std::string& body, bool head = false) {
        std::string r = std::string("HTTP/1.1 ") + status + "\r\nContent-Type: " + type +
                        "\r\nContent-Length: " + std::to_string(body.size()) + "\r\nConnection: close\r\n\r\n";
        if (!head) r += body;
        c.in.clear();
        queue(c, std::move(r));
        c.close_after_flush = true;
    };
    if (end == std::string::npos || end > kMaxHttpHead) {
        if (c.in.size() > kMaxHttpHead) respond("431 Request Header Fields Too Large", "text/plain", "request head too large\n");
        return;
    }
    std::string_view head(c.in.data(), end);
    auto eol = head.find_first_of("\r\n");
    std::string_view line = head.substr(0, eol);
    auto sp1 = line.find(' ');
    auto sp2 = line.find(' ', sp1 == std::string_view::npos ? 0 : sp1 + 1);
    if (sp1 == std::string_view::npos || sp2 == std::string_view::npos) {
        respond("400 Bad Request", "text/plain", "bad request line\n");
        return;
    }
    std::string_view method = line.substr(0, sp1), target = line.substr(sp1 + 1, sp2 - sp1 - 1);
    if (auto q = target.find('?'); q != std::string_view::npos) target = target.substr(0, q);
    if (method != "GET" && method != "HEAD") {
        respond("405 Method Not Allowed", "text/plain", "only GET /metrics\n");
        return;
    }
    if (target == "/metrics") {
        info_.requests["metrics"]++;
        const Snapshot& snap = snapshot();
        respond("200 OK", "text/plain; version=0.0.4; charset=utf-8", render_agent_metrics(registry_, snap, agent_info()),
                method == "HEAD");
    } else if (target == "/") {
        respond("200 OK", "text/plain", "upmd: metrics at /metrics\n", method == "HEAD");
    } else {
        respond("404 Not Found", "text/plain", "not found; metrics at /metrics\n", method == "HEAD");
    }
}

void Server::write_textfile() {
    const Snapshot& snap = snapshot();
    // 0644: the textfile collector (node-exporter) runs as another user.  No
    // fsync: the file is rewritten every interval, worthless after a crash.
    auto st = write_file_atomic(o_.textfile_dir, "upmd.prom", render_agent_metrics(registry_, snap, agent_info()),
                                {.mode = 0644, .fsync = false});
    if (!st) logger()->warn("--textfile: {}", st.error().message);
}

}  // namespace upm::agent::internal
