// `upm install-runtime` / `upm uninstall-runtime`: registering upm-runtime
// with a container engine (docs/install.md).
//
// A run is two steps: plan_install()/plan_uninstall() read the engine's
// configuration under `root` and compute every file to write or remove,
// without touching anything (that is --dry-run); apply_plan() then carries
// the plan out, each file replaced atomically, a backup kept of every main
// configuration file it edits.  Planning twice in a row gives an empty plan
// the second time (idempotent), and a configuration the planner does not
// understand is refused with what to do by hand, never guessed at.
//
// What each engine gets (the snippets of config/runtimes/, installed to
// share/upm/runtimes/, with /usr/bin replaced by `bin_dir`):
//   containerd, config version 3 (2.x): the drop-in conf.d/99-upm.toml and,
//     if the main config.toml does not import conf.d yet, that import;
//   containerd, config version 2 (1.6, 1.7): a marked block at the end of the
//     main config.toml: containerd 1.x replaces a whole plugin section from
//     an imported file (containerd issue 5837), so a drop-in would reset the
//     node's CRI settings (CNI, registry, SystemdCgroup) to their defaults;
//   crio: the drop-in crio.conf.d/99-upm.conf;
//   podman: the drop-in containers.conf.d/99-upm.conf;
//   docker: the runtime "upm" merged into daemon.json (JSON has no drop-ins).
// Nothing is restarted: the plan says what the operator must restart.
#pragma once

#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "upm/result.hpp"

namespace upm::install {

enum class Engine { containerd, crio, docker, podman };

std::optional<Engine> parse_engine(std::string_view name);
std::string_view to_string(Engine engine);

struct Options {
    Engine engine = Engine::containerd;
    // The host's root directory: "/" on the node, the host's / as mounted
    // into an installer container otherwise.  Every path of a plan is a
    // path on the host; the file touched is root + path.
    std::string root = "/";
    // Where upm-runtime is, as the engine will see it on the host.
    std::string bin_dir = "/usr/bin";
    // share/upm/runtimes: the snippets (config/runtimes/ in the source tree).
    std::string snippets_dir;
    // containerd's config version when the host has no config.toml yet
    // (2: containerd 1.x, 3: containerd 2.x); 0: take it from config.toml.
    int containerd_config_version = 0;
};

struct FileChange {
    enum class Kind { write, remove };
    Kind kind = Kind::write;
    std::string path;      // on the host, absolute
    std::string content;   // the new content (write)
    std::string why;       // one line for the report
    bool backup = false;   // keep the old content as PATH.upm-backup first
};

struct Plan {
    std::vector<FileChange> changes;
    std::vector<std::string> unchanged;   // "PATH: why nothing to do"
    std::string restart;                  // what the operator must run, or ""
};

Result<Plan> plan_install(const Options& options);
Result<Plan> plan_uninstall(const Options& options);

// Carries the plan out under options.root.  Stops at the first failure
// (the files already written stay written and the message says which).
Status apply_plan(const Plan& plan, const Options& options);

// The report: one line per change ("would" for a dry run), the unchanged
// files and what to restart.
std::string describe(const Plan& plan, bool dry_run);

}  // namespace upm::install
