// upmd's answer to `ksm-claim` (server.hpp, docs/agent.md "One namespace on
// the KSM backend"): the node setting ksm_single_namespace lets containers
// of one Kubernetes namespace at a time be advised on the stock-kernel
// backend, where ksmd merges across namespaces.  upm-runtime (or the
// createRuntime hook) asks before it injects the preload; the agent, which
// knows every registered container, decides.
//
// A claim granted to a container that has not registered yet is pending
// for kClaimPending (the create/start gap); at `register` it moves into the
// container's registry entry (`ksm_namespace`, kept in the state file) and
// ends when the container does (unregister, exit).
#include "server.hpp"

namespace upm::agent::internal {

namespace {

constexpr auto kClaimPending = std::chrono::seconds(120);
constexpr std::size_t kMaxPendingClaims = 4096;
constexpr std::size_t kHoldersShown = 4;

}  // namespace

// The containers (registered or pending) that hold the KSM backend for a
// namespace other than `ns`; expired pending claims are dropped first.
std::vector<std::pair<std::string, std::string>> Server::ksm_holders(const std::string& ns, const std::string& id) {
    const auto now = Clock::now();
    std::erase_if(ksm_claims_, [&](const auto& kv) {
        return now - kv.second.at > kClaimPending || registry_.find(kv.first) != nullptr;
    });
    std::vector<std::pair<std::string, std::string>> out;
    for (const auto& [cid, c] : registry_.containers())
        if (!c.ksm_namespace.empty() && c.ksm_namespace != ns && cid != id) out.emplace_back(cid, c.ksm_namespace);
    for (const auto& [cid, claim] : ksm_claims_)
        if (claim.ns != ns && cid != id) out.emplace_back(cid, claim.ns);
    return out;
}

json Server::claim_ksm(const AgentRequest& req) {
    auto holders = ksm_holders(req.ksm_namespace, req.id);
    if (holders.empty()) {
        if (Container* ct = registry_.find(req.id)) {
            ct->ksm_namespace = req.ksm_namespace;
            changed();
        } else if (ksm_claims_.size() < kMaxPendingClaims || ksm_claims_.count(req.id)) {
            ksm_claims_[req.id] = KsmClaim{req.ksm_namespace, Clock::now()};
        }
        logger()->debug("container `{}`: KSM backend granted to namespace `{}`", log_id(req.id), req.ksm_namespace);
        return {{"ok", true}, {"granted", true}, {"namespace", req.ksm_namespace}};
    }
    json ids = json::array();
    for (std::size_t i = 0; i < holders.size() && i < kHoldersShown; ++i) ids.push_back(holders[i].first);
    const std::string& holder = holders.front().second;
    logger()->warn("container `{}` of namespace `{}`: KSM backend refused: namespace `{}` holds it ({} container{}, "
                   "e.g. `{}`); node setting ksm_single_namespace: one namespace at a time on stock KSM, where "
                   "ksmd merges across namespaces (use the upm kernel, or set it false if the namespaces trust "
                   "each other)",
                   log_id(req.id), req.ksm_namespace, holder, holders.size(), holders.size() == 1 ? "" : "s",
                   log_id(holders.front().first));
    return {{"ok", true},       {"granted", false},         {"namespace", req.ksm_namespace},
            {"holder", holder}, {"holders", holders.size()}, {"holder_ids", std::move(ids)}};
}

// The KSM namespace in `status`: who holds it, how many containers.
json Server::ksm_namespace_json() {
    auto holders = ksm_holders("", "");
    json j = {{"holder", nullptr}, {"containers", 0}, {"pending", ksm_claims_.size()}};
    std::set<std::string> names;
    for (const auto& h : holders) names.insert(h.second);
    if (!names.empty()) j["holder"] = *names.begin();
    if (names.size() > 1) j["namespaces"] = json(names);  // only after the setting was turned on late
    j["containers"] = holders.size();
    return j;
}

// At `register`: the pending claim (or the request's own) becomes the
// container's.
void Server::take_claim(Container& ct, const AgentRequest& req) {
    ct.ksm_namespace = req.ksm_namespace;
    if (auto it = ksm_claims_.find(req.id); it != ksm_claims_.end()) {
        if (ct.ksm_namespace.empty()) ct.ksm_namespace = it->second.ns;
        ksm_claims_.erase(it);
    } else if (const Container* old = registry_.find(req.id); old && ct.ksm_namespace.empty()) {
        ct.ksm_namespace = old->ksm_namespace;   // registered again
    }
}

}  // namespace upm::agent::internal
