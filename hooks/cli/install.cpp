// `upm install-runtime` and `upm uninstall-runtime`: register upm-runtime
// with a container engine, or take it out again (docs/install.md).  The
// logic is libupm-host's (upm/install_runtime.hpp).
#include <CLI/CLI.hpp>
#include <cstdio>
#include <filesystem>
#include <string>

#include "commands.hpp"
#include "upm/install_runtime.hpp"
#include "upm_config.hpp"

namespace upm::cli {

namespace {

namespace fs = std::filesystem;

struct InstallArgs {
    std::string engine;
    upm::install::Options options;
    bool dry_run = false;
};

int run_install(InstallArgs& args, bool install) {
    const char* cmd = install ? "upm install-runtime" : "upm uninstall-runtime";
    auto& o = args.options;
    o.engine = *upm::install::parse_engine(args.engine);
    while (o.bin_dir.size() > 1 && o.bin_dir.back() == '/') o.bin_dir.pop_back();
    if (o.snippets_dir.empty()) o.snippets_dir = find_data_dir(UPM_RUNTIMES_DIR, UPM_RUNTIMES_SOURCE_DIR, "runtimes");
    auto plan = install ? upm::install::plan_install(o) : upm::install::plan_uninstall(o);
    if (!plan) {
        std::fprintf(stderr, "%s --engine %s: %s\n", cmd, args.engine.c_str(), plan.error().message.c_str());
        return 1;
    }
    if (!args.dry_run) {
        if (auto st = upm::install::apply_plan(*plan, o); !st) {
            std::fprintf(stderr, "%s --engine %s: %s; the files listed before this line were written\n", cmd,
                         args.engine.c_str(), st.error().message.c_str());
            return 1;
        }
    }
    std::fputs(upm::install::describe(*plan, args.dry_run).c_str(), stdout);
    return 0;
}

void add_one(CLI::App& app, Action& action, bool install) {
    auto args = std::make_shared<InstallArgs>();
    auto* sub = app.add_subcommand(
        install ? "install-runtime" : "uninstall-runtime",
        install ? "Register upm-runtime as the runtime \"upm\" of a container engine (drop-in files where the engine "
                  "has them; nothing is restarted)"
                : "Take out what install-runtime wrote (only files and blocks it marked as its own)");
    sub->add_option("--engine", args->engine, "containerd, crio, docker or podman")
        ->required()
        ->check(CLI::IsMember({"containerd", "crio", "docker", "podman"}));
    sub->add_option("--root", args->options.root, "the host's root directory (an installer container: where the "
                                                  "host's / is mounted)")
        ->capture_default_str();
    std::error_code ec;
    fs::path self = fs::read_symlink("/proc/self/exe", ec);
    args->options.bin_dir = ec ? "/usr/bin" : self.parent_path().string();
    sub->add_option("--bin-dir", args->options.bin_dir, "where upm-runtime is on the host")->capture_default_str();
    sub->add_option("--snippets-dir", args->options.snippets_dir,
                    "the engine snippets (default: share/upm/runtimes of this upm)");
    sub->add_option("--containerd-config-version", args->options.containerd_config_version,
                    "containerd only, when the host has no /etc/containerd/config.toml: 2 (containerd 1.x) or 3 "
                    "(containerd 2.x)")
        ->check(CLI::IsMember({2, 3}));
    sub->add_flag("--dry-run", args->dry_run, "print what would change and change nothing");
    sub->footer("Prints every file it writes or removes and what to restart; run it again and it says \"nothing "
                "to do\".  Edited main files are kept as FILE.upm-backup.  See docs/install.md.");
    sub->callback([&action, args, install] { action = [args, install] { return run_install(*args, install); }; });
}

}  // namespace

void add_install_runtime(CLI::App& app, Action& action) {
    add_one(app, action, true);
    add_one(app, action, false);
}

}  // namespace upm::cli
