// One connection of upmd (server.hpp): bounded reads, complete request
// lines handed to the protocol, replies queued and sent without blocking,
// back-pressure on a client that does not read its replies, closing.
#include "server.hpp"

#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>

namespace upm::agent::internal {

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
    if (it->second.kind == Kind::http) --http_conns_;
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
    // What is left is the start of the next request: it began no earlier
    // than this pass if a request ended in it.
    if (c.in.empty()) c.request_started = {};
    else if (start > 0 || c.request_started == Clock::time_point{}) c.request_started = Clock::now();
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

}  // namespace upm::agent::internal
