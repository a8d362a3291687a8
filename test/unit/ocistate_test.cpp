// parse_container_state(): the OCI state a runtime writes on a hook's stdin.
#include <catch2/catch.hpp>
#include <string>

#include "upm/ocistate.hpp"

using namespace upm;

namespace {

const std::string kState =
    R"({"ociVersion": "1.0.2", "id": "c1", "status": "creating", "pid": 4242, "bundle": "/run/b/c1",
        "annotations": {"upm.enabled": "true", "upm.policy": "python-ml", "upm.domain": "tenant-a", "x": "y"}})";

std::string error_of(std::string_view text, bool need_pid = false) {
    auto r = parse_container_state(text, need_pid);
    REQUIRE_FALSE(r);
    return r.error().message;
}

}  // namespace

TEST_CASE("ocistate: a full state", "[ocistate]") {
    auto s = parse_container_state(kState, true);
    REQUIRE(s);
    CHECK(s->oci_version == "1.0.2");
    CHECK(s->id == "c1");
    CHECK(s->status == "creating");
    CHECK(s->pid == 4242);
    CHECK(s->bundle == "/run/b/c1");
    CHECK(s->enabled);
    CHECK(s->policy == "python-ml");
    CHECK(s->domain == "tenant-a");
}

TEST_CASE("ocistate: optional fields", "[ocistate]") {
    auto s = parse_container_state(R"({"id": "c2"})", false);
    REQUIRE(s);
    CHECK(s->pid == 0);
    CHECK(s->bundle.empty());
    CHECK(s->status.empty());
    CHECK_FALSE(s->enabled);
    CHECK(error_of(R"({"id": "c2"})", true).find("no `pid`") != std::string::npos);
    CHECK(error_of(R"({"id": "c2", "pid": 0})", true).find("no `pid`") != std::string::npos);
    s = parse_container_state(R"({"id": "c3", "pid": null, "bundle": null, "annotations": null})", false);
    REQUIRE(s);
    CHECK(s->pid == 0);
    // only exactly "true" enables; non-string annotations count as absent
    s = parse_container_state(R"({"id": "c", "annotations": {"upm.enabled": "True", "upm.policy": 7}})", false);
    REQUIRE(s);
    CHECK_FALSE(s->enabled);
    CHECK(s->policy.empty());
    s = parse_container_state(R"({"id": "c", "annotations": {"upm.enabled": true}})", false);
    REQUIRE(s);
    CHECK_FALSE(s->enabled);
}

TEST_CASE("ocistate: malformed states are errors, never exceptions", "[ocistate]") {
    CHECK(error_of("") == "empty");
    CHECK(error_of("{not json") == "not valid JSON");
    CHECK(error_of("[1, 2]") == "not a JSON object");
    CHECK(error_of(R"({"pid": 1})") == "no string `id`");
    CHECK(error_of(R"({"id": 5})") == "no string `id`");
    CHECK(error_of(R"({"id": ""})").find("empty") != std::string::npos);
    CHECK(error_of(R"({"id": "a/../b"})").find("`/`") != std::string::npos);
    CHECK(error_of("{\"id\": \"a\\u0001b\"}").find("control character") != std::string::npos);
    CHECK(error_of(R"({"id": ")" + std::string(1025, 'x') + R"("})").find("longer than 1024") != std::string::npos);
    CHECK(error_of(R"({"id": "c", "pid": -1})").find("out of range") != std::string::npos);
    CHECK(error_of(R"({"id": "c", "pid": 1099511627776})").find("out of range") != std::string::npos);
    CHECK(error_of(R"({"id": "c", "pid": 18446744073709551615})").find("out of range") != std::string::npos);
    CHECK(error_of(R"({"id": "c", "pid": "12"})").find("not an integer") != std::string::npos);
    CHECK(error_of(R"({"id": "c", "pid": 1.5})").find("not an integer") != std::string::npos);
    CHECK(error_of(R"({"id": "c", "bundle": 3})").find("not a string") != std::string::npos);
    CHECK(error_of(R"({"id": "c", "bundle": "relative/b"})").find("not an absolute path") != std::string::npos);
    CHECK(error_of(R"({"id": "c", "bundle": "/b)" + std::string(5000, 'x') + R"("})").find("longer than") !=
          std::string::npos);
    CHECK(error_of(R"({"id": "c", "annotations": []})").find("not an object") != std::string::npos);
    CHECK(error_of(std::string(100000, '[') + std::string(100000, ']')).find("nested deeper") != std::string::npos);
    // brackets inside strings do not count as nesting
    auto s = parse_container_state(R"({"id": "c", "status": ")" + std::string(100, '[') + R"("})", false);
    CHECK(s);
    CHECK(error_of(std::string(kMaxContainerState + 1, ' ')).find("more than") != std::string::npos);
}
