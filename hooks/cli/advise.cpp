// `upm advise PID [--policy P] [--rate MIB] [--json]` and `upm advise
// --container ID`: one-shot remote advice through a pidfd and
// process_madvise(MADV_UPM) (docs/remote-advice.md).  On a kernel without
// MADV_UPM it says "remote advice unavailable: WHY", changes nothing and
// exits 2.
#include <CLI/CLI.hpp>
#include <chrono>
#include <cstdio>
#include <fmt/format.h>
#include <memory>
#include <nlohmann/json.hpp>
#include <thread>

#include "commands.hpp"
#include "upm/agent_client.hpp"
#include "upm/remote.hpp"
#include "upm/report.hpp"
#include "upm/stats.hpp"

namespace upm::cli {

namespace {

using json = nlohmann::json;

struct AdviseOptions {
    int pid = 0;
    std::string container, policy, socket;
    double rate_mib = 1024;   // MiB per second
    bool json = false;
};

constexpr int kUnavailable = 2;

int unavailable(const AdviseOptions& o, const std::string& why) {
    if (o.json)
        std::printf("%s\n", json{{"available", false}, {"why", why}, {"changed", false}}.dump(2).c_str());
    std::fprintf(stderr, "upm advise: remote advice unavailable: %s; nothing was changed\n", why.c_str());
    return kUnavailable;
}

// Advises the job's ranges at `rate` bytes per second.
void run_job(remote::Job& job, double rate) {
    const std::uint64_t step = std::uint64_t(64) << 20;
    while (!job.finished()) {
        const auto t0 = std::chrono::steady_clock::now();
        job.step(step);
        const double due = static_cast<double>(step) / rate -
                           std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        if (!job.finished() && due > 0) std::this_thread::sleep_for(std::chrono::duration<double>(due));
    }
}

std::string render_report(int pid, const remote::Plan& plan, const remote::Outcome& out, std::uint64_t merged) {
    std::string s = fmt::format("{:>18} {:>18} {:>11}\n", "START", "END", "SIZE");
    for (const auto& r : plan.ranges) s += fmt::format("{:>#18x} {:>#18x} {:>11}\n", r.start, r.end, human_bytes(r.size()));
    s += fmt::format("process {}: {} regions in {} ranges, {} planned; {} advised in {} process_madvise calls "
                     "({:.3f} s){}; {} merged pages after\n",
                     pid, plan.regions, plan.ranges.size(), human_bytes(plan.bytes), human_bytes(out.bytes_advised),
                     out.calls, out.seconds, out.message.empty() ? "" : "; stopped: " + out.message, merged);
    return s;
}

int advise_pid(const AdviseOptions& o) {
    auto avail = remote::availability();
    if (!avail.available) return unavailable(o, avail.why);
    Policy policy;
    if (!load_cli_policy(o.policy, policy)) return 1;
    auto target = remote::open_target(o.pid);
    if (!target) {
        std::fprintf(stderr, "upm advise: %s\n", target.error().message.c_str());
        return 1;
    }
    remote::Plan plan = remote::plan(policy, target->regions, o.pid);
    remote::Job job(std::move(*target), plan.ranges, remote::madv_upm());
    run_job(job, o.rate_mib * 1024 * 1024);
    const remote::Outcome& out = job.outcome();
    auto stats = read_process_stats(o.pid);
    const std::uint64_t merged = stats ? stats->ksm_merging_pages : 0;
    if (o.json) {
        json ranges = json::array();
        for (const auto& r : plan.ranges) ranges.push_back({{"start", fmt::format("{:#x}", r.start)},
                                                           {"end", fmt::format("{:#x}", r.end)}, {"size", r.size()}});
        std::printf("%s\n", json{{"available", true}, {"pid", o.pid}, {"ranges", ranges}, {"bytes_planned", plan.bytes},
                                 {"bytes_advised", out.bytes_advised}, {"bytes_skipped", out.bytes_skipped},
                                 {"calls", out.calls}, {"seconds", out.seconds}, {"target_exited", out.target_exited},
                                 {"error", out.message}, {"ksm_merging_pages", merged}}
                                .dump(2).c_str());
    } else {
        std::fputs(render_report(o.pid, plan, out, merged).c_str(), stdout);
    }
    return out.done ? 0 : 1;
}

int advise_container(const AdviseOptions& o) {
    AgentRequest req;
    req.op = AgentOp::advise;
    req.id = o.container;
    req.policy = o.policy;
    const std::string socket = o.socket.empty() ? agent_socket_path() : o.socket;
    auto reply = agent::call_agent(req, std::chrono::seconds(5), socket);
    if (!reply) {
        const std::string& m = reply.error().message;
        std::fprintf(stderr, "upm advise: %s\n", m.c_str());
        return m.find("remote advice unavailable") != std::string::npos ? kUnavailable : 1;
    }
    if (o.json) {
        std::printf("%s\n", reply->dump(2).c_str());
    } else {
        std::printf("container `%s`: %zu processes queued for remote advice by upmd (progress: upm status)\n",
                    o.container.c_str(), reply->value("queued", std::size_t(0)));
    }
    return 0;
}

}  // namespace

void add_advise(CLI::App& app, Action& action) {
    auto o = std::make_shared<AdviseOptions>();
    auto* cmd = app.add_subcommand("advise", "advise a process's memory from outside (process_madvise with MADV_UPM; "
                                             "upm kernel only)");
    auto* pid = cmd->add_option("pid", o->pid, "process id")->check(CLI::PositiveNumber);
    auto* ct = cmd->add_option("--container", o->container, "a container registered with upmd: upmd advises it");
    pid->excludes(ct);
    cmd->add_option("--policy", o->policy, "policy file or NAME (default: the built-in default; --container: its own)");
    cmd->add_option("--rate", o->rate_mib, "MiB advised per second at most (default 1024)")->check(CLI::Range(1.0, 1e6));
    cmd->add_option("--socket", o->socket, "the node agent's socket (--container)");
    cmd->add_flag("--json", o->json, "print JSON (fields in docs/cli.md)");
    cmd->callback([o, &action, pid, ct] {
        if (pid->count() == 0 && ct->count() == 0) throw CLI::RequiredError("PID or --container");
        action = [o] { return o->container.empty() ? advise_pid(*o) : advise_container(*o); };
    });
}

}  // namespace upm::cli
