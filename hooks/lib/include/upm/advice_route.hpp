// Who advises a container (the policy key `advice`, docs/remote-advice.md):
// the preload inside its processes, upmd from outside through
// process_madvise(MADV_UPM), or both.  One decision, taken by upm-runtime
// (whether to inject the preload) and by upmd (whether to advise the
// registered container on its own), from the policy's mode, what the
// kernel offers and whether the container registers with upmd.
//
//   mode      remote available            remote unavailable (stock kernel)
//   preload   preload                     preload
//   remote    upmd: every process         preload (fell back, logged at warn)
//   both      preload + upmd: every one   preload (fell back, logged at warn)
//   auto      preload + upmd: processes   preload
//             without the preload mapped
//
// "Registers" is false when the container gets no poststart hook (no
// upm-hook) or upmd's socket is missing: upmd would never learn of it, so
// `remote` falls back too.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "upm/policy.hpp"
#include "upm/remote.hpp"

namespace upm::remote {

struct AdviceRoute {
    bool preload = true;        // inject the preload
    bool remote = false;        // upmd advises the container's processes from outside
    bool only_unreached = false;// ...only those without the preload mapped (auto)
    bool fell_back = false;     // the policy asked for remote advice, which cannot be had here
    std::string why;            // one sentence for the logs
};

AdviceRoute route_advice(AdviceMode mode, const Availability& remote, bool registers);

// The name of the preload's file in a process's maps; a process that maps
// a file of this name is one the preload reaches.
inline constexpr const char* kPreloadBasename = "libupm-preload.so";
bool maps_preload(const std::vector<Region>& regions);

// The policy's triggers upmd sees from outside a process (docs/policy.md):
// `start` (at registration), `delays_ms` and `periodic`, in ms since the
// container started.  `dlopen` and `signal` happen inside the process: only
// the preload sees them.
class OutsideTriggers {
public:
    explicit OutsideTriggers(const Triggers& t);
    // True when a trigger is due at `elapsed_ms` (one or several since the
    // last call: they are merged into one advice); moves past them.
    bool fire(std::int64_t elapsed_ms);
    // When the next one is due (ms since start), INT64_MAX for never.
    std::int64_t next_ms() const;

private:
    Triggers t_;
    std::vector<std::int64_t> delays_;   // ascending
    std::size_t next_delay_ = 0;
    std::int64_t periodic_after_ = 0;    // the periodic trigger fires strictly after this
    bool start_pending_;
};

}  // namespace upm::remote
