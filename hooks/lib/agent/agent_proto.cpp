// The node agent's request parser and the helpers both ends share.
// Format: upm/agent_proto.hpp and docs/agent.md.
#include "upm/agent_proto.hpp"
#include "upm/io.hpp"
#include "upm/policy.hpp"
#include "upm/spec.hpp"

#include <cmath>
#include <cstdlib>
#include <nlohmann/json.hpp>

namespace upm {

using json = nlohmann::json;

namespace {

bool has_control(std::string_view s) {
    for (unsigned char c : s)
        if (c < 0x20 || c == 0x7f) return true;
    return false;
}

// A string field: absent -> "", wrong type -> error.
Result<std::string> string_field(const json& doc, const char* key, std::size_t max, bool required) {
    auto it = doc.find(key);
    if (it == doc.end() || it->is_null()) {
        if (required) return Error::msg(std::string("missing `") + key + "`");
        return std::string();
    }
    if (!it->is_string()) return Error::msg(std::string("`") + key + "` is not a string");
    const auto& s = it->get_ref<const std::string&>();
    if (s.size() > max) return Error::msg(std::string("`") + key + "` is longer than " + std::to_string(max) + " bytes");
    if (has_control(s)) return Error::msg(std::string("`") + key + "` contains a control character");
    if (required && s.empty()) return Error::msg(std::string("`") + key + "` is empty");
    return s;
}

// An unsigned integer field in [min, max]; absent -> nullopt.
Result<std::optional<std::uint64_t>> uint_field(const json& doc, const char* key, std::uint64_t min, std::uint64_t max) {
    auto it = doc.find(key);
    if (it == doc.end() || it->is_null()) return std::optional<std::uint64_t>();
    if (!it->is_number_integer()) return Error::msg(std::string("`") + key + "` is not an integer");
    if (it->is_number_unsigned()) {
        auto v = it->get<std::uint64_t>();
        if (v < min || v > max) return Error::msg(std::string("`") + key + "` " + std::to_string(v) + " is out of range");
        return std::optional<std::uint64_t>(v);
    }
    auto v = it->get<std::int64_t>();
    if (v < 0 || static_cast<std::uint64_t>(v) < min || static_cast<std::uint64_t>(v) > max)
        return Error::msg(std::string("`") + key + "` " + std::to_string(v) + " is out of range");
    return std::optional<std::uint64_t>(static_cast<std::uint64_t>(v));
}

Status check_cgroup(const std::string& cg) {
    if (cg.empty()) return Ok{};
    if (cg.front() != '/') return Error::msg("`cgroup` is not an absolute cgroup path");
    std::size_t pos = 0;
    while (pos <= cg.size()) {
        auto slash = cg.find('/', pos);
        auto part = std::string_view(cg).substr(pos, slash == std::string::npos ? std::string::npos : slash - pos);
        if (part == "..") return Error::msg("`cgroup` contains `..`");
        if (slash == std::string::npos) break;
        pos = slash + 1;
    }
    return Ok{};
}

// The line as a JSON object: bounded, no NUL, not nested too deep.
Result<json> parse_line(std::string_view line) {
    if (line.size() > kMaxAgentLine)
        return Error::msg("request longer than " + std::to_string(kMaxAgentLine) + " bytes");
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    if (line.find_first_not_of(" \t") == std::string_view::npos) return Error::msg("empty request");
    // nlohmann's lexer takes NUL for the end of the input: refuse it here.
    if (line.find('\0') != std::string_view::npos) return Error::msg("request contains a NUL byte (send UTF-8 JSON text)");
    if (detail::json_nests_deeper(line, kMaxAgentDepth)) return Error::msg("request nested deeper than " + std::to_string(kMaxAgentDepth) + " levels");
    json doc = json::parse(line.begin(), line.end(), nullptr, false);
    if (doc.is_discarded()) return Error::msg("request is not valid JSON (one UTF-8 JSON object per line)");
    if (!doc.is_object()) return Error::msg("request is not a JSON object");
    return doc;
}

Result<AgentOp> parse_op(const json& doc) {
    auto op_it = doc.find("op");
    if (op_it == doc.end() || !op_it->is_string())
        return Error::msg("no string `op` (ping, register, unregister, advised, list, status, ksm-claim, advise)");
    const auto& op = op_it->get_ref<const std::string&>();
    if (op == "ping") return AgentOp::ping;
    if (op == "register") return AgentOp::register_container;
    if (op == "unregister") return AgentOp::unregister_container;
    if (op == "advised") return AgentOp::advised;
    if (op == "list") return AgentOp::list;
    if (op == "status") return AgentOp::status;
    if (op == "ksm-claim") return AgentOp::ksm_claim;
    if (op == "advise") return AgentOp::advise;
    std::string shown = op.size() > 32 || has_control(op) ? std::string("(invalid)") : op;
    return Error::msg("unknown `op` `" + shown + "` (ping, register, unregister, advised, list, status, ksm-claim, advise)");
}

// `id` (required to register and unregister) and `pid`, for every op.
Status parse_id_and_pid(const json& doc, AgentRequest& r) {
    auto id_needed = r.op == AgentOp::register_container || r.op == AgentOp::unregister_container ||
                     r.op == AgentOp::ksm_claim;
    auto id = string_field(doc, "id", kMaxAgentId, id_needed);
    if (!id) return id.error();
    r.id = std::move(*id);
    if (!r.id.empty()) {
        auto why = check_container_id(r.id);
        if (!why.empty()) return Error::msg("`id` " + why);
    }
    auto pid = uint_field(doc, "pid", 1, kMaxAgentPid);
    if (!pid) return pid.error();
    if (*pid) r.pid = static_cast<long>(**pid);
    return Ok{};
}

// `namespace` (ksm-claim) or `ksm_namespace` (register): a Kubernetes namespace.
Status parse_namespace(const json& doc, AgentRequest& r, bool claim) {
    const char* key = claim ? "namespace" : "ksm_namespace";
    auto ns = string_field(doc, key, kMaxAgentLabel, claim);
    if (!ns) return ns.error();
    if (!ns->empty() && !valid_namespace(*ns))
        return Error::msg(std::string("`") + key + "` is not a Kubernetes namespace (a DNS label)");
    r.ksm_namespace = std::move(*ns);
    return Ok{};
}

Status parse_register(const json& doc, AgentRequest& r) {
    if (r.pid == 0) return Error::msg("missing `pid`");
    auto cg = string_field(doc, "cgroup", kMaxAgentCgroup, false);
    if (!cg) return cg.error();
    if (auto st = check_cgroup(*cg); !st) return st.error();
    r.cgroup = std::move(*cg);
    auto policy = string_field(doc, "policy", kMaxAgentLabel, false);
    if (!policy) return policy.error();
    r.policy = std::move(*policy);
    auto domain = string_field(doc, "domain", kMaxAgentLabel, false);
    if (!domain) return domain.error();
    r.domain = std::move(*domain);
    auto st = uint_field(doc, "start_time", 0, UINT64_MAX);
    if (!st) return st.error();
    r.start_time = *st;
    return parse_namespace(doc, r, false);
}

Status parse_advised(const json& doc, AgentRequest& r) {
    if (r.id.empty() && r.pid == 0) return Error::msg("`advised` needs `id` or `pid`");
    auto bytes = uint_field(doc, "bytes", 0, std::uint64_t(1) << 56);
    if (!bytes) return bytes.error();
    if (!*bytes) return Error::msg("missing `bytes`");
    r.bytes = **bytes;
    auto calls = uint_field(doc, "calls", 0, std::uint64_t(1) << 40);
    if (!calls) return calls.error();
    r.calls = calls->value_or(1);
    auto sec = doc.find("seconds");
    if (sec != doc.end() && !sec->is_null()) {
        if (!sec->is_number()) return Error::msg("`seconds` is not a number");
        double v = sec->get<double>();
        if (!std::isfinite(v) || v < 0 || v > 1e9) return Error::msg("`seconds` is out of range");
        r.seconds = v;
    }
    return Ok{};
}

// advise: `id` or `pid`, an optional policy NAME.
Status parse_advise(const json& doc, AgentRequest& r) {
    if (r.id.empty() && r.pid == 0) return Error::msg("`advise` needs `id` or `pid`");
    auto policy = string_field(doc, "policy", kMaxAgentLabel, false);
    if (!policy) return policy.error();
    if (!policy->empty() && !valid_policy_name(*policy))
        return Error::msg("`policy` is not a policy NAME ([A-Za-z0-9][A-Za-z0-9._-]{0,63})");
    r.policy = std::move(*policy);
    return Ok{};
}

Result<AgentRequest> parse(std::string_view line) {
    auto doc = parse_line(line);
    if (!doc) return doc.error();
    auto op = parse_op(*doc);
    if (!op) return op.error();
    AgentRequest r;
    r.op = *op;
    if (auto st = parse_id_and_pid(*doc, r); !st) return st.error();
    if (r.op == AgentOp::register_container) {
        if (auto st = parse_register(*doc, r); !st) return st.error();
    } else if (r.op == AgentOp::advised) {
        if (auto st = parse_advised(*doc, r); !st) return st.error();
    } else if (r.op == AgentOp::ksm_claim) {
        if (auto st = parse_namespace(*doc, r, true); !st) return st.error();
    } else if (r.op == AgentOp::advise) {
        if (auto st = parse_advise(*doc, r); !st) return st.error();
    }
    return r;
}

}  // namespace

std::string_view to_string(AgentOp op) {
    switch (op) {
    case AgentOp::ping: return "ping";
    case AgentOp::register_container: return "register";
    case AgentOp::unregister_container: return "unregister";
    case AgentOp::advised: return "advised";
    case AgentOp::list: return "list";
    case AgentOp::status: return "status";
    case AgentOp::ksm_claim: return "ksm-claim";
    case AgentOp::advise: return "advise";
    }
    return "?";
}

std::string check_container_id(std::string_view id) {
    if (id.empty()) return "is empty";
    if (id.size() > kMaxAgentId) return "is longer than " + std::to_string(kMaxAgentId) + " bytes";
    for (unsigned char c : id)
        if (c < 0x20 || c == 0x7f || c == '/') return "has a control character or `/`";
    return {};
}

Result<AgentRequest> parse_agent_request(std::string_view line) {
    try {
        return parse(line);
    } catch (const std::exception& e) {
        return Error::msg(std::string("invalid request: ") + e.what());
    } catch (...) {
        return Error::msg("invalid request");
    }
}

std::string format_agent_request(const AgentRequest& r) {
    json j;
    j["op"] = std::string(to_string(r.op));
    if (!r.id.empty()) j["id"] = r.id;
    if (r.pid > 0) j["pid"] = r.pid;
    if (r.op == AgentOp::register_container) {
        j["cgroup"] = r.cgroup;
        j["policy"] = r.policy;
        j["domain"] = r.domain;
        if (r.start_time) j["start_time"] = *r.start_time;
        if (!r.ksm_namespace.empty()) j["ksm_namespace"] = r.ksm_namespace;
    }
    if (r.op == AgentOp::ksm_claim) j["namespace"] = r.ksm_namespace;
    if (r.op == AgentOp::advise && !r.policy.empty()) j["policy"] = r.policy;
    if (r.op == AgentOp::advised) {
        j["bytes"] = r.bytes;
        j["calls"] = r.calls;
        j["seconds"] = r.seconds;
    }
    return j.dump(-1, ' ', false, json::error_handler_t::replace) + "\n";
}

std::string agent_error_reply(std::string_view message) {
    try {
        json j;
        j["ok"] = false;
        j["error"] = std::string(message);
        return j.dump(-1, ' ', false, json::error_handler_t::replace) + "\n";
    } catch (...) {
        return "{\"ok\":false,\"error\":\"internal error\"}\n";
    }
}

std::string agent_socket_path() {
    const char* env = ::secure_getenv(kEnvAgentSocket);
    if (env && *env) return env;
    return kAgentSocket;
}

}  // namespace upm
