// `upm status [PID...] [--json] [--watch [SECONDS]]`: KSM counters of
// processes and of the node and, when the node agent (upmd) runs, of every
// registered container.  Without PIDs: every process with KSM activity
// (ksm_merging_pages or ksm_rmap_items above 0) that we may read.
#include <signal.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <chrono>
#include <cstdio>
#include <fmt/format.h>
#include <memory>
#include <nlohmann/json.hpp>
#include <thread>

#include "commands.hpp"
#include "upm/agent_client.hpp"
#include "upm/nodeconfig.hpp"
#include "upm/report.hpp"
#include "upm/spec.hpp"
#include "upm/stats.hpp"

namespace upm::cli {

namespace {

using json = nlohmann::json;

struct StatusOptions {
    std::vector<int> pids;
    bool json = false;
    double watch = 0;     // seconds between refreshes; 0 = once
    std::string socket;   // "" = $UPM_AGENT_SOCKET or /run/upm/upmd.sock
};

struct AgentView {
    bool running = false;
    std::string socket, error;
    json reply;           // the agent's `status` reply
};

AgentView ask_agent(const std::string& socket) {
    AgentView v;
    v.socket = socket.empty() ? agent_socket_path() : socket;
    if (!agent::agent_socket_present(v.socket)) {
        v.error = "no socket at `" + v.socket + "`";
        return v;
    }
    AgentRequest req;
    req.op = AgentOp::status;
    auto r = agent::call_agent(req, std::chrono::seconds(5), v.socket);
    if (!r) {
        v.error = r.error().message;
        return v;
    }
    v.running = true;
    v.reply = std::move(*r);
    return v;
}

template <typename T>
T get(const json& j, const char* key, T fallback) {
    auto it = j.find(key);
    if (it == j.end() || it->is_null()) return fallback;
    try {
        return it->get<T>();
    } catch (...) {
        return fallback;
    }
}

std::string clip(const std::string& s, std::size_t n) { return s.size() <= n ? s : s.substr(0, n - 1) + "~"; }

std::string render_containers(const AgentView& a) {
    std::string out;
    if (!a.running) {
        return "node agent: not running (" + a.error + "); start it with `systemctl start upmd` for per-container savings\n";
    }
    const json& containers = a.reply.contains("containers") ? a.reply["containers"] : json::array();
    if (containers.empty()) {
        out += "node agent: no container registered\n";
    } else {
        out += fmt::format("{:<24} {:>8} {:<16} {:<12} {:>5} {:>14} {:>11}\n", "CONTAINER", "PID", "POLICY", "DOMAIN",
                           "PROCS", "MERGING_PAGES", "SAVED");
        for (const auto& c : containers) {
            std::string policy = get<std::string>(c, "policy", "");
            std::string domain = get<std::string>(c, "domain", "");
            out += fmt::format("{:<24} {:>8} {:<16} {:<12} {:>5} {:>14} {:>11}\n",
                               clip(printable(get<std::string>(c, "id", "?"), 64), 24), get<long>(c, "pid", 0),
                               clip(policy.empty() ? "(default)" : printable(policy, 64), 16),
                               clip(domain.empty() ? "-" : printable(domain, 64), 12), get<std::uint64_t>(c, "processes", 0),
                               get<std::uint64_t>(c, "ksm_merging_pages", 0),
                               human_bytes(get<std::uint64_t>(c, "saved_bytes", 0)));
        }
    }
    const json node = a.reply.value("node", json::object());
    const json tuner = a.reply.value("tuner", json::object());
    std::string ksmd = node.contains("ksmd_cpu_seconds") && node["ksmd_cpu_seconds"].is_number()
                           ? fmt::format("{:.1f} CPU-s", node["ksmd_cpu_seconds"].get<double>())
                           : std::string("-");
    out += fmt::format("containers: {} registered, {} merging pages, {} saved; advised {} in {} calls; ksmd {}; tuner {}\n",
                       get<std::uint64_t>(node, "containers", containers.size()),
                       get<std::uint64_t>(node, "containers_merging_pages", 0),
                       human_bytes(get<std::uint64_t>(node, "containers_saved_bytes", 0)),
                       human_bytes(get<std::uint64_t>(node, "advised_bytes", 0)), get<std::uint64_t>(node, "advise_calls", 0),
                       ksmd, get<std::string>(tuner, "mode", "off"));
    return out;
}

// The node setting ksm_single_namespace and who holds the KSM backend
// (docs/runtime.md); only where merging is node-wide (stock KSM).
json ksm_namespace_json(const AgentView& agent) {
    const NodeConfigLoad load = load_node_config("");
    json j;
    j["ksm_single_namespace"] = load.config.ksm_single_namespace;
    j["config"] = load.config.source.empty() ? std::string("(defaults)") : load.config.source;
    j["holder"] = nullptr;
    j["containers"] = 0;
    if (agent.running && agent.reply.contains("ksm_namespace") && agent.reply["ksm_namespace"].is_object()) {
        const json& k = agent.reply["ksm_namespace"];
        j["holder"] = k.value("holder", json(nullptr));
        j["containers"] = k.value("containers", 0);
    }
    return j;
}

std::string render_ksm_namespace(const json& k) {
    if (!k.value("ksm_single_namespace", true))
        return "ksm_single_namespace: off (" + k.value("config", std::string()) +
               "): containers of every Kubernetes namespace are advised and merge with each other\n";
    std::string holder = k["holder"].is_string() ? "namespace `" + k["holder"].get<std::string>() + "` (" +
                                                       std::to_string(k.value("containers", 0)) + " containers)"
                                                 : std::string("no namespace yet");
    return "ksm_single_namespace: on: one Kubernetes namespace at a time is advised on KSM; holder: " + holder +
           "; containers of other namespaces start without merging\n";
}

int status_once(const StatusOptions& o) {
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
    AgentView agent = ask_agent(o.socket);
    std::string out;
    if (o.json) {
        json doc = json::parse(render_status_json(report), nullptr, false);
        if (doc.is_discarded() || !doc.is_object()) doc = json::object();
        json a;
        a["running"] = agent.running;
        a["socket"] = agent.socket;
        if (agent.running) {
            a["version"] = agent.reply.value("agent", json::object()).value("version", "");
            a["pid"] = agent.reply.value("agent", json::object()).value("pid", 0);
            a["node"] = agent.reply.value("node", json::object());
            a["tuner"] = agent.reply.value("tuner", json(nullptr));
            a["ksm_namespace"] = agent.reply.value("ksm_namespace", json(nullptr));
            doc["containers"] = agent.reply.value("containers", json::array());
        } else {
            a["error"] = agent.error;
            doc["containers"] = json::array();
        }
        doc["agent"] = std::move(a);
        if (doc.contains("node") && doc["node"].is_object()) doc["node"]["ksm_namespace"] = ksm_namespace_json(agent);
        out = doc.dump(2, ' ', false, json::error_handler_t::replace) + "\n";
    } else {
        out = render_containers(agent) + render_status_table(report);
        if (report.node.ksm_available && !report.node.upm_available) out += render_ksm_namespace(ksm_namespace_json(agent));
    }
    std::fwrite(out.data(), 1, out.size(), stdout);
    std::fflush(stdout);
    return rc;
}

int do_status(const StatusOptions& o) {
    if (o.watch <= 0) return status_once(o);
    const bool tty = ::isatty(STDOUT_FILENO);
    for (;;) {
        if (tty && !o.json) std::fputs("\033[H\033[2J", stdout);
        if (tty && !o.json)
            std::printf("upm status, every %.1f s (Ctrl-C to stop)\n\n", o.watch);
        status_once(o);
        if (!o.json) std::fputs("\n", stdout);
        std::fflush(stdout);
        std::this_thread::sleep_for(std::chrono::duration<double>(o.watch));
    }
}

}  // namespace

void add_status(CLI::App& app, Action& action) {
    auto o = std::make_shared<StatusOptions>();
    auto* cmd = app.add_subcommand("status", "show merged memory per container, per process and for the node");
    cmd->add_option("pid", o->pids, "process ids (default: every process with KSM activity)")
        ->check(CLI::PositiveNumber);
    cmd->add_flag("--json", o->json, "print JSON (fields in docs/cli.md)");
    cmd->add_option("--watch", o->watch, "refresh every SECONDS (default 2) until interrupted")
        ->expected(0, 1)
        ->default_str("2")
        ->check(CLI::Range(0.1, 3600.0));
    cmd->add_option("--socket", o->socket, "the node agent's socket (default: $UPM_AGENT_SOCKET or /run/upm/upmd.sock)");
    cmd->footer("Per-container rows come from the node agent (upmd) when it runs; without it, processes and the "
                "node only.");
    cmd->callback([o, &action] { action = [o] { return do_status(*o); }; });
}

}  // namespace upm::cli
