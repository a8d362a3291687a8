// OCI bundles: what upm-runtime does to a container's config.json before the
// real runtime (runc, crun) reads it.
//
// An OCI hook cannot change a container's environment: the runtime has read
// config.json before any hook runs (runtime-spec, lifecycle step 2).  So the
// wrapper edits the bundle's config.json first and then execs the real
// runtime with the same argv.  This header holds every step of that, as
// library code the unit tests drive on fixture bundles (hooks/lib/oci/, one
// file a concern: runtime_args, bundle, annotations, spec_edit, domain, prepare):
//
//   parse_runtime_args()  which subcommand, which bundle, where the runtime logs
//   read_bundle_config()  config.json, bounded, O_NOFOLLOW, relative to the bundle dir
//   read_upm_annotations() upm.enabled / upm.policy / upm.domain
//   edit_spec()           the injection: two read-only binds, env, hooks (refused
//                         when the seccomp profile denies madvise)
//   check_container_dir() the /run/upm fallback, resolved inside the rootfs
//   write_bundle_config() temporary file + renameat (+ fsync), mode and owner kept
//   prepare_bundle()      all of it, with the fail-open / fail-closed rules
//
// The bundle and its config.json are input of whoever created them (the
// container engine, from an image and a user's pod spec): every read is
// bounded, nothing is read or written outside the bundle directory, and
// annotation values never name host paths (policy names are restricted to
// [A-Za-z0-9][A-Za-z0-9._-]{0,63}).  Unannotated bundles are never written.
#pragma once

#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "upm/ksm_claim.hpp"

#include "upm/hardening.hpp"
#include "upm/log.hpp"
#include "upm/nodeconfig.hpp"
#include "upm/result.hpp"

namespace upm {

inline constexpr std::size_t kMaxSpecFile = 4 * 1024 * 1024;  // config.json
inline constexpr int kMaxSpecDepth = 64;                       // JSON nesting of config.json

// Where the injected files appear inside the container: under /dev/upm when
// the spec mounts a tmpfs on /dev (every engine does), a directory inside
// the runtime's own tmpfs that the image can neither see nor influence (an
// image whose /run is a dangling symbolic link makes crun fail the mount);
// else under /run/upm.  The runtime creates the missing destination (file and
// parent directories), so the image needs neither.
inline constexpr const char* kContainerDirDev = "/dev/upm";
inline constexpr const char* kContainerDirRun = "/run/upm";
inline constexpr const char* kPreloadFile = "libupm-preload.so";
inline constexpr const char* kPolicyFile = "policy.json";

inline constexpr const char* kAnnotationEnabled = "upm.enabled";  // only "true" enables
inline constexpr const char* kAnnotationPolicy = "upm.policy";    // policy NAME
inline constexpr const char* kAnnotationDomain = "upm.domain";    // sharing domain

// The pod's namespace, set by the engine itself (never a pod annotation the
// engine copies): containerd's CRI plugin and CRI-O respectively.
inline constexpr const char* kAnnotationNamespaceCri = "io.kubernetes.cri.sandbox-namespace";
inline constexpr const char* kAnnotationNamespaceCrio = "io.kubernetes.pod.namespace";
inline constexpr const char* kScopedDomainPrefix = "k8s.";  // "k8s.NAMESPACE.DOMAIN"

// ---- the runtime's command line -------------------------------------------

struct RuntimeArgs {
    int command_index = -1;      // index (in the args given) of the subcommand; -1 = none
    std::string command;         // "create", "run", "state", ...; "" = none (e.g. --version)
    std::string bundle = ".";    // create/run: --bundle/-b, default the working directory
    std::string container_id;    // create/run: the first operand after the subcommand
    std::string log_file;        // global --log; "" = none
    std::string log_format = "text";  // global --log-format: "text" or "json"
    bool debug = false;          // global --debug
    bool config_override = false;  // crun create/run --config/-f: the spec is not config.json
};

// Parses a runc/crun command line (without argv[0]) the way runc does: global
// flags before the subcommand as `--flag value`, `--flag=value` or with a
// single dash; value-taking globals are --log, --log-format, --log-level,
// --root, --criu, --rootless, --cgroup-manager.  For create and run it also
// finds --bundle/-b (`-b X`, `-bX`, `--bundle=X`, anywhere before `--`) and
// the container id.  Never throws; unknown flags are taken as booleans.
RuntimeArgs parse_runtime_args(const std::vector<std::string>& args);

// upm-runtime's own global flag, given where runc's global flags go (Docker
// puts a runtime's `runtimeArgs` there): `--upm-enable` before the
// subcommand.  Removes it from `args` (the real runtime must not see it) and
// returns whether it was there.
inline constexpr std::string_view kRuntimeEnableFlag = "--upm-enable";
bool take_enable_flag(std::vector<std::string>& args);

// create and run read config.json; every other command is passed through.
bool edits_bundle(const RuntimeArgs& args);

// ---- config.json ------------------------------------------------------------

struct BundleConfig {
    std::string text;            // the whole file
    unsigned mode = 0644;        // permission bits
    unsigned uid = 0;
    unsigned gid = 0;
    unsigned long long dev = 0;  // identity of the file read: the rename replaces
    unsigned long long ino = 0;  // config.json only if it is still this file
};

// Opens the bundle directory, then config.json relative to it with
// O_NOFOLLOW; it must be a regular file of at most kMaxSpecFile bytes.
Result<BundleConfig> read_bundle_config(const std::string& bundle_dir);

// Replaces <bundle>/config.json atomically: a new file created with O_EXCL in
// the bundle directory, given the original's mode (and owner, when we may),
// written, fsync'ed when `sync` is set, and renamed over config.json, only if
// config.json is still the file that was read.  Readers see the old or the
// new file, never a partial one, with or without `sync`; `sync` only adds
// durability across a crash, which a bundle does not need (docs/runtime.md).
// On error the temporary file is removed and config.json is left as it was.
Status write_bundle_config(const std::string& bundle_dir, std::string_view text, const BundleConfig& original,
                           bool sync = false);

struct UpmAnnotations {
    bool enabled = false;        // upm.enabled is exactly "true"
    bool enabled_present = false;  // upm.enabled is there, whatever its value
    std::string enabled_value;   // its value when it is a string
    bool policy_present = false;
    std::string policy;          // upm.policy, unchecked
    bool domain_present = false;
    std::string domain;          // upm.domain, unchecked
    // The pod's namespace (kAnnotationNamespaceCri, kAnnotationNamespaceCrio):
    // present whatever the value's type; the value only when a string.
    bool cri_namespace_present = false;
    std::string cri_namespace;
    bool crio_namespace_present = false;
    std::string crio_namespace;
};

// Reads the upm.* annotations.  Fails when config.json is not a JSON object
// (or nests deeper than kMaxSpecDepth); annotations that are not strings
// count as absent.
Result<UpmAnnotations> read_upm_annotations(std::string_view config_text);

struct SpecEdit {
    std::string preload_source;  // host path, bind-mounted read-only at <dir>/libupm-preload.so
    std::string policy_source;   // host path, bind-mounted read-only at <dir>/policy.json; "" = none
    std::string domain;          // UPM_DOMAIN; "" = leave the environment's as it is
    std::string hook;            // host path of upm-hook for poststart/poststop; "" = no hooks
    int hook_timeout_s = 10;
    HardeningPlan hardening;     // layout and hash seeds (docs/hardening.md); empty = none
    std::string exec_source;     // host path of upm-exec for a layout; "" = no launcher
    bool preload = true;         // false: no preload, no policy (policy `advice` `remote`: upmd advises)
};

struct EditedSpec {
    std::string text;            // the new config.json
    std::string preload;         // where the preload is in the container
    std::string policy;          // where the policy is in the container; "" = none
    std::string dir;             // kContainerDirDev or kContainerDirRun
    std::string root;            // root.path of the spec ("" when absent)
};

// The edited config.json.  Every field upm does not touch is kept, in order;
// the edit is idempotent (our mounts and hooks are replaced, not added twice).
// <dir> is kContainerDirDev when `mounts` has a tmpfs on /dev, else
// kContainerDirRun:
// - mounts: + {<dir>/libupm-preload.so, bind, ro,nosuid,nodev} (+ the policy);
// - process.env: LD_PRELOAD gets <dir>/libupm-preload.so appended (each LD_PRELOAD
//   entry; a new entry when there is none; never twice), UPM_POLICY set when
//   a policy is mounted, UPM_DOMAIN set when a domain is given;
// - hooks.poststart / hooks.poststop: + [hook, "poststart"|"poststop"].
// Fails when the document has no `process` object, a field upm edits has
// the wrong type, or the seccomp profile (linux.seccomp) denies madvise():
// the preload could not advise, and upm does not widen a profile the
// operator chose (docs/runtime.md).
Result<EditedSpec> edit_spec(std::string_view config_text, const SpecEdit& edit);

// For the /run/upm fallback: checks, inside the rootfs (root.path, relative
// to the bundle or absolute) and without leaving it (openat2 with
// RESOLVE_IN_ROOT), that every component of `dir` is a directory or absent,
// so that the runtime can create the mount targets.  A symbolic link that
// does not resolve inside the rootfs is an error (crun would refuse the
// mount and the container would not start).  Succeeds without checking on
// kernels without openat2.
Status check_container_dir(const std::string& bundle_dir, const std::string& root_path, std::string_view dir);

// LD_PRELOAD value with `entry` appended (separators ':' and ' '), unchanged
// when it is already listed.  Unlike append_ld_preload() it never resolves
// anything: the entries are paths inside the container.
std::string append_preload_entry(std::string_view existing, std::string_view entry);

// ---- the whole step ---------------------------------------------------------

// A note of the whole step (level and message; no environment values).
using Note = Problem;

// The effective domain of a container (docs/hardening.md, "Who chooses the
// domain").  `domain` is the one asked for (the annotation's, checked with
// valid_domain_name(), or the policy's, checked with valid_domain(); only one
// of at most kMaxDomainName characters can be scoped); `ann` carries the namespace
// annotations.  With DomainScope::none, or without a namespace annotation
// (runc, podman, Docker), it is `domain`; a `domain` that starts with
// "k8s." is then refused (that prefix is the node's).  With a namespace it is
// "k8s.NAMESPACE.DOMAIN"; no domain when `domain` is empty, when the
// namespace is not a DNS label (RFC 1123, at most 63 characters) or not a
// string, or when both annotations are present and differ (a pod annotation
// copied over the engine's own).  Every refusal is a warning in `notes`; the
// result always passes valid_domain().  Never throws.
struct ScopedDomain {
    std::string domain;          // "" = none
    std::string namespace_;      // the namespace used, "" = none
    std::vector<Note> notes;
};
ScopedDomain scope_domain(DomainScope scope, std::string_view domain, const UpmAnnotations& ann);

// RFC 1123 label: [a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?
bool valid_namespace(std::string_view ns);

// The pod's namespace from the engine's annotations, whatever the domain
// scope: nullopt = no namespace annotation (not a Kubernetes container);
// "" = present but not a valid namespace, or the two annotations differ.
std::optional<std::string> pod_namespace(const UpmAnnotations& ann);

enum class Verdict {
    untouched,                   // config.json not written (not annotated, or failed open)
    edited,                      // injected
    refused,                     // the policy fails closed: do not start the container
};

struct Preparation {
    Verdict verdict = Verdict::untouched;
    std::string policy;          // the policy used ("" = built-in default)
    std::vector<Note> notes;     // what to log, in order
    // With the verdict `edited`: what was (or would be) injected, and whether
    // the policy fails closed (upm-hook refuses the container when its own
    // injection fails later).
    bool closed = false;
    SpecEdit edit;
    EditedSpec edited;
};

// Reads <bundle>/config.json and, when it is annotated upm.enabled=true,
// injects the preload as the node configuration says.  Fails open: every
// problem leaves config.json untouched and is reported in the notes, unless
// the policy chosen is well-formed with "on_error": "closed" (then the
// verdict is `refused`).  Never throws.
//
struct PrepareOptions {
    // false is upm-hook's createRuntime mode: every check and the edit, but
    // config.json is not written and no "injected" note is added.
    bool write = true;
    // The runtime itself is the opt-in (upm-runtime --upm-enable: Docker's
    // runtime "upm", since Docker before 24 passes no annotations): a bundle
    // without `upm.enabled` counts as upm.enabled=true; an explicit value
    // other than "true" still opts out.
    bool enabled_by_runtime = false;
    // Asks whether the container (id, namespace) may take the KSM backend
    // (node setting ksm_single_namespace); empty = the node agent
    // (agent::claim_ksm_namespace).  Tests give their own.
    std::function<Result<KsmClaimAnswer>(const std::string& id, const std::string& ns)> ksm_claim;
};
Preparation prepare_bundle(const NodeConfig& config, const std::string& bundle_dir, std::string_view container_id,
                           PrepareOptions options = {});

// The same on a document that is not a bundle's config.json (podman's
// precreate hook gets the spec on stdin and writes it to stdout): nothing is
// written, the /run/upm check of the rootfs is skipped (no bundle), and the
// verdict `edited` means `edited.text` is the new document.
Preparation prepare_spec(const NodeConfig& config, std::string_view config_text, std::string_view container_id);


// printable() (upm/log.hpp) makes annotation values and ids safe for a log line.

}  // namespace upm
