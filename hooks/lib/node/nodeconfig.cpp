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

NodeConfigLoad parse_node_config(std::string_view text, const NodeConfig& defaults) {
    NodeConfigLoad out;
    out.config = defaults;
    try {
        json doc = json::parse(text, nullptr, /*allow_exceptions=*/true, /*ignore_comments=*/true);
        if (!doc.is_object()) {
            out.problems.push_back({Level::error, "the node configuration must be a JSON object", "(root)"});
            return out;
        }
        auto error = [&](const std::string& key, std::string message) {
            out.problems.push_back({Level::error, std::move(message), "/" + key});
        };
        for (const auto& [key, value] : doc.items()) {
            std::string* target = nullptr;
            bool absolute = true;        // value must be an absolute path (or "" where allowed)
            bool empty_ok = false;
            if (key == "runtime") target = &out.config.runtime;
            else if (key == "preload") target = &out.config.preload;
            else if (key == "policy_dir") target = &out.config.policy_dir;
            else if (key == "hook") target = &out.config.hook, empty_ok = true;
            else if (key == "log_file") target = &out.config.log_file, empty_ok = true;
            else if (key == "default_policy") target = &out.config.default_policy, absolute = false, empty_ok = true;
            else if (key == "log_level") target = &out.config.log_level, absolute = false;
            else if (key == "$comment") continue;
            else if (key == "domain_scope") {
                if (value.is_string() && value.get_ref<const std::string&>() == "namespace")
                    out.config.domain_scope = DomainScope::kubernetes_namespace;
                else if (value.is_string() && value.get_ref<const std::string&>() == "none")
                    out.config.domain_scope = DomainScope::none;
                else
                    error(key, "`domain_scope` must be \"namespace\" or \"none\"; the default is used");
                continue;
            }
            else if (key == "fsync") {
                if (value.is_boolean()) out.config.fsync = value.get<bool>();
                else error(key, "`fsync` must be true or false; the default is used");
                continue;
            }
            else {
                out.problems.push_back({Level::warn, "unknown key `" + key + "` ignored", "/" + key});
                continue;
            }
            if (!value.is_string()) {
                error(key, "`" + key + "` must be a string; the default is used");
                continue;
            }
            const auto& s = value.get_ref<const std::string&>();
            if (s.size() > PATH_MAX || s.find('\0') != std::string::npos) {
                error(key, "`" + key + "` is too long or contains a NUL byte; the default is used");
                continue;
            }
            if (s.empty() && !empty_ok) {
                error(key, "`" + key + "` must not be empty; the default is used");
                continue;
            }
            if (key == "log_level") {
                bool known = false;
                for (auto l : kLogLevels) known = known || s == l;
                if (!known) {
                    error(key, "unknown log_level `" + s + "` (use off, error, warn, info or debug); the default is used");
                    continue;
                }
            } else if (key == "default_policy") {
                if (!s.empty() && s.front() != '/' && !valid_policy_name(s)) {
                    error(key, "`default_policy` must be a policy NAME ([A-Za-z0-9][A-Za-z0-9._-]{0,63}), an "
                               "absolute path or \"\"; the default is used");
                    continue;
                }
            } else if (absolute && !s.empty() && s.front() != '/') {
                error(key, "`" + key + "` must be an absolute path; the default is used");
                continue;
            }
            *target = s;
        }
    } catch (const json::parse_error& e) {
        // e.what() is "[json.exception.parse_error.101] parse error at line 3, column 7: ..."
        std::string what = e.what();
        auto at = what.find("line ");
        std::string where = "(syntax)";
        if (at != std::string::npos) {
            auto colon = what.find(':', at);
            where = what.substr(at, colon == std::string::npos ? std::string::npos : colon - at);
        }
        out.config = defaults;
        out.problems.push_back({Level::error, "not valid JSON; every key takes its default", where});
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
