// upmd's event loop (upm/agent_server.hpp).
#include "upm/agent_server.hpp"

#include <arpa/inet.h>
#include <fcntl.h>
#include <grp.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <set>
#include <spdlog/spdlog.h>

#include "upm/agent_client.hpp"
#include "upm/backend.hpp"
#include "upm/ksmtune.hpp"
#include "upm/log.hpp"
#include "upm/metrics.hpp"
#include "upm/atomic_file.hpp"
#include "upm/io.hpp"

namespace upm::agent {

using json = nlohmann::json;
using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;

namespace {

using upm::detail::Fd;

constexpr std::size_t kMaxHttpHead = 8 * 1024;
constexpr std::size_t kMaxQueuedOut = 2 * kMaxAgentReply;   // reply bytes queued for one connection
constexpr std::size_t kReadPerEvent = 256 * 1024;           // bytes read from one connection per wake-up
constexpr std::size_t kOutHighWater = 1024 * 1024;          // above: stop handling a connection's requests
constexpr std::size_t kLinesPerPass = 64;                   // requests of one connection per loop pass
constexpr milliseconds kHttpTimeout{5000};

std::string dump(const json& j) { return j.dump(-1, ' ', false, json::error_handler_t::replace); }

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
    uid_t peer_uid = 0;
    std::uint64_t serial = 0;
    unsigned bad_requests = 0;
};

// Parses "HOST:PORT", "[V6]:PORT" or "PORT" (127.0.0.1).
Result<sockaddr_storage> parse_listen(const std::string& spec, socklen_t& len, bool& loopback) {
    std::string host = "127.0.0.1", port = spec;
    if (!spec.empty() && spec.front() == '[') {
        auto close = spec.find("]:");
        if (close == std::string::npos) return Error::msg("`" + spec + "`: want [ADDRESS]:PORT");
        host = spec.substr(1, close - 1);
        port = spec.substr(close + 2);
    } else if (auto colon = spec.rfind(':'); colon != std::string::npos) {
        host = spec.substr(0, colon);
        port = spec.substr(colon + 1);
    }
    char* end = nullptr;
    long p = std::strtol(port.c_str(), &end, 10);
    if (port.empty() || *end != '\0' || p < 1 || p > 65535)
        return Error::msg("`" + spec + "`: port must be 1..65535 (e.g. 127.0.0.1:9464)");
    sockaddr_storage ss{};
    auto* v4 = reinterpret_cast<sockaddr_in*>(&ss);
    auto* v6 = reinterpret_cast<sockaddr_in6*>(&ss);
    if (host == "localhost") host = "127.0.0.1";
    if (::inet_pton(AF_INET, host.c_str(), &v4->sin_addr) == 1) {
        v4->sin_family = AF_INET;
        v4->sin_port = htons(static_cast<uint16_t>(p));
        len = sizeof(sockaddr_in);
        loopback = (ntohl(v4->sin_addr.s_addr) >> 24) == 127;
    } else if (::inet_pton(AF_INET6, host.c_str(), &v6->sin6_addr) == 1) {
        v6->sin6_family = AF_INET6;
        v6->sin6_port = htons(static_cast<uint16_t>(p));
        len = sizeof(sockaddr_in6);
        loopback = IN6_IS_ADDR_LOOPBACK(&v6->sin6_addr);
    } else {
        return Error::msg("`" + spec + "`: `" + host + "` is not a numeric IPv4 or IPv6 address");
    }
    return ss;
}

void sd_notify_ready() {
    const char* path = std::getenv("NOTIFY_SOCKET");
    if (!path || !*path) return;
    sockaddr_un addr{};
    std::size_t len = std::strlen(path);
    if (len >= sizeof addr.sun_path) return;
    addr.sun_family = AF_UNIX;
    std::memcpy(addr.sun_path, path, len);
    if (addr.sun_path[0] == '@') addr.sun_path[0] = '\0';  // abstract namespace
    Fd f(::socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0));
    if (f.fd < 0) return;
    const char msg[] = "READY=1";
    ::sendto(f.fd, msg, sizeof msg - 1, MSG_NOSIGNAL, reinterpret_cast<sockaddr*>(&addr),
             static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + len));
}

class Server {
public:
    explicit Server(const ServerOptions& o) : o_(o), registry_(o.max_containers) {
        state_file_ = o.state_file.empty() ? detail::dirname(o.socket) + "/upmd-state.json" : o.state_file;
        info_.version = o.version;
        info_.started_at = unix_now();
    }

    int run();

private:
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
    void handle_line(Conn& c, std::string_view line);
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
    std::string tuner_note_;
    GrowthWatch growth_;                      // advice seen from outside: containers' anonymous memory grows
    std::uint64_t growth_kicks_ = 0;
    Fd ep_, lfd_, hfd_, sfd_;
    ino_t socket_ino_ = 0;
    std::map<int, Conn> conns_;
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

Status Server::setup_socket() {
    const std::string& path = o_.socket;
    sockaddr_un addr{};
    if (path.empty() || path.size() >= sizeof addr.sun_path)
        return Error::msg("socket path `" + path + "` is empty or longer than " + std::to_string(sizeof addr.sun_path - 1) +
                          " bytes");
    std::string dir = detail::dirname(path);
    if (::mkdir(dir.c_str(), 0755) != 0 && errno != EEXIST)
        return Error::sys(errno, "creating the socket directory `" + dir + "`");
    struct stat st {};
    if (::lstat(path.c_str(), &st) == 0) {
        if (!S_ISSOCK(st.st_mode))
            return Error::msg("`" + path + "` exists and is not a socket; remove it or choose another --socket");
        auto probe = Client::connect(path, milliseconds(500));
        if (probe) return Error::msg("another upmd is already listening at `" + path + "`; stop it first");
        logger()->info("removing the stale socket `{}` (nobody listens: {})", path, probe.error().message);
        ::unlink(path.c_str());
    }
    addr.sun_family = AF_UNIX;
    std::memcpy(addr.sun_path, path.data(), path.size());
    lfd_.fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (lfd_.fd < 0) return Error::sys(errno, "socket");
    mode_t old = ::umask(0177);  // the socket is born 0600: no window in which others may connect
    int rc = ::bind(lfd_.fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr);
    int e = errno;
    ::umask(old);
    if (rc != 0) return Error::sys(e, "bind `" + path + "`");
    if (!o_.socket_group.empty()) {
        struct group* g = ::getgrnam(o_.socket_group.c_str());
        if (!g) return Error::msg("--socket-group `" + o_.socket_group + "`: no such group");
        if (::chown(path.c_str(), static_cast<uid_t>(-1), g->gr_gid) != 0 || ::chmod(path.c_str(), 0660) != 0)
            return Error::sys(errno, "giving `" + path + "` to group `" + o_.socket_group + "`");
    }
    if (::listen(lfd_.fd, 1024) != 0) return Error::sys(errno, "listen `" + path + "`");
    if (::stat(path.c_str(), &st) == 0) socket_ino_ = st.st_ino;
    return Ok{};
}

Status Server::setup_http() {
    if (o_.metrics_listen.empty()) return Ok{};
    socklen_t len = 0;
    bool loopback = false;
    auto addr = parse_listen(o_.metrics_listen, len, loopback);
    if (!addr) return addr.error().wrap("--metrics-listen");
    if (!loopback && !o_.metrics_any_address)
        return Error::msg("--metrics-listen `" + o_.metrics_listen +
                          "` is not a loopback address; the metrics name containers, so they are served on "
                          "127.0.0.1/::1 only unless --metrics-any-address is given");
    hfd_.fd = ::socket(addr->ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (hfd_.fd < 0) return Error::sys(errno, "metrics socket");
    int one = 1;
    ::setsockopt(hfd_.fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (::bind(hfd_.fd, reinterpret_cast<sockaddr*>(&*addr), len) != 0)
        return Error::sys(errno, "--metrics-listen: bind `" + o_.metrics_listen + "`");
    if (::listen(hfd_.fd, 128) != 0) return Error::sys(errno, "--metrics-listen: listen");
    return Ok{};
}

void Server::load_state() {
    std::vector<std::string> notes;
    auto loaded = Registry::load(state_file_, o_.max_containers, notes);
    for (const auto& n : notes) logger()->info("{}", n);
    if (!loaded) {
        logger()->error("{}; starting with an empty registry", loaded.error().message);
        return;
    }
    registry_ = std::move(*loaded);
    logger()->info("registry: {} container{} from `{}`", registry_.size(), registry_.size() == 1 ? "" : "s",
                   state_file_);
    if (!notes.empty()) changed();
}

void Server::start_tuner() {
    if (!o_.tune) {
        tuner_note_ = "disabled (--no-tune)";
        logger()->info("ksm tuning: disabled by --no-tune");
        return;
    }
    if (kernel_has_madv_upm()) {
        tuner_note_ = "not needed: the kernel merges synchronously (MADV_UPM)";
        logger()->info("ksm tuning: off, the kernel has MADV_UPM (synchronous merging)");
        return;
    }
    struct stat st {};
    if (::stat("/sys/kernel/mm/ksm/run", &st) != 0) {
        tuner_note_ = "unavailable: /sys/kernel/mm/ksm/run is missing";
        logger()->warn("ksm tuning: off, /sys/kernel/mm/ksm/run is missing (kernel without CONFIG_KSM)");
        return;
    }
    KsmTunerOptions to;
    if (!o_.tuner_state_file.empty()) to.state_file = o_.tuner_state_file;
    tuner_.emplace(to);
    auto st2 = tuner_->start();
    if (!st2) {
        tuner_note_ = "failed to start: " + st2.error().message;
        logger()->error("ksm tuning: cannot start, ksmd settings left as they are: {}", st2.error().message);
        tuner_.reset();
        return;
    }
    auto s = tuner_->status();
    logger()->info("ksm tuning: on (original settings {}{}; idle {}; bursts on new advised memory)",
                   to_string(s.original), s.recovered ? ", recovered from a previous run" : "", to_string(s.idle));
    next_tune_ = Clock::now();
}

void Server::accept_all(int lfd, Kind kind) {
    for (;;) {
        int fd = ::accept4(lfd, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno == EINTR) continue;
            if (errno == EMFILE || errno == ENFILE) {
                logger()->warn("accept: {}; pausing new connections for 100 ms", std::strerror(errno));
                listen_paused_until_ = Clock::now() + milliseconds(100);
                ::epoll_ctl(ep_.fd, EPOLL_CTL_DEL, lfd, nullptr);
            }
            return;  // EAGAIN or an error of one connection
        }
        if (conns_.size() >= o_.max_connections) {
            info_.dropped_connections++;
            if (kind == Kind::agent) {
                std::string msg = agent_error_reply("too many connections (" + std::to_string(o_.max_connections) +
                                                    "); retry later");
                [[maybe_unused]] auto n = ::send(fd, msg.data(), msg.size(), MSG_NOSIGNAL | MSG_DONTWAIT);
            } else {
                const char msg[] = "HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\nContent-Length: 0\r\n\r\n";
                [[maybe_unused]] auto n = ::send(fd, msg, sizeof msg - 1, MSG_NOSIGNAL | MSG_DONTWAIT);
            }
            ::close(fd);
            logger()->warn("refused a connection: {} open, the limit is {}", conns_.size(), o_.max_connections);
            continue;
        }
        Conn c;
        c.fd = fd;
        c.kind = kind;
        c.last_activity = Clock::now();
        c.serial = ++serial_;
        if (kind == Kind::agent) {
            struct ucred cred {};
            socklen_t len = sizeof cred;
            if (::getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) == 0) {
                c.peer_pid = cred.pid;
                c.peer_uid = cred.uid;
            }
        }
        epoll_event ev{};
        ev.events = EPOLLIN | EPOLLRDHUP;
        ev.data.fd = fd;
        if (::epoll_ctl(ep_.fd, EPOLL_CTL_ADD, fd, &ev) != 0) {
            ::close(fd);
            continue;
        }
        conns_.emplace(fd, std::move(c));
    }
}

void Server::queue(Conn& c, std::string text) {
    if (c.out.size() + text.size() > kMaxQueuedOut) {
        // The client sends requests without reading the replies.
        c.close_after_flush = true;
        to_flush_.insert(c.fd);
        return;
    }
    c.out += text;
    to_flush_.insert(c.fd);
}

bool Server::send_some(Conn& c) {
    while (!c.out.empty()) {
        ssize_t n = ::send(c.fd, c.out.data(), c.out.size(), MSG_NOSIGNAL | MSG_DONTWAIT);
        if (n > 0) {
            c.out.erase(0, static_cast<std::size_t>(n));
            c.last_activity = Clock::now();
            continue;
        }
        if (n < 0 && errno == EINTR) continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return true;
        close_conn(c.fd, "send failed");
        return false;
    }
    return true;
}

void Server::flush(Conn& c) {
    if (!send_some(c)) return;
    // Requests held back while replies piled up: handle them now.
    if (c.kind == Kind::agent && !c.close_after_flush && c.out.size() <= kOutHighWater &&
        c.in.find('\n') != std::string::npos) {
        process_lines(c);
        save_if_dirty();   // as in the main loop: the registry is on disk before the replies go out
        if (!send_some(c)) return;
        if (c.out.size() <= kOutHighWater && c.in.find('\n') != std::string::npos) to_flush_.insert(c.fd);
    }
    if (c.out.empty() && (c.close_after_flush || (c.read_closed && c.in.empty()))) {
        close_conn(c.fd, nullptr);
        return;
    }
    // Read while the connection may still send requests and is not paused;
    // write while replies wait.
    bool read = !c.close_after_flush && !c.read_closed && (c.kind == Kind::http || may_read(c));
    unsigned mask = (read ? static_cast<unsigned>(EPOLLIN | EPOLLRDHUP) : 0u) |
                    (c.out.empty() ? 0u : static_cast<unsigned>(EPOLLOUT));
    if (mask != c.events) {
        epoll_event ev{};
        ev.events = mask;
        ev.data.fd = c.fd;
        ::epoll_ctl(ep_.fd, EPOLL_CTL_MOD, c.fd, &ev);
        c.events = mask;
    }
}

void Server::close_conn(int fd, const char* why) {
    auto it = conns_.find(fd);
    if (it == conns_.end()) return;
    if (why) logger()->debug("connection {} (pid {}): closed: {}", it->second.serial, it->second.peer_pid, why);
    ::epoll_ctl(ep_.fd, EPOLL_CTL_DEL, fd, nullptr);
    ::close(fd);
    to_flush_.erase(fd);
    conns_.erase(it);
}

void Server::on_readable(Conn& c) {
    // Paused (replies wait to be read, or requests wait to be handled):
    // flush() stops watching the input until the client catches up.
    if (c.close_after_flush || c.read_closed || (c.kind == Kind::agent && !may_read(c))) {
        to_flush_.insert(c.fd);
        return;
    }
    std::size_t got = 0;
    char buf[65536];
    bool eof = false;
    while (got < kReadPerEvent) {
        ssize_t n = ::recv(c.fd, buf, sizeof buf, MSG_DONTWAIT);
        if (n > 0) {
            got += static_cast<std::size_t>(n);
            c.in.append(buf, static_cast<std::size_t>(n));
            c.last_activity = Clock::now();
            if (c.kind == Kind::agent && c.in.size() > kMaxAgentLine + 1 && c.in.find('\n') == std::string::npos) break;
            if (c.kind == Kind::http && c.in.size() > kMaxHttpHead) break;
            continue;
        }
        if (n == 0) {
            eof = true;
            break;
        }
        if (errno == EINTR) continue;
        if (errno == EAGAIN || errno == EWOULDBLOCK) break;
        close_conn(c.fd, "recv failed");
        return;
    }
    int fd = c.fd;
    if (c.kind == Kind::http) {
        handle_http(c);
        if (eof && conns_.count(fd) && !conns_.at(fd).close_after_flush) close_conn(fd, "closed before a full request");
        return;
    }
    if (eof) c.read_closed = true;
    process_lines(c);
    to_flush_.insert(fd);
}

// Reading every container's counters costs a pass over /proc: requests and
// scrapes within 200 ms of each other (and of no registry change) share one.
const Snapshot& Server::snapshot() {
    auto now = Clock::now();
    if (!snap_ || snap_generation_ != generation_ || now - snap_at_ > milliseconds(200)) {
        snap_ = take_snapshot(registry_, o_.cgroup_root);
        snap_generation_ = generation_;
        snap_at_ = now;
    }
    return *snap_;
}

bool Server::may_read(const Conn& c) const { return c.out.size() <= kOutHighWater && c.in.size() <= kMaxAgentLine; }

void Server::process_lines(Conn& c) {
    // Every complete line is a request; stop while the replies pile up.
    // At most kLinesPerPass per call, so that a client pipelining thousands
    // of requests takes turns with the others.
    std::size_t start = 0, handled = 0;
    while (c.out.size() <= kOutHighWater && !c.close_after_flush && handled < kLinesPerPass) {
        auto nl = c.in.find('\n', start);
        if (nl == std::string::npos) break;
        handle_line(c, std::string_view(c.in).substr(start, nl - start));
        start = nl + 1;
        ++handled;
    }
    c.in.erase(0, start);
    if (c.close_after_flush) {
        c.in.clear();
        return;
    }
    if (c.in.find('\n') != std::string::npos) {   // requests left: next pass (or once the replies are read)
        if (c.out.size() <= kOutHighWater) to_flush_.insert(c.fd);
        return;
    }
    if (c.in.size() > kMaxAgentLine) {
        info_.requests["error"]++;
        logger()->warn("connection {} (pid {}): request longer than {} bytes; closing it", c.serial, c.peer_pid,
                       kMaxAgentLine);
        queue(c, agent_error_reply("request longer than " + std::to_string(kMaxAgentLine) +
                                   " bytes (one JSON object per line); closing the connection"));
        c.close_after_flush = true;
        c.in.clear();
    } else if (c.read_closed && !c.in.empty()) {
        // A last request without its newline still gets an answer.
        std::string last = std::move(c.in);
        c.in.clear();
        handle_line(c, last);
    }
}

void Server::on_writable(Conn& c) { flush(c); }

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
        info_.requests["error"]++;
        // A client repeating bad requests must not flood the log: three per connection.
        if (++c.bad_requests <= 3)
            logger()->warn("connection {} (pid {}, uid {}): bad request: {}{}", c.serial, c.peer_pid, c.peer_uid,
                           req.error().message,
                           c.bad_requests == 3 ? "; further bad requests of this connection are not logged" : "");
        queue(c, agent_error_reply(req.error().message));
        return;
    }
    info_.requests[std::string(to_string(req->op))]++;
    try {
        json reply;
        switch (req->op) {
        case AgentOp::ping:
            reply = {{"ok", true}, {"agent", "upmd"}, {"version", o_.version}, {"pid", ::getpid()},
                     {"containers", registry_.size()}};
            break;
        case AgentOp::list:
            reply = status_reply(false);
            break;
        case AgentOp::status:
            reply = status_reply(true);
            break;
        case AgentOp::register_container: {
            std::uint64_t ticks = process_start_ticks(req->pid);
            if (ticks == 0) {
                queue(c, agent_error_reply("process " + std::to_string(req->pid) + " does not exist"));
                logger()->warn("container `{}`: not registered, process {} does not exist", log_id(req->id), req->pid);
                return;
            }
            if (req->start_time && *req->start_time != ticks) {
                queue(c, agent_error_reply("pid " + std::to_string(req->pid) +
                                           " belongs to another process now (start time differs)"));
                logger()->warn("container `{}`: not registered, pid {} was reused", log_id(req->id), req->pid);
                return;
            }
            Container ct;
            ct.id = req->id;
            ct.pid = req->pid;
            ct.start_ticks = ticks;
            ct.cgroup = req->cgroup;
            ct.policy = req->policy;
            ct.domain = req->domain;
            ct.registered_at = unix_now();
            auto added = registry_.add(std::move(ct));
            if (!added) {
                logger()->error("container `{}`: not registered: {}", log_id(req->id), added.error().message);
                queue(c, agent_error_reply(added.error().message));
                return;
            }
            changed();
            unwatch(req->id);
            if (auto* added_c = registry_.find(req->id)) watch(*added_c);
            logger()->info("container `{}`: {}, pid {}, policy `{}`, domain `{}`, {}", log_id(req->id),
                           *added ? "registered" : "registered again", req->pid,
                           req->policy.empty() ? "(default)" : printable(req->policy),
                           req->domain.empty() ? "(none)" : printable(req->domain), req->cgroup.empty() ? std::string("process tree")
                                                                          : "cgroup `" + printable(req->cgroup) + "`");
            if (tuner_) tuner_->kick("register " + printable(req->id));
            reply = {{"ok", true}, {"id", req->id}, {"new", *added}, {"containers", registry_.size()}};
            break;
        }
        case AgentOp::unregister_container: {
            bool removed = registry_.remove(req->id);
            unwatch(req->id);
            if (removed) {
                changed();
                logger()->info("container `{}`: unregistered", log_id(req->id));
            } else {
                logger()->debug("container `{}`: unregister: not registered (already gone)", log_id(req->id));
            }
            reply = {{"ok", true}, {"id", req->id}, {"removed", removed}, {"containers", registry_.size()}};
            break;
        }
        case AgentOp::advised: {
            Container* ct = !req->id.empty() ? registry_.find(req->id) : registry_.find_pid(req->pid);
            auto& node = registry_.node_advised();
            node.bytes += req->bytes;
            node.calls += req->calls;
            node.seconds += req->seconds;
            if (ct) {
                ct->advised.bytes += req->bytes;
                ct->advised.calls += req->calls;
                ct->advised.seconds += req->seconds;
            }
            changed();
            logger()->debug("advised: {} bytes in {} calls ({:.6f} s), {}", req->bytes, req->calls, req->seconds,
                            ct ? "container `" + log_id(ct->id) + "`" : std::string("no registered container"));
            if (tuner_) tuner_->kick(ct ? "advised " + printable(ct->id) : "advised", req->bytes);
            reply = {{"ok", true}, {"container", ct ? json(ct->id) : json(nullptr)}};
            break;
        }
        }
        queue(c, dump(reply) + "\n");
    } catch (const std::exception& e) {
        logger()->error("request `{}`: {}", to_string(req->op), e.what());
        queue(c, agent_error_reply(std::string("internal error: ") + e.what()));
    }
}

AgentInfo Server::agent_info() {
    AgentInfo info = info_;
    info.connections = conns_.size();
    if (tuner_) {
        auto s = tuner_->status();
        info.tuner_mode = s.mode;
        info.tuner_modes = {"idle", "burst", "trickle", "stopped"};
        info.tuner_counters["bursts"] = static_cast<double>(s.bursts);
        info.tuner_counters["kicks"] = static_cast<double>(s.kicks);
        info.tuner_counters["growth_kicks"] = static_cast<double>(growth_kicks_);
        info.tuner_counters["ksmd_cpu_seconds"] = s.ksmd_cpu_seconds;
        info.tuner_counters["ksmd_burst_cpu_seconds"] = s.ksmd_cpu_seconds_bursts;
        if (s.last_burst) info.tuner_gauges["last_burst_seconds"] = static_cast<double>(s.last_burst->duration.count()) / 1000.0;
    }
    return info;
}

void Server::handle_http(Conn& c) {
    auto end = c.in.find("\r\n\r\n");
    if (end == std::string::npos) end = c.in.find("\n\n");
    auto respond = [&](const char* status, const std::string& type, const std::string& body, bool head = false) {
        std::string r = std::string("HTTP/1.1 ") + status + "\r\nContent-Type: " + type +
                        "\r\nContent-Length: " + std::to_string(body.size()) + "\r\nConnection: close\r\n\r\n";
        if (!head) r += body;
        c.in.clear();
        queue(c, std::move(r));
        c.close_after_flush = true;
    };
    if (end == std::string::npos || end > kMaxHttpHead) {
        if (c.in.size() > kMaxHttpHead) respond("431 Request Header Fields Too Large", "text/plain", "request head too large\n");
        return;
    }
    std::string_view head(c.in.data(), end);
    auto eol = head.find_first_of("\r\n");
    std::string_view line = head.substr(0, eol);
    auto sp1 = line.find(' ');
    auto sp2 = line.find(' ', sp1 == std::string_view::npos ? 0 : sp1 + 1);
    if (sp1 == std::string_view::npos || sp2 == std::string_view::npos) {
        respond("400 Bad Request", "text/plain", "bad request line\n");
        return;
    }
    std::string_view method = line.substr(0, sp1), target = line.substr(sp1 + 1, sp2 - sp1 - 1);
    if (auto q = target.find('?'); q != std::string_view::npos) target = target.substr(0, q);
    if (method != "GET" && method != "HEAD") {
        respond("405 Method Not Allowed", "text/plain", "only GET /metrics\n");
        return;
    }
    if (target == "/metrics") {
        info_.requests["metrics"]++;
        const Snapshot& snap = snapshot();
        respond("200 OK", "text/plain; version=0.0.4; charset=utf-8", render_agent_metrics(registry_, snap, agent_info()),
                method == "HEAD");
    } else if (target == "/") {
        respond("200 OK", "text/plain", "upmd: metrics at /metrics\n", method == "HEAD");
    } else {
        respond("404 Not Found", "text/plain", "not found; metrics at /metrics\n", method == "HEAD");
    }
}

void Server::watch(const Container& c) {
    if (pidfds_.size() >= pidfd_budget_) return;   // fds are for connections first; polling covers the rest
    int fd = static_cast<int>(::syscall(SYS_pidfd_open, static_cast<pid_t>(c.pid), 0));
    if (fd < 0) return;                              // old kernel, or gone already: polling finds it
    ::fcntl(fd, F_SETFD, FD_CLOEXEC);
    // The pid may have been reused between the start-time check and the open.
    if (process_start_ticks(c.pid) != c.start_ticks) {
        ::close(fd);
        return;
    }
    epoll_event ev{};
    ev.events = EPOLLIN;
    ev.data.fd = fd;
    if (::epoll_ctl(ep_.fd, EPOLL_CTL_ADD, fd, &ev) != 0) {
        ::close(fd);
        return;
    }
    pidfds_[fd] = c.id;
    pidfd_of_[c.id] = fd;
}

void Server::unwatch(const std::string& id) {
    auto it = pidfd_of_.find(id);
    if (it == pidfd_of_.end()) return;
    ::epoll_ctl(ep_.fd, EPOLL_CTL_DEL, it->second, nullptr);
    ::close(it->second);
    pidfds_.erase(it->second);
    pidfd_of_.erase(it);
}

void Server::on_exit_fd(int fd) {
    std::string id = pidfds_.at(fd);
    unwatch(id);
    // The pidfd was opened for this entry's process (start time checked): it
    // has exited, even if it is not reaped yet (a zombie holds no memory).
    if (Container* c = registry_.find(id)) {
        logger()->info("container `{}`: process {} exited, dropped from the registry", log_id(id), c->pid);
        registry_.remove(id);
        changed();
    }
}

void Server::prune() {
    for (const auto& c : registry_.prune_dead()) {
        unwatch(c.id);
        changed();
        logger()->info("container `{}`: process {} exited, dropped from the registry", log_id(c.id), c.pid);
    }
}

// New anonymous memory in a registered container is memory its preload
// advises (the policy's triggers re-advise as a program grows): kick the
// tuner, so ksmd scans it however long after registration it appears.
void Server::watch_growth() {
    if (!tuner_ || registry_.size() == 0) return;
    for (const auto& g : growth_.observe(snapshot())) {
        logger()->info("container `{}`: anonymous memory grew by {:.1f} MiB to {:.1f} MiB", log_id(g.id),
                       static_cast<double>(g.bytes) / (1 << 20), static_cast<double>(g.anon) / (1 << 20));
        ++growth_kicks_;
        tuner_->kick("growth " + printable(g.id), g.bytes);
    }
}

void Server::save_if_dirty() {
    if (!dirty_) return;
    auto st = registry_.save(state_file_);
    if (!st) {
        // Keep serving: the registry is in memory; the state file is only for restarts.
        if (!save_failing_) logger()->error("{}; the registry will not survive a restart until this is fixed", st.error().message);
        save_failing_ = true;
        return;
    }
    if (save_failing_) logger()->info("state file `{}` written again", state_file_);
    save_failing_ = false;
    dirty_ = false;
}

void Server::write_textfile() {
    const Snapshot& snap = snapshot();
    // 0644: the textfile collector (node-exporter) runs as another user.  No
    // fsync: the file is rewritten every interval, worthless after a crash.
    auto st = write_file_atomic(o_.textfile_dir, "upmd.prom", render_agent_metrics(registry_, snap, agent_info()),
                                {.mode = 0644, .fsync = false});
    if (!st) logger()->warn("--textfile: {}", st.error().message);
}

void Server::cleanup() {
    for (const auto& [fd, id] : pidfds_) ::close(fd);
    pidfds_.clear();
    pidfd_of_.clear();
    for (auto it = conns_.begin(); it != conns_.end();) {
        ::close(it->first);
        it = conns_.erase(it);
    }
    save_if_dirty();
    if (tuner_) {
        auto st = tuner_->stop();
        if (st) logger()->info("ksm tuning: stopped, original ksmd settings restored");
        else logger()->error("ksm tuning: restoring the original ksmd settings: {}", st.error().message);
        tuner_.reset();
    }
    struct stat st {};
    if (lfd_.fd >= 0 && ::stat(o_.socket.c_str(), &st) == 0 && st.st_ino == socket_ino_) ::unlink(o_.socket.c_str());
}

int Server::run() {
    // Signals: SIGTERM/SIGINT stop, SIGHUP is logged; SIGPIPE never kills us.
    ::signal(SIGPIPE, SIG_IGN);
    sigset_t mask;
    sigemptyset(&mask);
    sigaddset(&mask, SIGTERM);
    sigaddset(&mask, SIGINT);
    sigaddset(&mask, SIGHUP);
    ::sigprocmask(SIG_BLOCK, &mask, nullptr);
    sfd_.fd = ::signalfd(-1, &mask, SFD_NONBLOCK | SFD_CLOEXEC);

    // Connections need file descriptors.
    struct rlimit rl {};
    if (::getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        ::setrlimit(RLIMIT_NOFILE, &rl);
    }
    if (::getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY && o_.max_connections + 64 > rl.rlim_cur) {
        o_.max_connections = rl.rlim_cur > 128 ? rl.rlim_cur - 64 : 64;
        logger()->warn("--max-connections lowered to {} (open file limit {})", o_.max_connections, rl.rlim_cur);
    }
    // What is left after connections and a margin watches container exits.
    if (::getrlimit(RLIMIT_NOFILE, &rl) == 0)
        pidfd_budget_ = rl.rlim_cur == RLIM_INFINITY ? o_.max_containers
                        : rl.rlim_cur > o_.max_connections + 64 ? std::min<std::size_t>(o_.max_containers, rl.rlim_cur - o_.max_connections - 64)
                                                                : 0;

    if (auto st = setup_socket(); !st) {
        logger()->error("cannot listen: {}", st.error().message);
        return 1;
    }
    if (auto st = setup_http(); !st) {
        logger()->error("{}", st.error().message);
        cleanup();
        return 1;
    }
    if (!o_.textfile_dir.empty()) {
        struct stat st {};
        if (::stat(o_.textfile_dir.c_str(), &st) != 0 || !S_ISDIR(st.st_mode)) {
            logger()->error("--textfile `{}` is not a directory (create it, or point it at node-exporter's "
                            "--collector.textfile.directory)",
                            o_.textfile_dir);
            cleanup();
            return 1;
        }
    }
    load_state();
    start_tuner();

    ep_.fd = ::epoll_create1(EPOLL_CLOEXEC);
    auto add = [&](int fd) {
        epoll_event ev{};
        ev.events = EPOLLIN;
        ev.data.fd = fd;
        ::epoll_ctl(ep_.fd, EPOLL_CTL_ADD, fd, &ev);
    };
    add(lfd_.fd);
    if (hfd_.fd >= 0) add(hfd_.fd);
    if (sfd_.fd >= 0) add(sfd_.fd);
    for (const auto& [id, c] : registry_.containers()) watch(c);

    save_if_dirty();
    logger()->info("upmd {} listening on `{}` (state file `{}`{}{}; at most {} containers, {} connections)", o_.version,
                   o_.socket, state_file_, o_.metrics_listen.empty() ? "" : ", metrics http://" + o_.metrics_listen + "/metrics",
                   o_.textfile_dir.empty() ? "" : ", textfile `" + o_.textfile_dir + "/upmd.prom`",
                   registry_.capacity(), o_.max_connections);
    if (o_.notify_ready) sd_notify_ready();
    if (o_.ready_fd >= 0) {
        [[maybe_unused]] auto n = ::write(o_.ready_fd, "ok\n", 3);
        ::close(o_.ready_fd);
    }

    auto now = Clock::now();
    next_prune_ = now + o_.poll_interval;
    next_textfile_ = now;
    epoll_event events[64];
    while (!stop_) {
        now = Clock::now();
        // Timers.
        if (now >= next_prune_) {
            prune();
            watch_growth();
            next_prune_ = now + o_.poll_interval;
        }
        if (tuner_ && now >= next_tune_) next_tune_ = now + std::max(milliseconds(10), tuner_->tick());
        if (!o_.textfile_dir.empty() && now >= next_textfile_) {
            write_textfile();
            next_textfile_ = now + o_.textfile_interval;
        }
        if (listen_paused_until_ != Clock::time_point{} && now >= listen_paused_until_) {
            listen_paused_until_ = {};
            add(lfd_.fd);
        }
        // Idle connections.
        Clock::time_point next = next_prune_;
        if (tuner_) next = std::min(next, next_tune_);
        if (!o_.textfile_dir.empty()) next = std::min(next, next_textfile_);
        if (listen_paused_until_ != Clock::time_point{}) next = std::min(next, listen_paused_until_);
        std::vector<int> idle;
        for (auto& [fd, c] : conns_) {
            auto limit = c.kind == Kind::http ? kHttpTimeout : o_.client_timeout;
            if (now - c.last_activity >= limit) idle.push_back(fd);
            else next = std::min(next, c.last_activity + limit);
        }
        for (int fd : idle) {
            info_.dropped_connections++;
            auto& c = conns_.at(fd);
            logger()->info("connection {} (pid {}): idle for {} ms, closed", c.serial, c.peer_pid,
                           (c.kind == Kind::http ? kHttpTimeout : o_.client_timeout).count());
            close_conn(fd, nullptr);
        }

        int timeout = static_cast<int>(std::clamp<long long>(
            std::chrono::duration_cast<milliseconds>(next - Clock::now()).count() + 1, 0, 60000));
        if (!to_flush_.empty()) timeout = 0;   // held-back requests to handle
        int n = ::epoll_wait(ep_.fd, events, 64, timeout);
        if (n < 0) {
            if (errno == EINTR) continue;
            logger()->error("epoll_wait: {}", std::strerror(errno));
            break;
        }
        for (int i = 0; i < n; ++i) {
            int fd = events[i].data.fd;
            if (pidfds_.count(fd)) {
                on_exit_fd(fd);
                continue;
            }
            if (fd == sfd_.fd) {
                signalfd_siginfo si{};
                while (::read(sfd_.fd, &si, sizeof si) == sizeof si) {
                    if (si.ssi_signo == SIGHUP) {
                        logger()->info("SIGHUP: nothing to reload (options are command-line only)");
                        continue;
                    }
                    logger()->info("{}: stopping", si.ssi_signo == SIGTERM ? "SIGTERM" : "SIGINT");
                    stop_ = true;
                }
                continue;
            }
            if (fd == lfd_.fd) {
                accept_all(fd, Kind::agent);
                continue;
            }
            if (hfd_.fd >= 0 && fd == hfd_.fd) {
                accept_all(fd, Kind::http);
                continue;
            }
            auto it = conns_.find(fd);
            if (it == conns_.end()) continue;
            if (events[i].events & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR)) on_readable(it->second);
            it = conns_.find(fd);
            if (it != conns_.end() && (events[i].events & EPOLLOUT)) on_writable(it->second);
        }
        // Group commit: the registry is on disk before any reply that depends on it is sent.
        save_if_dirty();
        std::set<int> flush_now;
        flush_now.swap(to_flush_);
        for (int fd : flush_now) {
            auto it = conns_.find(fd);
            if (it != conns_.end()) flush(it->second);
        }
    }
    cleanup();
    logger()->info("upmd stopped");
    return 0;
}

}  // namespace

int run_server(const ServerOptions& options) {
    try {
        Server s(options);
        return s.run();
    } catch (const std::exception& e) {
        logger()->error("fatal: {}", e.what());
        return 1;
    }
}

}  // namespace upm::agent
