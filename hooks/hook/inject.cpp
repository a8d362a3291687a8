// upm-hook's injecting stages: createRuntime (hooks.d mode for CRI-O and
// podman) and podman's precreate.  The decisions (annotations, policy,
// preload, fail open / closed) are prepare_bundle()'s and prepare_spec()'s,
// as for upm-runtime; the rootfs work is inject_into_rootfs()
// (upm/rootfs_inject.hpp).  docs/runtime.md, "Hooks directory mode".
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <string>

#include "hook_io.hpp"
#include "upm/rootfs_inject.hpp"
#include "upm/spec.hpp"

namespace upm_hook {

namespace {

void log_problems(HookLog& log, const upm::NodeConfigLoad& load) {
    std::string file = load.config.source.empty() ? upm::kNodeConfigPath : load.config.source;
    for (const auto& problem : load.problems) log.write(problem.level, upm::format_problem(file, problem));
}

void log_notes(HookLog& log, const upm::Preparation& p) {
    for (const auto& n : p.notes) log.write(n.level, n.message);
}

// A refusal goes to our log and to stderr: the runtime (and the engine)
// shows a failing hook's stderr.
int refuse(HookLog& log, const std::string& message) {
    log.write(upm::Level::error, message);
    std::string line = "upm-hook: error: " + message + "\n";
    (void)!::write(STDERR_FILENO, line.data(), line.size());
    return 1;
}

bool write_stdout(std::string_view data) {
    while (!data.empty()) {
        ssize_t w = ::write(STDOUT_FILENO, data.data(), data.size());
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) return false;
        data.remove_prefix(static_cast<std::size_t>(w));
    }
    return true;
}

}  // namespace

int run_create_runtime(const std::string& stage, const upm::NodeConfigLoad& load) {
    HookLog log(load.config);
    try {
        log_problems(log, load);
        auto text = read_stdin();
        if (!text) {
            log.write(upm::Level::error, stage + ": container state on stdin: " + text.error().message + "; not deduplicated");
            return 0;
        }
        auto state = upm::parse_container_state(*text, true);
        if (!state) {
            log.write(upm::Level::error, stage + ": container state on stdin: " + state.error().message + "; not deduplicated");
            return 0;
        }
        const std::string who = "container `" + upm::printable(state->id) + "`: ";
        if (state->bundle.empty()) {
            log.write(upm::Level::error, who + stage + ": no `bundle` in the container state; not deduplicated");
            return 0;
        }
        // Every check of upm-runtime, without writing config.json.
        upm::Preparation p = upm::prepare_bundle(load.config, state->bundle, state->id, {.write = false});
        log_notes(log, p);
        if (p.verdict == upm::Verdict::refused)
            return refuse(log, who + "refused by the policy's `\"on_error\": \"closed\"` (see the log line before)");
        // No preload for policy `advice` `remote` where upmd advises (the notes said so).
        if (p.verdict != upm::Verdict::edited || !p.edit.preload) return 0;
        auto fail = [&](const std::string& why) {
            if (p.closed)
                return refuse(log, who + "refused: " + why + " (policy `" + p.policy + "` says `\"on_error\": \"closed\"`)");
            log.write(upm::Level::error, who + "not deduplicated: " + why);
            return 0;
        };

        auto bundle = upm::read_bundle_config(state->bundle);
        if (!bundle) return fail(bundle.error().message);
        auto root = upm::read_spec_root(bundle->text);
        if (!root) return fail(root.error().message);
        if (root->injected) {
            log.write(upm::Level::info, who + stage + ": the spec has the preload already (upm-runtime or the precreate hook): "
                                        "nothing to do");
            return 0;
        }
        if (!root->dev_tmpfs || p.edited.dir != upm::kContainerDirDev)
            return fail("the spec mounts no tmpfs on `/dev`, where the " + stage +
                        " hook puts the preload (use upm-runtime for such containers)");

        upm::RootfsInjection in;
        in.pid = state->pid;
        in.bundle = state->bundle;
        in.root_path = root->path;
        in.root_readonly = root->readonly;
        in.preload_source = p.edit.preload_source;
        in.policy_source = p.edit.policy_source;
        in.domain = p.edit.domain;
        in.uid = root->uid;
        in.gid = root->gid;
        in.additional_gids = root->additional_gids;
        auto done = upm::inject_into_rootfs(in);
        if (!done) return fail(done.error().message);
        if (!p.edit.hardening.empty())
            log.write(upm::Level::warn, who + stage + ": the policy's " +
                                  (p.edit.hardening.summary.empty() ? std::string("hardening settings")
                                                                    : p.edit.hardening.summary) +
                                  " not applied: a " + stage +
                                  " hook cannot change the environment or the command (upm-runtime and the "
                                  "precreate hook can)");
        log.write(upm::Level::info, who + stage + ": injected `" + done->preload + "` (from `" + in.preload_source + "`) through " +
                              "`/etc/ld.so.preload`: " + done->ld_so_preload + "; policy " +
                              (in.policy_source.empty() ? std::string("built-in default")
                                                        : "`" + p.policy + "` (`" + in.policy_source + "`)") +
                              (done->policy.empty() ? "" : " at `" + done->policy + "`") +
                              (in.domain.empty() ? "" : ", domain `" + in.domain + "`"));
    } catch (const std::exception& e) {
        log.write(upm::Level::error, stage + ": " + e.what() + "; not deduplicated");
    } catch (...) {
        log.write(upm::Level::error, stage + ": unexpected failure; not deduplicated");
    }
    return 0;
}

int run_precreate(const upm::NodeConfigLoad& load) {
    HookLog log(load.config);
    // Whatever happens, podman gets a spec back: ours, or the one it gave.
    std::string input;
    bool complete = false;
    try {
        log_problems(log, load);
        char buf[65536];
        for (;;) {
            ssize_t n = ::read(STDIN_FILENO, buf, sizeof buf);
            if (n < 0 && errno == EINTR) continue;
            if (n < 0) {
                log.write(upm::Level::error, "precreate: reading the spec on stdin: " + std::string(std::strerror(errno)) +
                                       "; passed on unchanged, not deduplicated");
                break;
            }
            if (n == 0) {
                complete = true;
                break;
            }
            if (input.size() + static_cast<std::size_t>(n) > upm::kMaxSpecFile) {
                // Too large to edit: pass it through without keeping it.
                log.write(upm::Level::error, "precreate: the spec on stdin is larger than " + std::to_string(upm::kMaxSpecFile) +
                                       " bytes; passed on unchanged, not deduplicated");
                if (!write_stdout(input) || !write_stdout(std::string_view(buf, static_cast<std::size_t>(n)))) return 1;
                input.clear();
                for (;;) {
                    n = ::read(STDIN_FILENO, buf, sizeof buf);
                    if (n < 0 && errno == EINTR) continue;
                    if (n <= 0) break;
                    if (!write_stdout(std::string_view(buf, static_cast<std::size_t>(n)))) return 1;
                }
                return n < 0 ? 1 : 0;
            }
            input.append(buf, static_cast<std::size_t>(n));
        }
        if (complete) {
            upm::Preparation p = upm::prepare_spec(load.config, input, "precreate");
            log_notes(log, p);
            if (p.verdict == upm::Verdict::refused)
                return refuse(log, "precreate: refused by the policy's `\"on_error\": \"closed\"` (see the log line before)");
            if (p.verdict == upm::Verdict::edited) {
                log.write(upm::Level::info, "precreate: injected `" + p.edited.preload + "` (from `" + p.edit.preload_source +
                                      "`) through the spec (LD_PRELOAD), policy " +
                                      (p.edit.policy_source.empty() ? std::string("built-in default")
                                                                    : "`" + p.policy + "` (`" + p.edit.policy_source + "`)") +
                                      (p.edit.domain.empty() ? "" : ", domain `" + p.edit.domain + "`"));
                return write_stdout(p.edited.text) ? 0 : 1;
            }
        }
    } catch (const std::exception& e) {
        log.write(upm::Level::error, std::string("precreate: ") + e.what() + "; passed on unchanged, not deduplicated");
    } catch (...) {
        log.write(upm::Level::error, "precreate: unexpected failure; passed on unchanged, not deduplicated");
    }
    return write_stdout(input) ? 0 : 1;
}

}  // namespace upm_hook
