// Rendering of what `upm maps` and `upm status` show, as text tables and as
// JSON (field names documented in docs/cli.md; tests depend on them).
// Kept in the library so that every program (CLI, node agent) prints the
// same thing.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "upm/policy.hpp"
#include "upm/stats.hpp"

namespace upm {

struct MapsRow {
    Decision decision;
    std::optional<bool> mergeable;  // VmFlags "mg" from smaps; nullopt = unknown
};

std::string render_maps_table(const std::vector<MapsRow>& rows);
std::string render_maps_json(const std::vector<MapsRow>& rows);

struct StatusReport {
    std::vector<ProcessStats> processes;
    NodeStats node;
};

// "merging scope: ..." for the node (docs/threat-model.md), or "" without KSM.
std::string merging_scope_line(const NodeStats& n);
std::string render_status_table(const StatusReport& report);
std::string render_status_json(const StatusReport& report);

std::string human_bytes(std::uint64_t bytes);  // "12.3 MiB", "512 B"

}  // namespace upm
