// `upm status [PID...] [--json]`: KSM counters of processes and of the node.
// Without PIDs: every process with KSM activity (ksm_merging_pages or
// ksm_rmap_items above 0) that we may read.
#include <CLI/CLI.hpp>
#include <cstdio>
#include <memory>

#include "commands.hpp"
#include "upm/report.hpp"
#include "upm/stats.hpp"

namespace upm::cli {

namespace {

struct StatusOptions {
    std::vector<int> pids;
    bool json = false;
};

int do_status(const StatusOptions& o) {
    StatusReport report;
    int rc = 0;
    if (o.pids.empty()) {
        for (pid_t pid : list_pids()) {
            auto s = read_process_stats(pid);
            if (s && (s->ksm_merging_pages > 0 || s->ksm_rmap_items > 0)) report.processes.push_back(std::move(*s));
        }
    } else {
        for (int pid : o.pids) {
            auto s = read_process_stats(pid);
            if (!s) {
                std::fprintf(stderr, "upm status: %s\n", s.error().message.c_str());
                rc = 1;
                continue;
            }
            report.processes.push_back(std::move(*s));
        }
    }
    report.node = read_node_stats();
    std::string out = o.json ? render_status_json(report) : render_status_table(report);
    std::fwrite(out.data(), 1, out.size(), stdout);
    return rc;
}

}  // namespace

void add_status(CLI::App& app, Action& action) {
    auto o = std::make_shared<StatusOptions>();
    auto* cmd = app.add_subcommand("status", "show merged memory per process and for the node");
    cmd->add_option("pid", o->pids, "process ids (default: every process with KSM activity)")
        ->check(CLI::PositiveNumber);
    cmd->add_flag("--json", o->json, "print JSON (fields in docs/cli.md)");
    cmd->callback([o, &action] { action = [o] { return do_status(*o); }; });
}

}  // namespace upm::cli
