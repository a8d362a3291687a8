// `upm maps PID [--policy P] [--json]`: every region of a process, its class,
// whether the policy advises it and why, and whether the kernel currently
// has it marked mergeable (VmFlags `mg` in /proc/PID/smaps).
#include <CLI/CLI.hpp>
#include <cstdio>
#include <memory>

#include "commands.hpp"
#include "upm/classify.hpp"
#include "upm/maps.hpp"
#include "upm/object_bss.hpp"
#include "upm/report.hpp"

namespace upm::cli {

namespace {

struct MapsOptions {
    int pid = 0;
    std::string policy;
    bool json = false;
};

int do_maps(const MapsOptions& o) {
    Policy policy;
    if (!load_cli_policy(o.policy, policy)) return 1;
    auto regions = read_maps(o.pid);
    if (!regions) {
        std::fprintf(stderr, "upm maps: cannot read the maps of process %d: %s (is it running? another user's "
                             "process needs root)\n", o.pid, regions.error().message.c_str());
        return 1;
    }
    auto flags = read_smaps_vmflags(o.pid);
    std::vector<MapsRow> rows;
    const std::vector<BssRange> bss = object_bss(o.pid, *regions);
    for (auto& d : decide(policy, classify(*regions, &bss))) {
        std::optional<bool> mg;
        if (flags) mg = has_vmflag(*flags, d.region.region.start, "mg");
        rows.push_back({std::move(d), mg});
    }
    std::string out = o.json ? render_maps_json(rows) : render_maps_table(rows);
    std::fwrite(out.data(), 1, out.size(), stdout);
    return 0;
}

}  // namespace

void add_maps(CLI::App& app, Action& action) {
    auto o = std::make_shared<MapsOptions>();
    auto* cmd = app.add_subcommand("maps", "show the regions of a process, their class and what a policy advises");
    cmd->add_option("pid", o->pid, "process id")->required()->check(CLI::PositiveNumber);
    cmd->add_option("--policy", o->policy, "policy file or NAME (default: the built-in default policy)");
    cmd->add_flag("--json", o->json, "print a JSON array (fields in docs/cli.md)");
    cmd->callback([o, &action] { action = [o] { return do_maps(*o); }; });
}

}  // namespace upm::cli
