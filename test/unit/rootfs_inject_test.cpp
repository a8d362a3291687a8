// The pure parts of upm-hook's hooks.d mode (upm/rootfs_inject.hpp) and
// prepare_spec(), the precreate edit.  The mount-namespace work itself is
// exercised with real runc, crun and podman in test_hookd.py.
#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>
#include <string>

#include "helpers.hpp"
#include "upm/rootfs_inject.hpp"
#include "upm/spec.hpp"

using namespace upm;

TEST_CASE("rootfs_inject: /etc/ld.so.preload text", "[rootfs_inject]") {
    const std::string e = "/dev/upm/libupm-preload.so";
    bool listed = true;
    CHECK(ld_so_preload_with("", e, &listed) == e + "\n");
    CHECK_FALSE(listed);
    CHECK(ld_so_preload_with("/lib/a.so", e) == "/lib/a.so\n" + e + "\n");
    CHECK(ld_so_preload_with("/lib/a.so\n", e) == "/lib/a.so\n" + e + "\n");
    // already listed, with any separator glibc accepts
    for (std::string text : {e, e + "\n", "/a.so " + e, "/a.so:" + e + ":/b.so", "\t" + e + "\t"}) {
        CHECK(ld_so_preload_with(text, e, &listed) == text);
        CHECK(listed);
    }
    // in a comment it does not count; a longer name is another entry
    CHECK(ld_so_preload_with("# " + e + "\n", e, &listed) == "# " + e + "\n" + e + "\n");
    CHECK_FALSE(listed);
    CHECK(ld_so_preload_with(e + ".old", e, &listed) == e + ".old\n" + e + "\n");
    CHECK_FALSE(listed);
    CHECK(ld_so_preload_with("/a.so #" + e, e, &listed).ends_with("\n" + e + "\n"));
    CHECK_FALSE(listed);
}

TEST_CASE("rootfs_inject: policy with a domain", "[rootfs_inject]") {
    auto p = policy_with_domain("// comment\n{\"classes\": [\"heap\"], \"domain\": \"old\"}", "tenant-a");
    REQUIRE(p);
    auto doc = nlohmann::json::parse(*p);
    CHECK(doc["domain"] == "tenant-a");
    CHECK(doc["classes"] == nlohmann::json::array({"heap"}));
    p = policy_with_domain("", "d1");
    REQUIRE(p);
    CHECK(nlohmann::json::parse(*p) == nlohmann::json({{"version", 1}, {"domain", "d1"}}));
    CHECK_FALSE(policy_with_domain("[1]", "d"));
    CHECK_FALSE(policy_with_domain("{not json", "d"));
}

TEST_CASE("rootfs_inject: what config.json says about the root", "[rootfs_inject]") {
    auto r = read_spec_root(R"({"root": {"path": "rootfs", "readonly": true},
        "mounts": [{"destination": "/dev", "type": "tmpfs", "source": "tmpfs"}]})");
    REQUIRE(r);
    CHECK(r->path == "rootfs");
    CHECK(r->readonly);
    CHECK(r->dev_tmpfs);
    CHECK_FALSE(r->injected);
    r = read_spec_root(R"({"root": {"path": "/var/lib/x/merged"}, "mounts": [
        {"destination": "/dev/upm/libupm-preload.so", "type": "bind", "source": "/usr/lib/upm/libupm-preload.so"}]})");
    REQUIRE(r);
    CHECK(r->injected);
    CHECK_FALSE(r->readonly);
    CHECK_FALSE(r->dev_tmpfs);
    r = read_spec_root(R"({"root": 5, "mounts": {"x": 1}})");
    REQUIRE(r);
    CHECK(r->path.empty());
    CHECK_FALSE(read_spec_root("[]"));
    CHECK_FALSE(read_spec_root(std::string(100, '[') + std::string(100, ']')));
}

TEST_CASE("rootfs_inject: the container's user from config.json", "[rootfs_inject]") {
    auto r = read_spec_root(R"({"process": {"user": {"uid": 1000, "gid": 100, "additionalGids": [5, 6]}}})");
    REQUIRE(r);
    CHECK(r->uid == 1000);
    CHECK(r->gid == 100);
    CHECK(r->additional_gids == std::vector<std::uint32_t>{5, 6});
    r = read_spec_root(R"({"process": {"args": ["sh"]}})");
    REQUIRE(r);
    CHECK(r->uid == 0);
    CHECK(r->gid == 0);
    CHECK(r->additional_gids.empty());
    for (const char* bad : {R"({"process": {"user": {"uid": -1, "gid": 0}}})", R"({"process": {"user": {"uid": "0"}}})",
                            R"({"process": {"user": {"uid": 4294967295}}})", R"({"process": {"user": {"uid": 1.5}}})",
                            R"({"process": {"user": {"gid": 0, "additionalGids": 5}}})",
                            R"({"process": {"user": {"additionalGids": [1, -2]}}})"}) {
        INFO(bad);
        CHECK_FALSE(read_spec_root(bad));
    }
}

TEST_CASE("rootfs_inject: ids through a user namespace's map", "[rootfs_inject]") {
    const std::string identity = "         0          0 4294967295\n";
    CHECK(map_id(identity, 0) == 0u);
    CHECK(map_id(identity, 1000) == 1000u);
    CHECK(map_id(identity, 4294967294u) == 4294967294u);
    const std::string userns = "0 100000 65536\n65536 1000 1\n";
    CHECK(map_id(userns, 0) == 100000u);
    CHECK(map_id(userns, 1000) == 101000u);
    CHECK(map_id(userns, 65535) == 165535u);
    CHECK(map_id(userns, 65536) == 1000u);
    CHECK_FALSE(map_id(userns, 65537));
    CHECK_FALSE(map_id("", 0));                       // a user namespace without a map yet
    CHECK_FALSE(map_id("0 100000\n", 0));              // malformed lines map nothing
    CHECK_FALSE(map_id("0 100000 1 junk\n", 0));
    CHECK_FALSE(map_id("0 4294967295 1\n", 0));        // (uid_t)-1 is no id
}

TEST_CASE("rootfs_inject: without a container nothing is done", "[rootfs_inject]") {
    RootfsInjection in;
    CHECK_FALSE(inject_into_rootfs(in));
    in.pid = ::getpid();
    in.bundle = "/nonexistent";
    in.preload_source = test::fixture("README.md");
    auto r = inject_into_rootfs(in);
    REQUIRE_FALSE(r);  // our own mount namespace: refused before anything is mounted
    CHECK(r.error().message.find("shares our mount namespace") != std::string::npos);
}

TEST_CASE("spec: prepare_spec edits a document without a bundle", "[spec]") {
    NodeConfig c;
    c.preload = test::fixture("README.md");
    c.policy_dir = UPM_POLICIES_DIR;
    c.hook = "";
    c.log_file = "";
    const std::string annotated =
        R"({"process": {"env": ["PATH=/bin"]}, "mounts": [{"destination": "/dev", "type": "tmpfs"}],
            "annotations": {"upm.enabled": "true", "upm.domain": "d1"}})";
    auto p = prepare_spec(c, annotated, "precreate");
    REQUIRE(p.verdict == Verdict::edited);
    CHECK(p.edited.dir == kContainerDirDev);
    CHECK(p.edit.domain == "d1");
    CHECK_FALSE(p.closed);
    auto doc = nlohmann::json::parse(p.edited.text);
    CHECK(doc["process"]["env"].dump().find("LD_PRELOAD=/dev/upm/libupm-preload.so") != std::string::npos);
    for (const auto& n : p.notes) CHECK(n.message.find("injected") == std::string::npos);
    p = prepare_spec(c, R"({"process": {}})", "precreate");
    CHECK(p.verdict == Verdict::untouched);
    c.preload = "/nonexistent/libupm-preload.so";
    p = prepare_spec(c, annotated, "precreate");
    CHECK(p.verdict == Verdict::untouched);
}
