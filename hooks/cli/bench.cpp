// `upm bench [OPTIONS]`: the benchmark of docs/bench.md.  The driver is
// python (hooks/bench/upm_bench.py, installed to share/upm/bench/); this
// command only finds it and execs /usr/bin/python3 on it with the options as
// given, so `upm bench --help` is the driver's own help.  The driver finds
// upm-runtime, upm-hook and upmd next to this `upm` (--bin-dir).
#include <CLI/CLI.hpp>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <string>
#include <unistd.h>
#include <vector>

#include "commands.hpp"
#include "upm_config.hpp"

namespace upm::cli {

namespace {

namespace fs = std::filesystem;

constexpr const char* kPython = "/usr/bin/python3";

// $UPM_BENCH_SCRIPT, else the driver of the source tree or the installed one.
std::string find_script() {
    if (const char* env = std::getenv("UPM_BENCH_SCRIPT"); env && *env) return env;
    return find_data_dir(UPM_BENCH_SCRIPT, UPM_BENCH_SOURCE_SCRIPT, "bench/upm_bench.py");
}

int run_bench(const std::vector<std::string>& args) {
    std::error_code ec;
    fs::path self = fs::read_symlink("/proc/self/exe", ec);
    fs::path self_dir = ec ? fs::path() : self.parent_path();
    std::string script = find_script();
    if (::access(script.c_str(), R_OK) != 0) {
        std::fprintf(stderr,
                     "upm bench: the driver `%s` is missing (%s); install upm (`make install`) or set "
                     "UPM_BENCH_SCRIPT to hooks/bench/upm_bench.py\n",
                     script.c_str(), std::strerror(errno));
        return 1;
    }
    std::vector<std::string> argv{kPython, script};
    bool has_bin_dir = false;
    for (const auto& a : args) has_bin_dir = has_bin_dir || a == "--bin-dir" || a.starts_with("--bin-dir=");
    if (!has_bin_dir && !self_dir.empty()) {
        argv.push_back("--bin-dir");
        argv.push_back(self_dir.string());
    }
    argv.insert(argv.end(), args.begin(), args.end());
    std::vector<char*> cargv;
    for (auto& a : argv) cargv.push_back(a.data());
    cargv.push_back(nullptr);
    std::fflush(nullptr);
    ::execv(kPython, cargv.data());
    std::fprintf(stderr, "upm bench: cannot run %s: %s (packaging/install-deps.sh test)\n", kPython,
                 std::strerror(errno));
    return 127;
}

}  // namespace

void add_bench(CLI::App& app, Action& action) {
    auto* cmd = app.add_subcommand(
        "bench",
        "N containers of a real function on this node, every mode (off, ksm-default, ksm-aggressive, upm, "
        "upm-shared; upm-kernel in a QEMU guest of the patched kernel) side by side: memory saved, fraction of "
        "the ideal, time to savings, CPU, latency; `upm bench --help` lists the options (docs/bench.md)");
    // Every argument goes to the driver, --help included (its help lists the options).
    cmd->set_help_flag();
    cmd->allow_extras();
    cmd->prefix_command();
    cmd->callback([cmd, &action] {
        std::vector<std::string> args = cmd->remaining();
        action = [args] { return run_bench(args); };
    });
}

}  // namespace upm::cli
