// Policies: which regions to advise, when, with which backend.
//
// The format is JSON (comments allowed) validated against
// config/policy.schema.json; parse_policy() implements the same rules and
// reports every problem with its location (JSON pointer, and line:column for
// syntax errors) and a fix.  decide() applies a policy to classified regions.
#pragma once

#include <chrono>
#include <cstdint>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <vector>

#include "upm/classify.hpp"
#include "upm/problem.hpp"
#include "upm/result.hpp"

namespace upm {

enum class BackendChoice { automatic, upm, ksm };
enum class FailMode { open, closed };
// Who advises a container's processes (docs/remote-advice.md): the preload
// inside them, the node agent from outside (process_madvise, upm kernels
// only), or both; `automatic` = the preload, plus remote advice of the
// processes it does not reach where the kernel accepts it.
enum class AdviceMode { automatic, preload, remote, both };
// Hardening settings that trade security for mergeable memory; see
// docs/hardening.md.  The defaults keep every hardening.
enum class Layout { randomized, shared_per_domain, fixed };   // address-space layout of the program
enum class HashSeed { random, per_domain };                    // runtime hash seeds (PYTHONHASHSEED, ...)

struct Triggers {
    bool at_start = true;                       // advise right after start-up
    bool after_dlopen = true;                   // advise after every dlopen()
    std::vector<std::chrono::milliseconds> delays;  // re-advise this long after start
    std::chrono::milliseconds periodic_interval{0}; // re-advise this often (0 = never)...
    std::chrono::milliseconds periodic_duration{0}; // ...during this long after start (0 = forever),
    std::chrono::milliseconds periodic_then{0};     // ...then this often for the rest of the life (0 = stop)
    int signal = 0;                             // re-advise on this signal (0 = none)

    bool operator==(const Triggers&) const = default;
};

// The periodic trigger's schedule: the first time (ms after start) strictly
// after `after_ms` at which it fires, or INT64_MAX when it never fires again.
// Ticks are at k * interval while k * interval <= duration, then at
// duration + j * then (j >= 1) when `then` is set.
std::int64_t next_periodic_ms(const Triggers& t, std::int64_t after_ms);

struct Policy {
    std::string name;                           // file stem or "default"
    std::set<RegionClass> classes;              // classes to advise
    std::vector<std::string> include;           // path globs; empty = all paths
    std::vector<std::string> exclude;           // path globs, win over include
    std::uint64_t min_region_bytes = 16 * 1024; // min_region_kib * 1024
    Triggers triggers;
    BackendChoice backend = BackendChoice::automatic;
    std::string domain;                         // sharing domain; "" = runtime's default
    FailMode on_error = FailMode::open;
    std::string log_level = "off";              // off|error|warn|info|debug
    std::string description;                    // free text from the document
    bool trim = false;                          // return the allocator's free memory before advising
    Layout layout = Layout::randomized;         // weakened only when asked for (docs/hardening.md)
    HashSeed hash_seed = HashSeed::random;
    AdviceMode advice = AdviceMode::automatic;  // preload, remote (upmd) or both

    bool operator==(const Policy&) const = default;
};

// An error or a warning (accepted but suspicious), with its place and fix.
using PolicyProblem = Problem;

struct PolicyCheck {
    std::optional<Policy> policy;               // set when there is no error
    std::vector<PolicyProblem> problems;        // errors and warnings, in document order
    bool syntax_ok = false;                     // the document is well-formed JSON
    // The document's on_error when it is well-formed and on_error is valid,
    // even if other keys have errors (`upm run` fails closed only when the
    // policy asks for it).
    std::optional<FailMode> declared_on_error;

    std::size_t error_count() const;
    std::size_t warning_count() const;
};

// Validates and parses a policy document.  `name` is used for messages and
// Policy::name.  Never throws.
PolicyCheck parse_policy(std::string_view json_text, std::string_view name);

// "FILE: LOCATION: error: MESSAGE (fix: FIX)", the one format every upm
// program uses to report a policy problem.
std::string format_problem(std::string_view file, const PolicyProblem& problem);

// Reads a policy file (at most 1 MiB) and parses it.
PolicyCheck load_policy_file(const std::string& path);

// The built-in default policy (identical to config/policies/default.json,
// which a unit test checks).
const Policy& default_policy();

// Resolves a --policy argument: a path (contains '/' or ends in .json) or a
// NAME looked up as <dir>/NAME.json for each dir in policy_search_path().
// NAME must match [A-Za-z0-9][A-Za-z0-9._-]{0,63}.
Result<std::string> resolve_policy(std::string_view file_or_name);
std::vector<std::string> policy_search_path();  // $UPM_POLICY_PATH (':'-separated) or /etc/upm/policies:<prefix>/share/upm/policies
bool valid_policy_name(std::string_view name);

// The effective policy as plain JSON (no comments, every key present,
// defaults filled in); valid against config/policy.schema.json.
std::string policy_to_json(const Policy& policy);

// A domain as a user writes it (`upm run --domain`, the annotation
// upm.domain): [A-Za-z0-9][A-Za-z0-9._-]{0,63} or empty.
inline constexpr std::size_t kMaxDomainName = 64;
bool valid_domain_name(std::string_view domain);

// An effective domain (UPM_DOMAIN, a policy's `domain`): the same
// characters, at most kMaxDomain bytes, or empty.  Longer than a name because the node may scope a name by
// the Kubernetes namespace: "k8s." + namespace (a DNS label, at most 63) +
// "." + name (docs/hardening.md).
inline constexpr std::size_t kMaxDomain = 4 + 63 + 1 + kMaxDomainName;
bool valid_domain(std::string_view domain);

std::string_view to_string(BackendChoice b);       // "auto", "upm", "ksm"
bool parse_backend_choice(std::string_view name, BackendChoice& out);
std::string_view to_string(FailMode m);            // "open", "closed"
std::string_view to_string(AdviceMode a);          // "auto", "preload", "remote", "both"
bool parse_advice_mode(std::string_view name, AdviceMode& out);
std::string_view to_string(Layout l);              // "randomized", "shared-per-domain", "fixed"
std::string_view to_string(HashSeed h);            // "random", "per-domain"

// Signal names allowed in triggers.signal ("SIGUSR2", "SIGRTMIN+1"...) to
// numbers and back; 0 / "" for none.
int signal_from_name(std::string_view name);
std::string signal_name(int signo);

// True when the policy advises exactly the anonymous classes (heap,
// anonymous, stack, no file-backed class), without path filters and down to
// single pages: then the whole process may be made mergeable at once
// (prctl PR_SET_MEMORY_MERGE) on the KSM backend.
bool everything_anonymous(const Policy& policy);

struct Decision {
    Classified region;
    bool advise = false;
    std::string reason;     // e.g. "class heap enabled", "below min_region_bytes (4096 < 65536)"
};

std::vector<Decision> decide(const Policy& policy, const std::vector<Classified>& regions);

}  // namespace upm
