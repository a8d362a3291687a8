// The whole step of upm-runtime and upm-hook (spec.hpp, prepare_bundle(),
// prepare_spec()): read the spec, choose the policy and the domain, edit,
// write, with the fail-open / fail-closed rules (docs/runtime.md).
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "upm/advice_route.hpp"
#include "upm/agent_client.hpp"
#include "upm/backend.hpp"
#include "upm/policy.hpp"
#include "upm/spec.hpp"

namespace upm {

namespace {

class Notes {
public:
    Notes(Preparation& p, std::string_view id) : p_(p), prefix_("container `" + printable(id) + "`: ") {}
    void add(Level level, const std::string& message) { p_.notes.push_back({level, prefix_ + message}); }

private:
    Preparation& p_;
    std::string prefix_;
};

// upm-exec, installed next to the preload; without it the layout part of
// the plan is dropped (the hardening stays) and a warning says why.
std::string find_exec_beside(const std::string& preload, HardeningPlan& plan, Notes& notes) {
    std::string exe = preload.substr(0, preload.rfind('/') == std::string::npos ? 0 : preload.rfind('/') + 1) +
                      kExecFile;
    struct stat st {};
    if (exe.front() == '/' && ::stat(exe.c_str(), &st) == 0 && S_ISREG(st.st_mode) && ::access(exe.c_str(), X_OK) == 0)
        return exe;
    notes.add(Level::warn, "layout not applied: the launcher `" + exe + "` is not an executable file; ASLR stays");
    plan.no_randomize = false;
    plan.stack_rlimit = 0;
    plan.summary = plan.env.empty() ? "" : "hash seed `per-domain`";
    return {};
}

std::string policy_problems(const PolicyCheck& check, const std::string& file) {
    std::string out;
    std::size_t shown = 0;
    for (const auto& problem : check.problems) {
        if (problem.warning()) continue;
        if (++shown > 5) {
            out += "; ...";
            break;
        }
        out += (out.empty() ? "" : "; ") + format_problem(file, problem);
    }
    return out;
}

// One run of prepare(): the steps in the order they happen, each a method
// that returns false when the container is left as it is (the verdict and
// the notes say why).  `given` is the document when it does not come from
// <bundle_dir>/config.json; `write` = false stops before the write (the
// verdict `edited` then means "would be injected").
class Preparer {
public:
    Preparer(const NodeConfig& config, const std::string& bundle_dir, std::string_view container_id, Preparation& p,
             const PrepareOptions& options)
        : config_(config), bundle_dir_(bundle_dir), p_(p), notes_(p, container_id), id_(container_id),
          enabled_by_runtime_(options.enabled_by_runtime), ksm_claim_(options.ksm_claim) {}

    void run(const std::string* given, bool write) {
        if (!read_annotated_spec(given)) return;
        choose_policy_name();
        choose_asked_domain();
        if (!load_policy()) return;
        scope_the_domain();
        if (!check_ksm_namespace()) return;
        plan_the_hardening();
        if (!find_preload()) return;
        find_hook();
        choose_route();
        if (!edit_and_write(write)) return;
        accept(write);
    }

private:
    bool read_annotated_spec(const std::string* given);
    void choose_policy_name();
    void choose_asked_domain();
    bool resolve_policy();
    bool load_policy();
    void scope_the_domain();
    bool check_ksm_namespace();
    bool ksm_backend() const;
    void plan_the_hardening();
    bool find_preload();
    void find_hook();
    void choose_route();
    bool check_run_dir();
    bool edit_and_write(bool write);
    void accept(bool write);
    bool fail(const std::string& why);
    bool enable_by_runtime();

    const NodeConfig& config_;
    const std::string& bundle_dir_;
    Preparation& p_;
    Notes notes_;
    std::string id_;
    bool enabled_by_runtime_;
    const std::function<Result<KsmClaimAnswer>(const std::string&, const std::string&)>& ksm_claim_;
    Result<BundleConfig> bundle_ = BundleConfig{};
    UpmAnnotations ann_;
    std::string policy_name_;
    std::string domain_;
    Result<std::string> path_ = std::string();
    SpecEdit edit_;
    bool closed_ = false;
    Policy policy_;              // the policy's own domain, when it names one
    bool have_policy_ = false;
    Result<EditedSpec> edited_ = EditedSpec{};
};

// The document, and whether it asks for upm (upm.enabled=true).
bool Preparer::read_annotated_spec(const std::string* given) {
    bundle_ = given ? Result<BundleConfig>(BundleConfig{*given}) : read_bundle_config(bundle_dir_);
    if (!bundle_) {
        notes_.add(Level::warn, "not deduplicated: " + bundle_.error().message);
        return false;
    }
    // Fast path: without the literal key and without any \u escape (the
    // only other way to spell it), no parsed document can carry
    // upm.enabled; an 18 KiB spec costs about 0.3 ms of CPU to parse.
    if (bundle_->text.find(kAnnotationEnabled) == std::string::npos &&
        bundle_->text.find("\\u") == std::string::npos) {
        if (enabled_by_runtime_) return enable_by_runtime();
        notes_.add(Level::debug, "not annotated `upm.enabled=true`: config.json left as it is");
        return false;
    }
    auto ann = read_upm_annotations(bundle_->text);
    if (!ann) {
        notes_.add(Level::warn, "not deduplicated: " + ann.error().message);
        return false;
    }
    ann_ = std::move(*ann);
    if (!ann_.enabled && !ann_.enabled_present && enabled_by_runtime_) return enable_by_runtime();
    if (!ann_.enabled) {
        if (ann_.enabled_present)
            notes_.add(Level::info, "annotation `upm.enabled` is `" + printable(ann_.enabled_value, 32) +
                                        "`, not `true`: not deduplicated, config.json left as it is");
        else
            notes_.add(Level::debug, "not annotated `upm.enabled=true`: config.json left as it is");
        return false;
    }
    return true;
}

// Opted in by the runtime (--upm-enable), not by an annotation.
bool Preparer::enable_by_runtime() {
    ann_.enabled = true;
    notes_.add(Level::info, "no annotation `upm.enabled`: enabled by the runtime (upm-runtime --upm-enable, "
                            "e.g. Docker's runtime `upm`)");
    return true;
}

// The policy: the annotation's NAME, else the node's default.
void Preparer::choose_policy_name() {
    policy_name_ = config_.default_policy;
    if (!ann_.policy_present) return;
    if (valid_policy_name(ann_.policy)) {
        policy_name_ = ann_.policy;
        return;
    }
    notes_.add(Level::warn, "invalid policy name `" + printable(ann_.policy, 80) +
                                "` in annotation `upm.policy` (up to 64 letters, digits, `.`, `_` "
                                "or `-`, starting with a letter or digit): using the default policy `" +
                                (policy_name_.empty() ? "(built-in)" : policy_name_) + "`");
}

// The domain asked for: the annotation's, else (scope_the_domain()) the policy's.
void Preparer::choose_asked_domain() {
    if (!ann_.domain_present) return;
    if (!ann_.domain.empty() && valid_domain_name(ann_.domain))
        domain_ = ann_.domain;
    else
        notes_.add(Level::warn, "invalid domain `" + printable(ann_.domain, 80) +
                                    "` in annotation `upm.domain` (up to 64 letters, digits, `.`, `_` or "
                                    "`-`, starting with a letter or digit): ignored");
}

// The policy's file; `default` may be missing (the preload's built-in one).
bool Preparer::resolve_policy() {
    if (policy_name_.empty()) return true;
    path_ = resolve_node_policy(config_, policy_name_);
    if (!path_ && path_.error().err == ENOENT && policy_name_ == "default") {
        // default.json is the preload's built-in default: no file needed.
        notes_.add(Level::info, "policy `default` not installed (" + path_.error().message +
                                    "): the preload's built-in default, which is the same, is used");
        policy_name_.clear();
    } else if (!path_) {
        notes_.add(Level::error, "not deduplicated: " + path_.error().message);
        return false;
    }
    return true;
}

// The policy, checked; an invalid one that fails closed refuses the container.
bool Preparer::load_policy() {
    if (!resolve_policy()) return false;
    if (policy_name_.empty()) return true;
    auto check = load_policy_file(*path_);
    closed_ = check.policy ? check.policy->on_error == FailMode::closed : check.declared_on_error == FailMode::closed;
    if (!check.policy) {
        std::string why = "policy `" + policy_name_ + "` is invalid: " + policy_problems(check, *path_);
        if (closed_) {
            notes_.add(Level::error, "refused: " + why + " (the policy says `\"on_error\": \"closed\"`)");
            p_.verdict = Verdict::refused;
        } else {
            notes_.add(Level::error, "not deduplicated: " + why);
        }
        return false;
    }
    edit_.policy_source = *path_;
    p_.policy = policy_name_;
    policy_ = std::move(*check.policy);
    have_policy_ = true;
    return true;
}

// The effective domain (docs/hardening.md): scoped by the pod's namespace
// unless the node says otherwise.  UPM_DOMAIN carries it whenever it is not
// the policy's own, which the preload reads anyway.
void Preparer::scope_the_domain() {
    const bool from_policy = domain_.empty() && have_policy_ && !policy_.domain.empty();
    const std::string asked = from_policy ? policy_.domain : domain_;
    ScopedDomain scoped = scope_domain(config_.domain_scope, asked, ann_);
    for (auto& n : scoped.notes) notes_.add(n.level, n.message);
    if (!scoped.namespace_.empty() && !scoped.domain.empty())
        notes_.add(Level::info, "domain `" + printable(asked, 80) + "`" +
                                    (from_policy ? " (policy `" + policy_name_ + "`)" : "") +
                                    " scoped by namespace `" + scoped.namespace_ + "`: `" + scoped.domain + "`");
    domain_ = scoped.domain;
    if (!from_policy || domain_ != policy_.domain) edit_.domain = domain_;
}

// Whether the preload will advise with MADV_MERGEABLE (ksmd merges node-wide).
bool Preparer::ksm_backend() const {
    const BackendKind kind = select_backend(have_policy_ ? policy_.backend : BackendChoice::automatic, false).kind;
    return kind == BackendKind::ksm || kind == BackendKind::ksm_process;
}

// Node setting ksm_single_namespace (docs/runtime.md): on the KSM backend,
// ksmd merges across namespaces, so only one Kubernetes namespace at a time
// is advised; upmd, which knows every registered container, decides.  A
// container it refuses (or cannot answer for) starts without the preload,
// or is refused when its policy fails closed.
bool Preparer::check_ksm_namespace() {
    if (!config_.ksm_single_namespace) return true;
    const std::optional<std::string> ns = pod_namespace(ann_);
    if (!ns || !ksm_backend()) return true;
    const std::string fix = "; use the upm kernel (MADV_UPM merges only within a domain) or, if the namespaces of "
                            "this node trust each other, set `\"ksm_single_namespace\": false` in the node "
                            "configuration (" + (config_.source.empty() ? std::string(kNodeConfigPath) : config_.source) + ")";
    if (ns->empty())
        return fail("the namespace annotations are not one valid namespace, and the node allows one namespace at a "
                    "time on the KSM backend (ksm_single_namespace)" + fix);
    auto answer = ksm_claim_ ? ksm_claim_(id_, *ns) : agent::claim_ksm_namespace(id_, *ns);
    if (!answer)
        return fail("namespace `" + *ns + "`: cannot check that it is the only namespace on the KSM backend "
                    "(node setting ksm_single_namespace): " + answer.error().message + "; start upmd" + fix);
    if (!answer->granted)
        return fail("namespace `" + *ns + "` may not use the KSM backend: namespace `" + printable(answer->holder, 80) +
                    "` holds it (" + std::to_string(answer->holders) + " container" + (answer->holders == 1 ? "" : "s") +
                    "), ksmd merges across namespaces, and the node setting ksm_single_namespace allows one namespace "
                    "at a time" + fix);
    notes_.add(Level::debug, "namespace `" + *ns + "` holds the KSM backend (ksm_single_namespace)");
    return true;
}

// Layout and hash seeds (docs/hardening.md): fail open, the hardening stays.
void Preparer::plan_the_hardening() {
    if (!have_policy_) return;
    edit_.hardening = plan_hardening(policy_, domain_);
    for (const auto& why : edit_.hardening.problems) notes_.add(Level::warn, why);
    if (edit_.hardening.layout()) edit_.exec_source = find_exec_beside(config_.preload, edit_.hardening, notes_);
}

// From here on a problem refuses the container when the policy fails closed.
bool Preparer::fail(const std::string& why) {
    if (closed_) {
        notes_.add(Level::error,
                   "refused: " + why + " (policy `" + policy_name_ + "` says `\"on_error\": \"closed\"`)");
        p_.verdict = Verdict::refused;
    } else {
        notes_.add(Level::error, "not deduplicated: " + why);
    }
    return false;
}

bool Preparer::find_preload() {
    if (config_.preload.empty()) return fail("libupm-preload.so not found (set `preload` in the node configuration)");
    if (config_.preload.front() != '/') return fail("preload `" + config_.preload + "` is not an absolute path");
    if (::access(config_.preload.c_str(), R_OK) != 0)
        return fail("preload `" + config_.preload + "` cannot be read: " + std::strerror(errno));
    edit_.preload_source = config_.preload;
    return true;
}

// upm-hook for poststart/poststop, when it is an executable file.
void Preparer::find_hook() {
    if (config_.hook.empty()) return;
    struct stat st {};
    if (::stat(config_.hook.c_str(), &st) == 0 && S_ISREG(st.st_mode) && ::access(config_.hook.c_str(), X_OK) == 0)
        edit_.hook = config_.hook;
    else
        notes_.add(Level::info, "no poststart/poststop hooks: `" + config_.hook + "` is not an executable file");
}

// Who advises (policy key `advice`, upm/advice_route.hpp): `remote` leaves
// the preload out when upmd can advise from outside (a upm kernel, the
// poststart hook to register the container, upmd's socket present);
// elsewhere `remote` and `both` fall back to the preload, and the log says
// why (fail open).
void Preparer::choose_route() {
    const AdviceMode mode = have_policy_ ? policy_.advice : AdviceMode::automatic;
    if (mode == AdviceMode::preload || mode == AdviceMode::automatic) return;
    const bool registers = !edit_.hook.empty() && agent::agent_socket_present();
    const remote::AdviceRoute route = remote::route_advice(mode, remote::availability(), registers);
    edit_.preload = route.preload;
    notes_.add(route.fell_back ? Level::warn : Level::info, "policy `" + policy_name_ + "`: " + route.why);
}

// The /run/upm fallback needs a place inside the rootfs (only with a bundle).
bool Preparer::check_run_dir() {
    if (edited_->dir != kContainerDirRun || edited_->root.empty() || bundle_dir_.empty()) return true;
    if (auto c = check_container_dir(bundle_dir_, edited_->root, kContainerDirRun); !c)
        return fail("no place for the preload: " + c.error().message + " (and the spec mounts no tmpfs on `/dev`)");
    return true;
}

bool Preparer::edit_and_write(bool write) {
    edited_ = edit_spec(bundle_->text, edit_);
    if (!edited_) return fail(edited_.error().message);
    if (!check_run_dir()) return false;
    // Another writer (a concurrent create of the same bundle) may replace
    // config.json between our read and our rename: read it again and
    // redo the edit, which is idempotent, a few times.
    for (int attempt = 1; write && edited_->text != bundle_->text; ++attempt) {
        auto w = write_bundle_config(bundle_dir_, edited_->text, *bundle_, config_.fsync);
        if (w) break;
        if (w.error().err != EAGAIN || attempt == 3) return fail(w.error().message);
        bundle_ = read_bundle_config(bundle_dir_);
        if (!bundle_) return fail(bundle_.error().message);
        edited_ = edit_spec(bundle_->text, edit_);
        if (!edited_) return fail(edited_.error().message);
    }
    return true;
}

void Preparer::accept(bool write) {
    p_.verdict = Verdict::edited;
    p_.closed = closed_;
    p_.edit = edit_;
    p_.edited = *edited_;
    if (!write) return;
    notes_.add(Level::info,
               (edit_.preload ? "injected `" + edited_->preload + "` (from `" + edit_.preload_source + "`)"
                              : std::string("no preload (upmd advises from outside)")) +
                   ", policy " +
                   (edit_.policy_source.empty() ? std::string("built-in default")
                                                : "`" + policy_name_ + "` (`" + edit_.policy_source + "`)") +
                   (domain_.empty() ? "" : ", domain `" + domain_ + "`") +
                   (edit_.hardening.summary.empty() ? "" : ", " + edit_.hardening.summary) +
                   (edit_.hook.empty() ? ", no hooks" : ", hooks poststart and poststop"));
}

Preparation prepare(const NodeConfig& config, const std::string& bundle_dir, std::string_view container_id,
                    const std::string* given, PrepareOptions options) {
    Preparation p;
    try {
        Preparer(config, bundle_dir, container_id, p, options).run(given, options.write);
    } catch (const std::exception& e) {
        p.notes.push_back({Level::error, std::string("not deduplicated: ") + e.what()});
    }
    return p;
}

}  // namespace

Preparation prepare_bundle(const NodeConfig& config, const std::string& bundle_dir, std::string_view container_id,
                           PrepareOptions options) {
    return prepare(config, bundle_dir, container_id, nullptr, options);
}

Preparation prepare_spec(const NodeConfig& config, std::string_view config_text, std::string_view container_id) {
    const std::string text(config_text);
    return prepare(config, "", container_id, &text, PrepareOptions{.write = false});
}

}  // namespace upm
