// upmd's listening sockets (server.hpp): the unix socket of the protocol,
// the loopback HTTP listener of the metrics, and accepting connections
// within the connection budget.
#include "server.hpp"

#include <arpa/inet.h>
#include <grp.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>

#include "upm/agent_client.hpp"

namespace upm::agent::internal {

namespace {

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

}  // namespace

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
        // Separate budgets: slow /metrics clients never lock the protocol out.
        std::size_t open = kind == Kind::http ? http_conns_ : conns_.size() - http_conns_;
        std::size_t limit = kind == Kind::http ? o_.max_http_connections : o_.max_connections;
        if (open >= limit) {
            info_.dropped_connections++;
            if (kind == Kind::agent) {
                std::string msg = agent_error_reply("too many connections (" + std::to_string(limit) +
                                                    "); retry later");
                [[maybe_unused]] auto n = ::send(fd, msg.data(), msg.size(), MSG_NOSIGNAL | MSG_DONTWAIT);
            } else {
                const char msg[] = "HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\nContent-Length: 0\r\n\r\n";
                [[maybe_unused]] auto n = ::send(fd, msg, sizeof msg - 1, MSG_NOSIGNAL | MSG_DONTWAIT);
            }
            ::close(fd);
            logger()->warn("refused a {} connection: {} open, the limit is {}",
                           kind == Kind::http ? "metrics" : "protocol", open, limit);
            continue;
        }
        Conn c;
        c.fd = fd;
        c.kind = kind;
        c.last_activity = Clock::now();
        if (kind == Kind::http) {
            c.request_started = c.last_activity;  // the head is due within kHttpTimeout of connect
            ++http_conns_;
        }
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

}  // namespace upm::agent::internal
