// The node configuration (/etc/upm/config.json); see nodeconfig.hpp and
// docs/runtime.md.
//
// Validation is per key: a wrong value is reported and the key keeps its
// default, so that one typo cannot stop every container of the node (the
// runtime path is needed even to pass `runc state` through).  Unknown keys
// are warnings, not errors, for the same reason; docs/policy.md explains why
// policies, which only affect one container, are stricter.
#include "upm/nodeconfig.hpp"

#include <limits.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include <array>
#include <cerrno>
#include <nlohmann/json.hpp>
#include <optional>

#include "upm/io.hpp"
#include "upm/launch.hpp"
#include "upm/policy.hpp"

namespace upm {

using json = nlohmann::ordered_json;

namespace {

constexpr std::array<std::string_view, 4> kRuntimeCandidates{"/usr/bin/runc", "/usr/sbin/runc", "/usr/bin/crun",
                                                             "/usr/sbin/crun"};
constexpr std::array<std::string_view, 5> kLogLevels{"off", "error", "warn", "info", "debug"};

std::string real_path_or_empty(const std::string& path) {
    char buf[PATH_MAX];
    return ::realpath(path.c_str(), buf) ? std::string(buf) : std::string();
}

bool executable_file(const std::string& path) {
    struct stat st {};
    return ::stat(path.c_str(), &st) == 0 && S_ISREG(st.st_mode) && ::access(path.c_str(), X_OK) == 0;
}

}  // namespace

NodeConfig default_node_config(const std::string& self_exe) {
    NodeConfig c;
    try {
        std::string self = real_path_or_empty(self_exe);
        for (auto candidate : kRuntimeCandidates) {
            std::string path(candidate);
            if (executable_file(path) && real_path_or_empty(path) != self) {
                c.runtime = path;
                break;
            }
        }
        if (auto preload = find_preload()) c.preload = *preload;
        if (!self_exe.empty()) c.hook = detail::dirname(self_exe) + "/upm-hook";
    } catch (...) {
        // Out of memory: the defaults that could be filled in.
    }
    return c;
}

namespace {

// A key whose value is a string: where it goes and what it may be.
struct StringKey {
    std::string* target = nullptr;
    bool absolute = true;        // value must be an absolute path (or "" where allowed)
    bool empty_ok = false;
};

std::optional<StringKey> string_key(const std::string& key, NodeConfig& c) {
    if (key == "runtime") return StringKey{&c.runtime};
    if (key == "preload") return StringKey{&c.preload};
    if (key == "policy_dir") return StringKey{&c.policy_dir};
    if (key == "hook") return StringKey{&c.hook, true, true};
    if (key == "log_file") return StringKey{&c.log_file, true, true};
    if (key == "default_policy") return StringKey{&c.default_policy, false, true};
    if (key == "log_level") return StringKey{&c.log_level, false, false};
    return std::nullopt;
}

// Why the string value `s` of `key` is refused, "" when it is taken.
std::string string_value_problem(const std::string& key, const std::string& s, const StringKey& k) {
    if (s.size() > PATH_MAX || s.find('\0') != std::string::npos)
        return "`" + key + "` is too long or contains a NUL byte; the default is used";
    if (s.empty() && !k.empty_ok) return "`" + key + "` must not be empty; the default is used";
    if (key == "log_level") {
        bool known = false;
        for (auto l : kLogLevels) known = known || s == l;
        if (!known) return "unknown log_level `" + s + "` (use off, error, warn, info or debug); the default is used";
    } else if (key == "default_policy") {
        if (!s.empty() && s.front() != '/' && !valid_policy_name(s))
            return "`default_policy` must be a policy NAME ([A-Za-z0-9][A-Za-z0-9._-]{0,63}), an "
                   "absolute path or \"\"; the default is used";
    } else if (k.absolute && !s.empty() && s.front() != '/') {
        return "`" + key + "` must be an absolute path; the default is used";
    }
    return "";
}

// One key of the document into `out.config`, or a problem; the key keeps
// its default when its value is wrong.
void apply_key(const std::string& key, const json& value, NodeConfigLoad& out) {
    auto error = [&](std::string message) { out.problems.push_back({Level::error, std::move(message), "/" + key}); };
    if (key == "$comment") return;
    if (key == "domain_scope") {
        if (value.is_string() && value.get_ref<const std::string&>() == "namespace")
            out.config.domain_scope = DomainScope::kubernetes_namespace;
        else if (value.is_string() && value.get_ref<const std::string&>() == "none")
            out.config.domain_scope = DomainScope::none;
        else
            error("`domain_scope` must be \"namespace\" or \"none\"; the default is used");
        return;
    }
    if (key == "fsync" || key == "ksm_single_namespace") {
        bool& target = key == "fsync" ? out.config.fsync : out.config.ksm_single_namespace;
        if (value.is_boolean()) target = value.get<bool>();
        else error("`" + key + "` must be true or false; the default is used");
        return;
    }
    auto k = string_key(key, out.config);
    if (!k) {
        out.problems.push_back({Level::warn, "unknown key `" + key + "` ignored", "/" + key});
        return;
    }
    if (!value.is_string()) {
        error("`" + key + "` must be a string; the default is used");
        return;
    }
    const auto& s = value.get_ref<const std::string&>();
    if (auto why = string_value_problem(key, s, *k); !why.empty()) {
        error(std::move(why));
        return;
    }
    *k->target = s;
}

// "line L, column C" of a parse error, "(syntax)" when it names none.
std::string parse_error_where(const json::parse_error& e) {
    // e.what() is "[json.exception.parse_error.101] parse error at line 3, column 7: ..."
    std::string what = e.what();
    auto at = what.find("line ");
    if (at == std::string::npos) return "(syntax)";
    auto colon = what.find(':', at);
    return what.substr(at, colon == std::string::npos ? std::string::npos : colon - at);
}

}  // namespace

NodeConfigLoad parse_node_config(std::string_view text, const NodeConfig& defaults) {
    NodeConfigLoad out;
    out.config = defaults;
    try {
        json doc = json::parse(text, nullptr, /*allow_exceptions=*/true, /*ignore_comments=*/true);
        if (!doc.is_object()) {
            out.problems.push_back({Level::error, "the node configuration must be a JSON object", "(root)"});
            return out;
        }
        for (const auto& [key, value] : doc.items()) apply_key(key, value, out);
    } catch (const json::parse_error& e) {
        out.config = defaults;
        out.problems.push_back({Level::error, "not valid JSON; every key takes its default", parse_error_where(e)});
    } catch (const std::exception& e) {
        out.config = defaults;
        out.problems.push_back({Level::error, std::string("reading the node configuration: ") + e.what(), "(file)"});
    }
    return out;
}

NodeConfigLoad load_node_config(const std::string& self_exe) {
    NodeConfig defaults = default_node_config(self_exe);
    std::string path = kNodeConfigPath;
    bool from_env = false;
    if (const char* env = ::secure_getenv(kEnvNodeConfig); env && *env) {
        path = env;
        from_env = true;
    }
    auto text = detail::read_file(path, kMaxNodeConfigFile);
    if (!text) {
        NodeConfigLoad out;
        out.config = defaults;
        if (from_env || text.error().err != ENOENT)
            out.problems.push_back({Level::error,
                                    "cannot read `" + path + "`: " + text.error().message + "; every key takes its default",
                                    "(file)"});
        return out;
    }
    auto out = parse_node_config(*text, defaults);
    out.config.source = path;
    return out;
}

Result<std::string> resolve_node_policy(const NodeConfig& config, std::string_view name_or_path) {
    try {
        std::string arg(name_or_path);
        auto regular = [](const std::string& path) -> Result<std::string> {
            std::string real = real_path_or_empty(path);
            if (real.empty()) return Error::sys(errno, "policy file `" + path + "`");
            struct stat st {};
            if (::stat(real.c_str(), &st) != 0) return Error::sys(errno, "policy file `" + path + "`");
            if (!S_ISREG(st.st_mode)) return Error{EINVAL, "policy file `" + path + "` is not a regular file"};
            return real;
        };
        if (!arg.empty() && arg.front() == '/') return regular(arg);
        if (!valid_policy_name(arg)) return Error{EINVAL, "invalid policy name `" + arg + "`"};
        std::string tried;
        for (const std::string& dir : {config.policy_dir, std::string(UPM_POLICY_DIR)}) {
            std::string path = dir + "/" + arg + ".json";
            if (::access(path.c_str(), F_OK) == 0) return regular(path);
            tried += (tried.empty() ? "`" : ", `") + path + "`";
        }
        return Error{ENOENT, "no policy named `" + arg + "` (tried " + tried + ")"};
    } catch (const std::exception& e) {
        return Error::msg(std::string("resolving policy: ") + e.what());
    }
}

}  // namespace upm
