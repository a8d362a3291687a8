// OCI bundles: the runtime command line, reading, editing and writing
// config.json, and the fail-open rules of upm-runtime; see spec.hpp and
// docs/runtime.md.
//
// The document is parsed as nlohmann::ordered_json so that every field upm
// does not understand survives, in its order; only `mounts`, `process.env`
// and `hooks` are changed.  A cheap scan bounds the nesting depth before
// parsing, because dumping a deeply nested document recurses.  Files are
// opened relative to the bundle directory's fd, config.json with O_NOFOLLOW
// (a symlink there is refused, not followed); the new config.json is a
// temporary file in the same directory renamed over the old one, and the
// rename happens only if config.json is still the file that was read.  No
// fsync by default: the engines write config.json without one, a bundle does
// not outlive a boot, and on a disk-backed bundle directory it cost 1-20 ms
// per container on the test machine (node setting `fsync`).
#include "upm/spec.hpp"

#include <fcntl.h>
#include <linux/openat2.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <nlohmann/json.hpp>
#include <optional>

#include "upm/launch.hpp"
#include "upm/policy.hpp"
#include "upm/atomic_file.hpp"
#include "upm/io.hpp"

namespace upm {

using json = nlohmann::ordered_json;

namespace {

using detail::Fd;

constexpr const char* kConfigName = "config.json";

template <typename Set>
bool contains(const Set& set, std::string_view s) {
    return std::find(std::begin(set), std::end(set), s) != std::end(set);
}

// ---- command line ----------------------------------------------------------

// Global flags of runc (urfave/cli) and crun (argp) that take a value.
constexpr std::string_view kGlobalValueFlags[] = {
    "log", "log-format", "log-level", "root", "criu", "rootless", "cgroup-manager"};
// Options of create/run (runc and crun) that take a value; "bundle"/"b" and
// "config"/"f" are handled apart.
constexpr std::string_view kCommandValueFlags[] = {"console-socket", "pid-file",
                                                                        "preserve-fds", "pidfd-socket"};
constexpr std::string_view kCommandLongFlags[] = {
    "bundle", "config", "console-socket", "pid-file", "preserve-fds", "pidfd-socket", "detach", "keep",
    "no-pivot", "no-new-keyring", "no-subreaper", "help"};

bool flag_true(const std::optional<std::string>& value) {
    return !value || *value == "true" || *value == "1" || *value == "t" || *value == "TRUE" || *value == "True";
}

// ---- JSON --------------------------------------------------------------------

Result<json> parse_spec(std::string_view text) {
    if (detail::json_nests_deeper(text, kMaxSpecDepth))
        return Error{EINVAL, "config.json nests deeper than " + std::to_string(kMaxSpecDepth) + " levels"};
    try {
        json doc = json::parse(text);
        if (!doc.is_object()) return Error{EINVAL, "config.json is not a JSON object"};
        return doc;
    } catch (const json::exception& e) {
        std::string what = e.what();
        auto at = what.find("] ");
        return Error{EINVAL, "config.json is not valid JSON: " + (at == std::string::npos ? what : what.substr(at + 2))};
    }
}

bool starts_with_var(const json& entry, std::string_view name) {
    if (!entry.is_string()) return false;
    const auto& s = entry.get_ref<const std::string&>();
    return s.size() > name.size() && s.compare(0, name.size(), name) == 0 && s[name.size()] == '=';
}

void set_env(json& env, std::string_view name, const std::string& value) {
    json kept = json::array();
    for (auto& e : env)
        if (!starts_with_var(e, name)) kept.push_back(std::move(e));
    kept.push_back(std::string(name) + "=" + value);
    env = std::move(kept);
}

// Our mounts, wherever an earlier edit put them.
bool our_mount(const json& m) {
    if (!m.is_object() || !m.contains("destination") || !m["destination"].is_string()) return false;
    const auto& d = m["destination"].get_ref<const std::string&>();
    for (const char* dir : {kContainerDirDev, kContainerDirRun})
        for (const char* file : {kPreloadFile, kPolicyFile})
            if (d == std::string(dir) + "/" + file) return true;
    return false;
}

// The spec mounts a tmpfs on /dev: the runtime's own, hiding the image's /dev.
bool has_dev_tmpfs(const json& mounts) {
    for (const auto& m : mounts) {
        if (!m.is_object()) continue;
        auto d = m.find("destination");
        auto t = m.find("type");
        if (d != m.end() && t != m.end() && d->is_string() && t->is_string() && *d == "/dev" && *t == "tmpfs")
            return true;
    }
    return false;
}

json bind_mount(const std::string& source, const std::string& destination) {
    json m = json::object();
    m["destination"] = destination;
    m["type"] = "bind";
    m["source"] = source;
    m["options"] = json::array({"bind", "ro", "nosuid", "nodev"});
    return m;
}

// The member `key` of `parent` as the JSON type `kind`, created when absent.
Result<json*> member(json& parent, const char* key, json::value_t kind, const std::string& where) {
    if (!parent.contains(key)) parent[key] = kind == json::value_t::array ? json::array() : json::object();
    json& m = parent[key];
    if (m.type() != kind)
        return Error{EINVAL, "`" + where + "` in config.json is not an " +
                                 (kind == json::value_t::array ? "array" : "object")};
    return &m;
}

// Why the container's seccomp profile stops the preload from advising, or ""
// when it does not.  The preload needs madvise(); upm leaves the profile
// alone (adding a rule would widen what the operator chose) and the caller
// fails open.  A conditional rule (with `args`) that allows madvise counts
// as allowing it; a missing defaultAction is the runtime's error, not ours.
std::string seccomp_denies_madvise(const json& doc) {
    auto allows = [](const std::string& action) { return action == "SCMP_ACT_ALLOW" || action == "SCMP_ACT_LOG"; };
    auto lin = doc.find("linux");
    if (lin == doc.end() || !lin->is_object()) return "";
    auto sc = lin->find("seccomp");
    if (sc == lin->end() || !sc->is_object()) return "";
    auto def = sc->find("defaultAction");
    if (def == sc->end() || !def->is_string()) return "";
    std::string denying;
    bool allowed = false;
    auto rules = sc->find("syscalls");
    if (rules != sc->end() && rules->is_array()) {
        for (const auto& r : *rules) {
            if (!r.is_object() || !r.contains("names") || !r["names"].is_array()) continue;
            bool names_it = false;
            for (const auto& n : r["names"]) names_it = names_it || (n.is_string() && n == "madvise");
            if (!names_it || !r.contains("action") || !r["action"].is_string()) continue;
            const auto& action = r["action"].get_ref<const std::string&>();
            bool conditional = r.contains("args") && r["args"].is_array() && !r["args"].empty();
            if (allows(action)) allowed = true;
            else if (!conditional) denying = action;
        }
    }
    if (allowed) return "";
    if (!denying.empty()) return "a rule of its seccomp profile gives `madvise` the action `" + printable(denying, 40) + "`";
    const auto& d = def->get_ref<const std::string&>();
    if (allows(d)) return "";
    return "its seccomp profile's default action is `" + printable(d, 40) + "` and no rule allows `madvise`";
}

// ---- prepare_bundle ------------------------------------------------------------

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

}  // namespace

// ---- command line ----------------------------------------------------------------

RuntimeArgs parse_runtime_args(const std::vector<std::string>& args) {
    RuntimeArgs r;
    try {
        std::size_t i = 0;
        for (; i < args.size(); ++i) {
            const std::string& a = args[i];
            if (a == "--") {
                ++i;
                break;
            }
            if (a.size() < 2 || a[0] != '-') break;
            std::string name = a.substr(a[1] == '-' ? 2 : 1);
            std::optional<std::string> value;
            if (auto eq = name.find('='); eq != std::string::npos) {
                value = name.substr(eq + 1);
                name.resize(eq);
            }
            if (contains(kGlobalValueFlags, name) && !value) value = i + 1 < args.size() ? args[++i] : "";
            if (name == "log") r.log_file = *value;
            else if (name == "log-format") r.log_format = *value;
            else if (name == "debug") r.debug = flag_true(value);
        }
        if (i >= args.size()) return r;
        r.command_index = static_cast<int>(i);
        r.command = args[i];
        if (!edits_bundle(r)) return r;
        for (std::size_t j = i + 1; j < args.size(); ++j) {
            const std::string& a = args[j];
            if (a == "--") break;
            if (a.size() < 2 || a[0] != '-') {
                if (r.container_id.empty()) r.container_id = a;
                continue;
            }
            std::string name = a.substr(a[1] == '-' ? 2 : 1);
            std::optional<std::string> value;
            if (auto eq = name.find('='); eq != std::string::npos) {
                value = name.substr(eq + 1);
                name.resize(eq);
            }
            if (a[1] != '-' && !value && !contains(kCommandLongFlags, name) && name.size() > 1 &&
                (name[0] == 'b' || name[0] == 'f')) {
                // argp's attached short value: -b/path/to/bundle
                value = name.substr(1);
                name.resize(1);
            }
            bool is_bundle = name == "bundle" || name == "b";
            bool is_config = name == "config" || name == "f";
            if ((is_bundle || is_config || contains(kCommandValueFlags, name)) && !value)
                value = j + 1 < args.size() ? args[++j] : "";
            if (is_bundle) r.bundle = value->empty() ? "." : *value;
            if (is_config) r.config_override = true;
        }
    } catch (...) {
        // Out of memory: whatever was parsed; the caller passes through.
    }
    return r;
}

bool edits_bundle(const RuntimeArgs& args) { return args.command == "create" || args.command == "run"; }

// ---- config.json -----------------------------------------------------------------

Result<BundleConfig> read_bundle_config(const std::string& bundle_dir) {
    try {
        Fd dir(::open(bundle_dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
        if (dir.fd < 0) return Error::sys(errno, "open bundle `" + bundle_dir + "`");
        Fd f(::openat(dir.fd, kConfigName, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_NOCTTY | O_CLOEXEC));
        if (f.fd < 0) {
            int e = errno;
            if (e == ELOOP) return Error{e, "`config.json` in bundle `" + bundle_dir + "` is a symbolic link"};
            return Error::sys(e, "open `config.json` in bundle `" + bundle_dir + "`");
        }
        struct stat st {};
        if (::fstat(f.fd, &st) != 0) return Error::sys(errno, "stat `config.json`");
        if (!S_ISREG(st.st_mode)) return Error{EINVAL, "`config.json` in bundle `" + bundle_dir + "` is not a regular file"};
        if (static_cast<std::uint64_t>(st.st_size) > kMaxSpecFile)
            return Error{EFBIG, "`config.json` is larger than " + std::to_string(kMaxSpecFile) + " bytes"};
        BundleConfig out;
        out.mode = st.st_mode & 07777;
        out.uid = st.st_uid;
        out.gid = st.st_gid;
        out.dev = st.st_dev;
        out.ino = st.st_ino;
        out.text.resize(static_cast<std::size_t>(st.st_size) + 1);
        std::size_t have = 0;
        for (;;) {
            if (have == out.text.size()) {
                if (out.text.size() > kMaxSpecFile)
                    return Error{EFBIG, "`config.json` is larger than " + std::to_string(kMaxSpecFile) + " bytes"};
                out.text.resize(std::min(out.text.size() * 2, kMaxSpecFile + 1));
            }
            ssize_t n = ::read(f.fd, out.text.data() + have, out.text.size() - have);
            if (n < 0) {
                if (errno == EINTR) continue;
                return Error::sys(errno, "read `config.json`");
            }
            if (n == 0) break;
            have += static_cast<std::size_t>(n);
        }
        out.text.resize(have);
        return out;
    } catch (const std::exception& e) {
        return Error::msg(std::string("read `config.json`: ") + e.what());
    }
}

Status write_bundle_config(const std::string& bundle_dir, std::string_view text, const BundleConfig& original,
                           bool sync) {
    AtomicWriteOptions o{.mode = original.mode, .fsync = sync};
    // Keep the owner when we may; in a user namespace the original ids may
    // not be mapped, and a root-owned copy is still readable by the runtime.
    if (::geteuid() == 0 && (original.uid != 0 || original.gid != 0)) {
        o.uid = original.uid;
        o.gid = original.gid;
    }
    // Replace config.json only if it is still the file we read.
    o.before_rename = [&](int dir_fd) -> Status {
        struct stat st {};
        if (::fstatat(dir_fd, kConfigName, &st, AT_SYMLINK_NOFOLLOW) != 0)
            return Error::sys(errno, "stat `config.json`");
        if (st.st_dev != original.dev || st.st_ino != original.ino)
            return Error{EAGAIN, "`config.json` was replaced while upm edited it"};
        return Ok{};
    };
    auto st = write_file_atomic(bundle_dir, kConfigName, text, o);
    if (!st) return st.error().wrap("bundle");
    return Ok{};
}

Result<UpmAnnotations> read_upm_annotations(std::string_view config_text) {
    auto doc = parse_spec(config_text);
    if (!doc) return doc.error();
    try {
        UpmAnnotations a;
        auto it = doc->find("annotations");
        if (it == doc->end() || !it->is_object()) return a;
        auto get = [&](const char* key, bool& present, std::string& value) {
            auto v = it->find(key);
            if (v == it->end()) return;
            present = true;
            if (v->is_string()) value = v->get<std::string>();
        };
        get(kAnnotationEnabled, a.enabled_present, a.enabled_value);
        get(kAnnotationPolicy, a.policy_present, a.policy);
        get(kAnnotationDomain, a.domain_present, a.domain);
        get(kAnnotationNamespaceCri, a.cri_namespace_present, a.cri_namespace);
        get(kAnnotationNamespaceCrio, a.crio_namespace_present, a.crio_namespace);
        auto v = it->find(kAnnotationEnabled);
        a.enabled = v != it->end() && v->is_string() && a.enabled_value == "true";
        return a;
    } catch (const std::exception& e) {
        return Error::msg(std::string("reading annotations: ") + e.what());
    }
}

Status check_container_dir(const std::string& bundle_dir, const std::string& root_path, std::string_view dir) {
    try {
        auto in_root = [](int root, const std::string& path) {
            struct open_how how {};
            how.flags = O_PATH | O_DIRECTORY | O_CLOEXEC;
            how.resolve = RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS;
            return static_cast<int>(::syscall(SYS_openat2, root, path.c_str(), &how, sizeof how));
        };
        Fd bundle(::open(bundle_dir.c_str(), O_PATH | O_DIRECTORY | O_CLOEXEC));
        if (bundle.fd < 0) return Error::sys(errno, "open bundle `" + bundle_dir + "`");
        Fd root(::openat(bundle.fd, root_path.c_str(), O_PATH | O_DIRECTORY | O_CLOEXEC));
        if (root.fd < 0) return Error::sys(errno, "open the rootfs `" + root_path + "`");
        std::string path;
        std::string_view rest = dir;
        while (!rest.empty()) {
            auto slash = rest.find('/');
            std::string_view name = rest.substr(0, slash);
            rest.remove_prefix(slash == std::string_view::npos ? rest.size() : slash + 1);
            if (name.empty()) continue;
            std::string parent = path.empty() ? "." : path;
            path += (path.empty() ? "" : "/") + std::string(name);
            Fd fd(in_root(root.fd, path));
            if (fd.fd >= 0) continue;
            int e = errno;
            if (e == ENOSYS) return Ok{};  // kernel < 5.6: leave it to the runtime
            std::string shown = "`/" + path + "` in the image";
            if (e == ENOTDIR) return Error{e, shown + " is not a directory"};
            if (e != ENOENT) return Error::sys(e, "resolving " + shown);
            // Absent is fine (the runtime creates it); a link to nowhere is not.
            Fd up(in_root(root.fd, parent));
            struct stat st {};
            if (up.fd >= 0 && ::fstatat(up.fd, std::string(name).c_str(), &st, AT_SYMLINK_NOFOLLOW) == 0 &&
                S_ISLNK(st.st_mode))
                return Error{ENOENT, shown + " is a symbolic link that does not resolve inside the rootfs"};
            return Ok{};
        }
        return Ok{};
    } catch (const std::exception& e) {
        return Error::msg(std::string("checking the rootfs: ") + e.what());
    }
}

std::string append_preload_entry(std::string_view existing, std::string_view entry) {
    std::string_view rest = existing;
    while (!rest.empty()) {
        auto sep = rest.find_first_of(": ");
        if (rest.substr(0, sep) == entry) return std::string(existing);
        rest.remove_prefix(sep == std::string_view::npos ? rest.size() : sep + 1);
    }
    auto end = existing.find_last_not_of(": ");
    if (end == std::string_view::npos) return std::string(entry);
    return std::string(existing.substr(0, end + 1)) + ":" + std::string(entry);
}

Result<EditedSpec> edit_spec(std::string_view config_text, const SpecEdit& edit) {
    auto parsed = parse_spec(config_text);
    if (!parsed) return parsed.error();
    try {
        json& doc = *parsed;
        if (!doc.contains("process") || !doc["process"].is_object())
            return Error{EINVAL, "config.json has no `process` object"};
        if (auto why = seccomp_denies_madvise(doc); !why.empty())
            return Error{EPERM, "the preload could not advise: " + why + " (upm leaves the profile alone)"};
        // Top-level members are created first: ordered_json keeps them in a
        // vector, so an insertion moves its siblings.  Nested values stay put.
        auto mounts = member(doc, "mounts", json::value_t::array, "mounts");
        if (!mounts) return mounts.error();
        Result<json*> hooks = Error{0, ""};
        if (!edit.hook.empty()) {
            hooks = member(doc, "hooks", json::value_t::object, "hooks");
            if (!hooks) return hooks.error();
            mounts = &doc["mounts"];
        }
        json* process = &doc["process"];
        EditedSpec out;
        std::string dir = has_dev_tmpfs(**mounts) ? kContainerDirDev : kContainerDirRun;
        out.dir = dir;
        if (doc.contains("root") && doc["root"].is_object() && doc["root"].contains("path") &&
            doc["root"]["path"].is_string())
            out.root = doc["root"]["path"].get<std::string>();
        out.preload = dir + "/" + kPreloadFile;
        if (!edit.policy_source.empty()) out.policy = dir + "/" + kPolicyFile;

        auto env = member(*process, "env", json::value_t::array, "process.env");
        if (!env) return env.error();
        bool had_preload = false;
        for (auto& e : **env) {
            if (!starts_with_var(e, "LD_PRELOAD")) continue;
            had_preload = true;
            const auto& s = e.get_ref<const std::string&>();
            e = "LD_PRELOAD=" + append_preload_entry(std::string_view(s).substr(11), out.preload);
        }
        if (!had_preload) (*env)->push_back("LD_PRELOAD=" + out.preload);
        if (!out.policy.empty()) set_env(**env, kEnvPolicy, out.policy);
        if (!edit.domain.empty()) set_env(**env, kEnvDomain, edit.domain);

        json kept = json::array();
        for (auto& m : **mounts)
            if (!our_mount(m)) kept.push_back(std::move(m));
        kept.push_back(bind_mount(edit.preload_source, out.preload));
        if (!out.policy.empty()) kept.push_back(bind_mount(edit.policy_source, out.policy));
        **mounts = std::move(kept);

        if (!edit.hook.empty()) {
            for (const char* stage : {"poststart", "poststop"}) {
                auto list = member(**hooks, stage, json::value_t::array, std::string("hooks.") + stage);
                if (!list) return list.error();
                json kept = json::array();
                for (auto& h : **list) {
                    bool ours = h.is_object() && h.contains("path") && h["path"] == edit.hook;
                    if (!ours) kept.push_back(std::move(h));
                }
                json hook = json::object();
                hook["path"] = edit.hook;
                hook["args"] = json::array({"upm-hook", stage});
                hook["timeout"] = edit.hook_timeout_s;
                kept.push_back(std::move(hook));
                **list = std::move(kept);
            }
        }
        if (auto h = edit_spec_hardening(doc, edit.hardening, edit.exec_source, dir); !h) return h.error();
        out.text = doc.dump();
        return out;
    } catch (const std::exception& e) {
        return Error::msg(std::string("editing config.json: ") + e.what());
    }
}

// ---- the domain ------------------------------------------------------------------

bool valid_namespace(std::string_view ns) {
    if (ns.empty() || ns.size() > 63) return false;
    auto alnum = [](char c) { return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9'); };
    if (!alnum(ns.front()) || !alnum(ns.back())) return false;
    return std::all_of(ns.begin(), ns.end(), [&](char c) { return alnum(c) || c == '-'; });
}

ScopedDomain scope_domain(DomainScope scope, std::string_view domain, const UpmAnnotations& ann) {
    ScopedDomain out;
    try {
        auto warn = [&](std::string message) { out.notes.push_back({Level::warn, std::move(message)}); };
        if (!valid_domain(domain)) {  // the caller checks; never pass an unchecked name on
            warn("invalid domain `" + printable(domain, 80) + "`: no domain");
            return out;
        }
        const bool cri = ann.cri_namespace_present, crio = ann.crio_namespace_present;
        if (scope == DomainScope::none || (!cri && !crio)) {
            if (scope != DomainScope::none && domain.starts_with(kScopedDomainPrefix)) {
                warn("domain `" + printable(domain, 80) + "` starts with `" + kScopedDomainPrefix +
                     "`, which the node reserves for domains scoped by a Kubernetes namespace: no domain");
                return out;
            }
            out.domain = std::string(domain);
            return out;
        }
        if (cri && crio && ann.cri_namespace != ann.crio_namespace) {
            warn(std::string("annotations `") + kAnnotationNamespaceCri + "` (`" + printable(ann.cri_namespace, 80) +
                 "`) and `" + kAnnotationNamespaceCrio + "` (`" + printable(ann.crio_namespace, 80) +
                 "`) name different namespaces: no domain");
            return out;
        }
        const std::string& ns = cri ? ann.cri_namespace : ann.crio_namespace;
        const char* key = cri ? kAnnotationNamespaceCri : kAnnotationNamespaceCrio;
        if (!valid_namespace(ns)) {
            warn(std::string("annotation `") + key + "` `" + printable(ns, 80) +
                 "` is not a namespace (a DNS label: up to 63 lowercase letters, digits or `-`): no domain");
            return out;
        }
        out.namespace_ = ns;
        if (domain.empty()) return out;
        if (domain.size() > kMaxDomainName) {  // only a policy's domain can be longer
            warn("domain `" + printable(domain, 160) + "` is longer than " + std::to_string(kMaxDomainName) +
                 " characters and cannot be scoped by namespace `" + ns + "`: no domain");
            return out;
        }
        std::string scoped = std::string(kScopedDomainPrefix) + ns + "." + std::string(domain);
        if (!valid_domain(scoped)) {  // cannot happen with the limits above; stay strict anyway
            warn("domain `" + printable(scoped, 160) + "` is not a valid domain: no domain");
            return out;
        }
        out.domain = std::move(scoped);
    } catch (const std::exception& e) {
        out.domain.clear();
        out.notes.push_back({Level::warn, std::string("scoping the domain: ") + e.what() + ": no domain"});
    }
    return out;
}

// ---- the whole step ----------------------------------------------------------------

namespace {

// prepare_bundle() and prepare_spec(): `given` is the document when it does
// not come from <bundle_dir>/config.json; `write` = false stops before the
// write (the verdict `edited` then means "would be injected").
Preparation prepare(const NodeConfig& config, const std::string& bundle_dir, std::string_view container_id,
                    const std::string* given, bool write) {
    Preparation p;
    try {
        Notes notes(p, container_id);
        Result<BundleConfig> bundle = given ? Result<BundleConfig>(BundleConfig{*given}) : read_bundle_config(bundle_dir);
        if (!bundle) {
            notes.add(Level::warn, "not deduplicated: " + bundle.error().message);
            return p;
        }
        // Fast path: without the literal key and without any \u escape (the
        // only other way to spell it), no parsed document can carry
        // upm.enabled; an 18 KiB spec costs about 0.3 ms of CPU to parse.
        if (bundle->text.find(kAnnotationEnabled) == std::string::npos &&
            bundle->text.find("\\u") == std::string::npos) {
            notes.add(Level::debug, "not annotated `upm.enabled=true`: config.json left as it is");
            return p;
        }
        auto ann = read_upm_annotations(bundle->text);
        if (!ann) {
            notes.add(Level::warn, "not deduplicated: " + ann.error().message);
            return p;
        }
        if (!ann->enabled) {
            if (ann->enabled_present)
                notes.add(Level::info, "annotation `upm.enabled` is `" + printable(ann->enabled_value, 32) +
                                               "`, not `true`: not deduplicated, config.json left as it is");
            else
                notes.add(Level::debug, "not annotated `upm.enabled=true`: config.json left as it is");
            return p;
        }

        // The policy: the annotation's NAME, else the node's default.
        std::string policy_name = config.default_policy;
        if (ann->policy_present) {
            if (valid_policy_name(ann->policy)) {
                policy_name = ann->policy;
            } else {
                notes.add(Level::warn, "invalid policy name `" + printable(ann->policy, 80) +
                                               "` in annotation `upm.policy` (up to 64 letters, digits, `.`, `_` "
                                               "or `-`, starting with a letter or digit): using the default policy `" +
                                               (policy_name.empty() ? "(built-in)" : policy_name) + "`");
            }
        }
        // The domain asked for: the annotation's, else (below) the policy's.
        std::string domain;
        if (ann->domain_present) {
            if (!ann->domain.empty() && valid_domain_name(ann->domain))
                domain = ann->domain;
            else
                notes.add(Level::warn, "invalid domain `" + printable(ann->domain, 80) +
                                               "` in annotation `upm.domain` (up to 64 letters, digits, `.`, `_` or "
                                               "`-`, starting with a letter or digit): ignored");
        }

        SpecEdit edit;
        bool closed = false;
        Policy policy;                   // the policy's own domain, when it names one
        bool have_policy = false;
        Result<std::string> path = std::string();
        if (!policy_name.empty()) {
            path = resolve_node_policy(config, policy_name);
            if (!path && path.error().err == ENOENT && policy_name == "default") {
                // default.json is the preload's built-in default: no file needed.
                notes.add(Level::info, "policy `default` not installed (" + path.error().message +
                                               "): the preload's built-in default, which is the same, is used");
                policy_name.clear();
            } else if (!path) {
                notes.add(Level::error, "not deduplicated: " + path.error().message);
                return p;
            }
        }
        if (!policy_name.empty()) {
            auto check = load_policy_file(*path);
            closed = check.policy ? check.policy->on_error == FailMode::closed
                                  : check.declared_on_error == FailMode::closed;
            if (!check.policy) {
                std::string why = "policy `" + policy_name + "` is invalid: " + policy_problems(check, *path);
                if (closed) {
                    notes.add(Level::error, "refused: " + why + " (the policy says `\"on_error\": \"closed\"`)");
                    p.verdict = Verdict::refused;
                } else {
                    notes.add(Level::error, "not deduplicated: " + why);
                }
                return p;
            }
            edit.policy_source = *path;
            p.policy = policy_name;
            policy = std::move(*check.policy);
            have_policy = true;
        }
        // The effective domain (docs/hardening.md): scoped by the pod's
        // namespace unless the node says otherwise.  UPM_DOMAIN carries it
        // whenever it is not the policy's own, which the preload reads anyway.
        {
            const bool from_policy = domain.empty() && have_policy && !policy.domain.empty();
            const std::string asked = from_policy ? policy.domain : domain;
            ScopedDomain scoped = scope_domain(config.domain_scope, asked, *ann);
            for (auto& n : scoped.notes) notes.add(n.level, n.message);
            if (!scoped.namespace_.empty() && !scoped.domain.empty())
                notes.add(Level::info, "domain `" + printable(asked, 80) + "`" +
                                               (from_policy ? " (policy `" + policy_name + "`)" : "") +
                                               " scoped by namespace `" + scoped.namespace_ + "`: `" +
                                               scoped.domain + "`");
            domain = scoped.domain;
            if (!from_policy || domain != policy.domain) edit.domain = domain;
        }
        if (have_policy) {
            // Layout and hash seeds (docs/hardening.md): fail open, the hardening stays.
            edit.hardening = plan_hardening(policy, domain);
            for (const auto& why : edit.hardening.problems) notes.add(Level::warn, why);
            if (edit.hardening.layout())
                edit.exec_source = find_exec_beside(config.preload, edit.hardening, notes);
        }
        auto fail = [&](const std::string& why) {
            if (closed) {
                notes.add(Level::error, "refused: " + why + " (policy `" + policy_name +
                                                "` says `\"on_error\": \"closed\"`)");
                p.verdict = Verdict::refused;
            } else {
                notes.add(Level::error, "not deduplicated: " + why);
            }
            return p;
        };

        if (config.preload.empty()) return fail("libupm-preload.so not found (set `preload` in the node configuration)");
        if (config.preload.front() != '/') return fail("preload `" + config.preload + "` is not an absolute path");
        if (::access(config.preload.c_str(), R_OK) != 0)
            return fail("preload `" + config.preload + "` cannot be read: " + std::strerror(errno));
        edit.preload_source = config.preload;

        if (!config.hook.empty()) {
            struct stat st {};
            if (::stat(config.hook.c_str(), &st) == 0 && S_ISREG(st.st_mode) && ::access(config.hook.c_str(), X_OK) == 0)
                edit.hook = config.hook;
            else
                notes.add(Level::info, "no poststart/poststop hooks: `" + config.hook + "` is not an executable file");
        }

        auto edited = edit_spec(bundle->text, edit);
        if (!edited) return fail(edited.error().message);
        if (edited->dir == kContainerDirRun && !edited->root.empty() && !bundle_dir.empty()) {
            if (auto c = check_container_dir(bundle_dir, edited->root, kContainerDirRun); !c)
                return fail("no place for the preload: " + c.error().message + " (and the spec mounts no tmpfs on `/dev`)");
        }
        // Another writer (a concurrent create of the same bundle) may replace
        // config.json between our read and our rename: read it again and
        // redo the edit, which is idempotent, a few times.
        for (int attempt = 1; write && edited->text != bundle->text; ++attempt) {
            auto w = write_bundle_config(bundle_dir, edited->text, *bundle, config.fsync);
            if (w) break;
            if (w.error().err != EAGAIN || attempt == 3) return fail(w.error().message);
            bundle = read_bundle_config(bundle_dir);
            if (!bundle) return fail(bundle.error().message);
            edited = edit_spec(bundle->text, edit);
            if (!edited) return fail(edited.error().message);
        }
        p.verdict = Verdict::edited;
        p.closed = closed;
        p.edit = edit;
        p.edited = *edited;
        if (write) notes.add(Level::info, "injected `" + edited->preload + "` (from `" + edit.preload_source +
                                       "`), policy " +
                                       (edit.policy_source.empty() ? std::string("built-in default")
                                                                   : "`" + policy_name + "` (`" + edit.policy_source + "`)") +
                                       (domain.empty() ? "" : ", domain `" + domain + "`") +
                                       (edit.hardening.summary.empty() ? "" : ", " + edit.hardening.summary) +
                                       (edit.hook.empty() ? ", no hooks" : ", hooks poststart and poststop"));
    } catch (const std::exception& e) {
        p.notes.push_back({Level::error, std::string("not deduplicated: ") + e.what()});
    }
    return p;
}

}  // namespace

Preparation prepare_bundle(const NodeConfig& config, const std::string& bundle_dir, std::string_view container_id,
                           bool write) {
    return prepare(config, bundle_dir, container_id, nullptr, write);
}

Preparation prepare_spec(const NodeConfig& config, std::string_view config_text, std::string_view container_id) {
    const std::string text(config_text);
    return prepare(config, "", container_id, &text, false);
}

}  // namespace upm
