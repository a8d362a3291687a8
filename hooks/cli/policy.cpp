// `upm policy check FILE [--normalized]`: validate a policy and explain every
// problem; with --normalized print the effective policy as plain JSON.
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <cstdio>
#include <memory>

#include "commands.hpp"
#include "upm/backend.hpp"
#include "upm/policy.hpp"

namespace upm::cli {

namespace {

struct CheckOptions {
    std::string file;
    bool normalized = false;
};

// A FILE that exists (or looks like a path) is read as is; otherwise a NAME
// is looked up in the policy directories.
Result<std::string> locate(const std::string& arg) {
    if (::access(arg.c_str(), F_OK) == 0 || arg.find('/') != std::string::npos || arg.ends_with(".json") ||
        !valid_policy_name(arg))
        return arg;
    return resolve_policy(arg);
}

// On a node without MADV_UPM the policy's domain cannot keep merged pages
// apart: say so where the operator looks at the policy (docs/threat-model.md).
void note_merging_scope(const std::string& file, const Policy& p) {
    const bool domain_matters = !p.domain.empty() || p.layout == Layout::shared_per_domain ||
                                p.hash_seed == HashSeed::per_domain;
    if (p.backend == BackendChoice::upm || !domain_matters || kernel_has_madv_upm()) return;
    std::printf("%s: note: this kernel has no MADV_UPM, so merging uses stock KSM, and ksmd merges across sharing "
                "domains: the domain keeps layouts and hash seeds apart, not merged pages; the node setting "
                "ksm_single_namespace advises one Kubernetes namespace at a time (docs/threat-model.md)\n",
                file.c_str());
}

int do_check(const CheckOptions& o) {
    auto path = locate(o.file);
    if (!path) {
        std::fprintf(stderr, "%s: (file): error: %s\n%s: 1 error\n", o.file.c_str(), path.error().message.c_str(),
                     o.file.c_str());
        return 1;
    }
    auto check = load_policy_file(*path);
    // With --normalized, stdout carries only the JSON document.
    FILE* report = o.normalized ? stderr : stdout;
    for (const auto& p : check.problems) std::fprintf(report, "%s\n", format_problem(o.file, p).c_str());
    std::size_t errors = check.error_count();
    if (errors > 0 || !check.policy) {
        std::fprintf(report, "%s: %zu error%s\n", o.file.c_str(), errors, errors == 1 ? "" : "s");
        return 1;
    }
    if (o.normalized) {
        std::string doc = policy_to_json(*check.policy);
        std::fwrite(doc.data(), 1, doc.size(), stdout);
        return 0;
    }
    note_merging_scope(o.file, *check.policy);
    std::size_t warnings = check.warning_count();
    if (warnings == 0)
        std::fprintf(report, "%s: ok\n", o.file.c_str());
    else
        std::fprintf(report, "%s: ok (%zu warning%s)\n", o.file.c_str(), warnings, warnings == 1 ? "" : "s");
    return 0;
}

}  // namespace

bool load_cli_policy(const std::string& arg, Policy& out) {
    if (arg.empty()) {
        out = default_policy();
        return true;
    }
    auto resolved = resolve_policy(arg);
    if (!resolved) {
        std::fprintf(stderr, "upm: %s\n", resolved.error().message.c_str());
        return false;
    }
    auto check = load_policy_file(*resolved);
    for (const auto& p : check.problems)
        if (!p.warning() || !check.policy) std::fprintf(stderr, "%s\n", format_problem(*resolved, p).c_str());
    if (!check.policy) {
        std::fprintf(stderr, "upm: policy `%s` is invalid; run `upm policy check %s`\n", resolved->c_str(),
                     resolved->c_str());
        return false;
    }
    out = *check.policy;
    return true;
}

void add_policy(CLI::App& app, Action& action) {
    auto* cmd = app.add_subcommand("policy", "work with policy files");
    cmd->require_subcommand(1);
    auto o = std::make_shared<CheckOptions>();
    auto* check = cmd->add_subcommand("check", "validate a policy and explain every problem (exit 1 if invalid)");
    check->add_option("file", o->file, "policy file (or NAME in the policy directories)")->required();
    check->add_flag("--normalized", o->normalized,
                    "print the effective policy as plain JSON (no comments, defaults filled in)");
    check->callback([o, &action] { action = [o] { return do_check(*o); }; });
}

}  // namespace upm::cli
