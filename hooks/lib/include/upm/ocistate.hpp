// The OCI container state: what a runtime writes on an OCI hook's stdin
// (runtime-spec "State": ociVersion, id, status, pid, bundle, annotations).
//
// upm-hook reads it at every stage (poststart, poststop, createRuntime).  The
// text comes from the runtime, but its annotations and id are whatever the
// container's creator wrote: every field is bounded and checked here, and
// the parser never throws (a fuzz target drives it, test/fuzz/).
#pragma once

#include <cstddef>
#include <string>
#include <string_view>

#include "upm/result.hpp"

namespace upm {

inline constexpr std::size_t kMaxContainerState = 1024 * 1024;  // bytes of state read from stdin
inline constexpr int kMaxContainerStateDepth = 32;              // JSON nesting
inline constexpr std::size_t kMaxContainerId = 1024;            // bytes of `id`
inline constexpr std::size_t kMaxStateBundle = 4096;            // bytes of `bundle` (PATH_MAX)
inline constexpr long kMaxContainerPid = 4194304;               // PID_MAX_LIMIT

struct ContainerState {
    std::string oci_version;     // `ociVersion`, "" when absent (at most 64 bytes)
    std::string id;              // non-empty, no control character, no `/`
    std::string status;          // "creating", "created", "running", "stopped"; "" when absent
    std::string bundle;          // absolute path of the bundle, "" when absent
    long pid = 0;                // 0 when absent or null
    bool enabled = false;        // annotation upm.enabled is exactly "true"
    std::string policy, domain;  // annotations upm.policy, upm.domain (unchecked), "" when absent
    // The pod's namespace annotations (kAnnotationNamespaceCri/Crio, spec.hpp):
    // present whatever the type, the value when a string; for scope_domain().
    bool cri_namespace_present = false, crio_namespace_present = false;
    std::string cri_namespace, crio_namespace;
};

// Parses the state document.  Errors: not JSON, not an object, nested deeper
// than kMaxContainerStateDepth, no string `id` (or empty, too long, with a
// control character or `/`), a `pid` that is not an integer in
// [0, kMaxContainerPid], a `bundle` that is not an absolute path without NUL
// of at most kMaxStateBundle bytes, `annotations` that is not an object, and
// with need_pid a missing or zero pid.  Annotations that are not strings
// count as absent.  Never throws.
Result<ContainerState> parse_container_state(std::string_view text, bool need_pid);

}  // namespace upm
