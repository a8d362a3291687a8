// `upm run [OPTIONS] -- CMD ARGS...`: exec CMD with the preload and a policy.
//
// upm run never forks: it sets the environment and execs, so the exit status
// is CMD's.  It fails open: a broken policy or a missing preload is reported
// loudly on stderr and CMD runs without upm.  It exits 127 without running
// CMD only when asked to fail closed: --fail-closed, or a policy that parses
// and says "on_error": "closed" (an invalid one, or a valid one when the
// preload is missing).
#include <stdlib.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <memory>
#include <spdlog/spdlog.h>

#include "commands.hpp"
#include "upm/agent_client.hpp"
#include "upm/hardening.hpp"
#include "upm/launch.hpp"
#include "upm/log.hpp"
#include "upm/policy.hpp"

namespace upm::cli {

namespace {

struct RunOptions {
    std::string policy, backend, domain, log;
    bool fail_closed = false;
    std::vector<std::string> command;
};

// Fail-open and fail-closed notices are printed whatever the log level (an
// operator must learn why a program runs without upm), in the logger's format.
void say(upm::Level level, const std::string& message) {
    std::fprintf(stderr, "upm[%d] %s: %s\n", static_cast<int>(::getpid()), std::string(upm::to_string(level)).c_str(),
                 message.c_str());
}

[[noreturn]] void exec_command(const RunOptions& o) {
    std::vector<char*> argv;
    for (const auto& a : o.command) argv.push_back(const_cast<char*>(a.c_str()));
    argv.push_back(nullptr);
    ::execvp(argv[0], argv.data());
    int e = errno;
    std::fprintf(stderr, "upm run: cannot execute `%s`: %s\n", o.command[0].c_str(), std::strerror(e));
    std::exit(e == ENOENT ? 127 : 126);
}

// Runs the command without upm (fail open), or exits 127 (fail closed).
[[noreturn]] void without_upm(const RunOptions& o, bool closed, const std::string& why) {
    if (closed) {
        say(upm::Level::error, fmt::format("not running `{}` (fail closed): {}", o.command[0], why));
        std::exit(127);
    }
    say(upm::Level::warn, fmt::format("running `{}` without upm (fail open): {}", o.command[0], why));
    exec_command(o);
}

// Layout and hash seeds (docs/hardening.md), before the exec: fail open,
// every setting that cannot be applied leaves its hardening in place.
void apply_hardening(const Policy& policy, const std::string& domain) {
    HardeningPlan plan = plan_hardening(policy, domain);
    for (const auto& why : plan.problems) say(upm::Level::warn, why);
    // Never replaces a value the caller set; the Perl pair only when neither is set.
    const bool perl_set = std::getenv("PERL_HASH_SEED") || std::getenv("PERL_PERTURB_KEYS");
    for (const auto& [name, value] : plan.env)
        if (!(name.starts_with("PERL_") && perl_set)) ::setenv(name.c_str(), value.c_str(), 0);
    if (auto a = apply_layout_to_self(plan); !a)
        say(upm::Level::warn, "layout not applied: " + a.error().message + "; ASLR stays");
    if (!plan.summary.empty()) logger()->info("hardening settings: {}", plan.summary);
}

// Registers the program with the node agent when one runs (docs/agent.md):
// id `run-PID`, the pid stays CMD's through the exec, and the agent drops the
// entry when the process exits.  Fail open: at most 500 ms, then CMD runs.
void register_with_agent(const RunOptions& o) {
    std::string socket = agent_socket_path();
    if (!agent::agent_socket_present(socket)) return;
    AgentRequest r;
    r.op = AgentOp::register_container;
    r.pid = ::getpid();
    r.id = "run-" + std::to_string(r.pid);
    r.policy = o.policy.substr(o.policy.rfind('/') + 1);   // a label: the file name of a policy path
    if (r.policy.size() > kMaxAgentLabel) r.policy.resize(kMaxAgentLabel);
    r.domain = o.domain;
    r.start_time = agent::process_start_ticks(r.pid);
    auto reply = agent::call_agent(r, std::chrono::milliseconds(500), socket);
    if (!reply) logger()->info("not registered with the node agent: {}", reply.error().message);
    else logger()->debug("registered with the node agent as `{}`", r.id);
}

int do_run(RunOptions& o) {
    if (!o.log.empty()) setup_logging("upm", o.log);
    if (o.command.empty()) {
        std::fprintf(stderr, "upm run: no command given; usage: upm run [OPTIONS] -- CMD [ARGS...]\n");
        return 2;
    }
    if (!o.domain.empty() && !valid_domain_name(o.domain)) {
        std::fprintf(stderr,
                     "upm run: invalid --domain `%s`: use up to 64 letters, digits, `.`, `_` or `-`, starting with "
                     "a letter or digit\n",
                     o.domain.c_str());
        return 2;
    }

    std::string policy_path;
    bool closed = o.fail_closed;  // after a valid policy: also its on_error
    if (!o.policy.empty()) {
        auto resolved = resolve_policy(o.policy);
        if (!resolved) without_upm(o, o.fail_closed, resolved.error().message);
        auto check = load_policy_file(*resolved);
        bool valid = check.policy.has_value();
        for (const auto& p : check.problems) {
            if (p.warning() && valid)
                logger()->info("{}", format_problem(*resolved, p));
            else
                std::fprintf(stderr, "%s\n", format_problem(*resolved, p).c_str());
        }
        if (!valid) {
            without_upm(o, closed || check.declared_on_error == FailMode::closed,
                        "policy `" + *resolved + "` is invalid (" + std::to_string(check.error_count()) +
                            (check.error_count() == 1 ? " error" : " errors") + ")");
        }
        policy_path = *resolved;
        closed = closed || check.policy->on_error == FailMode::closed;
        apply_hardening(*check.policy, o.domain.empty() ? check.policy->domain : o.domain);
    }

    auto found = find_preload();
    if (!found) {
        say(upm::Level::error, found.error().message);
        without_upm(o, closed, "libupm-preload.so not found");
    }
    const std::string& preload = *found;
    if (preload.find_first_of(": ") != std::string::npos)
        without_upm(o, closed, "the preload path `" + preload + "` contains `:` or a space");

    const char* old_ld = std::getenv("LD_PRELOAD");
    std::string ld = append_ld_preload(old_ld ? old_ld : "", preload);
    ::setenv("LD_PRELOAD", ld.c_str(), 1);
    if (policy_path.empty())
        ::unsetenv(kEnvPolicy);
    else
        ::setenv(kEnvPolicy, policy_path.c_str(), 1);
    if (!o.backend.empty()) ::setenv(kEnvBackend, o.backend.c_str(), 1);
    if (!o.domain.empty()) ::setenv(kEnvDomain, o.domain.c_str(), 1);
    if (!o.log.empty()) ::setenv(kEnvLog, o.log.c_str(), 1);
    if (o.fail_closed) ::setenv(kEnvFailClosed, "1", 1);  // the preload fails closed too
    logger()->debug("exec `{}` with LD_PRELOAD=`{}` UPM_POLICY=`{}`", o.command[0], ld, policy_path);
    register_with_agent(o);
    exec_command(o);
}

}  // namespace

void add_run(CLI::App& app, Action& action, std::vector<std::string> command) {
    auto o = std::make_shared<RunOptions>();
    auto* cmd = app.add_subcommand(
        "run", "run a command with the upm preload and a policy: upm run [OPTIONS] -- CMD [ARGS...]");
    cmd->add_option("--policy", o->policy, "policy file, or NAME looked up in the policy directories");
    cmd->add_option("--backend", o->backend, "override the policy's backend")
        ->check(CLI::IsMember({"auto", "upm", "ksm"}));
    cmd->add_option("--domain", o->domain, "sharing domain (UPM_DOMAIN)");
    cmd->add_option("--log", o->log, "log level of upm and the preload (UPM_LOG)")
        ->check(CLI::IsMember({"off", "error", "warn", "info", "debug", "trace"}));
    cmd->add_flag("--fail-closed", o->fail_closed,
                  "exit 127 instead of running CMD without upm when the policy or the preload is unusable");
    // Everything from the first positional (or after `--`) is the command,
    // so the command's own options are never taken for upm's.
    cmd->prefix_command();
    cmd->footer("CMD runs with LD_PRELOAD extended by libupm-preload.so; upm run execs it, so the exit "
                "status is CMD's.  A broken policy or a missing preload is reported and CMD runs without "
                "upm, unless --fail-closed is given or the policy says \"on_error\": \"closed\" (exit 127).");
    o->command = std::move(command);
    cmd->callback([o, cmd, &action] {
        auto rest = cmd->remaining();
        if (!rest.empty() && !o->command.empty()) {
            std::fprintf(stderr, "upm run: give the command either after `--` or without it, not both\n");
            std::exit(2);
        }
        if (!rest.empty()) o->command = std::move(rest);
        action = [o] { return do_run(*o); };
    });
}

}  // namespace upm::cli
