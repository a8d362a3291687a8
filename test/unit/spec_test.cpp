// upm-runtime's library side: runtime command lines, config.json reading,
// editing and writing, node configuration, prepare_bundle() on the fixture
// bundles of test/fixtures/bundles/.
#include <fcntl.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <thread>

#include "helpers.hpp"
#include "upm/backend.hpp"
#include "upm/nodeconfig.hpp"
#include "upm/policy.hpp"
#include "upm/spec.hpp"

using namespace upm;
using ojson = nlohmann::ordered_json;
namespace fs = std::filesystem;

namespace {

// A temporary copy of a fixture bundle (config.json only), removed at the end.
struct TempBundle {
    std::string dir;
    explicit TempBundle(const std::string& fixture_name, mode_t mode = 0640) {
        char tmpl[] = "/tmp/upm-spec-test.XXXXXX";
        dir = ::mkdtemp(tmpl);
        if (!fixture_name.empty()) {
            fs::copy_file(test::fixture("bundles/" + fixture_name + "/config.json"), dir + "/config.json");
            ::chmod((dir + "/config.json").c_str(), mode);
        }
    }
    ~TempBundle() { fs::remove_all(dir); }
    std::string config() const { return test::read_text(dir + "/config.json"); }
    std::string path() const { return dir + "/config.json"; }
};

// A node configuration whose preload is a readable file of the fixtures and
// whose policies are the shipped ones.
NodeConfig node_config() {
    NodeConfig c;
    c.runtime = "/usr/bin/runc";
    c.preload = test::fixture("README.md");
    c.policy_dir = UPM_POLICIES_DIR;
    c.default_policy = "default";
    c.hook = "";
    c.log_file = "";
    c.ksm_single_namespace = false;   // its own test case; never ask the host's upmd
    return c;
}

std::vector<std::string> env_of(const ojson& doc) { return doc["process"]["env"].get<std::vector<std::string>>(); }

bool has_message(const Preparation& p, const std::string& part) {
    for (const auto& n : p.notes)
        if (n.message.find(part) != std::string::npos) return true;
    return false;
}

}  // namespace

TEST_CASE("spec: runtime command lines", "[spec]") {
    auto r = parse_runtime_args({"--root", "/run/runc", "--log", "/x/log.json", "--log-format", "json", "create",
                                 "--bundle", "/b/1", "--pid-file", "/b/pid", "id1"});
    CHECK(r.command == "create");
    CHECK(r.command_index == 6);
    CHECK(r.bundle == "/b/1");
    CHECK(r.container_id == "id1");
    CHECK(r.log_file == "/x/log.json");
    CHECK(r.log_format == "json");
    CHECK_FALSE(r.debug);
    CHECK(edits_bundle(r));

    r = parse_runtime_args({"--debug", "--log=/l", "--log-format=text", "--systemd-cgroup", "--rootless", "auto", "run",
                            "-d", "-b", "bundle", "id2"});
    CHECK(r.command == "run");
    CHECK(r.debug);
    CHECK(r.log_file == "/l");
    CHECK(r.bundle == "bundle");
    CHECK(r.container_id == "id2");

    // single-dash long flags (Go's flag package), -b=X, --bundle=X, argp's -bX
    CHECK(parse_runtime_args({"-root", "/r", "create", "-bundle", "/b", "c"}).bundle == "/b");
    CHECK(parse_runtime_args({"create", "-b=/b2", "c"}).bundle == "/b2");
    CHECK(parse_runtime_args({"create", "--bundle=/b3", "c"}).bundle == "/b3");
    CHECK(parse_runtime_args({"create", "-b/b4", "c"}).bundle == "/b4");
    // crun permutes: options after the id
    r = parse_runtime_args({"create", "c", "--bundle", "/b5"});
    CHECK(r.bundle == "/b5");
    CHECK(r.container_id == "c");
    // a value that looks like a flag is a value
    r = parse_runtime_args({"create", "--pid-file", "--bundle", "c"});
    CHECK(r.bundle == ".");
    CHECK(r.container_id == "c");
    // default bundle: the working directory
    CHECK(parse_runtime_args({"create", "c"}).bundle == ".");
    CHECK(parse_runtime_args({"create", "--config", "other.json", "c"}).config_override);
    CHECK(parse_runtime_args({"run", "-f", "other.json", "c"}).config_override);

    // everything else is passed through
    CHECK_FALSE(edits_bundle(parse_runtime_args({"--root", "create", "state", "create"})));
    CHECK(parse_runtime_args({"--root", "create", "state", "create"}).command == "state");
    CHECK(parse_runtime_args({"--version"}).command.empty());
    CHECK(parse_runtime_args({}).command_index == -1);
    CHECK(parse_runtime_args({"--help"}).command.empty());
    CHECK_FALSE(edits_bundle(parse_runtime_args({"delete", "-f", "create"})));
    CHECK_FALSE(edits_bundle(parse_runtime_args({"exec", "--bundle", "x"})));
}

TEST_CASE("spec: annotations, only the exact value `true` enables", "[spec]") {
    auto a = read_upm_annotations(test::read_text(test::fixture("bundles/annotated/config.json")));
    REQUIRE(a.ok());
    CHECK(a->enabled);
    CHECK(a->policy == "python-ml");
    CHECK(a->domain == "tenant-a");
    auto d = read_upm_annotations(test::read_text(test::fixture("bundles/disabled/config.json")));
    REQUIRE(d.ok());
    CHECK_FALSE(d->enabled);
    CHECK(d->enabled_present);
    CHECK(d->enabled_value == "True");
    auto p = read_upm_annotations(test::read_text(test::fixture("bundles/plain/config.json")));
    REQUIRE(p.ok());
    CHECK_FALSE(p->enabled);
    CHECK_FALSE(p->enabled_present);
    CHECK_FALSE(read_upm_annotations(R"({"annotations":{"upm.enabled":true}})")->enabled);
    CHECK_FALSE(read_upm_annotations(R"({"annotations":["upm.enabled"]})")->enabled);
    CHECK_FALSE(read_upm_annotations("[1]").ok());
    CHECK_FALSE(read_upm_annotations("{\"a\":").ok());
    CHECK_FALSE(read_upm_annotations(std::string(1000, '[') + std::string(1000, ']')).ok());
}

TEST_CASE("spec: the edit keeps every other field and is idempotent", "[spec]") {
    std::string text = test::read_text(test::fixture("bundles/annotated/config.json"));
    SpecEdit edit{"/usr/lib/upm/libupm-preload.so", "/etc/upm/policies/python-ml.json", "tenant-a", "/usr/bin/upm-hook", 10};
    auto out = edit_spec(text, edit);
    REQUIRE(out.ok());
    auto before = ojson::parse(text);
    auto after = ojson::parse(out->text);

    // untouched fields survive, in order
    CHECK(after["vendor.example.unknown"] == before["vendor.example.unknown"]);
    CHECK(after["vendor.example.unknown"].dump() == R"({"keep":[1,2.5,"three",null,true],"order":{"z":1,"a":2}})");
    CHECK(after["linux"] == before["linux"]);
    CHECK(after["linux"]["futureField"]["x"].get<std::uint64_t>() == 18446744073709551615ull);
    std::vector<std::string> keys_before, keys_after;
    for (auto& [k, v] : before.items()) keys_before.push_back(k);
    for (auto& [k, v] : after.items()) keys_after.push_back(k);
    CHECK(keys_after == keys_before);  // "hooks" and "mounts" already existed
    CHECK(after["annotations"] == before["annotations"]);
    CHECK(after["process"]["args"] == before["process"]["args"]);

    // env: LD_PRELOAD appended, UPM_POLICY replaced, UPM_DOMAIN added
    auto env = env_of(after);
    CHECK(std::count(env.begin(), env.end(), "LD_PRELOAD=/usr/lib/libvendor.so:/dev/upm/libupm-preload.so") == 1);
    CHECK(std::count(env.begin(), env.end(), "UPM_POLICY=/dev/upm/policy.json") == 1);
    CHECK(std::count(env.begin(), env.end(), "UPM_DOMAIN=tenant-a") == 1);
    CHECK(std::count(env.begin(), env.end(), "UPM_POLICY=/image/policy.json") == 0);
    CHECK(env.front() == env_of(before).front());

    // mounts: the original ones first, then ours, read-only
    auto& mounts = after["mounts"];
    REQUIRE(mounts.size() == before["mounts"].size() + 2);
    for (std::size_t i = 0; i < before["mounts"].size(); ++i) CHECK(mounts[i] == before["mounts"][i]);
    CHECK(mounts[mounts.size() - 2].dump() ==
          R"({"destination":"/dev/upm/libupm-preload.so","type":"bind","source":"/usr/lib/upm/libupm-preload.so","options":["bind","ro","nosuid","nodev"]})");
    CHECK(mounts.back()["destination"] == "/dev/upm/policy.json");
    CHECK(mounts.back()["source"] == "/etc/upm/policies/python-ml.json");

    // hooks: existing ones kept, ours appended
    CHECK(after["hooks"]["createRuntime"] == before["hooks"]["createRuntime"]);
    REQUIRE(after["hooks"]["poststart"].size() == 2);
    CHECK(after["hooks"]["poststart"][0] == before["hooks"]["poststart"][0]);
    CHECK(after["hooks"]["poststart"][1].dump() == R"({"path":"/usr/bin/upm-hook","args":["upm-hook","poststart"],"timeout":10})");
    CHECK(after["hooks"]["poststop"][0]["args"][1] == "poststop");

    // a second edit changes nothing
    auto again = edit_spec(out->text, edit);
    REQUIRE(again.ok());
    CHECK(again->text == out->text);
}

TEST_CASE("spec: the edit without the preload (policy `advice` `remote`) keeps the hooks", "[spec][advice]") {
    std::string text = test::read_text(test::fixture("bundles/annotated/config.json"));
    SpecEdit edit{"/usr/lib/upm/libupm-preload.so", "/etc/upm/policies/python-ml.json", "tenant-a", "/usr/bin/upm-hook", 10};
    edit.preload = false;
    auto out = edit_spec(text, edit);
    REQUIRE(out.ok());
    auto before = ojson::parse(text);
    auto after = ojson::parse(out->text);
    auto env = env_of(after);
    CHECK(env_of(before) != env);   // UPM_DOMAIN is set: the domain is the container's
    CHECK(std::count(env.begin(), env.end(), "LD_PRELOAD=/usr/lib/libvendor.so") == 1);
    CHECK(std::count(env.begin(), env.end(), "UPM_DOMAIN=tenant-a") == 1);
    for (const auto& e : env) CHECK_FALSE(e.starts_with("UPM_POLICY=/dev/upm"));
    CHECK(after["mounts"] == before["mounts"]);
    REQUIRE(after["hooks"]["poststart"].size() == 2);
    CHECK(after["hooks"]["poststart"][1]["path"] == "/usr/bin/upm-hook");
}

TEST_CASE("spec: the edit without policy, domain or hook", "[spec]") {
    std::string text = test::read_text(test::fixture("bundles/containerd/config.json"));
    auto out = edit_spec(text, SpecEdit{"/p/libupm-preload.so", "", "", "", 10});
    REQUIRE(out.ok());
    auto after = ojson::parse(out->text);
    auto env = env_of(after);
    CHECK(std::count(env.begin(), env.end(), "LD_PRELOAD=/dev/upm/libupm-preload.so") == 1);
    for (const auto& e : env) {
        CHECK_FALSE(e.starts_with("UPM_POLICY="));
        CHECK_FALSE(e.starts_with("UPM_DOMAIN="));
    }
    CHECK_FALSE(after.contains("hooks"));
    CHECK(after["mounts"].back()["destination"] == "/dev/upm/libupm-preload.so");
    CHECK(out->preload == "/dev/upm/libupm-preload.so");
    CHECK(out->policy.empty());
    // wrong types are errors, not guesses
    CHECK_FALSE(edit_spec(R"({"process":{"env":"x"}})", SpecEdit{"/p", "", "", "", 10}).ok());
    CHECK_FALSE(edit_spec(R"({"process":{},"mounts":{}})", SpecEdit{"/p", "", "", "", 10}).ok());
    CHECK_FALSE(edit_spec(R"({"process":{},"hooks":[]})", SpecEdit{"/p", "", "", "/h", 10}).ok());
    CHECK_FALSE(edit_spec(test::read_text(test::fixture("bundles/no-process/config.json")), SpecEdit{"/p", "", "", "", 10}).ok());
    // without a tmpfs on /dev the files go to /run/upm; an edit made under the
    // other directory is replaced, not doubled
    auto run = edit_spec(R"({"process":{},"mounts":[{"destination":"/dev","type":"bind","source":"/dev"},
        {"destination":"/dev/upm/policy.json","type":"bind","source":"/old"}]})", SpecEdit{"/p", "/q", "", "", 10});
    REQUIRE(run.ok());
    CHECK(run->preload == "/run/upm/libupm-preload.so");
    CHECK(run->policy == "/run/upm/policy.json");
    auto run_doc = ojson::parse(run->text);
    REQUIRE(run_doc["mounts"].size() == 3);
    CHECK(run_doc["mounts"][1]["destination"] == "/run/upm/libupm-preload.so");
    CHECK(run_doc["process"]["env"][1] == "UPM_POLICY=/run/upm/policy.json");
    // a spec without env gets one
    auto minimal = edit_spec(R"({"process":{"args":["x"]}})", SpecEdit{"/p", "", "", "", 10});
    REQUIRE(minimal.ok());
    CHECK(minimal->text == R"({"process":{"args":["x"],"env":["LD_PRELOAD=/run/upm/libupm-preload.so"]},"mounts":[{"destination":"/run/upm/libupm-preload.so","type":"bind","source":"/p","options":["bind","ro","nosuid","nodev"]}]})");
}

TEST_CASE("spec: a seccomp profile denying madvise stops the edit", "[spec]") {
    SpecEdit e{"/p", "", "", "", 10};
    auto with = [](const std::string& seccomp) { return R"({"process":{},"linux":{"seccomp":)" + seccomp + "}}"; };
    // default allow, no rule: fine
    CHECK(edit_spec(with(R"({"defaultAction":"SCMP_ACT_ALLOW"})"), e).ok());
    // an allow-list (as containerd's and Docker's default profiles) with madvise: fine
    CHECK(edit_spec(with(R"({"defaultAction":"SCMP_ACT_ERRNO","syscalls":[{"names":["read","madvise"],"action":"SCMP_ACT_ALLOW"}]})"), e).ok());
    // an allow-list without madvise
    auto denied = edit_spec(with(R"({"defaultAction":"SCMP_ACT_ERRNO","syscalls":[{"names":["read"],"action":"SCMP_ACT_ALLOW"}]})"), e);
    REQUIRE_FALSE(denied.ok());
    CHECK(denied.error().err == EPERM);
    CHECK_THAT(denied.error().message, Catch::Contains("default action is `SCMP_ACT_ERRNO` and no rule allows `madvise`"));
    // a rule denying madvise
    auto rule = edit_spec(with(R"({"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["madvise"],"action":"SCMP_ACT_KILL"}]})"), e);
    REQUIRE_FALSE(rule.ok());
    CHECK_THAT(rule.error().message, Catch::Contains("gives `madvise` the action `SCMP_ACT_KILL`"));
    // a conditional denial leaves other calls allowed
    CHECK(edit_spec(with(R"({"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["madvise"],"action":"SCMP_ACT_ERRNO","args":[{"index":2,"value":4,"op":"SCMP_CMP_EQ"}]}]})"), e).ok());
}

TEST_CASE("spec: the /run/upm fallback is checked inside the rootfs", "[spec]") {
    TempBundle b("");
    std::string rootfs = b.dir + "/rootfs";
    fs::create_directories(rootfs + "/usr");
    auto check = [&] { return check_container_dir(b.dir, "rootfs", "/run/upm"); };
    CHECK(check().ok());                                  // absent: the runtime creates it
    fs::create_directory(rootfs + "/run");
    CHECK(check().ok());
    fs::create_symlink("/nonexistent", rootfs + "/run/upm");
    auto dangling = check();
    REQUIRE_FALSE(dangling.ok());
    CHECK(dangling.error().message == "`/run/upm` in the image is a symbolic link that does not resolve inside the rootfs");
    fs::remove(rootfs + "/run/upm");
    fs::remove(rootfs + "/run");
    // links are resolved inside the rootfs: /tmp exists on the host, not in the image
    fs::create_symlink("/tmp", rootfs + "/run");
    CHECK_FALSE(check().ok());
    fs::remove(rootfs + "/run");
    fs::create_symlink("../../../../../../usr", rootfs + "/run");  // `..` stops at the rootfs
    CHECK(check().ok());
    CHECK(check_container_dir(b.dir, rootfs, "/run/upm").ok());     // absolute root.path
    fs::remove(rootfs + "/run");
    { std::ofstream(rootfs + "/run") << "x"; }
    auto file = check();
    REQUIRE_FALSE(file.ok());
    CHECK_THAT(file.error().message, Catch::Contains("is not a directory"));
    CHECK_FALSE(check_container_dir(b.dir, "no-rootfs", "/run/upm").ok());
}

TEST_CASE("spec: LD_PRELOAD entries are compared, never resolved", "[spec]") {
    CHECK(append_preload_entry("", "/run/upm/x.so") == "/run/upm/x.so");
    CHECK(append_preload_entry("/a.so", "/run/upm/x.so") == "/a.so:/run/upm/x.so");
    CHECK(append_preload_entry("/a.so /b.so", "/run/upm/x.so") == "/a.so /b.so:/run/upm/x.so");
    CHECK(append_preload_entry("/a.so::", "/run/upm/x.so") == "/a.so:/run/upm/x.so");
    CHECK(append_preload_entry("/run/upm/x.so:/a.so", "/run/upm/x.so") == "/run/upm/x.so:/a.so");
    CHECK(append_preload_entry("/etc/../run/upm/x.so", "/run/upm/x.so") == "/etc/../run/upm/x.so:/run/upm/x.so");
}

TEST_CASE("spec: config.json is read bounded and without following links", "[spec]") {
    TempBundle b("plain");
    auto r = read_bundle_config(b.dir);
    REQUIRE(r.ok());
    CHECK(r->text == test::read_text(test::fixture("bundles/plain/config.json")));
    CHECK(r->mode == 0640);

    TempBundle link("");
    fs::create_symlink(test::fixture("bundles/plain/config.json"), link.path());
    auto l = read_bundle_config(link.dir);
    REQUIRE_FALSE(l.ok());
    CHECK_THAT(l.error().message, Catch::Contains("symbolic link"));

    TempBundle dir("");
    fs::create_directory(dir.path());
    CHECK_FALSE(read_bundle_config(dir.dir).ok());

    TempBundle big("");
    {
        std::ofstream f(big.path());
        f << std::string(kMaxSpecFile + 1, ' ');
    }
    auto g = read_bundle_config(big.dir);
    REQUIRE_FALSE(g.ok());
    CHECK(g.error().err == EFBIG);

    TempBundle none("");
    CHECK(read_bundle_config(none.dir).error().err == ENOENT);
    CHECK_FALSE(read_bundle_config("/nonexistent/bundle").ok());
}

TEST_CASE("spec: the write is atomic and keeps the mode", "[spec]") {
    TempBundle b("plain", 0604);
    auto r = read_bundle_config(b.dir);
    REQUIRE(r.ok());
    REQUIRE(write_bundle_config(b.dir, "{\"new\":1}", *r, /*sync=*/true).ok());
    CHECK(b.config() == "{\"new\":1}");
    struct stat st {};
    REQUIRE(::stat(b.path().c_str(), &st) == 0);
    CHECK((st.st_mode & 07777) == 0604);
    CHECK(st.st_ino != r->ino);
    std::size_t files = 0;
    for ([[maybe_unused]] auto& e : fs::directory_iterator(b.dir)) ++files;
    CHECK(files == 1);  // no temporary file left behind

    // config.json replaced since it was read: not overwritten
    auto stale = *r;  // the inode read first, now gone
    auto w = write_bundle_config(b.dir, "{\"newer\":2}", stale);
    REQUIRE_FALSE(w.ok());
    CHECK(b.config() == "{\"new\":1}");
    files = 0;
    for ([[maybe_unused]] auto& e : fs::directory_iterator(b.dir)) ++files;
    CHECK(files == 1);
}

TEST_CASE("spec: prepare_bundle leaves unannotated bundles byte-identical", "[spec]") {
    for (const char* name : {"plain", "disabled"}) {
        TempBundle b(name);
        struct stat before {};
        ::stat(b.path().c_str(), &before);
        auto p = prepare_bundle(node_config(), b.dir, "c1");
        CHECK(p.verdict == Verdict::untouched);
        CHECK(b.config() == test::read_text(test::fixture(std::string("bundles/") + name + "/config.json")));
        struct stat after {};
        ::stat(b.path().c_str(), &after);
        CHECK(after.st_ino == before.st_ino);  // not even rewritten
        CHECK(after.st_mtim.tv_nsec == before.st_mtim.tv_nsec);
    }
}

TEST_CASE("spec: --upm-enable: the runtime is the opt-in, an explicit value still opts out", "[spec]") {
    std::vector<std::string> docker = {"--upm-enable", "--root", "/run/docker/runtime-runc/moby", "--log",
                                       "/x/log.json", "create", "--bundle", "/b", "id1"};
    CHECK(take_enable_flag(docker));
    CHECK(docker == std::vector<std::string>{"--root", "/run/docker/runtime-runc/moby", "--log", "/x/log.json",
                                             "create", "--bundle", "/b", "id1"});
    CHECK_FALSE(take_enable_flag(docker));
    // After the subcommand it is the container's business, not ours.
    std::vector<std::string> late = {"create", "--bundle", "/b", "--upm-enable"};
    CHECK_FALSE(take_enable_flag(late));
    CHECK(late.size() == 4);

    TempBundle plain("plain");
    auto p = prepare_bundle(node_config(), plain.dir, "d1", {.enabled_by_runtime = true});
    CHECK(p.verdict == Verdict::edited);
    CHECK_THAT(plain.config(), Catch::Contains("libupm-preload.so"));
    TempBundle disabled("disabled");  // upm.enabled: "false"
    CHECK(prepare_bundle(node_config(), disabled.dir, "d2", {.enabled_by_runtime = true}).verdict ==
          Verdict::untouched);
}

TEST_CASE("spec: an escaped annotation key is still found", "[spec]") {
    TempBundle b("plain");
    std::string text = b.config();
    auto pos = text.rfind('}');
    text.insert(pos, ",\"annotations\": {\"upm\\u002eenabled\": \"true\"}");
    { std::ofstream(b.path(), std::ios::trunc) << text; }
    auto p = prepare_bundle(node_config(), b.dir, "esc");
    CHECK(p.verdict == Verdict::edited);
    // ...and a broken document without the key is "not annotated", whatever else is wrong
    TempBundle broken("");
    { std::ofstream(broken.path()) << "{\"process\": "; }
    CHECK(prepare_bundle(node_config(), broken.dir, "broken").verdict == Verdict::untouched);
}

TEST_CASE("spec: prepare_bundle injects into annotated bundles", "[spec]") {
    TempBundle b("annotated", 0600);
    auto config = node_config();
    config.hook = "/bin/true";
    auto p = prepare_bundle(config, b.dir, "c2");
    REQUIRE(p.verdict == Verdict::edited);
    CHECK(p.policy == "python-ml");
    CHECK(has_message(p, "container `c2`: injected `/dev/upm/libupm-preload.so`"));
    auto doc = ojson::parse(b.config());
    CHECK(doc["mounts"].back()["source"] == fs::canonical(test::policy_file("python-ml.json")).string());
    CHECK(doc["hooks"]["poststop"].back()["path"] == "/bin/true");
    struct stat st {};
    ::stat(b.path().c_str(), &st);
    CHECK((st.st_mode & 07777) == 0600);
    // again: nothing changes, nothing is written
    std::string once = b.config();
    auto p2 = prepare_bundle(config, b.dir, "c2");
    CHECK(p2.verdict == Verdict::edited);
    CHECK(b.config() == once);
}

TEST_CASE("spec: concurrent prepare_bundle on one bundle", "[spec]") {
    TempBundle b("containerd");
    std::vector<Preparation> results(8);
    std::vector<std::thread> threads;
    for (std::size_t i = 0; i < results.size(); ++i)
        threads.emplace_back([&, i] { results[i] = prepare_bundle(node_config(), b.dir, "t" + std::to_string(i)); });
    for (auto& t : threads) t.join();
    for (const auto& r : results) CHECK(r.verdict == Verdict::edited);
    auto doc = ojson::parse(b.config());
    std::size_t ours = 0;
    for (const auto& m : doc["mounts"]) ours += m["destination"] == "/dev/upm/libupm-preload.so";
    CHECK(ours == 1);
    std::size_t files = 0;
    for ([[maybe_unused]] auto& e : fs::directory_iterator(b.dir)) ++files;
    CHECK(files == 1);
}

TEST_CASE("spec: prepare_bundle fails open", "[spec]") {
    SECTION("invalid policy name and domain: default policy, no domain, a log line each") {
        TempBundle b("bad-policy-name");
        auto p = prepare_bundle(node_config(), b.dir, "c3");
        CHECK(p.verdict == Verdict::edited);
        CHECK(p.policy == "default");
        CHECK(has_message(p, "invalid policy name `../../etc/shadow` in annotation `upm.policy`"));
        CHECK(has_message(p, "using the default policy `default`"));
        CHECK(has_message(p, "invalid domain `bad domain!`"));
        CHECK(b.config().find("UPM_DOMAIN") == std::string::npos);
    }
    SECTION("missing policy: untouched") {
        TempBundle b("annotated");
        auto config = node_config();
        config.policy_dir = "/nonexistent";
        // python-ml is also found among the installed examples when they are installed;
        // a name that exists nowhere:
        std::string text = b.config();
        auto pos = text.find("python-ml");
        text.replace(pos, 9, "no-such-policy");
        { std::ofstream(b.path(), std::ios::trunc) << text; }
        auto p = prepare_bundle(config, b.dir, "c4");
        CHECK(p.verdict == Verdict::untouched);
        CHECK(has_message(p, "not deduplicated: no policy named `no-such-policy`"));
        CHECK(b.config() == text);
    }
    SECTION("default policy not installed: the built-in default") {
        TempBundle b("containerd");
        auto config = node_config();
        config.policy_dir = "/nonexistent";
        auto p = prepare_bundle(config, b.dir, "c11");
        if (!resolve_node_policy(config, "default").ok()) {  // not installed under <prefix>/share either
            CHECK(p.verdict == Verdict::edited);
            CHECK(p.policy.empty());
            CHECK(has_message(p, "policy `default` not installed"));
            CHECK(b.config().find("UPM_POLICY") == std::string::npos);
        }
    }
    SECTION("missing preload: untouched") {
        TempBundle b("containerd");
        auto config = node_config();
        config.preload = "/nonexistent/libupm-preload.so";
        auto p = prepare_bundle(config, b.dir, "c5");
        CHECK(p.verdict == Verdict::untouched);
        CHECK(has_message(p, "not deduplicated: preload `/nonexistent/libupm-preload.so` cannot be read"));
        CHECK(b.config() == test::read_text(test::fixture("bundles/containerd/config.json")));
    }
    SECTION("missing hook binary: injected without hooks") {
        TempBundle b("containerd");
        auto config = node_config();
        config.hook = "/nonexistent/upm-hook";
        auto p = prepare_bundle(config, b.dir, "c6");
        CHECK(p.verdict == Verdict::edited);
        CHECK(has_message(p, "no poststart/poststop hooks"));
        CHECK(b.config().find("\"hooks\"") == std::string::npos);
    }
    SECTION("no process: untouched") {
        TempBundle b("no-process");
        auto p = prepare_bundle(node_config(), b.dir, "c7");
        CHECK(p.verdict == Verdict::untouched);
        CHECK(has_message(p, "has no `process` object"));
        CHECK(b.config() == test::read_text(test::fixture("bundles/no-process/config.json")));
    }
    SECTION("broken policy: untouched; closed policy: refused") {
        TempBundle b("containerd");
        char tmpl[] = "/tmp/upm-spec-pol.XXXXXX";
        std::string dir = ::mkdtemp(tmpl);
        { std::ofstream(dir + "/broken.json") << "{\"classes\": [\"hep\"]}"; }
        { std::ofstream(dir + "/closed.json") << "{\"classes\": [\"hep\"], \"on_error\": \"closed\"}"; }
        { std::ofstream(dir + "/valid-closed.json") << "{\"on_error\": \"closed\"}"; }
        auto config = node_config();
        config.policy_dir = dir;
        config.default_policy = "broken";
        auto p = prepare_bundle(config, b.dir, "c8");
        CHECK(p.verdict == Verdict::untouched);
        CHECK(has_message(p, "not deduplicated: policy `broken` is invalid"));
        config.default_policy = "closed";
        auto q = prepare_bundle(config, b.dir, "c9");
        CHECK(q.verdict == Verdict::refused);
        CHECK(has_message(q, "refused: policy `closed` is invalid"));
        config.default_policy = "valid-closed";
        config.preload = "/nonexistent/libupm-preload.so";
        auto r = prepare_bundle(config, b.dir, "c10");
        CHECK(r.verdict == Verdict::refused);
        CHECK(has_message(r, "refused: preload"));
        CHECK(b.config() == test::read_text(test::fixture("bundles/containerd/config.json")));
        fs::remove_all(dir);
    }
}

TEST_CASE("spec: node configuration", "[spec]") {
    NodeConfig defaults;
    defaults.runtime = "/usr/bin/runc";
    auto ok = parse_node_config(R"({
        // comments are allowed
        "runtime": "/usr/bin/crun", "preload": "/opt/upm/lib/libupm-preload.so",
        "policy_dir": "/srv/policies", "default_policy": "python-ml", "hook": "",
        "log_file": "/tmp/x.log", "log_level": "debug", "fsync": true})", defaults);
    CHECK(ok.problems.empty());
    CHECK(ok.config.runtime == "/usr/bin/crun");
    CHECK(ok.config.preload == "/opt/upm/lib/libupm-preload.so");
    CHECK(ok.config.policy_dir == "/srv/policies");
    CHECK(ok.config.default_policy == "python-ml");
    CHECK(ok.config.hook.empty());
    CHECK(ok.config.log_level == "debug");
    CHECK(ok.config.fsync);
    CHECK_FALSE(defaults.fsync);

    // a wrong key keeps its default; the others apply
    auto bad = parse_node_config(R"({"runtime": "runc", "log_level": "loud", "preload": 3, "colour": "x",
                                    "default_policy": "../x", "policy_dir": "/p", "fsync": "yes"})", defaults);
    CHECK(bad.config.runtime == "/usr/bin/runc");
    CHECK(bad.config.log_level == "info");
    CHECK(bad.config.policy_dir == "/p");
    CHECK(bad.config.default_policy == "default");
    REQUIRE(bad.problems.size() == 6);
    CHECK_FALSE(bad.config.fsync);
    CHECK(bad.problems[3].warning());  // unknown key
    CHECK(format_problem("c.json", bad.problems[0]) == "c.json: /runtime: error: `runtime` must be an absolute path; the default is used");

    auto syntax = parse_node_config("{\"runtime\": ", defaults);
    REQUIRE(syntax.problems.size() == 1);
    CHECK_THAT(syntax.problems[0].where, Catch::StartsWith("line 1"));
    CHECK(parse_node_config("[]", defaults).problems.size() == 1);

    // the shipped example is valid and spells out the defaults
    auto example = parse_node_config(test::read_text(std::string(UPM_POLICIES_DIR) + "/../node/config.json"), defaults);
    CHECK(example.problems.empty());
    CHECK(example.config.policy_dir == NodeConfig{}.policy_dir);
    CHECK(example.config.log_file == NodeConfig{}.log_file);
    CHECK(example.config.fsync == NodeConfig{}.fsync);
    CHECK(example.config.domain_scope == NodeConfig{}.domain_scope);
    CHECK(example.config.ksm_single_namespace == NodeConfig{}.ksm_single_namespace);
    CHECK(NodeConfig{}.ksm_single_namespace);

    // ksm_single_namespace: a boolean; anything else keeps the default
    CHECK_FALSE(parse_node_config(R"({"ksm_single_namespace": false})", defaults).config.ksm_single_namespace);
    auto ksm_bad = parse_node_config(R"({"ksm_single_namespace": "no"})", defaults);
    REQUIRE(ksm_bad.problems.size() == 1);
    CHECK(ksm_bad.config.ksm_single_namespace);
    CHECK(ksm_bad.problems[0].where == "/ksm_single_namespace");

    // UPM_CONFIG: a missing file named there is a problem
    ::setenv(kEnvNodeConfig, "/nonexistent/config.json", 1);
    auto missing = load_node_config("/usr/bin/upm-runtime");
    CHECK(missing.problems.size() == 1);
    ::unsetenv(kEnvNodeConfig);

    // the default runtime is never upm-runtime itself
    auto d = default_node_config("/usr/bin/runc");
    CHECK(d.runtime != "/usr/bin/runc");
    CHECK(default_node_config("/opt/upm/bin/upm-runtime").hook == "/opt/upm/bin/upm-hook");
}

TEST_CASE("spec: node policies resolve by name only inside the policy directories", "[spec]") {
    auto config = node_config();
    auto p = resolve_node_policy(config, "python-ml");
    REQUIRE(p.ok());
    CHECK(*p == fs::canonical(test::policy_file("python-ml.json")).string());
    CHECK_FALSE(resolve_node_policy(config, "../python-ml").ok());
    CHECK_FALSE(resolve_node_policy(config, "nonexistent-policy").ok());
    CHECK(resolve_node_policy(config, test::policy_file("nodejs.json")).ok());  // absolute: node config only
}

TEST_CASE("spec: printable", "[spec]") {
    CHECK(printable("abc") == "abc");
    CHECK(printable("a\nb`c") == "a\\x0ab\\x60c");
    CHECK(printable("\xc3\xa9") == "\\xc3\\xa9");
    CHECK(printable(std::string(300, 'x'), 10) == "xxxxxxxxxx...");
}

// ---- the domain scoped by the pod's namespace (docs/hardening.md) -------------

namespace {

// The "annotated" fixture (upm.domain=tenant-a) with `set` merged into its
// annotations (a null value removes the key); returns UPM_DOMAIN or "(none)".
std::string upm_domain_after(const NodeConfig& config, const ojson& set, Preparation* out = nullptr) {
    TempBundle b("annotated");
    auto doc = ojson::parse(b.config());
    for (const auto& [k, v] : set.items()) {
        if (v.is_null()) doc["annotations"].erase(k);
        else doc["annotations"][k] = v;
    }
    std::ofstream(b.path(), std::ios::trunc) << doc.dump();
    auto p = prepare_bundle(config, b.dir, "ns");
    if (out) *out = p;
    if (p.verdict != Verdict::edited) return "(not edited)";
    for (const auto& e : env_of(ojson::parse(b.config())))
        if (e.rfind("UPM_DOMAIN=", 0) == 0) return e.substr(11);
    return "(none)";
}

}  // namespace

TEST_CASE("spec: the domain is scoped by the Kubernetes namespace", "[spec]") {
    auto config = node_config();
    REQUIRE(config.domain_scope == DomainScope::kubernetes_namespace);
    Preparation p;

    SECTION("no namespace annotation (runc, podman, Docker): the domain as given") {
        CHECK(upm_domain_after(config, ojson::object(), &p) == "tenant-a");
        CHECK(p.edit.domain == "tenant-a");
    }
    SECTION("containerd's key") {
        CHECK(upm_domain_after(config, {{"io.kubernetes.cri.sandbox-namespace", "team-a"}}, &p) ==
              "k8s.team-a.tenant-a");
        CHECK(has_message(p, "domain `tenant-a` scoped by namespace `team-a`: `k8s.team-a.tenant-a`"));
        CHECK(has_message(p, ", domain `k8s.team-a.tenant-a`"));
    }
    SECTION("CRI-O's key") {
        CHECK(upm_domain_after(config, {{"io.kubernetes.pod.namespace", "team-b"}}) == "k8s.team-b.tenant-a");
    }
    SECTION("both keys agreeing") {
        CHECK(upm_domain_after(config, {{"io.kubernetes.pod.namespace", "team-b"},
                                        {"io.kubernetes.cri.sandbox-namespace", "team-b"}}) == "k8s.team-b.tenant-a");
    }
    SECTION("both keys differing: a warning and no domain") {
        CHECK(upm_domain_after(config, {{"io.kubernetes.pod.namespace", "team-b"},
                                        {"io.kubernetes.cri.sandbox-namespace", "team-a"}}, &p) == "(none)");
        CHECK(p.verdict == Verdict::edited);
        CHECK(p.edit.domain.empty());
        CHECK(has_message(p, "name different namespaces: no domain"));
    }
    SECTION("an invalid namespace: a warning and no domain") {
        for (ojson bad : {ojson("Team-A"), ojson("team.a"), ojson("-a"), ojson("a-"), ojson(""), ojson(std::string(64, 'a')),
                          ojson("a\nb"), ojson(7), ojson(nullptr)}) {
            ojson set = {{"io.kubernetes.cri.sandbox-namespace", bad}};
            if (bad.is_null()) set = {{"io.kubernetes.pod.namespace", ojson::array()}};
            CAPTURE(bad.dump());
            CHECK(upm_domain_after(config, set, &p) == "(none)");
            CHECK(has_message(p, "no domain"));
        }
        CHECK(upm_domain_after(config, {{"io.kubernetes.cri.sandbox-namespace", std::string(63, 'a')}}) ==
              "k8s." + std::string(63, 'a') + ".tenant-a");
    }
    SECTION("no upm.domain: no domain, none invented") {
        CHECK(upm_domain_after(config, {{"upm.domain", nullptr}, {"io.kubernetes.cri.sandbox-namespace", "team-a"}}, &p) ==
              "(none)");
        CHECK(p.edit.domain.empty());
        CHECK_FALSE(has_message(p, "scoped by namespace"));
    }
    SECTION("the longest name in the longest namespace is still a valid domain") {
        std::string name(kMaxDomainName, 'd');
        std::string got = upm_domain_after(config, {{"upm.domain", name},
                                                    {"io.kubernetes.cri.sandbox-namespace", std::string(63, 'n')}});
        CHECK(got.size() == kMaxDomain);
        CHECK(valid_domain(got));
        CHECK_FALSE(valid_domain(got + "x"));
        CHECK_FALSE(valid_domain_name(got));
        // a name longer than kMaxDomainName is refused before scoping
        CHECK(upm_domain_after(config, {{"upm.domain", name + "d"}}) == "(none)");
    }
    SECTION("the prefix k8s. is the node's when unscoped") {
        CHECK(upm_domain_after(config, {{"upm.domain", "k8s.team-b.tenant-a"}}, &p) == "(none)");
        CHECK(has_message(p, "reserves for domains scoped by a Kubernetes namespace"));
        // inside a namespace it is just a name: k8s.team-a.k8s.team-b.x
        CHECK(upm_domain_after(config, {{"upm.domain", "k8s.team-b.x"}, {"io.kubernetes.pod.namespace", "team-a"}}) ==
              "k8s.team-a.k8s.team-b.x");
    }
    SECTION("domain_scope none: the domain as given") {
        config.domain_scope = DomainScope::none;
        CHECK(upm_domain_after(config, {{"io.kubernetes.cri.sandbox-namespace", "team-a"}}) == "tenant-a");
        CHECK(upm_domain_after(config, {{"io.kubernetes.cri.sandbox-namespace", "team-a"},
                                        {"io.kubernetes.pod.namespace", "team-b"}}) == "tenant-a");
        CHECK(upm_domain_after(config, {{"upm.domain", "k8s.team-b.x"}}) == "k8s.team-b.x");
    }
}

// ---- one namespace at a time on the KSM backend (docs/runtime.md) -------------

TEST_CASE("spec: ksm_single_namespace asks the agent for namespaced containers", "[spec]") {
    if (kernel_has_madv_upm()) {
        WARN("skipped: this kernel has MADV_UPM, the policy `default` does not use KSM");
        return;
    }
    auto config = node_config();
    config.ksm_single_namespace = true;
    std::vector<std::pair<std::string, std::string>> asked;
    Result<KsmClaimAnswer> answer = KsmClaimAnswer{.granted = true};
    PrepareOptions options;
    options.ksm_claim = [&](const std::string& id, const std::string& ns) -> Result<KsmClaimAnswer> {
        asked.emplace_back(id, ns);
        return answer;
    };
    auto run = [&](const ojson& set, const std::string& policy = "") {
        TempBundle b("annotated");
        auto doc = ojson::parse(b.config());
        for (const auto& [k, v] : set.items()) doc["annotations"][k] = v;
        if (!policy.empty()) doc["annotations"]["upm.policy"] = policy;
        std::ofstream(b.path(), std::ios::trunc) << doc.dump();
        return prepare_bundle(config, b.dir, "k1", options);
    };
    const ojson team_b = {{"io.kubernetes.cri.sandbox-namespace", "team-b"}};

    SECTION("granted: injected, the agent asked with the id and the namespace") {
        CHECK(run(team_b).verdict == Verdict::edited);
        REQUIRE(asked.size() == 1);
        CHECK(asked[0] == std::pair<std::string, std::string>{"k1", "team-b"});
    }
    SECTION("no namespace annotation: not asked, injected") {
        CHECK(run(ojson::object()).verdict == Verdict::edited);
        CHECK(asked.empty());
    }
    SECTION("refused: not deduplicated, the holder and both ways out named") {
        answer = KsmClaimAnswer{.granted = false, .holder = "team-a", .holders = 2};
        auto p = run(team_b);
        CHECK(p.verdict == Verdict::untouched);
        CHECK(has_message(p, "not deduplicated: namespace `team-b` may not use the KSM backend: namespace `team-a` "
                             "holds it (2 containers)"));
        CHECK(has_message(p, "use the upm kernel"));
        CHECK(has_message(p, "\"ksm_single_namespace\": false"));
    }
    SECTION("refused with a fail-closed policy: the container is refused") {
        answer = KsmClaimAnswer{.granted = false, .holder = "team-a", .holders = 1};
        char tmpl[] = "/tmp/upm-spec-pol.XXXXXX";
        std::string dir = ::mkdtemp(tmpl);
        { std::ofstream(dir + "/closed.json") << "{\"on_error\": \"closed\"}"; }
        config.policy_dir = dir;
        auto p = run(team_b, "closed");
        fs::remove_all(dir);
        CHECK(p.verdict == Verdict::refused);
        CHECK(has_message(p, "refused: namespace `team-b` may not use the KSM backend"));
    }
    SECTION("no answer from the agent: not deduplicated") {
        answer = Error{ENOENT, "no node agent (upmd) at `/x.sock`"};
        auto p = run(team_b);
        CHECK(p.verdict == Verdict::untouched);
        CHECK(has_message(p, "cannot check that it is the only namespace on the KSM backend"));
        CHECK(has_message(p, "start upmd"));
    }
    SECTION("conflicting namespace annotations: not deduplicated, not asked") {
        auto p = run({{"io.kubernetes.cri.sandbox-namespace", "team-a"}, {"io.kubernetes.pod.namespace", "team-b"}});
        CHECK(p.verdict == Verdict::untouched);
        CHECK(asked.empty());
    }
    SECTION("setting off: not asked") {
        config.ksm_single_namespace = false;
        CHECK(run(team_b).verdict == Verdict::edited);
        CHECK(asked.empty());
    }
}

TEST_CASE("spec: scope_domain on its own", "[spec]") {
    UpmAnnotations ann;
    CHECK(scope_domain(DomainScope::kubernetes_namespace, "web", ann).domain == "web");
    ann.crio_namespace_present = true;
    ann.crio_namespace = "shop";
    auto s = scope_domain(DomainScope::kubernetes_namespace, "web", ann);
    CHECK(s.domain == "k8s.shop.web");
    CHECK(s.namespace_ == "shop");
    CHECK(s.notes.empty());
    CHECK(scope_domain(DomainScope::kubernetes_namespace, "", ann).domain.empty());
    CHECK(scope_domain(DomainScope::none, "web", ann).domain == "web");
    // an unchecked name is never passed on
    auto bad = scope_domain(DomainScope::none, "a b", ann);
    CHECK(bad.domain.empty());
    CHECK(bad.notes.size() == 1);
    CHECK(valid_namespace("kube-system"));
    CHECK_FALSE(valid_namespace("kube_system"));
    // a policy's domain may be longer than a name, but then cannot be scoped
    std::string long_domain(100, 'p');
    CHECK(scope_domain(DomainScope::none, long_domain, ann).domain == long_domain);
    auto too_long = scope_domain(DomainScope::kubernetes_namespace, long_domain, ann);
    CHECK(too_long.domain.empty());
    CHECK(too_long.notes.size() == 1);
}

TEST_CASE("spec: a policy's domain is scoped by the namespace too", "[spec]") {
    char tmpl[] = "/tmp/upm-spec-pol.XXXXXX";
    std::string dir = ::mkdtemp(tmpl);
    std::ofstream(dir + "/shared.json") << R"({"domain": "fleet"})";
    auto config = node_config();
    config.policy_dir = dir;
    Preparation p;
    // no namespace: the policy's domain, left to the preload (no UPM_DOMAIN)
    CHECK(upm_domain_after(config, {{"upm.policy", "shared"}, {"upm.domain", nullptr}}, &p) == "(none)");
    CHECK(p.edit.domain.empty());
    // in a namespace: scoped, and given to the preload as UPM_DOMAIN
    CHECK(upm_domain_after(config, {{"upm.policy", "shared"}, {"upm.domain", nullptr},
                                    {"io.kubernetes.cri.sandbox-namespace", "team-a"}}, &p) == "k8s.team-a.fleet");
    CHECK(has_message(p, "domain `fleet` (policy `shared`) scoped by namespace `team-a`"));
    // the annotation's domain comes first
    CHECK(upm_domain_after(config, {{"upm.policy", "shared"}, {"io.kubernetes.cri.sandbox-namespace", "team-a"}}) ==
          "k8s.team-a.tenant-a");
    fs::remove_all(dir);
}

TEST_CASE("spec: node configuration domain_scope", "[spec]") {
    NodeConfig defaults;
    CHECK(parse_node_config(R"({"domain_scope": "none"})", defaults).config.domain_scope == DomainScope::none);
    auto ns = parse_node_config(R"({"domain_scope": "namespace"})", defaults);
    CHECK(ns.problems.empty());
    CHECK(ns.config.domain_scope == DomainScope::kubernetes_namespace);
    for (const char* bad : {R"({"domain_scope": "Namespace"})", R"({"domain_scope": true})", R"({"domain_scope": ""})"}) {
        auto b = parse_node_config(bad, defaults);
        CHECK(b.config.domain_scope == DomainScope::kubernetes_namespace);
        REQUIRE(b.problems.size() == 1);
        CHECK(b.problems[0].where == "/domain_scope");
        CHECK_FALSE(b.problems[0].warning());
    }
}
