// Client of the node agent (upmd): used by upm-hook (register/unregister a
// container), `upm run` (register the program it starts) and `upm status`.
//
// Every call has a deadline: connecting, sending and reading the reply all
// together take at most the timeout given, so a hung or dead agent costs a
// caller at most that long.  Replies are read up to kMaxAgentReply bytes.
// Callers on a container's start path (upm-hook, upm run) fail open: an
// error here is logged and the container runs unregistered.
#pragma once

#include <chrono>
#include <string>

#include <nlohmann/json.hpp>

#include "upm/agent_proto.hpp"
#include "upm/problem.hpp"
#include "upm/result.hpp"

namespace upm::agent {

class Client {
public:
    Client(const Client&) = delete;
    Client& operator=(const Client&) = delete;
    Client(Client&& other) noexcept;
    Client& operator=(Client&& other) noexcept;
    ~Client();

    // Connects to the agent's socket within `timeout`.  ENOENT / ECONNREFUSED
    // mean no agent runs.
    static Result<Client> connect(const std::string& socket_path, std::chrono::milliseconds timeout);

    // Sends one request and waits for its reply line (within the timeout
    // given to connect(), counted from each call).  A reply {"ok":false}
    // is an Error with the agent's message.
    Result<nlohmann::json> call(const AgentRequest& request);

    void set_timeout(std::chrono::milliseconds timeout) { timeout_ = timeout; }

private:
    explicit Client(int fd, std::chrono::milliseconds timeout) : fd_(fd), timeout_(timeout) {}
    int fd_ = -1;
    std::chrono::milliseconds timeout_;
    std::string pending_;   // bytes read after the last reply line
};

// One request on a fresh connection to agent_socket_path() (or `socket`);
// `timeout` bounds connecting and the reply together.
Result<nlohmann::json> call_agent(const AgentRequest& request, std::chrono::milliseconds timeout,
                                  const std::string& socket = agent_socket_path());

// Whether `socket` exists and is a socket (cheap test before connecting).
bool agent_socket_present(const std::string& socket = agent_socket_path());

// field 22 of /proc/PID/stat (start time in clock ticks since boot); 0 when
// the process is gone or the file is unreadable.
std::uint64_t process_start_ticks(long pid);

// The cgroup v2 path of a process ("0::/path" of /proc/PID/cgroup); "" when
// there is none (cgroup v1 only) or the file cannot be read.
std::string process_cgroup(long pid);

// upm-hook's part: `poststart` registers the container (its cgroup and
// start time read from /proc), `poststop` unregisters it, within `timeout`.
// Never fails: returns the line to log and its level (an empty message:
// nothing to log, e.g. poststop without an agent).
Problem hook_notify_agent(std::string_view event, const std::string& id, long pid, const std::string& policy,
                           const std::string& domain,
                           std::chrono::milliseconds timeout = std::chrono::milliseconds(800));

// ksm-claim (node setting ksm_single_namespace, docs/runtime.md): may the
// container `id` of Kubernetes namespace `ns` be advised on the KSM backend?
// An Error when the agent cannot be asked (no socket, no reply within
// `timeout`): the caller cannot tell and must not advise.
Result<KsmClaimAnswer> claim_ksm_namespace(const std::string& id, const std::string& ns,
                                           std::chrono::milliseconds timeout = std::chrono::milliseconds(800));

}  // namespace upm::agent
