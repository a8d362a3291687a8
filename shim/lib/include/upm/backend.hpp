// Backends: how advice reaches the kernel.
//
//   upm      madvise(MADV_UPM): synchronous merge (kernel with CONFIG_UPM)
//   ksm      madvise(MADV_MERGEABLE): ksmd merges in the background
//   ksm-process  prctl(PR_SET_MEMORY_MERGE, 1) (kernel >= 6.4): the whole
//            process is mergeable, used when the policy selects everything
//            anonymous and the process has no_new_privs (the flag survives
//            exec, into set-user-ID programs too); regions are still advised
//            with MADV_MERGEABLE
//   none     no backend: the reason says why
// Detection probes the running kernel once per process with a tiny private
// anonymous mapping; it never throws and never blocks.
#pragma once

#include <cstddef>
#include <string>
#include <string_view>

#include "upm/policy.hpp"

namespace upm {

enum class BackendKind { upm, ksm, ksm_process, none };
std::string_view to_string(BackendKind k);

struct BackendInfo {
    BackendKind kind = BackendKind::none;
    std::string reason;     // why this backend was chosen / why none
};

bool kernel_has_madv_upm();         // probe: madvise(MADV_UPM) on a scratch page
bool kernel_has_ksm();              // probe: madvise(MADV_MERGEABLE) on a scratch page
bool kernel_has_memory_merge_prctl();  // probe: prctl(PR_GET_MEMORY_MERGE)

// Picks the backend for a policy.  `everything_anonymous` is true when the
// policy advises heap+anonymous+stack with no path filters; ksm_process
// needs it, the prctl, and no_new_privs() (else ksm, and the reason says why).
BackendInfo select_backend(BackendChoice choice, bool everything_anonymous);

// Advises one page-aligned range; returns 0 or an errno value.
// upm: MADV_UPM; ksm and ksm_process: MADV_MERGEABLE; none: ENOSYS.
int advise_range(BackendKind kind, void* addr, std::size_t len);

// ksm_process: prctl(PR_SET_MEMORY_MERGE, 1) for the calling process;
// returns 0 or an errno value, EPERM without no_new_privs.
int enable_process_merge();

// prctl(PR_GET_NO_NEW_PRIVS): no exec of this process can gain privileges
// (set-user-ID bits and file capabilities are ignored).
bool no_new_privs();

// Whether ksmd is running (/sys/kernel/mm/ksm/run = 1); false when unknown.
bool ksmd_running();

}  // namespace upm
