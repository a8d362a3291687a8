// `upm maps PID [--policy P] [--json] [--remote]`: every region of a
// process, its class, whether the policy advises it and why, and whether
// the kernel currently has it marked mergeable (VmFlags `mg` in
// /proc/PID/smaps); `--remote`: the ranges remote advice (`upm advise`,
// upmd) would give process_madvise(), the same decision as the preload's.
#include <CLI/CLI.hpp>
#include <cstdio>
#include <fmt/format.h>
#include <memory>
#include <nlohmann/json.hpp>
#include <utility>

#include "commands.hpp"
#include "upm/classify.hpp"
#include "upm/maps.hpp"
#include "upm/object_bss.hpp"
#include "upm/remote.hpp"
#include "upm/report.hpp"

namespace upm::cli {

namespace {

struct MapsOptions {
    int pid = 0;
    std::string policy;
    bool json = false;
    bool remote = false;
};

// The plan of remote advice, after the table (text) or as `remote` (JSON).
std::string render_remote(const remote::Plan& plan, bool as_json, const std::string& regions_json) {
    const remote::Availability a = remote::availability();
    const std::size_t calls = remote::calls_for(plan.ranges);
    if (as_json) {
        nlohmann::json ranges = nlohmann::json::array();
        for (const auto& r : plan.ranges)
            ranges.push_back({{"start", fmt::format("{:#x}", r.start)}, {"end", fmt::format("{:#x}", r.end)},
                              {"size", r.size()}});
        nlohmann::json doc = {{"regions", nlohmann::json::parse(regions_json, nullptr, false)},
                              {"remote", {{"available", a.available}, {"why", a.why}, {"ranges", ranges},
                                          {"bytes", plan.bytes}, {"regions", plan.regions}, {"calls", calls}}}};
        return doc.dump(2) + "\n";
    }
    std::string out = fmt::format("remote advice: {} regions in {} range{}, {}, {} process_madvise call{}\n",
                                  plan.regions, plan.ranges.size(), plan.ranges.size() == 1 ? "" : "s",
                                  human_bytes(plan.bytes), calls, calls == 1 ? "" : "s");
    for (const auto& r : plan.ranges)
        out += fmt::format("  {:#x}-{:#x} {}\n", r.start, r.end, human_bytes(r.size()));
    out += a.available ? "remote advice available: " + a.why + "\n" : "remote advice unavailable: " + a.why + "\n";
    return out;
}

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
    std::vector<Decision> decisions = decide(policy, classify(*regions, &bss));
    for (const auto& d : decisions) {
        std::optional<bool> mg;
        if (flags) mg = has_vmflag(*flags, d.region.region.start, "mg");
        rows.push_back({d, mg});
    }
    std::string out = o.json ? render_maps_json(rows) : render_maps_table(rows);
    if (o.remote) {
        const std::string table = out;
        out = render_remote(remote::plan(std::move(decisions)), o.json, table);
        if (!o.json) out = table + out;
    }
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
    cmd->add_flag("--remote", o->remote,
                  "also show what remote advice (upm advise, upmd) would do: the ranges given to process_madvise() "
                  "and whether this kernel accepts it (with --json: an object {regions, remote})");
    cmd->callback([o, &action] { action = [o] { return do_maps(*o); }; });
}

}  // namespace upm::cli
