// write_file_atomic() (hooks/lib/fs): the one helper that replaces a file,
// and its callers' state files.  A directory another user can write to must
// not let them hang the writer (a FIFO at the temporary name) or make it
// truncate another file (a hard or symbolic link at the temporary name).
#include <fcntl.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <chrono>
#include <filesystem>
#include <functional>
#include <string>
#include <thread>

#include "helpers.hpp"
#include "upm/agent_registry.hpp"
#include "upm/atomic_file.hpp"
#include "upm/log.hpp"

using namespace upm;
namespace fs = std::filesystem;

namespace {

struct TempDir {
    std::string dir;
    TempDir() {
        char tmpl[] = "/tmp/upm-atomic-test.XXXXXX";
        dir = ::mkdtemp(tmpl);
    }
    ~TempDir() { fs::remove_all(dir); }
};

// Runs `fn` in a child process; "hang" when it has not finished in 5 s.
std::string run_bounded(const std::function<bool()>& fn) {
    pid_t pid = ::fork();
    if (pid == 0) ::_exit(fn() ? 0 : 1);
    auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(5);
    int status = 0;
    while (::waitpid(pid, &status, WNOHANG) == 0) {
        if (std::chrono::steady_clock::now() > deadline) {
            ::kill(pid, SIGKILL);
            ::waitpid(pid, &status, 0);
            return "hang";
        }
        std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    return WIFEXITED(status) && WEXITSTATUS(status) == 0 ? "ok" : "failed";
}

std::string victim(const std::string& dir) {
    std::string v = dir + "/victim";
    FILE* f = std::fopen(v.c_str(), "w");
    std::fputs("precious\n", f);
    std::fclose(f);
    return v;
}

}  // namespace

TEST_CASE("atomic file: writes, replaces, mode", "[atomic]") {
    TempDir t;
    std::string path = t.dir + "/state.json";
    REQUIRE(write_file_atomic(path, "one\n", {.mode = 0640}));
    CHECK(test::read_text(path) == "one\n");
    REQUIRE(write_file_atomic(t.dir, "state.json", "two\n", {.mode = 0604, .fsync = false}));
    CHECK(test::read_text(path) == "two\n");
    struct stat st {};
    REQUIRE(::stat(path.c_str(), &st) == 0);
    CHECK((st.st_mode & 07777) == 0604);
    CHECK(std::distance(fs::directory_iterator(t.dir), fs::directory_iterator{}) == 1);   // no temporary left
}

TEST_CASE("atomic file: before_rename can stop the replacement", "[atomic]") {
    TempDir t;
    std::string path = t.dir + "/config.json";
    REQUIRE(write_file_atomic(path, "old\n"));
    AtomicWriteOptions o;
    o.before_rename = [](int) -> Status { return Error{EAGAIN, "replaced meanwhile"}; };
    auto st = write_file_atomic(path, "new\n", o);
    REQUIRE_FALSE(st);
    CHECK(st.error().err == EAGAIN);
    CHECK(test::read_text(path) == "old\n");
    CHECK(std::distance(fs::directory_iterator(t.dir), fs::directory_iterator{}) == 1);
}

TEST_CASE("atomic file: a symlinked directory is refused with nofollow_dir only", "[atomic]") {
    TempDir t;
    fs::create_directory(t.dir + "/real");
    fs::create_directory_symlink(t.dir + "/real", t.dir + "/link");
    CHECK_FALSE(write_file_atomic(t.dir + "/link", "x", "1", {.nofollow_dir = true}));
    CHECK(write_file_atomic(t.dir + "/link", "x", "1"));
}

// The names the four copies before write_file_atomic() used: predictable, so
// anyone who can write to the directory could plant something there.
TEST_CASE("atomic file: a FIFO or link planted at a temporary name neither hangs nor truncates", "[atomic][security]") {
    TempDir t;
    std::string path = t.dir + "/upmd-state.json";
    std::string v = victim(t.dir);
    const char* kind = GENERATE("fifo", "hardlink", "symlink");
    std::vector<std::string> planted = {path + ".tmp", t.dir + "/.upmd-state.json.tmp",
                                        path + ".tmp." + std::to_string(::getpid())};
    for (const auto& p : planted) {
        if (std::string(kind) == "fifo") REQUIRE(::mkfifo(p.c_str(), 0666) == 0);
        if (std::string(kind) == "hardlink") REQUIRE(::link(v.c_str(), p.c_str()) == 0);
        if (std::string(kind) == "symlink") REQUIRE(::symlink(v.c_str(), p.c_str()) == 0);
    }
    INFO("planted " << kind);
    SECTION("write_file_atomic") {
        CHECK(run_bounded([&] { return bool(write_file_atomic(path, "{}\n")); }) == "ok");
    }
    SECTION("Registry::save (upmd's state file)") {
        CHECK(run_bounded([&] { return bool(agent::Registry(16).save(path)); }) == "ok");
    }
    CHECK(test::read_text(v) == "precious\n");
    struct stat st {};
    REQUIRE(::lstat(path.c_str(), &st) == 0);
    CHECK(S_ISREG(st.st_mode));
}

TEST_CASE("printable: one sanitizer, backticks cannot fake quoting", "[log]") {
    CHECK(printable("abc") == "abc");
    CHECK(printable("id`, injected `x") == "id\\x60, injected \\x60x");
    CHECK(printable("a\nb\x7f") == "a\\x0ab\\x7f");
    CHECK(printable(std::string(300, 'x'), 10) == "xxxxxxxxxx...");
}
