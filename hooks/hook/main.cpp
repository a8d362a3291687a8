// upm-hook: the OCI hook upm-runtime adds to annotated containers
// (`upm-hook poststart`, `upm-hook poststop`; docs/runtime.md).
//
// Reads the container state the runtime writes on stdin (runtime-spec
// "state": ociVersion, id, status, pid, bundle, annotations; at most 1 MiB),
// checks it, and writes one line per event to the node log file
// (`log_file` of the node configuration, the same file as upm-runtime's):
//   "TIME upm-hook[PID] info: container `ID`: poststart, pid 123, policy `p`, domain `d`".
// Annotation values and ids are untrusted: logged through printable(); no
// environment value is ever logged.
//
// poststart registers the container with the node agent ($UPM_AGENT_SOCKET
// or /run/upm/upmd.sock), poststop unregisters it (docs/agent.md).
//
// Exit status: always 0 for poststart and poststop, even on malformed input
// (the error goes to the log): runc kills the container when a poststart
// hook fails.  Usage errors (no or an unknown command) exit non-zero.
#include <fcntl.h>
#include <limits.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <cerrno>
#include <cstdio>
#include <ctime>
#include <string>
#include <string_view>

#include "hook_io.hpp"
#include "upm/agent_client.hpp"
#include "upm/nodeconfig.hpp"
#include "upm/ocistate.hpp"
#include "upm/spec.hpp"

namespace {

using upm_hook::HookLog;
using upm_hook::read_stdin;

int run_event(const std::string& event, const upm::NodeConfigLoad& load) {
    HookLog log(load.config);
    try {
        std::string file = load.config.source.empty() ? upm::kNodeConfigPath : load.config.source;
        for (const auto& problem : load.problems)
            log.write(problem.level, upm::format_problem(file, problem));
        auto text = read_stdin();
        if (!text) {
            log.write(upm::Level::error, event + ": container state on stdin: " + text.error().message);
            return 0;
        }
        auto state = upm::parse_container_state(*text, event == "poststart");
        if (!state) {
            log.write(upm::Level::error, event + ": container state on stdin: " + state.error().message);
            return 0;
        }
        // The domain upm-runtime (or createRuntime) gave the container: the
        // annotation's, scoped by the pod's namespace (docs/hardening.md).
        std::string domain;
        if (upm::valid_domain_name(state->domain)) {
            upm::UpmAnnotations ns;
            ns.cri_namespace_present = state->cri_namespace_present;
            ns.cri_namespace = state->cri_namespace;
            ns.crio_namespace_present = state->crio_namespace_present;
            ns.crio_namespace = state->crio_namespace;
            domain = upm::scope_domain(load.config.domain_scope, state->domain, ns).domain;
        }
        std::string line = "container `" + upm::printable(state->id) + "`: " + event;
        if (state->pid > 0) line += ", pid " + std::to_string(state->pid);
        if (!state->status.empty()) line += ", status `" + upm::printable(state->status, 16) + "`";
        line += ", policy `" + (state->policy.empty() ? std::string("(default)") : upm::printable(state->policy)) + "`";
        if (!domain.empty()) line += ", domain `" + domain + "`";
        if (!state->enabled) line += " (not annotated upm.enabled=true)";
        log.write(upm::Level::info, line);
        // The node agent (upmd, docs/agent.md): poststart registers, poststop
        // unregisters; at most 800 ms, and the hook exits 0 whatever happens.
        auto note = upm::agent::hook_notify_agent(event, state->id, state->pid, state->policy, domain);
        if (!note.message.empty()) log.write(note.level, note.message);
    } catch (const std::exception& e) {
        log.write(upm::Level::error, event + ": " + e.what());
    } catch (...) {
        log.write(upm::Level::error, event + ": unexpected failure");
    }
    return 0;
}

std::string self_exe() {
    char buf[PATH_MAX];
    ssize_t n = ::readlink("/proc/self/exe", buf, sizeof buf - 1);
    return n > 0 ? std::string(buf, static_cast<std::size_t>(n)) : std::string();
}

}  // namespace

int main(int argc, char** argv) {
    // The runtime calls exactly `upm-hook STAGE`: answer those without
    // CLI11, so that nothing in argument parsing can fail them.
    const std::string_view stage = argc >= 2 ? argv[1] : "";
    if (!(argc >= 3 && (std::string_view(argv[2]) == "--help" || std::string_view(argv[2]) == "-h"))) {
        try {
            if (stage == "poststart" || stage == "poststop")
                return run_event(argv[1], upm::load_node_config(self_exe()));
            if (stage == "createRuntime" || stage == "prestart")
                return upm_hook::run_create_runtime(argv[1], upm::load_node_config(self_exe()));
            if (stage == "precreate") return upm_hook::run_precreate(upm::load_node_config(self_exe()));
        } catch (...) {
            return 0;
        }
    }

    CLI::App app{"upm-hook: the OCI hook of upm (User-guided Page Merging): added by upm-runtime\n"
                 "(poststart, poststop) or by a hooks directory (CRI-O, podman: createRuntime, precreate).\n"
                 "Reads the container state (JSON, at most 1 MiB) on stdin (precreate: the spec, at most\n"
                 "4 MiB) and logs to the node log file (node configuration: $UPM_CONFIG or\n"
                 "/etc/upm/config.json).  Exits 0 unless a fail-closed policy refuses the container.\n"
                 "Documentation: docs/runtime.md.",
                 "upm-hook"};
    app.set_version_flag("--version", "upm-hook " UPM_VERSION);
    app.require_subcommand(1);
    app.add_subcommand("poststart", "the container's process started: register it with the node agent (when one runs)");
    app.add_subcommand("poststop", "the container stopped: clean up");
    app.add_subcommand("createRuntime",
                       "hooks.d mode: mount the preload and the policy under /dev/upm of the container being\n"
                       "created and list the preload in its /etc/ld.so.preload (read-only bind); `prestart`\n"
                       "is accepted as a synonym");
    app.add_subcommand("prestart", "the same as createRuntime (the deprecated stage at the same point)");
    app.add_subcommand("precreate",
                       "podman's precreate stage: the runtime spec on stdin, the spec with the preload, the\n"
                       "policy and LD_PRELOAD added on stdout (unchanged when not annotated or on errors)");
    CLI11_PARSE(app, argc, argv);
    return 0;
}
