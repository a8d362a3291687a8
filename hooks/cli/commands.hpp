// The `upm` subcommands.  Each add_*() registers its CLI11 subcommand on the
// parent; when the user picks it, the subcommand stores the function to run
// in `action`, and main() runs it after parsing.  Return value: exit status.
#pragma once

#include <functional>
#include <string>
#include <vector>

#include "upm/policy.hpp"

namespace CLI { class App; }

namespace upm::cli {

using Action = std::function<int()>;

// `command`: what followed `--` on the command line (main() splits it off
// before CLI11 parses, so that CMD's options are never taken for upm's).
void add_run(CLI::App& app, Action& action, std::vector<std::string> command);
void add_maps(CLI::App& app, Action& action);
// `upm advise PID|--container ID`: remote advice (docs/remote-advice.md).
void add_advise(CLI::App& app, Action& action);
void add_status(CLI::App& app, Action& action);
void add_policy(CLI::App& app, Action& action);
void add_ideal(CLI::App& app, Action& action);
// `upm bench [OPTIONS]`: execs python3 on the benchmark driver
// (hooks/bench/upm_bench.py) with the options as given.
void add_bench(CLI::App& app, Action& action);

// `upm install-runtime` / `upm uninstall-runtime` (docs/install.md).
void add_install_runtime(CLI::App& app, Action& action);

// A data file or directory of upm: `source` (in the source tree) when this
// `upm` runs from the build tree, else `installed`, else REL under the
// share/upm/ next to this `upm`'s bin/ (a relocated install).
std::string find_data_dir(const std::string& installed, const std::string& source, const std::string& rel);

// Loads a --policy argument (file or name) for `upm maps`: an empty
// argument gives the built-in default.  Prints every problem to stderr and
// returns false when the policy cannot be used.
bool load_cli_policy(const std::string& arg, upm::Policy& out);

}  // namespace upm::cli
