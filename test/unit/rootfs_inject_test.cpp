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
