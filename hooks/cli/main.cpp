// upm: run programs with page-merging advice, and inspect what is advised
// and saved.  This file only dispatches; each command lives in its own file
// and calls libupm-host.
#include <CLI/CLI.hpp>
#include <algorithm>
#include <cstdio>
#include <string>
#include <string_view>
#include <vector>

#include "commands.hpp"
#include "upm/log.hpp"
#include "upm_config.hpp"

int main(int argc, char** argv) {
    CLI::App app{"upm: user-guided page merging", "upm"};
    app.set_version_flag("--version", "upm " UPM_VERSION);
    app.require_subcommand(1);
    app.footer("See docs/cli.md; `upm COMMAND --help` for each command.");

    upm::setup_logging("upm", "warn");

    // `upm run [OPTIONS] -- CMD ARGS...`: everything after the first `--`
    // is the command; CLI11 parses only what comes before it.
    std::vector<std::string> command;
    int first = 1;
    while (first < argc && argv[first][0] == '-') ++first;
    if (first < argc && std::string_view(argv[first]) == "run") {
        for (int i = first + 1; i < argc; ++i) {
            if (std::string_view(argv[i]) != "--") continue;
            command.assign(argv + i + 1, argv + argc);
            if (command.empty()) {
                std::fprintf(stderr, "upm run: no command after `--`; usage: upm run [OPTIONS] -- CMD [ARGS...]\n");
                return 2;
            }
            argc = i;
            break;
        }
    }

    upm::cli::Action action;
    upm::cli::add_run(app, action, std::move(command));
    upm::cli::add_maps(app, action);
    upm::cli::add_advise(app, action);
    upm::cli::add_status(app, action);
    upm::cli::add_policy(app, action);
    upm::cli::add_ideal(app, action);
    upm::cli::add_bench(app, action);
    upm::cli::add_install_runtime(app, action);

    // Name an unknown command (CLI11 would only say "A subcommand is required").
    CLI::App* level = &app;
    for (int i = 1; i < argc; ++i) {
        std::string_view arg = argv[i];
        if (arg == "--") break;
        if (arg.starts_with("-")) continue;
        auto subs = level->get_subcommands([](CLI::App*) { return true; });
        if (subs.empty()) break;  // this command takes arguments, not commands
        auto it = std::find_if(subs.begin(), subs.end(), [&](CLI::App* s) { return s->get_name() == arg; });
        if (it == subs.end()) {
            std::string names;
            for (auto* s : subs) names += (names.empty() ? "`" : ", `") + s->get_name() + "`";
            std::fprintf(stderr, "upm: unknown command `%s` (commands: %s); run `upm --help`\n", argv[i],
                         names.c_str());
            return 2;
        }
        level = *it;
    }

    try {
        app.parse(argc, argv);
    } catch (const CLI::ParseError& e) {
        int rc = app.exit(e);
        return rc == 0 ? 0 : 2;
    }
    if (!action) return 2;
    try {
        return action();
    } catch (const std::exception& e) {
        std::fprintf(stderr, "upm: %s\n", e.what());
        return 1;
    }
}
