// `upm install-runtime`: the plan of every engine, carrying it out, the
// report; see upm/install_runtime.hpp.  containerd and Docker have their
// own files (their main configuration files need editing).
#include "upm/install_runtime.hpp"

#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <filesystem>
#include <string>

#include "planner.hpp"
#include "upm/atomic_file.hpp"
#include "upm/io.hpp"

namespace upm::install {

namespace {

constexpr std::size_t kMaxConfigFile = 1024 * 1024;
constexpr std::string_view kBackupSuffix = ".upm-backup";

std::string host_path(const Options& options, std::string_view path) {
    std::string root = options.root;
    while (root.size() > 1 && root.back() == '/') root.pop_back();
    return root == "/" ? std::string(path) : root + std::string(path);
}

Status plan_engine(const Options& options, Plan& plan, bool install) {
    switch (options.engine) {
        case Engine::containerd: return detail::plan_containerd(options, plan, install);
        case Engine::docker: return detail::plan_docker(options, plan, install);
        case Engine::crio:
            plan.restart = "systemctl restart crio";
            if (!install) return detail::plan_remove_dropin(options, plan, "/etc/crio/crio.conf.d/99-upm.conf");
            return detail::plan_dropin(options, plan, "/etc/crio/crio.conf.d/99-upm.conf", "crio/99-upm.conf",
                                       "the CRI-O runtime handler \"upm\"");
        case Engine::podman: {
            // No daemon: the next podman command reads it.
            constexpr std::string_view path = "/etc/containers/containers.conf.d/99-upm.conf";
            if (!install) return detail::plan_remove_dropin(options, plan, path);
            return detail::plan_dropin(options, plan, path, "podman/containers.conf.d/99-upm.conf",
                                       "the podman runtime \"upm\" (podman run --runtime upm)");
        }
    }
    return Error::msg("unknown engine");
}

Result<Plan> plan(const Options& options, bool install) {
    Plan out;
    auto st = plan_engine(options, out, install);
    if (!st) return st.error();
    if (out.changes.empty()) out.restart.clear();
    return out;
}

// PATH.upm-backup: the old content, with the old file's mode.
Status write_backup(const std::string& file, mode_t mode) {
    auto old = upm::detail::read_file(file, kMaxConfigFile);
    if (!old) return old.error();
    AtomicWriteOptions backup;
    backup.mode = mode;
    return write_file_atomic(file + std::string(kBackupSuffix), *old, backup);
}

Status apply_change(const FileChange& change, const Options& options) {
    std::string file = host_path(options, change.path);
    struct stat st {};
    bool exists = ::stat(file.c_str(), &st) == 0;
    if (change.kind == FileChange::Kind::remove) {
        if (exists && ::unlink(file.c_str()) != 0) return Error::sys(errno, "removing `" + file + "`");
        return Ok{};
    }
    mode_t mode = exists ? (st.st_mode & 07777) : 0644;
    if (exists && change.backup) {
        if (auto b = write_backup(file, mode); !b) return b.error().wrap("keeping a backup of `" + file + "`");
    }
    std::error_code ec;
    std::filesystem::create_directories(upm::detail::dirname(file), ec);
    if (ec) return Error::msg("creating the directory of `" + file + "`: " + ec.message());
    AtomicWriteOptions write;
    write.mode = mode;
    return write_file_atomic(file, change.content, write);
}

}  // namespace

std::optional<Engine> parse_engine(std::string_view name) {
    for (Engine e : {Engine::containerd, Engine::crio, Engine::docker, Engine::podman})
        if (name == to_string(e)) return e;
    return std::nullopt;
}

std::string_view to_string(Engine engine) {
    switch (engine) {
        case Engine::containerd: return "containerd";
        case Engine::crio: return "crio";
        case Engine::docker: return "docker";
        case Engine::podman: return "podman";
    }
    return "?";
}

Result<Plan> plan_install(const Options& options) { return plan(options, true); }
Result<Plan> plan_uninstall(const Options& options) { return plan(options, false); }

Status apply_plan(const Plan& plan, const Options& options) {
    for (const auto& change : plan.changes) {
        auto st = apply_change(change, options);
        if (!st) return st.error().wrap(change.path);
    }
    return Ok{};
}

std::string describe(const Plan& plan, bool dry_run) {
    std::string out;
    for (const auto& c : plan.changes) {
        std::string verb = c.kind == FileChange::Kind::remove ? "remove" : (c.backup ? "edit" : "write");
        if (dry_run) verb = "would " + verb;
        else verb = verb == "write" ? "wrote" : verb == "edit" ? "edited" : "removed";
        out += verb + " " + c.path + ": " + c.why;
        if (c.backup) out += " (the old file is kept as " + c.path + std::string(kBackupSuffix) + ")";
        out += "\n";
    }
    for (const auto& u : plan.unchanged) out += "unchanged " + u + "\n";
    if (plan.changes.empty()) out += "nothing to do\n";
    else if (!plan.restart.empty()) out += (dry_run ? "then run: " : "now run: ") + plan.restart + "\n";
    return out;
}

namespace detail {

Result<std::optional<std::string>> read_host_file(const Options& options, std::string_view path) {
    auto text = upm::detail::read_file(host_path(options, path), kMaxConfigFile);
    if (!text) {
        if (text.error().err == ENOENT) return std::optional<std::string>{};
        return text.error();
    }
    return std::optional<std::string>(std::move(*text));
}

Result<std::string> render_snippet(const Options& options, std::string_view rel, bool marker) {
    std::string path = options.snippets_dir + "/" + std::string(rel);
    auto text = upm::detail::read_file(path, kMaxConfigFile);
    if (!text) return text.error().wrap("reading the snippet `" + path + "` (see --snippets-dir)");
    std::string out = *text;
    std::string bin = options.bin_dir;
    while (bin.size() > 1 && bin.back() == '/') bin.pop_back();
    const std::string from = "/usr/bin/upm-";
    for (auto pos = out.find(from); pos != std::string::npos; pos = out.find(from, pos + 1)) {
        out.replace(pos, from.size(), bin + "/upm-");
        pos += bin.size();
    }
    if (marker)
        out = std::string(kDropinMarker) + " from share/upm/runtimes/" + std::string(rel) +
              "; `upm uninstall-runtime` removes it.\n" + out;
    return out;
}

Status plan_dropin(const Options& options, Plan& plan, std::string_view path, std::string_view rel,
                   std::string_view why) {
    auto want = render_snippet(options, rel, true);
    if (!want) return want.error();
    auto have = read_host_file(options, path);
    if (!have) return have.error();
    if (*have && **have == *want) {
        plan.unchanged.push_back(std::string(path) + ": already installed");
        return Ok{};
    }
    if (*have && !(*have)->starts_with(kDropinMarker))
        return Error::msg("`" + std::string(path) + "` exists and was not written by upm install-runtime: " +
                          "compare it with share/upm/runtimes/" + std::string(rel) + ", remove it, and run again");
    plan.changes.push_back({FileChange::Kind::write, std::string(path), *want, std::string(why), false});
    return Ok{};
}

Status plan_remove_dropin(const Options& options, Plan& plan, std::string_view path) {
    auto have = read_host_file(options, path);
    if (!have) return have.error();
    if (!*have) plan.unchanged.push_back(std::string(path) + ": not there");
    else if (!(*have)->starts_with(kDropinMarker))
        plan.unchanged.push_back(std::string(path) + ": kept, it was not written by upm install-runtime");
    else
        plan.changes.push_back({FileChange::Kind::remove, std::string(path), {}, "the upm drop-in", false});
    return Ok{};
}

void plan_main_file(Plan& plan, std::string_view path, const std::optional<std::string>& old,
                    const std::optional<std::string>& content, std::string why) {
    if (!content) {
        plan.changes.push_back({FileChange::Kind::remove, std::string(path), {}, std::move(why), false});
        return;
    }
    if (old && *old == *content) {
        plan.unchanged.push_back(std::string(path) + ": already has " + why);
        return;
    }
    plan.changes.push_back({FileChange::Kind::write, std::string(path), *content, std::move(why), old.has_value()});
}

}  // namespace detail

}  // namespace upm::install
