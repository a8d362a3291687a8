// Client of the node agent: one unix stream socket, non-blocking, every
// step bounded by a deadline (upm/agent_client.hpp).
#include "upm/agent_client.hpp"

#include <fcntl.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "upm/io.hpp"
#include "upm/stats.hpp"
#include "upm/spec.hpp"

namespace upm::agent {

using json = nlohmann::json;
using Clock = std::chrono::steady_clock;

namespace {

int remaining_ms(Clock::time_point deadline) {
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count();
    return left < 0 ? 0 : static_cast<int>(left);
}

// Waits for `events` on fd until the deadline; ETIMEDOUT when it passes.
Status wait_fd(int fd, short events, Clock::time_point deadline, const char* what) {
    for (;;) {
        struct pollfd p {fd, events, 0};
        int left = remaining_ms(deadline);
        int n = ::poll(&p, 1, left);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) return Error::sys(errno, std::string("poll (") + what + ")");
        if (n == 0) return Error{ETIMEDOUT, std::string("timed out ") + what};
        return Ok{};
    }
}

}  // namespace

Client::Client(Client&& other) noexcept : fd_(other.fd_), timeout_(other.timeout_), pending_(std::move(other.pending_)) {
    other.fd_ = -1;
}

Client& Client::operator=(Client&& other) noexcept {
    if (this != &other) {
        if (fd_ >= 0) ::close(fd_);
        fd_ = other.fd_;
        timeout_ = other.timeout_;
        pending_ = std::move(other.pending_);
        other.fd_ = -1;
    }
    return *this;
}

Client::~Client() {
    if (fd_ >= 0) ::close(fd_);
}

Result<Client> Client::connect(const std::string& socket_path, std::chrono::milliseconds timeout) {
    const std::string where = "node agent at `" + socket_path + "`";
    struct sockaddr_un addr {};
    if (socket_path.empty() || socket_path.size() >= sizeof addr.sun_path)
        return Error{ENAMETOOLONG, where + ": socket path is empty or longer than " +
                                       std::to_string(sizeof addr.sun_path - 1) + " bytes"};
    addr.sun_family = AF_UNIX;
    std::memcpy(addr.sun_path, socket_path.data(), socket_path.size());
    int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) return Error::sys(errno, where + ": socket");
    Client c(fd, timeout);
    auto deadline = Clock::now() + timeout;
    for (;;) {
        if (::connect(fd, reinterpret_cast<struct sockaddr*>(&addr), sizeof addr) == 0) return c;
        if (errno == EINTR) continue;
        if (errno == EAGAIN || errno == EINPROGRESS) {
            // Unix sockets return EAGAIN when the backlog is full: retry until the deadline.
            if (errno == EAGAIN) {
                if (remaining_ms(deadline) == 0) return Error{ETIMEDOUT, where + ": connect: timed out (backlog full)"};
                ::usleep(2000);
                continue;
            }
            if (auto st = wait_fd(fd, POLLOUT, deadline, "connecting"); !st) return st.error().wrap(where);
            int err = 0;
            socklen_t len = sizeof err;
            ::getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len);
            if (err != 0) return Error::sys(err, where + ": connect");
            return c;
        }
        return Error::sys(errno, where + ": connect");
    }
}

Result<json> Client::call(const AgentRequest& request) {
    if (fd_ < 0) return Error::msg("node agent: not connected");
    auto deadline = Clock::now() + timeout_;
    std::string line = format_agent_request(request);
    std::size_t sent = 0;
    while (sent < line.size()) {
        ssize_t n = ::send(fd_, line.data() + sent, line.size() - sent, MSG_NOSIGNAL);
        if (n > 0) {
            sent += static_cast<std::size_t>(n);
            continue;
        }
        if (n < 0 && errno == EINTR) continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            if (auto st = wait_fd(fd_, POLLOUT, deadline, "sending"); !st) return st.error().wrap("node agent");
            continue;
        }
        return Error::sys(errno, "node agent: send");
    }
    for (;;) {
        auto nl = pending_.find('\n');
        if (nl != std::string::npos) {
            std::string reply = pending_.substr(0, nl);
            pending_.erase(0, nl + 1);
            json doc = json::parse(reply, nullptr, false);
            if (doc.is_discarded() || !doc.is_object()) return Error::msg("node agent: reply is not a JSON object");
            auto ok = doc.find("ok");
            if (ok == doc.end() || !ok->is_boolean()) return Error::msg("node agent: reply has no `ok`");
            if (!ok->get<bool>()) {
                auto err = doc.find("error");
                return Error::msg("node agent: " +
                                  (err != doc.end() && err->is_string() ? err->get<std::string>() : std::string("error")));
            }
            return doc;
        }
        if (pending_.size() > kMaxAgentReply)
            return Error::msg("node agent: reply longer than " + std::to_string(kMaxAgentReply) + " bytes");
        char buf[65536];
        ssize_t n = ::recv(fd_, buf, sizeof buf, 0);
        if (n > 0) {
            pending_.append(buf, static_cast<std::size_t>(n));
            continue;
        }
        if (n == 0) return Error{ECONNRESET, "node agent: closed the connection without a reply"};
        if (errno == EINTR) continue;
        if (errno == EAGAIN || errno == EWOULDBLOCK) {
            if (auto st = wait_fd(fd_, POLLIN, deadline, "waiting for the reply"); !st) return st.error().wrap("node agent");
            continue;
        }
        return Error::sys(errno, "node agent: recv");
    }
}

Result<json> call_agent(const AgentRequest& request, std::chrono::milliseconds timeout, const std::string& socket) {
    // One deadline for connecting, sending and the reply together.
    auto start = Clock::now();
    auto c = Client::connect(socket, timeout);
    if (!c) return c.error();
    auto left = timeout - std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - start);
    c->set_timeout(std::max(left, std::chrono::milliseconds(1)));
    return c->call(request);
}

bool agent_socket_present(const std::string& socket) {
    struct stat st {};
    return ::stat(socket.c_str(), &st) == 0 && S_ISSOCK(st.st_mode);
}

std::uint64_t process_start_ticks(long pid) {
    if (pid <= 0) return 0;
    auto st = read_proc_stat("/proc/" + std::to_string(pid));
    return st ? st->starttime : 0;
}

std::string process_cgroup(long pid) {
    if (pid <= 0) return {};
    auto text = detail::read_file("/proc/" + std::to_string(pid) + "/cgroup", detail::kMaxSmallFile);
    if (!text) return {};
    std::string_view t = *text;
    while (!t.empty()) {
        auto nl = t.find('\n');
        auto line = t.substr(0, nl);
        t.remove_prefix(nl == std::string_view::npos ? t.size() : nl + 1);
        if (line.starts_with("0::/")) return std::string(line.substr(3));
    }
    return {};
}

Problem hook_notify_agent(std::string_view event, const std::string& id, long pid, const std::string& policy,
                           const std::string& domain, std::chrono::milliseconds timeout) {
    try {
        const bool start = event == "poststart";
        const std::string socket = agent_socket_path();
        const std::string who = "container `" + printable(id) + "`: ";
        if (!agent_socket_present(socket)) {
            if (!start) return {};
            return {Level::debug, who + "no node agent at `" + socket + "`, not registered"};
        }
        AgentRequest r;
        r.id = id;
        if (start) {
            r.op = AgentOp::register_container;
            r.pid = pid;
            r.cgroup = process_cgroup(pid);
            if (r.cgroup == "/") r.cgroup.clear();   // the root cgroup is everybody's: count the process tree
            if (auto ticks = process_start_ticks(pid)) r.start_time = ticks;
            r.policy = policy.size() > kMaxAgentLabel ? policy.substr(0, kMaxAgentLabel) : policy;
            r.domain = domain.size() > kMaxAgentLabel ? domain.substr(0, kMaxAgentLabel) : domain;
        } else {
            r.op = AgentOp::unregister_container;
        }
        auto reply = call_agent(r, timeout, socket);
        if (!reply) {
            if (start) return {Level::warn, who + "not registered with the node agent at `" + socket + "`: " + reply.error().message};
            return {Level::warn, who + "could not unregister from the node agent at `" + socket + "`: " +
                                reply.error().message + " (the agent drops it once its process is gone)"};
        }
        if (start)
            return {Level::info, who + "registered with the node agent" +
                                (r.cgroup.empty() ? std::string(" (process tree of pid ") + std::to_string(pid) + ")"
                                                  : " (cgroup `" + printable(r.cgroup) + "`)")};
        bool removed = reply->value("removed", false);
        return {removed ? Level::info : Level::debug,
                who + (removed ? "unregistered from the node agent" : "was not registered with the node agent")};
    } catch (const std::exception& e) {
        return {Level::warn, "node agent: " + std::string(e.what())};
    } catch (...) {
        return {Level::warn, "node agent: unexpected failure"};
    }
}

Result<KsmClaimAnswer> claim_ksm_namespace(const std::string& id, const std::string& ns,
                                           std::chrono::milliseconds timeout) {
    try {
        KsmClaimAnswer a;
        a.socket = agent_socket_path();
        if (!agent_socket_present(a.socket)) return Error{ENOENT, "no node agent (upmd) at `" + a.socket + "`"};
        AgentRequest r;
        r.op = AgentOp::ksm_claim;
        r.id = id;
        r.ksm_namespace = ns;
        auto reply = call_agent(r, timeout, a.socket);
        if (!reply) return reply.error().wrap("node agent (upmd) at `" + a.socket + "`");
        auto granted = reply->find("granted");
        if (granted == reply->end() || !granted->is_boolean())
            return Error::msg("node agent (upmd) at `" + a.socket + "` does not know `ksm-claim` (an older upmd?)");
        a.granted = granted->get<bool>();
        if (auto h = reply->find("holder"); h != reply->end() && h->is_string()) a.holder = h->get<std::string>();
        if (auto n = reply->find("holders"); n != reply->end() && n->is_number_unsigned()) a.holders = n->get<std::size_t>();
        return a;
    } catch (const std::exception& e) {
        return Error::msg(std::string("asking the node agent: ") + e.what());
    }
}

}  // namespace upm::agent
