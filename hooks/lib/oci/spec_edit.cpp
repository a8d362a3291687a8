// The injection into config.json (spec.hpp, edit_spec()): two read-only
// binds, the environment, the hooks; refused when the seccomp profile
// denies madvise.  Only `mounts`, `process.env` and `hooks` are changed
// (and what the hardening plan adds, hardening.cpp); every other field is
// kept, in its order (spec_json.hpp).
#include <cerrno>
#include <string>

#include "spec_json.hpp"
#include "upm/launch.hpp"
#include "upm/spec.hpp"

namespace upm {

using oci::json;
using oci::parse_spec;

namespace {

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

// LD_PRELOAD gets `preload` appended to each entry (a new entry when there
// is none; never twice).
void add_preload_env(json& env, const std::string& preload) {
    bool had_preload = false;
    for (auto& e : env) {
        if (!starts_with_var(e, "LD_PRELOAD")) continue;
        had_preload = true;
        const auto& s = e.get_ref<const std::string&>();
        e = "LD_PRELOAD=" + append_preload_entry(std::string_view(s).substr(11), preload);
    }
    if (!had_preload) env.push_back("LD_PRELOAD=" + preload);
}

}  // namespace

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
        if (!edit.policy_source.empty() && edit.preload) out.policy = dir + "/" + kPolicyFile;

        auto env = member(*process, "env", json::value_t::array, "process.env");
        if (!env) return env.error();
        if (edit.preload) add_preload_env(**env, out.preload);
        if (!out.policy.empty()) set_env(**env, kEnvPolicy, out.policy);
        if (!edit.domain.empty()) set_env(**env, kEnvDomain, edit.domain);

        json kept = json::array();
        for (auto& m : **mounts)
            if (!our_mount(m)) kept.push_back(std::move(m));
        if (edit.preload) kept.push_back(bind_mount(edit.preload_source, out.preload));
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

}  // namespace upm
