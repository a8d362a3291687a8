// Prometheus text exposition format (version 0.0.4) for the node agent.
//
// Writer emits families in the order given: "# HELP name text",
// "# TYPE name gauge|counter", then the samples, label values escaped
// (backslash, double quote, newline).  render_agent_metrics() is what upmd
// serves on GET /metrics and writes to the node-exporter textfile; the
// metric names are listed in docs/agent.md.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "upm/agent_registry.hpp"

namespace upm::metrics {

using Labels = std::vector<std::pair<std::string, std::string>>;

std::string escape_label_value(std::string_view value);   // \ -> \\, " -> \", newline -> \n
std::string escape_help(std::string_view text);           // \ -> \\, newline -> \n
std::string format_value(double value);                   // 12, 0.5, NaN, +Inf, -Inf

class Writer {
public:
    // Starts a family; `type` is "gauge" or "counter".  A family's samples
    // follow it; a family without samples is still declared.
    void family(std::string_view name, std::string_view type, std::string_view help);
    void sample(std::string_view name, const Labels& labels, double value);
    void sample(std::string_view name, const Labels& labels, std::uint64_t value);
    void sample(std::string_view name, const Labels& labels, std::int64_t value);
    const std::string& text() const { return out_; }

private:
    void start_sample(std::string_view name, const Labels& labels);
    std::string out_;
};

}  // namespace upm::metrics

namespace upm::agent {

// What the agent knows about itself and its tuner, for the metrics.
struct AgentInfo {
    std::string version;
    double started_at = 0;                              // unix time
    std::size_t connections = 0;                        // open client connections
    std::map<std::string, std::uint64_t> requests;      // by op, errors as "error"
    std::uint64_t dropped_connections = 0;              // refused: too many, or timed out
    // KSM burst tuner; mode empty = no tuner running.
    std::string tuner_mode;
    std::vector<std::string> tuner_modes;               // every mode, for the state set
    std::map<std::string, double> tuner_gauges;         // upm_ksm_tuner_<name>
    std::map<std::string, double> tuner_counters;       // upm_ksm_tuner_<name>_total
};

std::string render_agent_metrics(const Registry& registry, const Snapshot& snapshot, const AgentInfo& info);

}  // namespace upm::agent
