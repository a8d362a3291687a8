// upmd's remote advice (server.hpp, docs/remote-advice.md): `advise`
// requests queue the processes of a container (or one pid) for the adviser
// thread (upm/remote_adviser.hpp), which advises them through pidfds and
// process_madvise(MADV_UPM) at the rate of --remote-rate; the loop only
// queues and, on its poll timer, logs the results.  On a kernel without
// MADV_UPM every `advise` gets "remote advice unavailable: WHY" and nothing
// changes.
#include <algorithm>

#include "server.hpp"
#include "upm/nodeconfig.hpp"

namespace upm::agent::internal {

void Server::start_remote() {
    remote_ = remote::availability();
    if (!remote_.available) {
        logger()->info("remote advice unavailable: {}", remote_.why);
        return;
    }
    remote::AdviserOptions ao;
    ao.bytes_per_second = static_cast<std::uint64_t>(o_.remote_rate_mib * 1024 * 1024);
    adviser_.emplace(ao);
    logger()->info("remote advice: {}; at most {:.0f} MiB/s", remote_.why, o_.remote_rate_mib);
}

// The policy of remote advice: NAME through the node configuration (as
// upm-runtime resolves it), the built-in default for "" or `default` when
// it is not installed.
Result<Policy> Server::remote_policy(const std::string& name) {
    const NodeConfig config = load_node_config("").config;
    const std::string chosen = name.empty() ? config.default_policy : name;
    if (chosen.empty()) return default_policy();
    auto path = resolve_node_policy(config, chosen);
    if (!path && chosen == "default") return default_policy();
    if (!path) return path.error();
    auto check = load_policy_file(*path);
    if (!check.policy) return Error::msg("policy `" + chosen + "` (`" + *path + "`) is invalid");
    return *check.policy;
}

// Queues the processes of a container (its cgroup, as for its counters),
// or `pid` alone, for the adviser thread; the number queued.
Result<std::size_t> Server::queue_remote(const Container* ct, pid_t pid, const Policy& policy, bool unless_preloaded) {
    std::vector<pid_t> pids{pid};
    if (ct) {
        const Snapshot& snap = snapshot();
        auto it = snap.usage.find(ct->id);
        pids = it != snap.usage.end() ? it->second.pids : std::vector<pid_t>{static_cast<pid_t>(ct->pid)};
    }
    std::vector<remote::Request> work;
    for (pid_t p : pids) work.push_back({p, ct ? ct->id : std::string(), policy, unless_preloaded});
    if (!adviser_->submit(std::move(work)))
        return Error::msg("the queue is full (" + std::to_string(adviser_->totals().queued) +
                          " processes waiting); try again later");
    return pids.size();
}

std::optional<json> Server::remote_advise(Conn& c, const AgentRequest& req) {
    auto refuse = [&](const std::string& why) -> std::optional<json> {
        queue(c, agent_error_reply(why));
        return std::nullopt;
    };
    if (!adviser_) return refuse("remote advice unavailable: " + remote_.why);
    const Container* ct = !req.id.empty() ? registry_.find(req.id) : registry_.find_pid(req.pid);
    if (!req.id.empty() && !ct) return refuse("container `" + log_id(req.id) + "` is not registered");
    auto policy = remote_policy(!req.policy.empty() ? req.policy : ct ? ct->policy : std::string());
    if (!policy) return refuse("remote advice: " + policy.error().message);
    auto queued = queue_remote(ct, static_cast<pid_t>(req.pid), *policy, false);
    if (!queued) return refuse("remote advice: " + queued.error().message);
    logger()->info("remote advice: {} process{} of {} queued", *queued, *queued == 1 ? "" : "es",
                   ct ? "container `" + log_id(ct->id) + "`" : "pid " + std::to_string(req.pid));
    return json{{"ok", true}, {"queued", *queued}, {"container", ct ? json(ct->id) : json(nullptr)}};
}

// At registration: who advises the container (policy `advice`,
// upm/advice_route.hpp).  When upmd does, its schedule starts at
// `started`; on a stock kernel `remote`/`both` say that the preload advises.
void Server::route_container(const Container& ct, Clock::time_point started) {
    schedules_.erase(ct.id);
    auto policy = remote_policy(ct.policy);
    if (!policy) {
        if (adviser_) logger()->warn("container `{}`: no remote advice: {}", log_id(ct.id), policy.error().message);
        return;
    }
    const remote::AdviceRoute route = remote::route_advice(policy->advice, remote_, true);
    if (route.fell_back)
        logger()->warn("container `{}`: {}", log_id(ct.id), route.why);
    else if (route.remote)
        logger()->info("container `{}`: {}", log_id(ct.id), route.why);
    if (!route.remote || !adviser_) return;
    remote::OutsideTriggers triggers(policy->triggers);
    schedules_.insert_or_assign(ct.id, RemoteSchedule{std::move(*policy), started, triggers, route.only_unreached});
    next_remote_ = Clock::now();
}

// The containers whose triggers are due: their processes queued (those
// waiting already are not queued twice); the next due time.
void Server::run_remote_schedules(Clock::time_point now) {
    next_remote_ = Clock::time_point::max();
    for (auto it = schedules_.begin(); it != schedules_.end();) {
        const Container* ct = registry_.find(it->first);
        if (!ct || !adviser_) {
            it = schedules_.erase(it);
            continue;
        }
        RemoteSchedule& s = it->second;
        const auto elapsed = std::chrono::duration_cast<milliseconds>(now - s.start).count();
        if (s.triggers.fire(elapsed)) {
            auto queued = queue_remote(ct, static_cast<pid_t>(ct->pid), s.policy, s.unless_preloaded);
            if (!queued) ++remote_full_;
            if (!queued) logger()->debug("container `{}`: remote advice skipped: {}", log_id(ct->id), queued.error().message);
        }
        const std::int64_t next = s.triggers.next_ms();
        if (next != INT64_MAX) next_remote_ = std::min(next_remote_, s.start + milliseconds(next));
        ++it;
    }
}

// The adviser's results since the last poll, one log line each.
void Server::log_remote_results() {
    if (!adviser_) return;
    for (const auto& r : adviser_->take_results()) {
        const std::string who = (r.container.empty() ? "" : "container `" + log_id(r.container) + "`, ") + "pid " +
                                std::to_string(r.pid);
        if (r.preloaded)
            logger()->debug("remote advice: {}: the preload advises it, skipped", who);
        else if (!r.error.empty())
            logger()->warn("remote advice: {}: {}", who, r.error);
        else if (r.outcome.target_exited)
            logger()->info("remote advice: {}: exited during the advice after {} bytes", who, r.outcome.bytes_advised);
        else if (!r.outcome.done)
            logger()->warn("remote advice: {}: {}", who, r.outcome.message);
        else
            logger()->info("remote advice: {}: {} bytes in {} ranges, {} calls, {:.3f} s", who,
                           r.outcome.bytes_advised, r.ranges, r.outcome.calls, r.outcome.seconds);
    }
}

json Server::remote_json() {
    json j = {{"available", remote_.available}, {"why", remote_.why}};
    if (!adviser_) return j;
    const remote::AdviserTotals t = adviser_->totals();
    j["queued"] = t.queued;
    j["busy"] = t.busy;
    j["jobs_done"] = t.jobs_done;
    j["targets_exited"] = t.targets_exited;
    j["failures"] = t.failures;
    j["bytes_advised"] = t.bytes_advised;
    j["calls"] = t.calls;
    j["advise_seconds"] = t.advise_seconds;
    j["cpu_seconds"] = t.cpu_seconds;
    j["containers_scheduled"] = schedules_.size();
    j["skipped_preloaded"] = t.skipped_preloaded;
    j["already_queued"] = t.already_queued;
    j["dropped_queue_full"] = remote_full_;
    j["cpu_seconds_per_gib"] =
        t.bytes_advised ? json(t.cpu_seconds / (static_cast<double>(t.bytes_advised) / (1 << 30))) : json(nullptr);
    return j;
}

}  // namespace upm::agent::internal
