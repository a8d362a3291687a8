// route_advice(): who advises a container (upm/advice_route.hpp).
#include "upm/advice_route.hpp"

#include <algorithm>
#include <utility>

namespace upm::remote {

AdviceRoute route_advice(AdviceMode mode, const Availability& avail, bool registers) {
    AdviceRoute r;
    const std::string asked = "policy `advice` is `" + std::string(to_string(mode)) + "`";
    if (mode == AdviceMode::preload) {
        r.why = asked + ": the preload advises, upmd does not";
        return r;
    }
    const bool possible = avail.available && registers;
    const std::string unavailable =
        !avail.available ? "remote advice unavailable: " + avail.why
                         : "upmd would not learn of the container (no upm-hook to register it: set `hook` in the "
                           "node configuration; or upmd is not running: start it)";
    if (mode == AdviceMode::automatic) {
        r.remote = possible;
        r.only_unreached = possible;
        r.why = possible ? asked + ": the preload advises, and upmd advises from outside the processes it does "
                                   "not reach (static binaries, cleared LD_PRELOAD)"
                         : asked + ": the preload advises (" + unavailable + ")";
        return r;
    }
    if (!possible) {
        r.fell_back = true;
        r.why = asked + ", but " + unavailable + ": falling back to the preload";
        return r;
    }
    r.remote = true;
    r.preload = mode == AdviceMode::both;
    r.why = asked + ": upmd advises every process from outside (process_madvise, MADV_UPM)" +
            (r.preload ? std::string(", and the preload advises too") : std::string(", no preload"));
    return r;
}

bool maps_preload(const std::vector<Region>& regions) {
    const std::string suffix = std::string("/") + kPreloadBasename;
    return std::any_of(regions.begin(), regions.end(), [&](const Region& r) {
        return r.path.size() >= suffix.size() && r.path.compare(r.path.size() - suffix.size(), suffix.size(), suffix) == 0;
    });
}

OutsideTriggers::OutsideTriggers(const Triggers& t) : t_(t), start_pending_(t.at_start) {
    for (auto d : t.delays) delays_.push_back(d.count());
    std::sort(delays_.begin(), delays_.end());
}

bool OutsideTriggers::fire(std::int64_t elapsed_ms) {
    bool fired = std::exchange(start_pending_, false);
    while (next_delay_ < delays_.size() && delays_[next_delay_] <= elapsed_ms) {
        ++next_delay_;
        fired = true;
    }
    if (next_periodic_ms(t_, periodic_after_) <= elapsed_ms) {
        periodic_after_ = elapsed_ms;   // ticks missed meanwhile are one advice
        fired = true;
    }
    return fired;
}

std::int64_t OutsideTriggers::next_ms() const {
    std::int64_t next = next_periodic_ms(t_, periodic_after_);
    if (start_pending_) next = 0;
    if (next_delay_ < delays_.size()) next = std::min(next, delays_[next_delay_]);
    return next;
}

}  // namespace upm::remote
