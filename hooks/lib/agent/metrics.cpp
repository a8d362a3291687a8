// Prometheus text format and the node agent's metrics (upm/metrics.hpp).
#include "upm/metrics.hpp"

#include <cmath>
#include <fmt/format.h>

namespace upm::metrics {

std::string escape_label_value(std::string_view value) {
    std::string out;
    out.reserve(value.size());
    for (char c : value) {
        if (c == '\\') out += "\\\\";
        else if (c == '"') out += "\\\"";
        else if (c == '\n') out += "\\n";
        else out += c;
    }
    return out;
}

std::string escape_help(std::string_view text) {
    std::string out;
    for (char c : text) {
        if (c == '\\') out += "\\\\";
        else if (c == '\n') out += "\\n";
        else out += c;
    }
    return out;
}

std::string format_value(double v) {
    if (std::isnan(v)) return "NaN";
    if (std::isinf(v)) return v > 0 ? "+Inf" : "-Inf";
    if (v == std::floor(v) && std::fabs(v) < 1e15) return fmt::format("{}", static_cast<long long>(v));
    return fmt::format("{}", v);
}

void Writer::family(std::string_view name, std::string_view type, std::string_view help) {
    out_ += fmt::format("# HELP {} {}\n# TYPE {} {}\n", name, escape_help(help), name, type);
}

void Writer::start_sample(std::string_view name, const Labels& labels) {
    out_ += name;
    if (!labels.empty()) {
        out_ += '{';
        bool first = true;
        for (const auto& [k, v] : labels) {
            if (!first) out_ += ',';
            first = false;
            out_ += k;
            out_ += "=\"";
            out_ += escape_label_value(v);
            out_ += '"';
        }
        out_ += '}';
    }
    out_ += ' ';
}

void Writer::sample(std::string_view name, const Labels& labels, double value) {
    start_sample(name, labels);
    out_ += format_value(value);
    out_ += '\n';
}

void Writer::sample(std::string_view name, const Labels& labels, std::uint64_t value) {
    start_sample(name, labels);
    out_ += std::to_string(value);
    out_ += '\n';
}

void Writer::sample(std::string_view name, const Labels& labels, std::int64_t value) {
    start_sample(name, labels);
    out_ += std::to_string(value);
    out_ += '\n';
}

}  // namespace upm::metrics

namespace upm::agent {

using metrics::Labels;
using metrics::Writer;

namespace {

using u64 = std::uint64_t;
using i64 = std::int64_t;

// upmd itself: version, start, registry size, connections, requests.
void agent_families(Writer& w, const Registry& registry, const AgentInfo& info) {
    w.family("upm_agent_info", "gauge", "upmd is running; the label carries its version");
    w.sample("upm_agent_info", {{"version", info.version}}, u64(1));
    w.family("upm_agent_start_time_seconds", "gauge", "when upmd started, unix time");
    w.sample("upm_agent_start_time_seconds", {}, info.started_at);
    w.family("upm_agent_containers", "gauge", "containers in the registry");
    w.sample("upm_agent_containers", {}, u64(registry.size()));
    w.family("upm_agent_connections", "gauge", "open client connections");
    w.sample("upm_agent_connections", {}, u64(info.connections));
    w.family("upm_agent_requests_total", "counter", "requests handled, by op (error: rejected requests)");
    for (const auto& [op, n] : info.requests) w.sample("upm_agent_requests_total", {{"op", op}}, n);
    w.family("upm_agent_dropped_connections_total", "counter",
             "connections closed by the agent: over the connection limit, idle too long or sending too much");
    w.sample("upm_agent_dropped_connections_total", {}, info.dropped_connections);
}

// Per container: one family a counter, one sample a registered container
// with counters in the snapshot.
void container_families(Writer& w, const Registry& registry, const Snapshot& s) {
    auto per = [&](const char* name, const char* type, const char* help, auto value_of) {
        w.family(name, type, help);
        for (const auto& [id, c] : registry.containers()) {
            auto it = s.usage.find(id);
            if (it == s.usage.end()) continue;
            auto v = value_of(c, it->second);
            if (v) w.sample(name, {{"id", id}}, *v);
        }
    };
    w.family("upm_container_info", "gauge", "a registered container: main pid, policy, sharing domain, cgroup");
    for (const auto& [id, c] : registry.containers())
        w.sample("upm_container_info",
                 {{"id", id}, {"pid", std::to_string(c.pid)}, {"policy", c.policy}, {"domain", c.domain},
                  {"cgroup", c.cgroup}},
                 u64(1));
    per("upm_container_processes", "gauge", "processes counted for the container (its cgroup or process tree)",
        [](const Container&, const ContainerUsage& u) { return std::optional<u64>(u.processes); });
    per("upm_container_merging_pages", "gauge",
        "pages of the container's processes mapped to KSM pages (sum of /proc/PID/ksm_merging_pages)",
        [](const Container&, const ContainerUsage& u) { return std::optional<u64>(u.merging_pages); });
    per("upm_container_saved_bytes", "gauge", "merging pages times the page size",
        [](const Container&, const ContainerUsage& u) { return std::optional<u64>(u.saved_bytes); });
    per("upm_container_ksm_rmap_items", "gauge", "KSM rmap items of the container's processes (/proc/PID/ksm_stat)",
        [](const Container&, const ContainerUsage& u) { return std::optional<u64>(u.rmap_items); });
    per("upm_container_ksm_profit_bytes", "gauge",
        "KSM profit of the container's processes (ksm_process_profit of /proc/PID/ksm_stat, kernels >= 6.6)",
        [](const Container&, const ContainerUsage& u) { return u.profit_bytes ? std::optional<i64>(*u.profit_bytes) : std::nullopt; });
    per("upm_container_advised_bytes_total", "counter", "bytes the container reported advising",
        [](const Container& c, const ContainerUsage&) { return std::optional<u64>(c.advised.bytes); });
    per("upm_container_advise_calls_total", "counter", "madvise calls the container reported",
        [](const Container& c, const ContainerUsage&) { return std::optional<u64>(c.advised.calls); });
    per("upm_container_advise_seconds_total", "counter", "time the container reported spending in madvise",
        [](const Container& c, const ContainerUsage&) { return std::optional<double>(c.advised.seconds); });
}

// The node: KSM's counters and settings, savings, advice reported.
void node_families(Writer& w, const Registry& registry, const Snapshot& s) {
    const auto& n = s.node;
    auto node = [&](const char* name, const char* type, const char* help, const char* key) {
        auto it = n.ksm.find(key);
        if (it == n.ksm.end()) return;
        w.family(name, type, help);
        w.sample(name, {}, i64(it->second));
    };
    node("upm_node_pages_shared", "gauge", "KSM pages in use (/sys/kernel/mm/ksm/pages_shared)", "pages_shared");
    node("upm_node_pages_sharing", "gauge", "pages sharing a KSM page, i.e. pages saved (pages_sharing)",
         "pages_sharing");
    node("upm_node_pages_unshared", "gauge", "pages ksmd checks that are not shared (pages_unshared)",
         "pages_unshared");
    node("upm_node_ksm_general_profit_bytes", "gauge", "KSM profit of the node (general_profit, kernels >= 6.6)",
         "general_profit");
    node("upm_node_ksm_full_scans_total", "counter", "full scans ksmd completed (full_scans)", "full_scans");
    node("upm_node_ksm_run", "gauge", "ksmd state (run: 0 stopped, 1 running, 2 unmerging)", "run");
    node("upm_node_ksm_pages_to_scan", "gauge", "pages ksmd scans per batch (pages_to_scan)", "pages_to_scan");
    node("upm_node_ksm_sleep_milliseconds", "gauge", "ksmd's sleep between batches (sleep_millisecs)",
         "sleep_millisecs");
    w.family("upm_node_saved_bytes", "gauge", "pages_sharing times the page size");
    w.sample("upm_node_saved_bytes", {}, u64(n.saved_bytes));
    w.family("upm_node_upm_available", "gauge", "1 when the kernel has synchronous merging (/sys/kernel/mm/upm)");
    w.sample("upm_node_upm_available", {}, u64(n.upm_available ? 1 : 0));
    if (s.ksmd.pid) {
        w.family("upm_ksmd_cpu_seconds_total", "counter", "CPU time of the ksmd kernel thread (utime + stime)");
        w.sample("upm_ksmd_cpu_seconds_total", {}, s.ksmd.seconds);
    }
    const auto& a = registry.node_advised();
    w.family("upm_advised_bytes_total", "counter", "bytes reported advised on the node (every `advised` message)");
    w.sample("upm_advised_bytes_total", {}, a.bytes);
    w.family("upm_advise_calls_total", "counter", "madvise calls reported on the node");
    w.sample("upm_advise_calls_total", {}, a.calls);
    w.family("upm_advise_seconds_total", "counter", "time reported spent in madvise on the node");
    w.sample("upm_advise_seconds_total", {}, a.seconds);
}

// The KSM burst tuner, when it runs.
void tuner_families(Writer& w, const AgentInfo& info) {
    if (info.tuner_mode.empty()) return;
    w.family("upm_ksm_tuner_mode", "gauge", "the KSM burst tuner's mode (1 for the current one)");
    for (const auto& m : info.tuner_modes) w.sample("upm_ksm_tuner_mode", {{"mode", m}}, u64(m == info.tuner_mode ? 1 : 0));
    for (const auto& [k, v] : info.tuner_gauges) {
        std::string name = "upm_ksm_tuner_" + k;
        w.family(name, "gauge", "KSM burst tuner: " + k);
        w.sample(name, {}, v);
    }
    for (const auto& [k, v] : info.tuner_counters) {
        std::string name = "upm_ksm_tuner_" + k + "_total";
        w.family(name, "counter", "KSM burst tuner: " + k);
        w.sample(name, {}, v);
    }
}

}  // namespace

std::string render_agent_metrics(const Registry& registry, const Snapshot& s, const AgentInfo& info) {
    Writer w;
    agent_families(w, registry, info);
    container_families(w, registry, s);
    node_families(w, registry, s);
    tuner_families(w, info);
    return w.text();
}

}  // namespace upm::agent
