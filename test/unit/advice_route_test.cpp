// The policy key `advice` and the decision who advises a container
// (upm/advice_route.hpp, docs/remote-advice.md).
#include <catch2/catch.hpp>

#include "upm/advice_route.hpp"
#include "upm/policy.hpp"

using namespace upm;
using remote::Availability;
using remote::route_advice;

namespace {
const Availability kUpm{true, "upm kernel"};
const Availability kStock{false, "no upm kernel (/sys/kernel/mm/upm is missing)"};
}  // namespace

TEST_CASE("advice: the policy key parses, defaults to auto and round-trips", "[policy][advice]") {
    CHECK(default_policy().advice == AdviceMode::automatic);
    for (auto [text, mode] : {std::pair{"auto", AdviceMode::automatic}, std::pair{"preload", AdviceMode::preload},
                              std::pair{"remote", AdviceMode::remote}, std::pair{"both", AdviceMode::both}}) {
        auto check = parse_policy(std::string(R"({"advice": ")") + text + "\"}", "t");
        REQUIRE(check.policy);
        CHECK(check.policy->advice == mode);
        CHECK(to_string(mode) == text);
        auto again = parse_policy(policy_to_json(*check.policy), "again");
        REQUIRE(again.policy);
        CHECK(again.policy->advice == mode);
    }
    auto bad = parse_policy(R"({"advice": "remotely"})", "t");
    CHECK(!bad.policy);
    REQUIRE(bad.error_count() == 1);
    CHECK(bad.problems[0].where == "/advice");
    CHECK(bad.problems[0].fix.find("remote") != std::string::npos);
    CHECK(!parse_policy(R"({"advice": true})", "t").policy);
}

TEST_CASE("advice: preload is the preload alone, whatever the kernel", "[advice]") {
    for (const Availability& a : {kUpm, kStock}) {
        auto r = route_advice(AdviceMode::preload, a, true);
        CHECK(r.preload);
        CHECK(!r.remote);
        CHECK(!r.fell_back);
    }
}

TEST_CASE("advice: remote and both on a upm kernel", "[advice]") {
    auto r = route_advice(AdviceMode::remote, kUpm, true);
    CHECK(!r.preload);
    CHECK(r.remote);
    CHECK(!r.only_unreached);
    CHECK(!r.fell_back);
    auto b = route_advice(AdviceMode::both, kUpm, true);
    CHECK(b.preload);
    CHECK(b.remote);
    CHECK(!b.only_unreached);
}

TEST_CASE("advice: remote and both fall back to the preload and say why", "[advice]") {
    for (AdviceMode m : {AdviceMode::remote, AdviceMode::both}) {
        auto r = route_advice(m, kStock, true);
        CHECK(r.preload);
        CHECK(!r.remote);
        CHECK(r.fell_back);
        CHECK(r.why.find("remote advice unavailable: no upm kernel") != std::string::npos);
        CHECK(r.why.find("falling back to the preload") != std::string::npos);
        // A upm kernel, but nothing registers the container with upmd.
        auto n = route_advice(m, kUpm, false);
        CHECK(n.preload);
        CHECK(!n.remote);
        CHECK(n.fell_back);
        CHECK(n.why.find("upmd would not learn of the container") != std::string::npos);
    }
}

TEST_CASE("advice: auto is the preload, plus upmd for the processes it misses", "[advice]") {
    auto r = route_advice(AdviceMode::automatic, kUpm, true);
    CHECK(r.preload);
    CHECK(r.remote);
    CHECK(r.only_unreached);
    CHECK(!r.fell_back);
    auto s = route_advice(AdviceMode::automatic, kStock, true);
    CHECK(s.preload);
    CHECK(!s.remote);
    CHECK(!s.fell_back);   // nothing was asked that cannot be had: no warning
}

TEST_CASE("advice: a process maps the preload", "[advice]") {
    Region pre, lib, anon;
    pre.path = "/dev/.upm/libupm-preload.so";
    lib.path = "/usr/lib/x86_64-linux-gnu/libc.so.6";
    CHECK(remote::maps_preload({lib, pre, anon}));
    CHECK(!remote::maps_preload({lib, anon}));
    Region fake;
    fake.path = "/tmp/not-libupm-preload.so";
    CHECK(!remote::maps_preload({fake}));
}

TEST_CASE("advice: the triggers upmd sees from outside", "[advice]") {
    Triggers t;
    t.at_start = true;
    t.delays = {std::chrono::milliseconds(5000), std::chrono::milliseconds(2000)};
    t.periodic_interval = std::chrono::milliseconds(1000);
    t.periodic_duration = std::chrono::milliseconds(3000);
    t.periodic_then = std::chrono::milliseconds(0);
    remote::OutsideTriggers o(t);
    CHECK(o.next_ms() == 0);
    CHECK(o.fire(0));            // start
    CHECK(o.next_ms() == 1000);
    CHECK(!o.fire(999));
    CHECK(o.fire(1000));         // periodic
    CHECK(o.fire(2000));         // periodic and the 2 s delay, one advice
    CHECK(o.next_ms() == 3000);
    CHECK(o.fire(3500));         // periodic (last tick at the duration)
    CHECK(o.next_ms() == 5000);  // the 5 s delay; the periodic window is over
    CHECK(!o.fire(4999));
    CHECK(o.fire(5000));
    CHECK(o.next_ms() == INT64_MAX);
    CHECK(!o.fire(100000));

    Triggers none;
    none.at_start = false;
    remote::OutsideTriggers quiet(none);
    CHECK(quiet.next_ms() == INT64_MAX);
    CHECK(!quiet.fire(1000000));
}
