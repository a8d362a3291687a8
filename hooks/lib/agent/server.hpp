// Private to hooks/lib/agent: upmd's server (upm/agent_server.hpp), one
// class whose methods live in one file a concern:
//
//   server.cpp           run(): start-up, the epoll loop, timers, signals, stop
//   server_listen.cpp    the unix socket and the metrics listener, accepting
//                        connections within the connection budget
//   server_conn.cpp      one connection: bounded reads, request lines, queued
//                        replies, back-pressure, closing
//   server_requests.cpp  the protocol: one request line, one reply
//   server_registry.cpp  the registry: state file, exit watch (pidfds,
//                        polling), growth watch, the KSM tuner
//   server_metrics.cpp   GET /metrics and the node-exporter textfile
//   server_claims.cpp    `ksm-claim`: one namespace at a time on the KSM backend
//   server_remote.cpp    `advise`: remote advice through the adviser thread
#pragma once

#include <sys/epoll.h>
#include <sys/types.h>

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <set>
#include <spdlog/spdlog.h>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "upm/advice_route.hpp"
#include "upm/agent_proto.hpp"
#include "upm/agent_server.hpp"
#include "upm/io.hpp"
#include "upm/ksmtune.hpp"
#include "upm/log.hpp"
#include "upm/metrics.hpp"
#include "upm/remote_adviser.hpp"

namespace upm::agent::internal {

using json = nlohmann::json;
using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;
using upm::detail::Fd;

inline constexpr std::size_t kMaxHttpHead = 8 * 1024;
inline constexpr std::size_t kMaxQueuedOut = 2 * kMaxAgentReply;   // reply bytes queued for one connection
inline constexpr std::size_t kReadPerEvent = 256 * 1024;           // bytes read from one connection per wake-up
inline constexpr std::size_t kOutHighWater = 1024 * 1024;          // above: stop handling a connection's requests
inline constexpr std::size_t kLinesPerPass = 64;                   // requests of one connection per loop pass
inline constexpr milliseconds kHttpTimeout{5000};

inline std::string dump(const json& j) { return j.dump(-1, ' ', false, json::error_handler_t::replace); }

enum class Kind { agent, http };

struct Conn {
    int fd = -1;
    Kind kind = Kind::agent;
    std::string in, out;
    Clock::time_point last_activity;
    bool close_after_flush = false;
    unsigned events = EPOLLIN | EPOLLRDHUP;   // what epoll watches
    bool read_closed = false;    // peer shut down its side
    pid_t peer_pid = 0;
    uid_t peer_uid = static_cast<uid_t>(-1);  // SO_PEERCRED; unknown counts as not root
    // When the request now being received began (the HTTP head: at
    // connect); a request must be complete within the connection's timeout
    // however steadily its bytes trickle in.  {} = none pending.
    Clock::time_point request_started{};
    std::uint64_t serial = 0;
    unsigned bad_requests = 0;
};

class Server {
public:
    explicit Server(const ServerOptions& o) : o_(o), registry_(o.max_containers) {
        state_file_ = o.state_file.empty() ? detail::dirname(o.socket) + "/upmd-state.json" : o.state_file;
        info_.version = o.version;
        info_.started_at = unix_now();
    }

    int run();

private:
    // The steps of run() (server.cpp).
    void block_signals();
    void fit_fd_limits();
    bool start();
    bool textfile_dir_ok() const;
    void open_epoll();
    void watch_fd(int fd);
    void announce_ready();
    void serve();
    void run_timers(Clock::time_point now);
    Clock::time_point next_timer() const;
    void close_idle(Clock::time_point now, Clock::time_point& next);
    void dispatch(const epoll_event& ev);
    void read_signals();
    void commit_and_flush();
    // Sockets (server_listen.cpp), connections (server_conn.cpp).
    Status setup_socket();
    Status setup_http();
    void load_state();
    void start_tuner();
    void accept_all(int lfd, Kind kind);
    void on_readable(Conn& c);
    void on_writable(Conn& c);
    void process_lines(Conn& c);
    bool may_read(const Conn& c) const;
    bool send_some(Conn& c);   // false: the connection was closed
    void changed() {
        dirty_ = true;
        ++generation_;
    }
    const Snapshot& snapshot();
    void watch(const Container& c);
    void unwatch(const std::string& id);
    void on_exit_fd(int fd);
    // The protocol (server_requests.cpp).
    void handle_line(Conn& c, std::string_view line);
    void reject_bad_request(Conn& c, const std::string& why);
    std::optional<json> answer(Conn& c, const AgentRequest& req);
    std::optional<std::string> refusal(const Conn& c, const AgentRequest& req);
    json ping_reply();
    std::optional<json> register_container(Conn& c, const AgentRequest& req);
    json unregister_container(const AgentRequest& req);
    json record_advice(const AgentRequest& req);
    json claim_ksm(const AgentRequest& req);
    void start_remote();
    Result<Policy> remote_policy(const std::string& name);
    std::optional<json> remote_advise(Conn& c, const AgentRequest& req);
    Result<std::size_t> queue_remote(const Container* ct, pid_t pid, const Policy& policy, bool unless_preloaded);
    void route_container(const Container& ct, Clock::time_point started);
    void run_remote_schedules(Clock::time_point now);
    void log_remote_results();
    json remote_json();
    json ksm_namespace_json();
    void take_claim(Container& ct, const AgentRequest& req);
    std::vector<std::pair<std::string, std::string>> ksm_holders(const std::string& ns, const std::string& id);
    void handle_http(Conn& c);
    void queue(Conn& c, std::string text);
    void flush(Conn& c);
    void close_conn(int fd, const char* why);
    void prune();
    void watch_growth();
    void save_if_dirty();
    void write_textfile();
    json status_reply(bool with_usage);
    AgentInfo agent_info();
    void cleanup();
    std::string log_id(const std::string& id) const { return printable(id); }

    ServerOptions o_;
    std::string state_file_;
    Registry registry_;
    AgentInfo info_;
    std::optional<KsmTuner> tuner_;
    remote::Availability remote_;
    std::optional<remote::Adviser> adviser_;  // only where remote advice is available
    // Containers upmd advises on its own (policy `advice`): the policy's
    // triggers seen from outside, from the container's start.
    struct RemoteSchedule {
        Policy policy;
        Clock::time_point start;
        remote::OutsideTriggers triggers;
        bool unless_preloaded = false;
    };
    std::map<std::string, RemoteSchedule> schedules_;
    Clock::time_point next_remote_ = Clock::time_point::max();
    std::uint64_t remote_full_ = 0;           // scheduled advice dropped: the queue was full
    std::string tuner_note_;
    GrowthWatch growth_;                      // advice seen from outside: containers' anonymous memory grows
    std::uint64_t growth_kicks_ = 0;
    Fd ep_, lfd_, hfd_, sfd_;
    ino_t socket_ino_ = 0;
    struct KsmClaim {
        std::string ns;
        Clock::time_point at;
    };
    std::map<std::string, KsmClaim> ksm_claims_;  // granted, not registered yet: id -> claim
    std::map<int, Conn> conns_;
    std::size_t http_conns_ = 0;              // of conns_, those of /metrics
    std::set<int> to_flush_;
    bool dirty_ = false, save_failing_ = false, stop_ = false;
    std::uint64_t serial_ = 0;
    std::uint64_t generation_ = 0;            // registry changes, for the snapshot cache
    std::optional<Snapshot> snap_;
    // Exit notification: a pidfd per container main process (epoll reports
    // it readable when the process exits); polling /proc stays as the net.
    std::map<int, std::string> pidfds_;        // fd -> container id
    std::map<std::string, int> pidfd_of_;      // container id -> fd
    std::size_t pidfd_budget_ = 0;
    std::uint64_t snap_generation_ = 0;
    Clock::time_point snap_at_{};
    Clock::time_point next_prune_, next_tune_, next_textfile_, listen_paused_until_{};
};

}  // namespace upm::agent::internal
