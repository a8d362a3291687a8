// The answer to upmd's `ksm-claim` (node setting ksm_single_namespace,
// docs/runtime.md): may a container be advised on the KSM backend for its
// Kubernetes namespace?  Its own header: the OCI step (spec.hpp) and the
// agent client both use it.
#pragma once

#include <cstddef>
#include <string>

namespace upm {

// The answer to `ksm-claim` (node setting ksm_single_namespace): may the
// container be advised on the KSM backend for its namespace?
struct KsmClaimAnswer {
    bool granted = false;
    std::string holder;          // refused: the namespace that holds the KSM backend
    std::size_t holders = 0;     // refused: its containers (registered or being created)
    std::string socket;          // the agent asked
};

}  // namespace upm
