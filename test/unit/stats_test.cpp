// Counters of this process and of the node; logging format.
#include <fcntl.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <stdlib.h>

#include <filesystem>
#include <fstream>
#include <spdlog/spdlog.h>

#include "helpers.hpp"
#include "upm/log.hpp"
#include "upm/report.hpp"
#include "upm/stats.hpp"

using namespace upm;

TEST_CASE("stats: this process", "[stats]") {
    auto s = read_process_stats(::getpid());
    REQUIRE(s.ok());
    CHECK(s->pid == ::getpid());
    CHECK(s->comm == "upm-unit");
    CHECK(s->pss_bytes > 0);
    CHECK(s->rss_bytes >= s->pss_bytes);
    CHECK(s->saved_bytes == s->ksm_merging_pages * static_cast<std::uint64_t>(::sysconf(_SC_PAGESIZE)));
    auto none = read_process_stats(999999999);
    REQUIRE(!none.ok());
    CHECK(none.error().err == ESRCH);
    auto pids = list_pids();
    CHECK(std::find(pids.begin(), pids.end(), ::getpid()) != pids.end());
    CHECK(std::is_sorted(pids.begin(), pids.end()));
}

TEST_CASE("stats: the node", "[stats]") {
    auto n = read_node_stats();
    CHECK(n.ksm_available == (::access("/sys/kernel/mm/ksm", F_OK) == 0));
    CHECK(n.upm_available == (::access("/sys/kernel/mm/upm", F_OK) == 0));
    if (n.ksm_available) {
        CHECK(n.ksm.count("pages_sharing") == 1);
        CHECK(n.ksm.count("run") == 1);
        CHECK(n.saved_bytes == static_cast<std::uint64_t>(n.ksm["pages_sharing"]) * n.page_size);
        if (::access("/sys/kernel/mm/ksm/advisor_mode", F_OK) == 0) CHECK(n.ksm_text.count("advisor_mode") == 1);
        auto settings = read_ksm_settings();
        REQUIRE(settings.ok());
        CHECK(settings->count("run") == 1);
        CHECK(settings->count("pages_shared") == 0);  // a counter, not a setting
    }
    CHECK(!write_ksm_setting("../run", "1").ok());
    std::string json = render_status_json(StatusReport{{}, n});
    CHECK(json.find("\"processes\": []") != std::string::npos);
}

TEST_CASE("report: human sizes", "[stats]") {
    CHECK(human_bytes(512) == "512 B");
    CHECK(human_bytes(16 * 1024) == "16.0 KiB");
    CHECK(human_bytes(3 << 20) == "3.0 MiB");
}

TEST_CASE("log: `name[pid] level: message` on stderr", "[log]") {
    int pipefd[2];
    REQUIRE(::pipe(pipefd) == 0);
    int saved = ::dup(2);
    ::dup2(pipefd[1], 2);
    auto log = setup_logging("upm-test", "info");
    log->info("advised {} regions", 3);
    log->debug("not shown");
    log->warn("policy `x` ignored");
    auto other = setup_logging("upm-test", "bogus");  // unknown level: warn
    other->info("not shown either");
    ::dup2(saved, 2);
    ::close(saved);
    ::close(pipefd[1]);
    std::string out;
    char buf[4096];
    for (ssize_t n; (n = ::read(pipefd[0], buf, sizeof buf)) > 0;) out.append(buf, static_cast<std::size_t>(n));
    ::close(pipefd[0]);
    std::string pid = std::to_string(::getpid());
    CHECK(out == "upm-test[" + pid + "] info: advised 3 regions\nupm-test[" + pid + "] warn: policy `x` ignored\n");
    CHECK(logger() == other);
    CHECK(other->level() == spdlog::level::warn);
}

// /sys/kernel/mm/upm exists only on the upm kernel (in QEMU, not here): the
// host-side logic runs on a directory shaped like it.
TEST_CASE("stats: enable_upm_kernel turns the node's opt-in on once", "[stats]") {
    namespace fs = std::filesystem;
    std::string tmpl = (fs::temp_directory_path() / "upm-sysfs-XXXXXX").string();
    fs::path dir = ::mkdtemp(tmpl.data());
    CHECK(*upm::enable_upm_kernel((dir / "absent").string()) == "no upm kernel");
    { std::ofstream(dir / "enabled") << "0\n"; }
    CHECK(*upm::enable_upm_kernel(dir.string()) == "enabled");
    CHECK(upm::test::read_text((dir / "enabled").string()).starts_with("1"));
    CHECK(*upm::enable_upm_kernel(dir.string()) == "already enabled");
    fs::remove_all(dir);
}
