// upm-runtime: a drop-in for runc/crun that injects the upm preload into
// containers annotated upm.enabled=true, then execs the real runtime with the
// same argv.
//
// Only `create` and `run` are looked at; every other command (state, start,
// kill, delete, exec, --help, --version, ...) goes straight to the real
// runtime.  The work is library code (upm/spec.hpp: prepare_bundle); this
// file parses nothing but its own two options, logs the notes and execs.
// Exit status: the real runtime's; 1 when a fail-closed policy refuses the
// container; 127 when the real runtime cannot be executed.  See
// docs/runtime.md.
#include <limits.h>
#include <stdlib.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "runtime_log.hpp"
#include "upm/nodeconfig.hpp"
#include "upm/spec.hpp"

namespace {

std::string self_exe() {
    char buf[PATH_MAX];
    ssize_t n = ::readlink("/proc/self/exe", buf, sizeof buf - 1);
    return n > 0 ? std::string(buf, static_cast<std::size_t>(n)) : std::string();
}

std::string real_path(const std::string& path) {
    char buf[PATH_MAX];
    return ::realpath(path.c_str(), buf) ? std::string(buf) : path;
}

int own_option(const std::string& option, const upm::NodeConfig& config) {
    if (option == "--upm-version") {
        std::printf("upm-runtime %s\nreal runtime: %s\n", UPM_VERSION,
                    config.runtime.empty() ? "(none found)" : config.runtime.c_str());
        return 0;
    }
    std::printf(
        "upm-runtime: runc/crun wrapper of upm (User-guided Page Merging)\n\n"
        "usage: upm-runtime [RUNTIME OPTIONS] COMMAND [ARGS...]   (exactly as runc or crun)\n"
        "       upm-runtime --upm-enable [RUNTIME OPTIONS] COMMAND [ARGS...]\n"
        "       upm-runtime --upm-help | --upm-version\n\n"
        "For `create` and `run` of a bundle annotated upm.enabled=true, config.json gets the\n"
        "preload, the policy (upm.policy=NAME) and the domain (upm.domain=ID); then the real\n"
        "runtime is executed with the same arguments.  With --upm-enable (Docker's runtime\n"
        "`upm`: Docker before 24 passes no annotations) every bundle counts as annotated\n"
        "upm.enabled=true unless it says otherwise.  --help and --version are the real\n"
        "runtime's.  Node configuration: $UPM_CONFIG or /etc/upm/config.json (now: %s).\n"
        "Real runtime: %s.  Documentation: docs/runtime.md.\n",
        config.source.empty() ? "defaults" : config.source.c_str(),
        config.runtime.empty() ? "(none found)" : config.runtime.c_str());
    return 0;
}

}  // namespace

int main(int argc, char** argv) {
    std::vector<std::string> args(argv + 1, argv + argc);
    bool enabled_by_runtime = upm::take_enable_flag(args);
    std::string self = self_exe();
    auto load = upm::load_node_config(self);
    const upm::NodeConfig& config = load.config;
    if (args.size() == 1 && (args[0] == "--upm-help" || args[0] == "--upm-version")) return own_option(args[0], config);

    auto runtime_args = upm::parse_runtime_args(args);
    upm::runtime::Log log(config, runtime_args);

    if (upm::edits_bundle(runtime_args)) {
        std::string file = config.source.empty() ? upm::kNodeConfigPath : config.source;
        for (const auto& problem : load.problems)
            log.write(problem.level, upm::format_problem(file, problem));
        if (runtime_args.config_override) {
            log.write(upm::Level::warn, "container `" + upm::printable(runtime_args.container_id) +
                                                "`: --config names another spec than config.json: not deduplicated");
        } else {
            auto prep = upm::prepare_bundle(config, runtime_args.bundle, runtime_args.container_id,
                                           {.enabled_by_runtime = enabled_by_runtime});
            for (const auto& note : prep.notes) log.write(note.level, note.message);
            if (prep.verdict == upm::Verdict::refused) {
                for (const auto& note : prep.notes)
                    if (note.level == upm::Level::error) std::fprintf(stderr, "upm-runtime: error: %s\n", note.message.c_str());
                return 1;
            }
        }
    }

    std::string why;
    if (config.runtime.empty())
        why = "no real runtime found (tried /usr/bin/runc, /usr/sbin/runc, /usr/bin/crun, /usr/sbin/crun); set `runtime` "
              "in the node configuration";
    else if (!self.empty() && real_path(config.runtime) == real_path(self))
        why = "the node configuration names upm-runtime itself as the real runtime (`" + config.runtime + "`)";
    if (why.empty()) {
        std::vector<char*> real_argv{const_cast<char*>(config.runtime.c_str())};
        for (auto& a : args) real_argv.push_back(a.data());
        real_argv.push_back(nullptr);
        ::execv(config.runtime.c_str(), real_argv.data());
        why = "cannot execute the real runtime `" + config.runtime + "`: " + std::strerror(errno);
    }
    log.write(upm::Level::error, why);
    std::fprintf(stderr, "upm-runtime: error: %s\n", why.c_str());
    return 127;
}
