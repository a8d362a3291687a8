// Table and JSON rendering for `upm maps` and `upm status`.
#include "upm/report.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <nlohmann/json.hpp>

namespace upm {

using json = nlohmann::ordered_json;

namespace {

std::string hex(std::uint64_t v) { return fmt::format("0x{:x}", v); }

const char* yes_no(std::optional<bool> b) { return !b ? "?" : *b ? "yes" : "no"; }

std::string display_path(const Region& r) { return r.deleted ? r.path + " (deleted)" : r.path; }

}  // namespace

std::string human_bytes(std::uint64_t bytes) {
    static constexpr const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
    if (bytes < 1024) return fmt::format("{} B", bytes);
    double v = static_cast<double>(bytes);
    std::size_t u = 0;
    while (v >= 1024 && u + 1 < std::size(units)) {
        v /= 1024;
        ++u;
    }
    return fmt::format("{:.1f} {}", v, units[u]);
}

std::string render_maps_table(const std::vector<MapsRow>& rows) {
    try {
        std::size_t path_w = 4;
        for (const auto& row : rows) path_w = std::max(path_w, display_path(row.decision.region.region).size());
        path_w = std::min<std::size_t>(path_w, 60);
        std::string out = fmt::format("{:<33} {:<5} {:>10} {:<9} {:<6} {:<9} {:<{}} {}\n", "RANGE", "PERMS", "SIZE",
                                      "CLASS", "ADVISE", "MERGEABLE", "PATH", path_w, "REASON");
        std::uint64_t advised = 0;
        std::size_t advised_n = 0;
        for (const auto& row : rows) {
            const auto& d = row.decision;
            const Region& r = d.region.region;
            if (d.advise) {
                advised += r.size();
                ++advised_n;
            }
            out += fmt::format("{:<33} {:<5} {:>10} {:<9} {:<6} {:<9} {:<{}} {}\n", fmt::format("{:x}-{:x}", r.start, r.end),
                               r.perms(), human_bytes(r.size()), to_string(d.region.cls), d.advise ? "yes" : "no",
                               yes_no(row.mergeable), display_path(r), path_w, d.reason);
        }
        out += fmt::format("{} of {} regions advised, {}\n", advised_n, rows.size(), human_bytes(advised));
        return out;
    } catch (const std::exception& e) {
        return std::string("error rendering table: ") + e.what() + "\n";
    }
}

std::string render_maps_json(const std::vector<MapsRow>& rows) {
    try {
        json out = json::array();
        for (const auto& row : rows) {
            const auto& d = row.decision;
            const Region& r = d.region.region;
            json j;
            j["start"] = hex(r.start);
            j["end"] = hex(r.end);
            j["size"] = r.size();
            j["perms"] = r.perms();
            j["offset"] = r.offset;
            j["dev"] = fmt::format("{:02x}:{:02x}", r.dev_major, r.dev_minor);
            j["inode"] = r.inode;
            j["path"] = r.path;
            j["deleted"] = r.deleted;
            j["class"] = to_string(d.region.cls);
            j["why"] = d.region.why;
            j["advise"] = d.advise;
            j["reason"] = d.reason;
            j["mergeable"] = row.mergeable ? json(*row.mergeable) : json(nullptr);
            out.push_back(std::move(j));
        }
        return out.dump(2) + "\n";
    } catch (const std::exception& e) {
        return "[]\n";
    }
}

std::string render_status_table(const StatusReport& report) {
    try {
        std::string out;
        if (report.processes.empty()) {
            out += "no process with KSM activity\n";
        } else {
            out += fmt::format("{:>8} {:<16} {:>14} {:>11} {:>11} {:>11}\n", "PID", "COMM", "MERGING_PAGES",
                               "RMAP_ITEMS", "PSS", "SAVED");
            for (const auto& p : report.processes)
                out += fmt::format("{:>8} {:<16} {:>14} {:>11} {:>11} {:>11}\n", p.pid, p.comm, p.ksm_merging_pages,
                                   p.ksm_rmap_items, human_bytes(p.pss_bytes), human_bytes(p.saved_bytes));
        }
        const NodeStats& n = report.node;
        auto get = [&](const std::map<std::string, std::int64_t>& m, const char* key) -> std::string {
            auto it = m.find(key);
            return it == m.end() ? "-" : std::to_string(it->second);
        };
        if (!n.ksm_available) {
            out += "node: no KSM in this kernel (/sys/kernel/mm/ksm is missing)\n";
        } else {
            out += fmt::format(
                "node ksm: run={} pages_shared={} pages_sharing={} general_profit={} full_scans={} saved={}\n",
                get(n.ksm, "run"), get(n.ksm, "pages_shared"), get(n.ksm, "pages_sharing"),
                get(n.ksm, "general_profit"), get(n.ksm, "full_scans"), human_bytes(n.saved_bytes));
        }
        if (n.upm_available) {
            out += "node upm:";
            for (const auto& [k, v] : n.upm) out += fmt::format(" {}={}", k, v);
            out += "\n";
        }
        out += merging_scope_line(n);
        return out;
    } catch (const std::exception& e) {
        return std::string("error rendering status: ") + e.what() + "\n";
    }
}

// Which processes may share a merged page on this node: the side channel an
// operator must know about (docs/threat-model.md).
std::string merging_scope_line(const NodeStats& n) {
    if (n.upm_available)
        return "merging scope: per sharing domain (upm kernel: MADV_UPM merges only within a domain; pages of "
               "processes that never used it merge node-wide as with KSM)\n";
    if (n.ksm_available)
        return "merging scope: node-wide (stock KSM: ksmd merges across sharing domains, a domain only scopes "
               "layout and hash seeds; docs/threat-model.md)\n";
    return "";
}

std::string render_status_json(const StatusReport& report) {
    try {
        json procs = json::array();
        for (const auto& p : report.processes) {
            json j;
            j["pid"] = p.pid;
            j["comm"] = p.comm;
            j["ksm_merging_pages"] = p.ksm_merging_pages;
            j["ksm_rmap_items"] = p.ksm_rmap_items;
            j["ksm_process_profit"] = p.ksm_process_profit ? json(*p.ksm_process_profit) : json(nullptr);
            j["pss_bytes"] = p.pss_bytes;
            j["rss_bytes"] = p.rss_bytes;
            j["saved_bytes"] = p.saved_bytes;
            procs.push_back(std::move(j));
        }
        const NodeStats& n = report.node;
        json node;
        node["ksm_available"] = n.ksm_available;
        node["upm_available"] = n.upm_available;
        node["merging_scope"] = n.upm_available ? "domain" : n.ksm_available ? "node" : "none";
        node["page_size"] = n.page_size;
        node["saved_bytes"] = n.saved_bytes;
        node["ksm"] = json::object();
        for (const auto& [k, v] : n.ksm) node["ksm"][k] = v;
        for (const auto& [k, v] : n.ksm_text) node["ksm"][k] = v;
        node["upm"] = json::object();
        for (const auto& [k, v] : n.upm) node["upm"][k] = v;
        json out;
        out["processes"] = std::move(procs);
        out["node"] = std::move(node);
        return out.dump(2) + "\n";
    } catch (const std::exception& e) {
        return "{}\n";
    }
}

}  // namespace upm
