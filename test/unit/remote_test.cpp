// Remote advice (upm/remote.hpp, upm/remote_adviser.hpp) on real child
// processes: the plan is the preload's decision, a pidfd pins the target,
// a target that exits before or during the advice ends its job cleanly.
// This host's kernel may lack MADV_UPM: the jobs here use MADV_COLD, an
// advice every kernel >= 5.10 accepts through process_madvise(), to drive
// the same machinery; availability() is checked for what it says.
#include <fcntl.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <cstring>
#include <utility>

#include "upm/classify.hpp"
#include "upm/remote.hpp"
#include "upm/remote_adviser.hpp"

using namespace upm;

namespace {

constexpr std::size_t kAnon = 4 << 20, kShared = 1 << 20;

// A child holding a private anonymous region and a shared one at addresses
// the parent knows (mapped before the fork); it waits to be killed.
struct Child {
    pid_t pid = -1;
    char* anon = nullptr;
    char* shared = nullptr;
    Child() {
        anon = static_cast<char*>(::mmap(nullptr, kAnon, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0));
        shared = static_cast<char*>(::mmap(nullptr, kShared, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0));
        REQUIRE(anon != MAP_FAILED);
        REQUIRE(shared != MAP_FAILED);
        std::memset(anon, 7, kAnon);
        std::memset(shared, 9, kShared);
        pid = ::fork();
        if (pid == 0) {
            for (;;) ::pause();
        }
        REQUIRE(pid > 0);
    }
    void kill_and_reap() {
        if (pid <= 0) return;
        ::kill(pid, SIGKILL);
        ::waitpid(pid, nullptr, 0);
        pid = -1;
    }
    ~Child() {
        kill_and_reap();
        ::munmap(anon, kAnon);
        ::munmap(shared, kShared);
    }
};

// The child pinned as a target, and the default policy's plan for it.
struct Planned {
    remote::Target target;
    remote::Plan plan;
};
Planned planned(const Child& c) {
    auto t = remote::open_target(c.pid);
    REQUIRE(t.ok());
    remote::Plan p = remote::plan(default_policy(), t->regions, t->pid);
    return {std::move(*t), std::move(p)};
}

bool covers(const remote::Plan& p, const char* addr, std::size_t len) {
    auto a = reinterpret_cast<std::uintptr_t>(addr);
    for (const auto& r : p.ranges)
        if (r.start <= a && a + len <= r.end) return true;
    return false;
}

bool touches(const remote::Plan& p, const char* addr, std::size_t len) {
    auto a = reinterpret_cast<std::uintptr_t>(addr);
    for (const auto& r : p.ranges)
        if (r.start < a + len && a < r.end) return true;
    return false;
}

}  // namespace

TEST_CASE("remote: the plan is the preload's decision on the target's maps", "[remote]") {
    Child c;
    auto [t, p] = planned(c);
    CHECK(covers(p, c.anon, kAnon));
    CHECK_FALSE(touches(p, c.shared, kShared));
    std::size_t advised = 0;
    for (const auto& d : decide(default_policy(), classify(t.regions))) advised += d.advise;
    CHECK(p.regions == advised);
    remote::Plan same = remote::plan(p.decisions);   // `upm maps --remote`: from the decisions made
    CHECK(same.bytes == p.bytes);
    CHECK(same.regions == p.regions);
    CHECK(same.ranges.size() == p.ranges.size());
    std::uint64_t sum = 0;
    for (const auto& r : p.ranges) sum += r.size();
    CHECK(sum == p.bytes);
    for (std::size_t i = 1; i < p.ranges.size(); ++i) CHECK(p.ranges[i - 1].end < p.ranges[i].start);
}

TEST_CASE("remote: calls_for splits by iovec count and bytes", "[remote]") {
    std::vector<remote::Range> one{{0x1000, 0x1000 + (3ull << 30)}};
    CHECK(remote::calls_for(one) == 3);
    std::vector<remote::Range> many;
    for (std::uintptr_t i = 0; i < 2049; ++i) many.push_back({0x10000 + i * 0x2000, 0x10000 + i * 0x2000 + 0x1000});
    CHECK(remote::calls_for(many) == 3);
    CHECK(remote::calls_for({}) == 0);
}

TEST_CASE("remote: availability says why on a kernel without MADV_UPM", "[remote]") {
    auto a = remote::probe_availability();
    if (::access("/sys/kernel/mm/upm", F_OK) == 0) {
        WARN("upm kernel: " << a.why);
        return;
    }
    CHECK_FALSE(a.available);
    CHECK_THAT(a.why, Catch::Contains("MADV_UPM"));
    CHECK(remote::availability().available == a.available);
}

TEST_CASE("remote: a job advises every planned byte of a live target", "[remote]") {
    Child c;
    auto [t, p] = planned(c);
    remote::Job job(std::move(t), p.ranges, MADV_COLD);
    int steps = 0;
    while (!job.step(1 << 20)) ++steps;
    const auto& o = job.outcome();
    CHECK(o.done);
    CHECK_FALSE(o.target_exited);
    CHECK(o.error == 0);
    CHECK(o.bytes_advised + o.bytes_skipped == p.bytes);
    CHECK(steps >= static_cast<int>(kAnon >> 20) - 1);   // bounded steps: 1 MiB each
}

TEST_CASE("remote: a target that exits between the maps and the advice", "[remote]") {
    Child c;
    auto [t, p] = planned(c);
    c.kill_and_reap();   // exits and is reaped: its pid may be reused, the pidfd still names the dead process
    remote::Job job(std::move(t), p.ranges, MADV_COLD);
    CHECK(job.step(1 << 20));
    CHECK(job.outcome().target_exited);
    CHECK(job.outcome().bytes_advised == 0);
    CHECK_THAT(job.outcome().message, Catch::Contains("exited"));
}

TEST_CASE("remote: a target that exits during the advice", "[remote]") {
    Child c;
    auto [t, p] = planned(c);
    remote::Job job(std::move(t), p.ranges, MADV_COLD);
    REQUIRE_FALSE(job.step(4096));
    CHECK(job.outcome().bytes_advised == 4096);
    c.kill_and_reap();
    CHECK(job.step(1 << 20));
    CHECK(job.outcome().target_exited);
    CHECK_FALSE(job.outcome().done);
}

TEST_CASE("remote: no target", "[remote]") {
    pid_t pid = ::fork();
    if (pid == 0) ::_exit(0);
    ::waitpid(pid, nullptr, 0);
    auto t = remote::open_target(pid);
    REQUIRE_FALSE(t.ok());
    CHECK(t.error().err == ESRCH);
}

TEST_CASE("remote: the adviser thread advises at a bounded rate and reports exits", "[remote]") {
    remote::AdviserOptions o;
    o.advice = MADV_COLD;
    o.bytes_per_second = 16ull << 20;   // 16 MiB/s: the 4 MiB region takes >= 0.2 s
    o.step_bytes = 1 << 20;
    remote::Adviser adviser(o);
    Child live;
    pid_t gone = ::fork();
    if (gone == 0) ::_exit(0);
    ::waitpid(gone, nullptr, 0);
    const auto t0 = std::chrono::steady_clock::now();
    REQUIRE(adviser.submit({{live.pid, "c1", default_policy()}, {gone, "c2", default_policy()}}));
    REQUIRE(adviser.wait_idle(30));
    const double took = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    auto results = adviser.take_results();
    REQUIRE(results.size() == 2);
    CHECK(results[0].pid == live.pid);
    CHECK(results[0].outcome.done);
    CHECK(results[0].outcome.bytes_advised >= kAnon);
    CHECK(took >= 0.2);
    CHECK(results[1].outcome.target_exited);
    auto totals = adviser.totals();
    CHECK(totals.jobs_done == 2);
    CHECK(totals.targets_exited == 1);
    CHECK(totals.bytes_advised == results[0].outcome.bytes_advised);
    remote::AdviserOptions tiny = o;
    tiny.max_queued = 1;
    remote::Adviser small(tiny);
    CHECK_FALSE(small.submit({{live.pid, "", default_policy()}, {live.pid, "", default_policy()}}));
}

TEST_CASE("remote: the adviser skips a process that maps the preload, and a pid waiting twice", "[remote][advice]") {
    remote::AdviserOptions o;
    o.advice = MADV_COLD;
    remote::Adviser adviser(o);
    // A file named like the preload, mapped before the fork: the child maps it.
    char dir[] = "/tmp/upm-route-XXXXXX";
    REQUIRE(::mkdtemp(dir) != nullptr);
    const std::string lib = std::string(dir) + "/libupm-preload.so";
    int fd = ::open(lib.c_str(), O_RDWR | O_CREAT | O_EXCL, 0600);
    REQUIRE(fd >= 0);
    REQUIRE(::ftruncate(fd, 4096) == 0);
    void* m = ::mmap(nullptr, 4096, PROT_READ, MAP_PRIVATE, fd, 0);
    ::close(fd);
    REQUIRE(m != MAP_FAILED);
    Child preloaded;
    ::munmap(m, 4096);
    Child plain;
    REQUIRE(adviser.submit({{preloaded.pid, "c1", default_policy(), true},
                            {plain.pid, "c2", default_policy(), true},
                            {plain.pid, "c2", default_policy(), true}}));   // the same pid, still waiting
    REQUIRE(adviser.wait_idle(30));
    auto results = adviser.take_results();
    REQUIRE(results.size() == 2);
    CHECK(results[0].pid == preloaded.pid);
    CHECK(results[0].preloaded);
    CHECK(results[0].outcome.bytes_advised == 0);
    CHECK(results[1].pid == plain.pid);
    CHECK_FALSE(results[1].preloaded);
    CHECK(results[1].outcome.bytes_advised >= kAnon);
    auto totals = adviser.totals();
    CHECK(totals.skipped_preloaded == 1);
    CHECK(totals.already_queued == 1);
    ::unlink(lib.c_str());
    ::rmdir(dir);
}
