// Settings that trade a security hardening for mergeable memory, scoped to a
// sharing domain: the address-space layout (policy key `layout`) and runtime
// hash seeds (`hash_seed`).  Design, entropy and trade-offs: docs/hardening.md.
//
// Per-domain values are derived on the host from a node secret that only
// root can read (/var/lib/upm/domain-secret, 0600, created atomically on
// first use): HMAC-SHA256(secret, "upm-v1" 0 PURPOSE 0 DOMAIN).  Containers
// and programs only ever see derived values (a hash seed, an RLIMIT_STACK
// value), never the secret; the secret is never logged.
//
// Layout `shared-per-domain` = ADDR_NO_RANDOMIZE plus a per-domain soft
// RLIMIT_STACK at exec: on x86-64 (and every architecture using the generic
// mmap_base()) the top of the mmap area is TASK_SIZE - clamp(rlimit + guard
// gap, 128 MiB, 5/6 TASK_SIZE), so the rlimit moves every library, anonymous
// mapping and thread stack of the program by a per-domain number of pages.
//
// Used by `upm run` (applies the plan to itself before exec) and by
// upm-runtime (edits the container's spec: env, and the static launcher
// upm-exec as process.args[0], which applies the layout before exec'ing the
// original args).  Never throws.
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <nlohmann/json_fwd.hpp>

#include "upm/policy.hpp"
#include "upm/result.hpp"

namespace upm {

inline constexpr const char* kDefaultDomainSecret = "/var/lib/upm/domain-secret";
inline constexpr const char* kEnvDomainSecret = "UPM_DOMAIN_SECRET";  // path override (tests, other state dirs)
// The soft RLIMIT_STACK the program would have had ("unlimited" or bytes):
// set by whoever raised it for the layout; the preload gives glibc's threads
// the default stack size this value implies (pthread_setattr_default_np).
inline constexpr const char* kEnvStackRlimit = "UPM_STACK_RLIMIT";
inline constexpr const char* kExecFile = "upm-exec";  // the static launcher, next to the preload

// shared-per-domain: soft RLIMIT_STACK = kLayoutBase + k pages, k < 2^kLayoutBits.
inline constexpr std::uint64_t kLayoutBase = 128ull << 20;
inline constexpr unsigned kLayoutBits = 16;

// $UPM_DOMAIN_SECRET, else kDefaultDomainSecret.
std::string domain_secret_path();

// Reads the secret (32 to 4096 bytes); when `create` and the file does not
// exist, creates it: 32 bytes from getrandom(2), written to a temporary
// 0600 file in the same directory (created 0700 when missing) and linked
// into place with link(2), so that concurrent first uses agree on one
// secret.  Refuses a file that is not a regular file owned by the caller or
// that group or others may read or write.
Result<std::vector<unsigned char>> load_domain_secret(const std::string& path, bool create = true);

// HMAC-SHA256(secret, "upm-v1\0" + purpose + "\0" + domain), with OpenSSL's
// libcrypto (the kernel's AF_ALG hmac(sha256) is not built into every
// kernel -- not into this project's test VM's -- and is often denied by
// seccomp; see docs/hardening.md).
Result<std::array<unsigned char, 32>> derive_for_domain(const std::vector<unsigned char>& secret,
                                                        std::string_view purpose, std::string_view domain);

// What a policy asks for in a given domain.
struct HardeningPlan {
    bool no_randomize = false;              // personality(ADDR_NO_RANDOMIZE)
    std::uint64_t stack_rlimit = 0;         // soft RLIMIT_STACK at exec; 0 = unchanged
    std::vector<std::pair<std::string, std::string>> env;  // set only where the environment has none
    std::vector<std::string> problems;      // what was asked for but is not applied, and why
    std::string summary;                    // "layout `shared-per-domain`, hash seed `per-domain`"; "" = nothing

    bool layout() const { return no_randomize || stack_rlimit != 0; }
    bool empty() const { return !layout() && env.empty(); }
};

// The plan for `policy` in `domain` (the runtime's or the policy's).  Per-
// domain settings need a domain and the secret; without them they are not
// applied (fail open, the hardening stays), and `problems` says why.
HardeningPlan plan_hardening(const Policy& policy, std::string_view domain);

// Per-domain values (exposed for tests and the docs' entropy figures).
std::uint64_t layout_rlimit(const std::array<unsigned char, 32>& derived);
std::uint32_t python_hash_seed(const std::array<unsigned char, 32>& derived);  // 1 .. 4294967295

// `upm run`: applies the layout part of the plan to the calling process
// (inherited by exec): raises the soft (and, when needed and allowed, the
// hard) RLIMIT_STACK, sets ADDR_NO_RANDOMIZE, and exports kEnvStackRlimit.
// On error nothing is changed.
Status apply_layout_to_self(const HardeningPlan& plan);

// upm-runtime: the spec part of the plan.  Sets the plan's variables in
// process.env where absent, and, when `exec_source` is not empty, mounts it
// read-only at <dir>/upm-exec and makes it process.args[0] with the layout
// options before `--` and the original args.  Idempotent: an earlier
// wrapping (at <dir>/upm-exec) is undone first, and the mount is replaced.
Status edit_spec_hardening(nlohmann::ordered_json& doc, const HardeningPlan& plan, const std::string& exec_source,
                           std::string_view dir);

// The original args of a process.args that edit_spec_hardening() wrapped.
std::vector<std::string> unwrap_exec_args(const std::vector<std::string>& args);

}  // namespace upm
