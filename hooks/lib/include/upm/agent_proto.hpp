// The node agent's protocol (upmd, docs/agent.md): newline-delimited JSON
// over a unix stream socket (default /run/upm/upmd.sock, root only).
//
// One request per line, one reply line per request, in order:
//
//   {"op":"ping"}
//   {"op":"register","id":"abc","pid":123,"cgroup":"/kubepods/...","policy":"p","domain":"d","start_time":456}
//   {"op":"unregister","id":"abc"}
//   {"op":"advised","id":"abc","bytes":1048576,"calls":1,"seconds":0.002}   (or "pid" instead of "id")
//   {"op":"list"}      the registry
//   {"op":"status"}    the registry with per-container savings and node totals
//   {"op":"ksm-claim","id":"abc","namespace":"shop"}   may this container of this
//                      Kubernetes namespace be advised on the KSM backend
//                      (node setting ksm_single_namespace)? -> "granted", "holder"
//   {"op":"advise","id":"abc"}  (or "pid"; "policy":NAME optional)  remote advice by
//                      upmd through pidfds and process_madvise(MADV_UPM), queued
//
//   -> {"ok":true,...}   or   {"ok":false,"error":"what was wrong"}
//
// The parser is the agent's only contact with untrusted bytes: a line is at
// most kMaxAgentLine bytes, JSON nested at most kMaxAgentDepth levels, every
// string bounded and checked; it never throws (test/fuzz/ drives it).
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "upm/ksm_claim.hpp"
#include "upm/result.hpp"

namespace upm {

inline constexpr const char* kAgentSocket = "/run/upm/upmd.sock";
inline constexpr const char* kEnvAgentSocket = "UPM_AGENT_SOCKET";   // overrides kAgentSocket (tests)
inline constexpr std::size_t kMaxAgentLine = 64 * 1024;               // bytes of one request, newline excluded
inline constexpr std::size_t kMaxAgentReply = 16 * 1024 * 1024;      // bytes of one reply (status of 4096 containers)
inline constexpr int kMaxAgentDepth = 4;                              // JSON nesting of a request
inline constexpr std::size_t kMaxAgentId = 1024;                      // container id (as upm-hook accepts)
inline constexpr std::size_t kMaxAgentLabel = 256;                    // policy, domain
inline constexpr std::size_t kMaxAgentCgroup = 4096;                  // cgroup path (PATH_MAX)
inline constexpr long kMaxAgentPid = 4194304;                         // PID_MAX_LIMIT

enum class AgentOp { ping, register_container, unregister_container, advised, list, status, ksm_claim, advise };

std::string_view to_string(AgentOp op);   // "ping", "register", ...

struct AgentRequest {
    AgentOp op = AgentOp::ping;
    std::string id;                  // register, unregister; advised (or pid)
    long pid = 0;                    // register (required), advised (or id)
    std::string cgroup;              // register: cgroup v2 path ("/..."), "" = use the process tree of pid
    std::string policy, domain;      // register: labels, "" when unknown; advise: policy NAME, "" = the container's
    std::optional<std::uint64_t> start_time;  // register: field 22 of /proc/PID/stat (ticks since boot), checked
    std::string ksm_namespace;       // ksm-claim (required), register (optional): a Kubernetes namespace
    std::uint64_t bytes = 0;         // advised: bytes newly advised
    std::uint64_t calls = 1;         // advised: madvise calls they took
    double seconds = 0;              // advised: time the calls took
};

// Parses one request line (without its newline).  Errors name the field and
// what is wrong; unknown keys are ignored (newer clients).  Never throws.
Result<AgentRequest> parse_agent_request(std::string_view line);

// The request as one line (with its newline), as parse_agent_request reads it.
std::string format_agent_request(const AgentRequest& request);

// {"ok":false,"error":MESSAGE} with its newline; MESSAGE is made valid UTF-8.
std::string agent_error_reply(std::string_view message);

// $UPM_AGENT_SOCKET when set and not empty, else kAgentSocket.
std::string agent_socket_path();

// Checks a container id the way upm-hook does: 1..kMaxAgentId bytes, no
// control character, no `/`.  Empty string when valid, else the reason.
std::string check_container_id(std::string_view id);

namespace agent {
using upm::parse_agent_request;
}

}  // namespace upm
