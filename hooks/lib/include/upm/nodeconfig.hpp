// The node configuration of the container integration: /etc/upm/config.json.
//
// One small JSON document (comments allowed) written by the node's
// administrator; upm-runtime (and later upm-hook) read it on every call.  It
// says which real runtime to exec, where the preload, the policies and the
// hook binary are on the host, and where to log.  Every key is optional; a
// missing file means "all defaults" and is not an error.  A key with a wrong
// type or value is reported and keeps its default, the other keys still
// apply: a typo in one setting must not stop every container of the node.
// Format and defaults: docs/runtime.md; example: config/node/config.json.
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include "upm/policy.hpp"
#include "upm/problem.hpp"
#include "upm/result.hpp"

namespace upm {

inline constexpr const char* kNodeConfigPath = "/etc/upm/config.json";
inline constexpr const char* kEnvNodeConfig = "UPM_CONFIG";   // overrides kNodeConfigPath (tests)
inline constexpr std::size_t kMaxNodeConfigFile = 256 * 1024;

// Whose choice a container's domain is (docs/hardening.md): with
// `kubernetes_namespace` (key "domain_scope": "namespace", the default) a
// container that carries its pod's namespace gets "k8s.NAMESPACE.DOMAIN",
// so that a tenant cannot name another namespace's domain; `none` takes the
// domain as the annotation or the policy gives it.
enum class DomainScope { kubernetes_namespace, none };

struct NodeConfig {
    std::string runtime;         // absolute path of the real runtime; "" = not found
    std::string preload;         // host path of libupm-preload.so; "" = not found
    std::string policy_dir = "/etc/upm/policies";
    std::string default_policy = "default";  // NAME, absolute path, or "" (the built-in default)
    std::string hook;            // host path of upm-hook; "" = add no hooks
    std::string log_file = "/var/log/upm/runtime.log";  // "" = no log file
    std::string log_level = "info";                     // off|error|warn|info|debug
    bool fsync = false;          // fsync the new config.json before the rename (see docs/runtime.md)
    DomainScope domain_scope = DomainScope::kubernetes_namespace;  // "domain_scope"
    // "ksm_single_namespace": on the KSM backend (stock kernel), where ksmd
    // merges node-wide whatever the domain, advise containers of one
    // Kubernetes namespace at a time: a container of a second namespace is
    // not deduplicated while upmd has a container of another namespace
    // (docs/threat-model.md, docs/runtime.md).  Containers without a
    // namespace annotation are not restricted.
    bool ksm_single_namespace = true;
    std::string source;          // the file read, "" when none existed
};

// where: "/runtime", "(file)", "line 3, column 7"; a warning: an unknown key, ignored.
using NodeConfigProblem = Problem;

struct NodeConfigLoad {
    NodeConfig config;           // always usable: defaults where the file is silent or wrong
    std::vector<NodeConfigProblem> problems;
};

// The built-in defaults: runtime = first existing of /usr/bin/runc,
// /usr/sbin/runc, /usr/bin/crun, /usr/sbin/crun (never `self_exe`);
// preload = find_preload(); hook = <dir of self_exe>/upm-hook.
NodeConfig default_node_config(const std::string& self_exe);

// Parses a node configuration document over the defaults.  Never throws.
NodeConfigLoad parse_node_config(std::string_view text, const NodeConfig& defaults);

// Reads $UPM_CONFIG, else /etc/upm/config.json (at most 256 KiB).  A missing
// default file gives the defaults without a problem; a missing $UPM_CONFIG
// file is a problem.
NodeConfigLoad load_node_config(const std::string& self_exe);

// format_problem() (upm/policy.hpp): "/etc/upm/config.json: /runtime: error: ..." for logs.

// The policy file for a container: `name` (already validated with
// valid_policy_name()) as <policy_dir>/NAME.json, then as
// <prefix>/share/upm/policies/NAME.json (the shipped examples); an absolute
// path is taken as it is.  The result is the real path of a regular file.
Result<std::string> resolve_node_policy(const NodeConfig& config, std::string_view name_or_path);

}  // namespace upm
