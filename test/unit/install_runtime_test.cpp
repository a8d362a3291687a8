// upm install-runtime / uninstall-runtime on a host root in a temporary
// directory: the node configurations of test/fixtures/engines/, the real
// snippets of config/runtimes/.
#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>
#include <stdlib.h>

#include <filesystem>
#include <fstream>
#include <string>

#include "helpers.hpp"
#include "upm/install_runtime.hpp"

namespace fs = std::filesystem;
using upm::install::Engine;
using upm::install::Options;
using upm::test::fixture;
using upm::test::read_text;

namespace {

struct HostRoot {
    fs::path dir;
    HostRoot() {
        std::string tmpl = (fs::temp_directory_path() / "upm-install-XXXXXX").string();
        dir = ::mkdtemp(tmpl.data());
    }
    ~HostRoot() { fs::remove_all(dir); }
    void put(const std::string& path, const std::string& text) const {
        fs::create_directories((dir / path.substr(1)).parent_path());
        std::ofstream(dir / path.substr(1), std::ios::binary) << text;
    }
    bool has(const std::string& path) const { return fs::exists(dir / path.substr(1)); }
    std::string get(const std::string& path) const { return read_text((dir / path.substr(1)).string()); }
    Options options(Engine engine) const {
        Options o;
        o.engine = engine;
        o.root = dir.string();
        o.bin_dir = "/opt/upm/bin";
        o.snippets_dir = UPM_RUNTIMES_DIR;
        return o;
    }
};

// Plans and applies; returns the plan's report.
std::string run(const Options& o, bool install) {
    auto plan = install ? upm::install::plan_install(o) : upm::install::plan_uninstall(o);
    if (!plan) FAIL(plan.error().message);
    auto st = upm::install::apply_plan(*plan, o);
    if (!st) FAIL(st.error().message);
    return upm::install::describe(*plan, false);
}

std::string refusal(const Options& o) {
    auto plan = upm::install::plan_install(o);
    REQUIRE_FALSE(plan.ok());
    return plan.error().message;
}

const std::string kConfig = "/etc/containerd/config.toml";
const std::string kDropin = "/etc/containerd/conf.d/99-upm.toml";

}  // namespace

TEST_CASE("containerd 1.x: the handler goes into the main file, every setting kept, undone exactly",
          "[install]") {
    HostRoot host;
    std::string node = read_text(fixture("engines/containerd-1.6-node.toml"));
    host.put(kConfig, node);
    auto o = host.options(Engine::containerd);

    CHECK_THAT(run(o, true), Catch::Contains("edited /etc/containerd/config.toml"));
    std::string after = host.get(kConfig);
    CHECK(after.starts_with(node));  // nothing before the block changed
    CHECK_THAT(after, Catch::Contains("BinaryName = \"/opt/upm/bin/upm-runtime\""));
    CHECK_THAT(after, Catch::Contains("[plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.upm]"));
    CHECK(host.get(kConfig + ".upm-backup") == node);
    CHECK_FALSE(host.has(kDropin));  // a 1.x drop-in would reset the CRI plugin's settings
    CHECK_THAT(run(o, true), Catch::Contains("nothing to do"));

    run(o, false);
    CHECK(host.get(kConfig) == node);
    CHECK_THAT(run(o, false), Catch::Contains("nothing to do"));
}

TEST_CASE("containerd 1.x: a runtime `upm` that upm did not write is refused", "[install]") {
    HostRoot host;
    host.put(kConfig, "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.upm]\n"
                      "  runtime_type = \"io.containerd.runc.v2\"\n");
    CHECK_THAT(refusal(host.options(Engine::containerd)), Catch::Contains("defines a runtime `upm` already"));
}

TEST_CASE("containerd 2.x: a drop-in plus its import, the node's own import kept", "[install]") {
    HostRoot host;
    std::string node = read_text(fixture("engines/containerd-2-node.toml"));
    host.put(kConfig, node);
    auto o = host.options(Engine::containerd);

    run(o, true);
    std::string dropin = host.get(kDropin);
    CHECK(dropin.starts_with("# Installed by `upm install-runtime`"));
    CHECK_THAT(dropin, Catch::Contains("BinaryName = \"/opt/upm/bin/upm-runtime\""));
    CHECK_THAT(dropin, Catch::Contains("io.containerd.cri.v1.runtime"));
    CHECK_THAT(host.get(kConfig),
               Catch::Contains("imports = [\"/etc/containerd/site.d/*.toml\", \"/etc/containerd/conf.d/*.toml\"]"));
    CHECK_THAT(host.get(kConfig), Catch::Contains("SystemdCgroup = true"));
    CHECK_THAT(run(o, true), Catch::Contains("nothing to do"));

    run(o, false);
    CHECK_FALSE(host.has(kDropin));
    CHECK(host.get(kConfig) == node);
}

TEST_CASE("containerd 2.x: uninstall keeps the import while other drop-ins use it", "[install]") {
    HostRoot host;
    host.put(kConfig, "version = 3\n");
    auto o = host.options(Engine::containerd);
    run(o, true);
    host.put("/etc/containerd/conf.d/50-site.toml", "version = 3\n");
    CHECK_THAT(run(o, false), Catch::Contains("the import of conf.d kept (`50-site.toml` is there too)"));
    CHECK_FALSE(host.has(kDropin));
    CHECK_THAT(host.get(kConfig), Catch::Contains("/etc/containerd/conf.d/*.toml"));
}

TEST_CASE("containerd 2.x: an import that already covers conf.d is left alone", "[install]") {
    HostRoot host;
    std::string node = "version = 3\nimports = [\"conf.d/*.toml\"]\n";
    host.put(kConfig, node);
    auto o = host.options(Engine::containerd);
    CHECK_THAT(run(o, true), Catch::Contains("imports conf.d already"));
    CHECK(host.get(kConfig) == node);
    CHECK(host.has(kDropin));
}

TEST_CASE("containerd: configurations upm does not understand are refused with what to do", "[install]") {
    HostRoot host;
    auto o = host.options(Engine::containerd);
    host.put(kConfig, read_text(fixture("engines/containerd-2-multiline-imports.toml")));
    CHECK_THAT(refusal(o), Catch::Contains("spans several lines: add \"/etc/containerd/conf.d/*.toml\" to it by hand"));
    host.put(kConfig, read_text(fixture("engines/containerd-v1.toml")));
    CHECK_THAT(refusal(o), Catch::Contains("containerd config migrate"));
    host.put(kConfig, "version = 2\n[plugins\n");
    CHECK_THAT(refusal(o), Catch::Contains("is not TOML upm understands"));
}

TEST_CASE("containerd: no config.toml needs the config version, then creates what it removes", "[install]") {
    HostRoot host;
    auto o = host.options(Engine::containerd);
    CHECK_THAT(refusal(o), Catch::Contains("--containerd-config-version 2 (containerd 1.x) or 3"));
    for (int version : {2, 3}) {
        o.containerd_config_version = version;
        run(o, true);
        CHECK_THAT(host.get(kConfig), Catch::Contains("version = " + std::to_string(version)));
        CHECK(host.has(kDropin) == (version == 3));
        run(o, false);
        CHECK_FALSE(host.has(kConfig));
        CHECK_FALSE(host.has(kDropin));
    }
}

TEST_CASE("docker: the runtime merged into daemon.json, other settings and key order kept", "[install]") {
    HostRoot host;
    const std::string path = "/etc/docker/daemon.json";
    std::string node = read_text(fixture("engines/docker-daemon.json"));
    host.put(path, node);
    auto o = host.options(Engine::docker);

    CHECK_THAT(run(o, true), Catch::Contains("systemctl reload docker"));
    auto doc = nlohmann::ordered_json::parse(host.get(path));
    CHECK(doc["runtimes"]["upm"]["path"] == "/opt/upm/bin/upm-runtime");
    CHECK(doc["runtimes"]["nvidia"]["path"] == "nvidia-container-runtime");
    CHECK(doc.begin().key() == "log-driver");
    CHECK(host.get(path + ".upm-backup") == node);
    CHECK_THAT(run(o, true), Catch::Contains("nothing to do"));

    run(o, false);
    CHECK(nlohmann::ordered_json::parse(host.get(path)) == nlohmann::ordered_json::parse(node));
}

TEST_CASE("docker: no daemon.json is created and removed; bad ones are refused", "[install]") {
    HostRoot host;
    const std::string path = "/etc/docker/daemon.json";
    auto o = host.options(Engine::docker);
    run(o, true);
    CHECK(nlohmann::json::parse(host.get(path)) ==
          nlohmann::json::parse(R"({"runtimes": {"upm": {"path": "/opt/upm/bin/upm-runtime", "runtimeArgs": ["--upm-enable"]}}})"));
    run(o, false);
    CHECK_FALSE(host.has(path));

    host.put(path, "{\"runtimes\": {\"upm\": {\"path\": \"/usr/bin/runsc\"}}}");
    CHECK_THAT(refusal(o), Catch::Contains("defines a runtime `upm` that is not upm-runtime"));
    host.put(path, "{\"runtimes\": ");
    CHECK_THAT(refusal(o), Catch::Contains("is not valid JSON"));
}

TEST_CASE("crio and podman: drop-ins, never over a file upm did not write", "[install]") {
    for (auto [engine, path] : {std::pair{Engine::crio, "/etc/crio/crio.conf.d/99-upm.conf"},
                                std::pair{Engine::podman, "/etc/containers/containers.conf.d/99-upm.conf"}}) {
        HostRoot host;
        auto o = host.options(engine);
        run(o, true);
        CHECK_THAT(host.get(path), Catch::Contains("/opt/upm/bin/upm-runtime"));
        CHECK_THAT(host.get(path), !Catch::Contains("/usr/bin/upm-runtime"));
        CHECK_THAT(run(o, true), Catch::Contains("nothing to do"));
        run(o, false);
        CHECK_FALSE(host.has(path));

        host.put(path, "# the operator's own\n");
        CHECK_THAT(refusal(o), Catch::Contains("was not written by upm install-runtime"));
        CHECK_THAT(run(o, false), Catch::Contains("kept, it was not written by upm install-runtime"));
        CHECK(host.get(path) == "# the operator's own\n");
    }
}
