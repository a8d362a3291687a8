// upmd's event loop (upm/agent_server.hpp, server.hpp): start-up, one
// epoll loop of timers, signals, listeners and connections, and the stop
// that restores the ksmd settings.
#include "server.hpp"

#include <signal.h>
#include <sys/resource.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <vector>

namespace upm::agent::internal {

namespace {

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

}  // namespace

void Server::cleanup() {
    for (const auto& [fd, id] : pidfds_) ::close(fd);
    pidfds_.clear();
    pidfd_of_.clear();
    for (auto it = conns_.begin(); it != conns_.end();) {
        ::close(it->first);
        it = conns_.erase(it);
    }
    save_if_dirty();
    if (adviser_) {
        adviser_->stop();   // ends after the current step of at most --remote-rate's step
        log_remote_results();
        adviser_.reset();
    }
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
    block_signals();
    fit_fd_limits();
    if (!start()) return 1;
    serve();
    cleanup();
    logger()->info("upmd stopped");
    return 0;
}

// Signals: SIGTERM/SIGINT stop, SIGHUP is logged; SIGPIPE never kills us.
void Server::block_signals() {
    ::signal(SIGPIPE, SIG_IGN);
    sigset_t mask;
    sigemptyset(&mask);
    sigaddset(&mask, SIGTERM);
    sigaddset(&mask, SIGINT);
    sigaddset(&mask, SIGHUP);
    ::sigprocmask(SIG_BLOCK, &mask, nullptr);
    sfd_.fd = ::signalfd(-1, &mask, SFD_NONBLOCK | SFD_CLOEXEC);
}

// Connections need file descriptors; what is left after connections and a
// margin watches container exits.
void Server::fit_fd_limits() {
    struct rlimit rl {};
    if (::getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        ::setrlimit(RLIMIT_NOFILE, &rl);
    }
    if (::getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY && o_.max_connections + 64 > rl.rlim_cur) {
        o_.max_connections = rl.rlim_cur > 128 ? rl.rlim_cur - 64 : 64;
        logger()->warn("--max-connections lowered to {} (open file limit {})", o_.max_connections, rl.rlim_cur);
    }
    if (::getrlimit(RLIMIT_NOFILE, &rl) == 0)
        pidfd_budget_ = rl.rlim_cur == RLIM_INFINITY ? o_.max_containers
                        : rl.rlim_cur > o_.max_connections + 64 ? std::min<std::size_t>(o_.max_containers, rl.rlim_cur - o_.max_connections - 64)
                                                                : 0;
}

// Listening, the registry and the tuner; false when start-up failed (logged).
bool Server::start() {
    if (auto st = setup_socket(); !st) {
        logger()->error("cannot listen: {}", st.error().message);
        return false;
    }
    if (auto st = setup_http(); !st) {
        logger()->error("{}", st.error().message);
        cleanup();
        return false;
    }
    if (!textfile_dir_ok()) {
        cleanup();
        return false;
    }
    start_remote();   // before the registry: its containers' remote advice resumes
    load_state();
    start_tuner();
    open_epoll();
    save_if_dirty();
    announce_ready();
    return true;
}

bool Server::textfile_dir_ok() const {
    if (o_.textfile_dir.empty()) return true;
    struct stat st {};
    if (::stat(o_.textfile_dir.c_str(), &st) == 0 && S_ISDIR(st.st_mode)) return true;
    logger()->error("--textfile `{}` is not a directory (create it, or point it at node-exporter's "
                    "--collector.textfile.directory)",
                    o_.textfile_dir);
    return false;
}

void Server::watch_fd(int fd) {
    epoll_event ev{};
    ev.events = EPOLLIN;
    ev.data.fd = fd;
    ::epoll_ctl(ep_.fd, EPOLL_CTL_ADD, fd, &ev);
}

// The listeners, the signals and the exit of every registered container.
void Server::open_epoll() {
    ep_.fd = ::epoll_create1(EPOLL_CLOEXEC);
    watch_fd(lfd_.fd);
    if (hfd_.fd >= 0) watch_fd(hfd_.fd);
    if (sfd_.fd >= 0) watch_fd(sfd_.fd);
    for (const auto& [id, c] : registry_.containers()) watch(c);
}

void Server::announce_ready() {
    logger()->info("upmd {} listening on `{}` (state file `{}`{}{}; at most {} containers, {} connections)", o_.version,
                   o_.socket, state_file_, o_.metrics_listen.empty() ? "" : ", metrics http://" + o_.metrics_listen + "/metrics",
                   o_.textfile_dir.empty() ? "" : ", textfile `" + o_.textfile_dir + "/upmd.prom`",
                   registry_.capacity(), o_.max_connections);
    if (o_.notify_ready) sd_notify_ready();
    if (o_.ready_fd >= 0) {
        [[maybe_unused]] auto n = ::write(o_.ready_fd, "ok\n", 3);
        ::close(o_.ready_fd);
    }
}

// The loop, until SIGTERM or SIGINT: timers, idle connections, one epoll
// wait, its events, then the group commit and the replies.
void Server::serve() {
    auto now = Clock::now();
    next_prune_ = now + o_.poll_interval;
    next_textfile_ = now;
    epoll_event events[64];
    while (!stop_) {
        now = Clock::now();
        run_timers(now);
        Clock::time_point next = next_timer();
        close_idle(now, next);
        int timeout = static_cast<int>(std::clamp<long long>(
            std::chrono::duration_cast<milliseconds>(next - Clock::now()).count() + 1, 0, 60000));
        if (!to_flush_.empty()) timeout = 0;   // held-back requests to handle
        int n = ::epoll_wait(ep_.fd, events, 64, timeout);
        if (n < 0) {
            if (errno == EINTR) continue;
            logger()->error("epoll_wait: {}", std::strerror(errno));
            break;
        }
        for (int i = 0; i < n; ++i) dispatch(events[i]);
        commit_and_flush();
    }
}

void Server::run_timers(Clock::time_point now) {
    if (now >= next_prune_) {
        prune();
        watch_growth();
        log_remote_results();
        next_prune_ = now + o_.poll_interval;
    }
    if (!schedules_.empty() && now >= next_remote_) run_remote_schedules(now);
    if (tuner_ && now >= next_tune_) next_tune_ = now + std::max(milliseconds(10), tuner_->tick());
    if (!o_.textfile_dir.empty() && now >= next_textfile_) {
        write_textfile();
        next_textfile_ = now + o_.textfile_interval;
    }
    if (listen_paused_until_ != Clock::time_point{} && now >= listen_paused_until_) {
        listen_paused_until_ = {};
        watch_fd(lfd_.fd);
    }
}

Clock::time_point Server::next_timer() const {
    Clock::time_point next = next_prune_;
    if (tuner_) next = std::min(next, next_tune_);
    if (!schedules_.empty()) next = std::min(next, next_remote_);
    if (!o_.textfile_dir.empty()) next = std::min(next, next_textfile_);
    if (listen_paused_until_ != Clock::time_point{}) next = std::min(next, listen_paused_until_);
    return next;
}

// Closes the connections idle for longer than their timeout, and those
// whose pending request took longer than that to arrive however steadily
// its bytes trickled in (a client sending a byte a second must not hold a
// connection forever); `next` becomes the earliest deadline of the others
// when that is sooner.
void Server::close_idle(Clock::time_point now, Clock::time_point& next) {
    std::vector<std::pair<int, const char*>> expired;
    for (auto& [fd, c] : conns_) {
        auto limit = c.kind == Kind::http ? kHttpTimeout : o_.client_timeout;
        bool pending = c.request_started != Clock::time_point{};
        if (now - c.last_activity >= limit) expired.emplace_back(fd, "idle");
        else if (pending && now - c.request_started >= limit) expired.emplace_back(fd, "request not complete");
        else next = std::min(next, pending ? std::min(c.last_activity, c.request_started) + limit
                                           : c.last_activity + limit);
    }
    for (auto [fd, why] : expired) {
        info_.dropped_connections++;
        auto& c = conns_.at(fd);
        logger()->info("connection {} (pid {}): {} for {} ms, closed", c.serial, c.peer_pid, why,
                       (c.kind == Kind::http ? kHttpTimeout : o_.client_timeout).count());
        close_conn(fd, nullptr);
    }
}

void Server::dispatch(const epoll_event& ev) {
    int fd = ev.data.fd;
    if (pidfds_.count(fd)) {
        on_exit_fd(fd);
        return;
    }
    if (fd == sfd_.fd) {
        read_signals();
        return;
    }
    if (fd == lfd_.fd) {
        accept_all(fd, Kind::agent);
        return;
    }
    if (hfd_.fd >= 0 && fd == hfd_.fd) {
        accept_all(fd, Kind::http);
        return;
    }
    auto it = conns_.find(fd);
    if (it == conns_.end()) return;
    if (ev.events & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR)) on_readable(it->second);
    it = conns_.find(fd);
    if (it != conns_.end() && (ev.events & EPOLLOUT)) on_writable(it->second);
}

void Server::read_signals() {
    signalfd_siginfo si{};
    while (::read(sfd_.fd, &si, sizeof si) == sizeof si) {
        if (si.ssi_signo == SIGHUP) {
            logger()->info("SIGHUP: nothing to reload (options are command-line only)");
            continue;
        }
        logger()->info("{}: stopping", si.ssi_signo == SIGTERM ? "SIGTERM" : "SIGINT");
        stop_ = true;
    }
}

// Group commit: the registry is on disk before any reply that depends on it is sent.
void Server::commit_and_flush() {
    save_if_dirty();
    std::set<int> flush_now;
    flush_now.swap(to_flush_);
    for (int fd : flush_now) {
        auto it = conns_.find(fd);
        if (it != conns_.end()) flush(it->second);
    }
}

}  // namespace upm::agent::internal

namespace upm::agent {

int run_server(const ServerOptions& options) {
    try {
        internal::Server s(options);
        return s.run();
    } catch (const std::exception& e) {
        logger()->error("fatal: {}", e.what());
        return 1;
    }
}

}  // namespace upm::agent
