// Remote advice through a pidfd and process_madvise() (upm/remote.hpp,
// docs/remote-advice.md).
#include "upm/remote.hpp"

#include <linux/upm.h>
#include <poll.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <mutex>
#include <utility>

#include "upm/classify.hpp"
#include "upm/object_bss.hpp"

namespace upm::remote {

namespace {

int sys_pidfd_open(pid_t pid) { return static_cast<int>(::syscall(SYS_pidfd_open, pid, 0)); }

long sys_process_madvise(int pidfd, const iovec* iov, std::size_t n, int advice) {
    return ::syscall(SYS_process_madvise, pidfd, iov, n, advice, 0U);
}

std::string errno_text(int err) { return std::string(std::strerror(err)) + " (errno " + std::to_string(err) + ")"; }

// Why process_madvise(MADV_UPM) failed with `err` on our own scratch page.
Availability refused(int err) {
    switch (err) {
    case ENOSYS:
        return {false, "this kernel has no process_madvise() (Linux >= 5.10 needed, and the upm patches)"};
    case EINVAL:
        return {false, "this kernel's process_madvise() does not accept MADV_UPM (EINVAL): a stock kernel without "
                       "the upm patches (module/); the preload still advises with MADV_MERGEABLE"};
    case EPERM: {
        struct stat st {};
        if (::stat("/sys/kernel/mm/upm/enabled", &st) == 0)
            return {false, "the kernel refused MADV_UPM (EPERM): /sys/kernel/mm/upm/enabled is 0 (upmd enables it "
                           "at start unless --upm-kernel=leave) or this process lacks CAP_SYS_NICE"};
        return {false, "process_madvise() refused (EPERM): this process lacks CAP_SYS_NICE (run as root)"};
    }
    default:
        return {false, "process_madvise(MADV_UPM) on a scratch page failed: " + errno_text(err)};
    }
}

}  // namespace

int madv_upm() { return MADV_UPM; }

Availability probe_availability() {
    try {
        const bool upm_sysfs = ::access("/sys/kernel/mm/upm", F_OK) == 0;
        detail::Fd self(sys_pidfd_open(::getpid()));
        if (self.fd < 0)
            return {false, errno == ENOSYS ? "this kernel has no pidfd_open() (Linux >= 5.3 needed)"
                                           : "pidfd_open() failed: " + errno_text(errno)};
        const long page = ::sysconf(_SC_PAGESIZE);
        void* p = ::mmap(nullptr, static_cast<std::size_t>(page), PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS,
                         -1, 0);
        if (p == MAP_FAILED) return {false, "probe: mmap failed: " + errno_text(errno)};
        static_cast<char*>(p)[0] = 1;
        iovec iov{p, static_cast<std::size_t>(page)};
        long rc = sys_process_madvise(self.fd, &iov, 1, MADV_UPM);
        int err = rc < 0 ? errno : 0;
        ::munmap(p, static_cast<std::size_t>(page));
        if (rc >= 0) return {true, "process_madvise(MADV_UPM) accepted: remote advice merges synchronously"};
        Availability a = refused(err);
        if (!upm_sysfs && err == EINVAL) a.why = "no upm kernel (/sys/kernel/mm/upm is missing): " + a.why;
        return a;
    } catch (const std::exception& e) {
        return {false, std::string("probe failed: ") + e.what()};
    }
}

Availability availability() {
    static std::once_flag once;
    static Availability cached;
    std::call_once(once, [] { cached = probe_availability(); });
    return cached;
}

Plan plan(const Policy& policy, const std::vector<Region>& regions, pid_t pid) {
    const std::vector<BssRange> bss = object_bss(pid, regions);
    return plan(decide(policy, classify(regions, &bss)));
}

Plan plan(std::vector<Decision> decisions) {
    Plan p;
    p.decisions = std::move(decisions);
    for (const auto& d : p.decisions) {
        if (!d.advise) continue;
        const Region& r = d.region.region;
        ++p.regions;
        p.bytes += r.size();
        if (!p.ranges.empty() && p.ranges.back().end == r.start)
            p.ranges.back().end = r.end;
        else
            p.ranges.push_back({r.start, r.end});
    }
    return p;
}

std::size_t calls_for(const std::vector<Range>& ranges, std::uint64_t step_bytes) {
    std::size_t calls = 0, iov = 0;
    std::uint64_t bytes = 0;
    for (const auto& r : ranges) {
        for (std::uint64_t left = r.size(); left > 0;) {
            if (iov == 0) ++calls;
            std::uint64_t take = std::min(left, step_bytes - bytes);
            left -= take;
            bytes += take;
            if (++iov == kMaxIov || bytes == step_bytes) iov = 0, bytes = 0;
        }
    }
    return calls;
}

bool Target::exited() const {
    pollfd pfd{pidfd.fd, POLLIN, 0};
    return pidfd.fd < 0 || (::poll(&pfd, 1, 0) > 0 && (pfd.revents & (POLLIN | POLLHUP)) != 0);
}

Result<Target> open_target(pid_t pid) {
    Target t;
    t.pid = pid;
    t.pidfd = detail::Fd(sys_pidfd_open(pid));
    if (t.pidfd.fd < 0) {
        int err = errno;
        return Error{err, "process " + std::to_string(pid) +
                              (err == ESRCH ? " does not exist (it exited)" : ": pidfd_open: " + errno_text(err))};
    }
    auto regions = read_maps(pid);
    if (!regions) return regions.error().wrap("process " + std::to_string(pid));
    // The maps read must be the pidfd's process: it was alive after the read.
    if (t.exited()) return Error{ESRCH, "process " + std::to_string(pid) + " exited while its maps were read"};
    t.regions = std::move(*regions);
    return t;
}

Job::Job(Target target, std::vector<Range> ranges, int advice)
    : target_(std::move(target)), ranges_(std::move(ranges)), advice_(advice) {
    for (const auto& r : ranges_) out_.bytes_planned += r.size();
    if (ranges_.empty()) finished_ = out_.done = true;
}

bool Job::fail(int err) {
    finished_ = true;
    out_.error = err;
    if (err == ESRCH || target_.exited()) {
        out_.target_exited = true;
        out_.message = "process " + std::to_string(target_.pid) + " exited during the advice";
    } else {
        out_.message = "process_madvise on process " + std::to_string(target_.pid) + ": " + errno_text(err);
    }
    return true;
}

// Moves the position `bytes` further; `skip_rest` also skips the rest of
// the range it lands in (that part could not be advised: unmapped since).
void Job::advance(std::uint64_t bytes, bool skip_rest) {
    while (next_ < ranges_.size()) {
        std::uint64_t left = ranges_[next_].size() - offset_;
        if (bytes < left) {
            offset_ += bytes;
            if (skip_rest) {
                out_.bytes_skipped += left - bytes;
                ++next_, offset_ = 0;
            }
            break;
        }
        bytes -= left;
        ++next_, offset_ = 0;
    }
    if (next_ >= ranges_.size()) finished_ = out_.done = true;
}

// The iovecs of one call: from the position, at most `budget` bytes.
std::vector<iovec> Job::batch(std::uint64_t budget) const {
    std::vector<iovec> iov;
    std::uint64_t bytes = 0;
    std::size_t idx = next_;
    std::uintptr_t off = offset_;
    while (idx < ranges_.size() && iov.size() < kMaxIov && bytes < budget) {
        const Range& r = ranges_[idx];
        std::uint64_t take = std::min<std::uint64_t>(r.size() - off, budget - bytes);
        iov.push_back({reinterpret_cast<void*>(r.start + off), static_cast<std::size_t>(take)});
        bytes += take;
        off += take;
        if (off == r.size()) ++idx, off = 0;
    }
    return iov;
}

bool Job::step(std::uint64_t budget) {
    if (finished_) return true;
    if (target_.exited()) return fail(ESRCH);
    std::vector<iovec> iov = batch(std::max<std::uint64_t>(std::min(budget, kMaxCallBytes), 4096));
    std::uint64_t bytes = 0;
    for (const auto& v : iov) bytes += v.iov_len;
    const auto t0 = std::chrono::steady_clock::now();
    long rc = sys_process_madvise(target_.pidfd.fd, iov.data(), iov.size(), advice_);
    int err = rc < 0 ? errno : 0;
    out_.seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    ++out_.calls;
    if (rc < 0 && err == ENOMEM && !target_.exited()) {   // the first range is no longer mapped
        advance(0, true);
        return finished_;
    }
    if (rc < 0) return fail(err);
    out_.bytes_advised += static_cast<std::uint64_t>(rc);
    if (static_cast<std::uint64_t>(rc) < bytes && target_.exited()) return fail(ESRCH);
    advance(static_cast<std::uint64_t>(rc), static_cast<std::uint64_t>(rc) < bytes);
    return finished_;
}

}  // namespace upm::remote
