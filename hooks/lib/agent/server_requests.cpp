// upmd's protocol (server.hpp, docs/agent.md): one request line, one reply
// line; the registry changes it asks for.
#include "server.hpp"

#include <sys/stat.h>
#include <unistd.h>

#include "upm/agent_client.hpp"
#include "upm/stats.hpp"

namespace upm::agent::internal {

namespace {

// The owner of a process (the uid of /proc/PID), or -1 when it is gone.
uid_t process_owner(long pid) {
    struct stat st {};
    if (pid <= 0 || ::stat(("/proc/" + std::to_string(pid)).c_str(), &st) != 0) return static_cast<uid_t>(-1);
    return st.st_uid;
}

}  // namespace

// Who may ask what (docs/agent.md, "Who may ask what"), checked on every
// request with the peer's SO_PEERCRED: the socket is root's (0600) unless
// --socket-group opens it to a group.  A peer that is not root may read
// (ping, list, status), register and unregister only processes it owns,
// and report advice only for a registered container whose process it owns.
std::optional<std::string> Server::refusal(const Conn& c, const AgentRequest& req) {
    if (c.peer_uid == 0) return std::nullopt;
    auto not_yours = [&](long pid) {
        return "not allowed: process " + std::to_string(pid) + " is not yours (uid " + std::to_string(c.peer_uid) +
               "); only root may act for other users' processes";
    };
    switch (req.op) {
    case AgentOp::ping:
    case AgentOp::list:
    case AgentOp::status:
        return std::nullopt;
    case AgentOp::register_container:
        if (process_owner(req.pid) != c.peer_uid) return not_yours(req.pid);
        return std::nullopt;
    case AgentOp::unregister_container: {
        const Container* ct = registry_.find(req.id);
        if (ct && process_owner(ct->pid) != c.peer_uid) return not_yours(ct->pid);
        return std::nullopt;
    }
    case AgentOp::advised: {
        const Container* ct = !req.id.empty() ? registry_.find(req.id) : registry_.find_pid(req.pid);
        if (!ct) return "not allowed: advice without a registered container of yours is root's to report";
        if (process_owner(ct->pid) != c.peer_uid) return not_yours(ct->pid);
        return std::nullopt;
    }
    case AgentOp::ksm_claim:
        return "not allowed: only root (upm-runtime, upm-hook) may claim the KSM backend for a namespace";
    case AgentOp::advise:
        return "not allowed: only root may ask for remote advice";
    }
    return "not allowed";
}

json Server::status_reply(bool with_usage) {
    json r;
    r["ok"] = true;
    r["agent"] = {{"version", o_.version},
                  {"pid", ::getpid()},
                  {"started_at", info_.started_at},
                  {"socket", o_.socket},
                  {"state_file", state_file_},
                  {"containers", registry_.size()},
                  {"max_containers", registry_.capacity()},
                  {"connections", conns_.size()}};
    if (with_usage) {
        const Snapshot& snap = snapshot();
        r["containers"] = containers_json(registry_, &snap);
        r["node"] = node_json(registry_, snap);
    } else {
        r["containers"] = containers_json(registry_, nullptr);
    }
    r["ksm_namespace"] = ksm_namespace_json();
    r["remote"] = remote_json();
    if (tuner_) {
        json t = json::parse(to_json(tuner_->status()), nullptr, false);
        r["tuner"] = t.is_discarded() ? json(nullptr) : t;
    } else {
        r["tuner"] = {{"mode", "off"}, {"reason", tuner_note_}};
    }
    return r;
}

void Server::handle_line(Conn& c, std::string_view line) {
    auto req = parse_agent_request(line);
    if (!req) {
        reject_bad_request(c, req.error().message);
        return;
    }
    info_.requests[std::string(to_string(req->op))]++;
    try {
        if (std::optional<json> reply = answer(c, *req)) queue(c, dump(*reply) + "\n");
    } catch (const std::exception& e) {
        logger()->error("request `{}`: {}", to_string(req->op), e.what());
        queue(c, agent_error_reply(std::string("internal error: ") + e.what()));
    }
}

void Server::reject_bad_request(Conn& c, const std::string& why) {
    info_.requests["error"]++;
    // A client repeating bad requests must not flood the log: three per connection.
    if (++c.bad_requests <= 3)
        logger()->warn("connection {} (pid {}, uid {}): bad request: {}{}", c.serial, c.peer_pid, c.peer_uid, why,
                       c.bad_requests == 3 ? "; further bad requests of this connection are not logged" : "");
    queue(c, agent_error_reply(why));
}

// The reply to a well-formed request; none when an error reply is queued
// already.
std::optional<json> Server::answer(Conn& c, const AgentRequest& req) {
    if (auto why = refusal(c, req)) {
        reject_bad_request(c, std::string(to_string(req.op)) + ": " + *why);  // logged 3 times a connection at most
        return std::nullopt;
    }
    switch (req.op) {
    case AgentOp::ping:
        return ping_reply();
    case AgentOp::list:
        return status_reply(false);
    case AgentOp::status:
        return status_reply(true);
    case AgentOp::register_container:
        return register_container(c, req);
    case AgentOp::unregister_container:
        return unregister_container(req);
    case AgentOp::advised:
        return record_advice(req);
    case AgentOp::ksm_claim:
        return claim_ksm(req);
    case AgentOp::advise:
        return remote_advise(c, req);
    }
    return json();
}

json Server::ping_reply() {
    return {{"ok", true}, {"agent", "upmd"}, {"version", o_.version}, {"pid", ::getpid()},
            {"containers", registry_.size()}};
}

std::optional<json> Server::register_container(Conn& c, const AgentRequest& req) {
    std::uint64_t ticks = process_start_ticks(req.pid);
    if (ticks == 0) {
        queue(c, agent_error_reply("process " + std::to_string(req.pid) + " does not exist"));
        logger()->warn("container `{}`: not registered, process {} does not exist", log_id(req.id), req.pid);
        return std::nullopt;
    }
    if (req.start_time && *req.start_time != ticks) {
        queue(c, agent_error_reply("pid " + std::to_string(req.pid) +
                                   " belongs to another process now (start time differs)"));
        logger()->warn("container `{}`: not registered, pid {} was reused", log_id(req.id), req.pid);
        return std::nullopt;
    }
    Container ct;
    ct.id = req.id;
    ct.pid = req.pid;
    ct.start_ticks = ticks;
    ct.cgroup = req.cgroup;
    ct.policy = req.policy;
    ct.domain = req.domain;
    ct.registered_at = unix_now();
    take_claim(ct, req);
    const std::string ns = ct.ksm_namespace;
    auto added = registry_.add(std::move(ct));
    if (!added) {
        logger()->error("container `{}`: not registered: {}", log_id(req.id), added.error().message);
        queue(c, agent_error_reply(added.error().message));
        return std::nullopt;
    }
    changed();
    unwatch(req.id);
    if (auto* added_c = registry_.find(req.id)) watch(*added_c);
    logger()->info("container `{}`: {}, pid {}, policy `{}`, domain `{}`, {}{}", log_id(req.id),
                   *added ? "registered" : "registered again", req.pid,
                   req.policy.empty() ? "(default)" : printable(req.policy),
                   req.domain.empty() ? "(none)" : printable(req.domain),
                   req.cgroup.empty() ? std::string("process tree") : "cgroup `" + printable(req.cgroup) + "`",
                   ns.empty() ? std::string() : ", KSM namespace `" + ns + "`");
    if (tuner_) tuner_->kick("register " + printable(req.id));
    if (auto* added_c = registry_.find(req.id)) route_container(*added_c, Clock::now());
    return json{{"ok", true}, {"id", req.id}, {"new", *added}, {"containers", registry_.size()}};
}

json Server::unregister_container(const AgentRequest& req) {
    bool removed = registry_.remove(req.id);
    unwatch(req.id);
    schedules_.erase(req.id);
    if (removed) {
        changed();
        logger()->info("container `{}`: unregistered", log_id(req.id));
    } else {
        logger()->debug("container `{}`: unregister: not registered (already gone)", log_id(req.id));
    }
    return {{"ok", true}, {"id", req.id}, {"removed", removed}, {"containers", registry_.size()}};
}

json Server::record_advice(const AgentRequest& req) {
    Container* ct = !req.id.empty() ? registry_.find(req.id) : registry_.find_pid(req.pid);
    auto& node = registry_.node_advised();
    node.bytes += req.bytes;
    node.calls += req.calls;
    node.seconds += req.seconds;
    if (ct) {
        ct->advised.bytes += req.bytes;
        ct->advised.calls += req.calls;
        ct->advised.seconds += req.seconds;
    }
    changed();
    logger()->debug("advised: {} bytes in {} calls ({:.6f} s), {}", req.bytes, req.calls, req.seconds,
                    ct ? "container `" + log_id(ct->id) + "`" : std::string("no registered container"));
    if (tuner_) tuner_->kick(ct ? "advised " + printable(ct->id) : "advised", req.bytes);
    return {{"ok", true}, {"container", ct ? json(ct->id) : json(nullptr)}};
}

}  // namespace upm::agent::internal
