// upmd's registry of containers (server.hpp): the state file, the exit
// watch (a pidfd per container, polling /proc as the net), the growth watch
// and the KSM burst tuner it kicks.
#include "server.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <vector>

#include "upm/agent_client.hpp"
#include "upm/backend.hpp"
#include "upm/stats.hpp"

namespace upm::agent::internal {

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
    // Remote advice goes on where it was (the schedule from the registration time).
    for (const auto& [id, ct] : registry_.containers()) {
        const double age = std::max(0.0, unix_now() - ct.registered_at);
        route_container(ct, Clock::now() - std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(age)));
    }
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
        schedules_.erase(c.id);
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

}  // namespace upm::agent::internal
