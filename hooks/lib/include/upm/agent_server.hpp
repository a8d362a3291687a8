// upmd, the node agent: one thread, one epoll loop.
//
//   * a unix stream socket (root only: mode 0600, or 0660 with a group)
//     speaking the protocol of upm/agent_proto.hpp;
//   * the registry (upm/agent_registry.hpp), saved to the state file before
//     the replies of the requests that changed it are sent, pruned of exited
//     processes every poll interval;
//   * the KSM burst tuner (upm/ksmtune.hpp) on the KSM backend: kicked by
//     `register` and `advised`, ticked from the loop, stopped (original
//     settings restored) on SIGTERM / SIGINT;
//   * metrics (upm/metrics.hpp) on a loopback HTTP endpoint (GET /metrics)
//     and/or as a node-exporter textfile.
//
// Every input is bounded: request lines (64 KiB: error reply, then the
// connection is closed), HTTP request heads (8 KiB), the number of
// connections, the registry size, reply bytes queued per connection; an idle
// connection is closed after the client timeout, so a client that stalls
// never blocks the others.  docs/agent.md describes the options.
#pragma once

#include <chrono>
#include <cstddef>
#include <string>

#include "upm/agent_registry.hpp"

namespace upm::agent {

struct ServerOptions {
    std::string socket = kAgentSocket;
    std::string socket_group;                   // "" = mode 0600; else 0660 and this group
    std::string state_file;                     // "" = <dir of socket>/upmd-state.json
    std::string metrics_listen;                 // "" = no HTTP endpoint; "127.0.0.1:9464", "[::1]:9464", "9464"
    bool metrics_any_address = false;           // allow a non-loopback metrics address
    std::string textfile_dir;                   // "" = no textfile
    std::chrono::milliseconds textfile_interval{15000};
    std::size_t max_containers = kDefaultMaxContainers;
    std::size_t max_connections = 256;          // protocol (socket) connections
    std::size_t max_http_connections = 16;      // /metrics connections: a budget of their own
    std::chrono::milliseconds client_timeout{10000};
    std::chrono::milliseconds poll_interval{1000};
    bool tune = true;                           // KSM burst tuning on the KSM backend
    double remote_rate_mib = 1024;              // remote advice (`advise`): MiB per second at most
    std::string tuner_state_file;               // "" = the tuner's default (/run/upm/ksm-original.json)
    std::string cgroup_root = "/sys/fs/cgroup";
    std::string version;
    bool notify_ready = true;                   // READY=1 to $NOTIFY_SOCKET (systemd Type=notify)
    int ready_fd = -1;                          // write "ok\n" here once listening (daemon mode), then close
};

// Runs until SIGTERM or SIGINT; returns the exit status (0 after a clean
// stop, 1 when start-up failed -- the reason is logged).
int run_server(const ServerOptions& options);

}  // namespace upm::agent
