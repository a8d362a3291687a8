// KSM burst tuning: the decision logic fed sequences of counter samples
// (KsmBurstLogic), and the tuner's bookkeeping of the original settings on a
// fake sysfs directory (KsmTuner with options.sysfs/proc pointing at plain
// files).  The real ksmd is exercised by test/integration/test_ksmtune.py.
#include <sys/stat.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>

#include "helpers.hpp"
#include "upm/ksmtune.hpp"

using namespace upm;
using namespace std::chrono_literals;
namespace fs = std::filesystem;

namespace {

const KsmKnobs kIdle{1, 100, 20, ""};

KsmTunerOptions test_options() {
    KsmTunerOptions o;
    o.idle = kIdle;
    o.burst = KsmKnobs{1, -1, 10, ""};
    o.target_scan_time = 1000ms;
    o.min_burst_pages_to_scan = 1000;
    o.max_burst_pages_to_scan = 16000;
    o.settle_full_scans = 2;
    o.settle_pages = 64;
    o.settle_fraction = 0.0;
    o.min_burst = 0ms;
    o.burst_cpu_base = 10.0;
    o.burst_cpu_per_gib = 8.0;
    o.max_cpu_per_minute = 40.0;
    o.trickle = KsmKnobs{1, 100, 20, ""};
    o.max_merging = std::chrono::minutes(30);
    return o;
}

// A fake node: time and counters the test moves forward.
struct Node {
    KsmClock::time_point t0 = KsmClock::time_point{} + std::chrono::hours(1);
    KsmSample s;
    Node() {
        s.when = t0;
        s.full_scans = 100;
        s.pages_shared = 10;
        s.pages_sharing = 50;
        s.general_profit = 50 * 4096;
        s.anon_pages = 262144;     // 1 GiB of anonymous memory
        s.ksmd_cpu = 0;
    }
    KsmSample& at(std::chrono::milliseconds since_start) {
        s.when = t0 + since_start;
        return s;
    }
    void merge(long pages) {
        s.pages_sharing += pages;
        s.pages_shared += pages / 4;
        *s.general_profit += pages * 4096;
    }
    // ksmd busy (0.25 CPU-s per 250 ms tick) and still merging at every
    // full scan (one a second): steps `logic` from *ms until it leaves the
    // burst (or `limit_ms`); returns the decision that left it.
    KsmDecision busy_burst(KsmBurstLogic& logic, int* ms, int limit_ms) {
        KsmDecision d;
        while (true) {
            *ms += 250;
            s.ksmd_cpu += 0.25;
            if (*ms % 1000 == 0) {
                s.full_scans += 1;
                merge(5000);
            }
            d = logic.step(at(std::chrono::milliseconds(*ms)));
            if (d.mode != KsmMode::burst) return d;
            REQUIRE(*ms < limit_ms);
        }
    }
};

}  // namespace

TEST_CASE("ksmtune: idle without kicks", "[ksmtune]") {
    KsmBurstLogic logic(test_options(), kIdle);
    Node n;
    for (int i = 0; i < 10; ++i) {
        n.s.full_scans += 1;
        auto d = logic.step(n.at(std::chrono::milliseconds(i * 2000)));
        CHECK(d.mode == KsmMode::idle);
        CHECK(d.knobs == kIdle);
        CHECK(d.next == 2000ms);
        CHECK_FALSE(d.burst_started);
    }
    CHECK(logic.bursts() == 0);
}

TEST_CASE("ksmtune: burst rate sized from AnonPages", "[ksmtune]") {
    KsmBurstLogic logic(test_options(), kIdle);
    // 1 GiB = 262144 pages in 1 s at 10 ms per cycle: 2621 pages a cycle.
    CHECK(logic.burst_pages_to_scan(262144, 0) == 2621);
    // Clamped at both ends.
    CHECK(logic.burst_pages_to_scan(1000, 0) == 1000);
    CHECK(logic.burst_pages_to_scan(100L * 262144, 0) == 16000);
    // Advised bytes announced with the kick are added.
    CHECK(logic.burst_pages_to_scan(262144, 1ULL << 30) == 5242);
    // A fixed burst rate is taken as it is.
    auto o = test_options();
    o.burst.pages_to_scan = 5000;
    KsmBurstLogic fixed(o, kIdle);
    CHECK(fixed.burst_pages_to_scan(262144, 0) == 5000);
}

TEST_CASE("ksmtune: a kick starts a burst that ends after settling and two full scans", "[ksmtune]") {
    KsmBurstLogic logic(test_options(), kIdle);
    Node n;
    CHECK(logic.step(n.at(0ms)).mode == KsmMode::idle);

    logic.kick("container abc registered");
    auto d = logic.step(n.at(100ms));
    CHECK(d.burst_started);
    CHECK(d.mode == KsmMode::burst);
    CHECK(d.knobs == KsmKnobs{1, 2621, 10, ""});
    CHECK(d.next == 250ms);
    CHECK(logic.bursts() == 1);
    REQUIRE(logic.current_burst());
    CHECK(logic.current_burst()->first_reason == "container abc registered");

    // Partial first lap: checksums only.
    d = logic.step(n.at(600ms));
    CHECK(d.mode == KsmMode::burst);
    n.s.full_scans += 1;
    d = logic.step(n.at(1000ms));
    CHECK(d.mode == KsmMode::burst);
    // Second lap merges.
    n.merge(40000);
    d = logic.step(n.at(1500ms));
    CHECK(d.mode == KsmMode::burst);
    n.s.full_scans += 1;
    n.merge(8000);
    d = logic.step(n.at(2000ms));
    CHECK(d.mode == KsmMode::burst);     // two scans, but the last one still merged
    // A third lap without growth: done.
    d = logic.step(n.at(2500ms));
    CHECK(d.mode == KsmMode::burst);     // no scan completed yet
    n.s.full_scans += 1;
    n.merge(10);                         // noise below settle_pages
    d = logic.step(n.at(3000ms));
    CHECK(d.burst_ended);
    CHECK(d.mode == KsmMode::idle);
    CHECK(d.knobs == kIdle);
    CHECK(d.next == 2000ms);
    REQUIRE(logic.last_burst());
    CHECK(logic.last_burst()->end_reason == "settled");
    CHECK(logic.last_burst()->full_scans == 3);
    CHECK(logic.last_burst()->pages_sharing_gained == 48010);
    CHECK(logic.last_burst()->duration == 2900ms);
    CHECK_FALSE(logic.current_burst());

    // Idle afterwards, whatever the counters do.
    n.s.full_scans += 5;
    n.merge(100000);
    CHECK(logic.step(n.at(10000ms)).mode == KsmMode::idle);
}

TEST_CASE("ksmtune: no growth is not enough before two full scans", "[ksmtune]") {
    KsmBurstLogic logic(test_options(), kIdle);
    Node n;
    logic.kick("k");
    CHECK(logic.step(n.at(0ms)).burst_started);
    // Nothing grows, but only one full scan completes for a long time.
    n.s.full_scans += 1;
    for (int i = 1; i <= 40; ++i) CHECK(logic.step(n.at(std::chrono::milliseconds(i * 250))).mode == KsmMode::burst);
    n.s.full_scans += 1;
    auto d = logic.step(n.at(10250ms));
    CHECK(d.burst_ended);
    CHECK(logic.last_burst()->end_reason == "settled");
}

TEST_CASE("ksmtune: over its CPU budget a burst trickles until the memory is scanned, never stops short", "[ksmtune]") {
    // ksmd stopped between bursts (the kernel default), so a burst cut short
    // would leave advised memory unmerged for ever.
    const KsmKnobs idle_off{0, 100, 20, ""};
    auto o = test_options();
    o.max_cpu_per_minute = 1000.0;   // only the per-burst budget here
    KsmBurstLogic logic(o, idle_off);
    Node n;
    logic.kick("k", 1ULL << 30);     // 1 GiB advised: budget 10 + 8 = 18 CPU-s
    CHECK(logic.step(n.at(0ms)).burst_started);
    int ms = 0;
    KsmDecision d = n.busy_burst(logic, &ms, 120000);
    CHECK(d.mode == KsmMode::trickle);
    CHECK(d.trickle_started);
    CHECK_FALSE(d.burst_ended);
    CHECK(ms == 18250);              // the first tick over 18 CPU-s
    CHECK(d.knobs == KsmKnobs{1, 100, 20, ""});
    CHECK(logic.current_burst()->trickle_reason == "budget");
    CHECK(logic.current_burst()->cpu_budget == Approx(18.0));

    // Trickling: slower scans that still merge keep it going ...
    for (int i = 0; i < 5; ++i) {
        ms += 5000;
        n.s.ksmd_cpu += 0.5;
        n.s.full_scans += 1;
        n.merge(5000);
        d = logic.step(n.at(std::chrono::milliseconds(ms)));
        CHECK(d.mode == KsmMode::trickle);
    }
    // ... until a full scan adds nothing: done, back to idle (ksmd off).
    ms += 5000;
    n.s.full_scans += 1;
    d = logic.step(n.at(std::chrono::milliseconds(ms)));
    CHECK(d.burst_ended);
    CHECK(d.knobs == idle_off);
    REQUIRE(logic.last_burst());
    CHECK(logic.last_burst()->end_reason == "settled");
    CHECK(logic.last_burst()->trickle_reason == "budget");
    CHECK(logic.last_burst()->trickle_duration == 30000ms);
    CHECK(logic.last_burst()->cpu_seconds == Approx(18.25 + 2.5));
}

TEST_CASE("ksmtune: the budget grows with the advised memory (AnonPages growth counts as advice)", "[ksmtune]") {
    auto o = test_options();
    o.max_cpu_per_minute = 1000.0;
    KsmBurstLogic logic(o, kIdle);
    Node n;
    logic.kick("register");          // no bytes announced
    CHECK(logic.step(n.at(0ms)).burst_started);
    n.s.anon_pages += 4 * 262144;    // 4 GiB loaded since: budget 10 + 32
    int ms = 0;
    KsmDecision d = n.busy_burst(logic, &ms, 300000);
    CHECK(ms == 42250);
    CHECK(logic.current_burst()->cpu_budget == Approx(42.0));
}

TEST_CASE("ksmtune: at most max_cpu_per_minute; a kick in a trickle bursts again when the minute allows", "[ksmtune]") {
    auto o = test_options();
    o.burst_cpu_base = 1000.0;       // only the rate bound here
    o.max_cpu_per_minute = 20.0;
    KsmBurstLogic logic(o, kIdle);
    Node n;
    logic.kick("k");
    CHECK(logic.step(n.at(0ms)).burst_started);
    int ms = 0;
    KsmDecision d = n.busy_burst(logic, &ms, 120000);
    CHECK(d.mode == KsmMode::trickle);
    CHECK(ms == 20000);              // 20 CPU-s within the last minute
    CHECK(logic.current_burst()->trickle_reason == "rate");
    // A kick while the minute is spent: still trickling.
    logic.kick("more", 64 << 20);
    ms += 250;
    n.s.ksmd_cpu += 0.01;
    n.merge(100);
    d = logic.step(n.at(std::chrono::milliseconds(ms)));
    CHECK(d.mode == KsmMode::trickle);
    // Once the heavy minute has passed, the kick bursts again.
    for (int i = 0; i < 70 && d.mode == KsmMode::trickle; ++i) {
        ms += 1000;
        n.s.ksmd_cpu += 0.05;
        n.merge(100);
        d = logic.step(n.at(std::chrono::milliseconds(ms)));
    }
    CHECK(d.mode == KsmMode::burst);
    CHECK(ms > 60000);
    CHECK(logic.bursts() == 1);      // the same burst, fast again
}

TEST_CASE("ksmtune: a burst that never settles ends at max_merging", "[ksmtune]") {
    auto o = test_options();
    o.max_merging = std::chrono::minutes(2);
    KsmBurstLogic logic(o, kIdle);
    Node n;
    logic.kick("k");
    CHECK(logic.step(n.at(0ms)).burst_started);
    KsmDecision d;
    int ms = 0;
    while (true) {
        ms += 1000;
        n.s.ksmd_cpu += 0.1;
        n.s.full_scans += 1;
        n.merge(5000);
        d = logic.step(n.at(std::chrono::milliseconds(ms)));
        if (d.burst_ended) break;
        REQUIRE(ms < 600000);
    }
    CHECK(ms == 120000);
    CHECK(logic.last_burst()->end_reason == "timeout");
}

TEST_CASE("ksmtune: a kick during a burst extends it", "[ksmtune]") {
    KsmBurstLogic logic(test_options(), kIdle);
    Node n;
    logic.kick("first");
    CHECK(logic.step(n.at(0ms)).burst_started);
    n.s.full_scans += 1;
    n.merge(1000);
    CHECK(logic.step(n.at(1000ms)).mode == KsmMode::burst);
    // Second container arrives, with more anonymous memory now.
    n.s.anon_pages *= 2;
    logic.kick("second", 0);
    auto d = logic.step(n.at(1200ms));
    CHECK(d.mode == KsmMode::burst);
    CHECK_FALSE(d.burst_started);
    CHECK(d.knobs.pages_to_scan == 5242);      // re-sized, never shrunk
    // Without the kick these two scans without growth would end it (2 scans
    // since the start); with it, two scans since the kick are needed.
    n.s.full_scans += 1;
    CHECK(logic.step(n.at(2000ms)).mode == KsmMode::burst);
    n.s.full_scans += 1;
    d = logic.step(n.at(3000ms));
    CHECK(d.burst_ended);
    CHECK(logic.bursts() == 1);
    CHECK(logic.last_burst()->kicks == 2);
    CHECK(logic.last_burst()->first_reason == "first");
}

TEST_CASE("ksmtune: several kicks before a step make one burst", "[ksmtune]") {
    KsmBurstLogic logic(test_options(), kIdle);
    Node n;
    for (int i = 0; i < 5; ++i) logic.kick("c" + std::to_string(i), 64ULL << 20);
    auto d = logic.step(n.at(0ms));
    CHECK(d.burst_started);
    CHECK(logic.current_burst()->kicks == 5);
    // 1 GiB anon + 320 MiB announced.
    CHECK(d.knobs.pages_to_scan == logic.burst_pages_to_scan(262144, 320ULL << 20));
}

TEST_CASE("ksmtune: minimum burst duration", "[ksmtune]") {
    auto o = test_options();
    o.min_burst = 5000ms;
    KsmBurstLogic logic(o, kIdle);
    Node n;
    logic.kick("k");
    CHECK(logic.step(n.at(0ms)).burst_started);
    for (int s = 1; s <= 4; ++s) {
        n.s.full_scans += 1;
        CHECK(logic.step(n.at(std::chrono::milliseconds(s * 1000))).mode == KsmMode::burst);
    }
    n.s.full_scans += 1;
    CHECK(logic.step(n.at(5000ms)).burst_ended);
}

TEST_CASE("ksmtune: savings growth is judged on pages_shared and general_profit too", "[ksmtune]") {
    KsmBurstLogic logic(test_options(), kIdle);
    Node n;
    logic.kick("k");
    CHECK(logic.step(n.at(0ms)).burst_started);
    n.s.full_scans += 2;
    n.merge(5000);
    CHECK(logic.step(n.at(1000ms)).mode == KsmMode::burst);  // two scans, still merging
    // pages_sharing flat, but the profit grew by 1000 pages: not settled.
    n.s.full_scans += 1;
    *n.s.general_profit += 1000 * 4096;
    CHECK(logic.step(n.at(2000ms)).mode == KsmMode::burst);
    n.s.full_scans += 1;
    n.s.pages_shared += 500;
    CHECK(logic.step(n.at(3000ms)).mode == KsmMode::burst);
    n.s.full_scans += 1;
    CHECK(logic.step(n.at(4000ms)).burst_ended);
}

// ---------------------------------------------------------------------------
// KsmTuner on a fake sysfs

namespace {

struct FakeNode {
    fs::path dir;
    FakeNode() {
        char tmpl[] = "/tmp/upm-ksmtune-XXXXXX";
        REQUIRE(::mkdtemp(tmpl) != nullptr);
        dir = tmpl;
        fs::create_directories(sysfs());
        fs::create_directories(proc() / "sys/kernel/random");
        set("run", "0");
        set("pages_to_scan", "123");
        set("sleep_millisecs", "37");
        set("advisor_mode", "[none] scan-time");
        for (auto c : {"full_scans", "pages_shared", "pages_sharing", "pages_unshared", "pages_volatile", "general_profit"})
            set(c, "0");
        write(proc() / "meminfo", "MemTotal:       1000000 kB\nAnonPages:       409600 kB\n");
        write(proc() / "sys/kernel/random/boot_id", "boot-1\n");
    }
    ~FakeNode() {
        std::error_code ec;
        fs::remove_all(dir, ec);
    }
    fs::path sysfs() const { return dir / "ksm"; }
    fs::path proc() const { return dir / "proc"; }
    fs::path state() const { return dir / "run/upm/ksm-original.json"; }
    static void write(const fs::path& p, const std::string& text) {
        std::ofstream(p, std::ios::trunc) << text;
    }
    void set(const std::string& knob, const std::string& v) const { write(sysfs() / knob, v + "\n"); }
    std::string get(const std::string& knob) const {
        auto t = test::read_text(sysfs() / knob);
        while (!t.empty() && (t.back() == '\n' || t.back() == ' ')) t.pop_back();
        return t;
    }
    KsmTunerOptions options() const {
        auto o = test_options();
        o.sysfs = sysfs();
        o.proc = proc();
        o.state_file = state();
        o.idle = KsmKnobs{-1, 100, 20, "none"};
        o.burst = KsmKnobs{1, -1, 10, "none"};
        return o;
    }
};

}  // namespace

TEST_CASE("ksmtune: tuner records, bursts and restores on a fake sysfs", "[ksmtune]") {
    FakeNode node;
    KsmTuner tuner(node.options());
    REQUIRE(tuner.start().ok());
    REQUIRE(fs::exists(node.state()));
    auto saved = nlohmann::json::parse(test::read_text(node.state()));
    CHECK(saved["knobs"]["run"] == 0);
    CHECK(saved["knobs"]["pages_to_scan"] == 123);
    CHECK(saved["knobs"]["sleep_millisecs"] == 37);
    CHECK(saved["knobs"]["advisor_mode"] == "none");
    CHECK(saved["boot_id"] == "boot-1");

    // Original run=0: idle keeps ksmd stopped, at the idle rate.
    auto st = tuner.status();
    CHECK(st.mode == "idle");
    CHECK_FALSE(st.recovered);
    CHECK(st.idle == KsmKnobs{0, 100, 20, "none"});
    CHECK(node.get("run") == "0");
    CHECK(node.get("pages_to_scan") == "100");
    CHECK(node.get("sleep_millisecs") == "20");

    // Kick: burst, ksmd runs, rate sized from AnonPages (400 MiB in 1 s at 10 ms).
    tuner.kick("test");
    CHECK(tuner.status().mode == "burst");
    CHECK(node.get("run") == "1");
    CHECK(node.get("pages_to_scan") == "1024");
    CHECK(node.get("sleep_millisecs") == "10");

    // Three full scans, nothing more to merge: back to idle (run=0 again).
    for (int i = 1; i <= 3; ++i) {
        node.set("full_scans", std::to_string(i));
        (void)tuner.tick();
    }
    st = tuner.status();
    CHECK(st.mode == "idle");
    CHECK(st.bursts == 1);
    REQUIRE(st.last_burst);
    CHECK(st.last_burst->end_reason == "settled");
    CHECK(node.get("run") == "0");
    CHECK(node.get("pages_to_scan") == "100");

    auto j = nlohmann::json::parse(to_json(st));
    CHECK(j["mode"] == "idle");
    CHECK(j["original"]["pages_to_scan"] == 123);
    CHECK(j["last_burst"]["end_reason"] == "settled");

    REQUIRE(tuner.stop().ok());
    CHECK(node.get("run") == "0");
    CHECK(node.get("pages_to_scan") == "123");
    CHECK(node.get("sleep_millisecs") == "37");
    CHECK_FALSE(fs::exists(node.state()));
    CHECK(tuner.status().mode == "stopped");
}

TEST_CASE("ksmtune: originals recovered from the state file of a crashed agent", "[ksmtune]") {
    FakeNode node;
    node.set("run", "1");
    {
        KsmTuner crashed(node.options());
        REQUIRE(crashed.start().ok());
        crashed.kick("burst, then crash");
        CHECK(node.get("sleep_millisecs") == "10");
        // no stop(): the state file stays, ksmd is left at burst settings
    }
    REQUIRE(fs::exists(node.state()));
    CHECK(node.get("pages_to_scan") == "1024");

    KsmTuner next(node.options());
    REQUIRE(next.start().ok());
    auto st = next.status();
    CHECK(st.recovered);
    CHECK(st.original == KsmKnobs{1, 123, 37, "none"});   // not the burst values it found
    CHECK(st.idle == KsmKnobs{1, 100, 20, "none"});
    CHECK(node.get("sleep_millisecs") == "20");            // idle applied at start
    REQUIRE(next.stop().ok());
    CHECK(node.get("pages_to_scan") == "123");
    CHECK(node.get("sleep_millisecs") == "37");
    CHECK(node.get("run") == "1");
    CHECK_FALSE(fs::exists(node.state()));
}

TEST_CASE("ksmtune: a state file from another boot is ignored", "[ksmtune]") {
    FakeNode node;
    fs::create_directories(node.state().parent_path());
    FakeNode::write(node.state(),
                    R"({"version":1,"boot_id":"boot-0","pid":1,"knobs":{"run":1,"pages_to_scan":5,"sleep_millisecs":5}})");
    KsmTuner tuner(node.options());
    REQUIRE(tuner.start().ok());
    CHECK_FALSE(tuner.status().recovered);
    CHECK(tuner.status().original == KsmKnobs{0, 123, 37, "none"});
    REQUIRE(tuner.stop().ok());
    CHECK(node.get("pages_to_scan") == "123");
}

TEST_CASE("ksmtune: a corrupt state file is ignored", "[ksmtune]") {
    FakeNode node;
    fs::create_directories(node.state().parent_path());
    FakeNode::write(node.state(), "{\"knobs\": [");
    KsmTuner tuner(node.options());
    REQUIRE(tuner.start().ok());
    CHECK_FALSE(tuner.status().recovered);
    CHECK(tuner.status().original.pages_to_scan == 123);
    REQUIRE(tuner.stop().ok());
}

TEST_CASE("ksmtune: restore keeps the state file when a knob cannot be written", "[ksmtune]") {
    // A directory in place of the knob makes open() fail, for root too.
    FakeNode node;
    KsmTuner tuner(node.options());
    REQUIRE(tuner.start().ok());
    fs::remove(node.sysfs() / "sleep_millisecs");
    fs::create_directory(node.sysfs() / "sleep_millisecs");
    auto st = tuner.stop();
    REQUIRE_FALSE(st.ok());
    CHECK(st.error().message.find("sleep_millisecs") != std::string::npos);
    CHECK(fs::exists(node.state()));
    // The other knobs were restored nonetheless.
    CHECK(node.get("pages_to_scan") == "123");
}

TEST_CASE("ksmtune: a refused knob write is reported, the other knobs are written", "[ksmtune]") {
    // EBUSY/EINVAL from sysfs stand-in: a directory in place of the knob.
    FakeNode node;
    KsmTuner tuner(node.options());
    REQUIRE(tuner.start().ok());
    fs::remove(node.sysfs() / "sleep_millisecs");
    fs::create_directory(node.sysfs() / "sleep_millisecs");
    tuner.kick("refused");
    auto st = tuner.status();
    CHECK(st.mode == "burst");
    CHECK(st.last_error.find("sleep_millisecs") != std::string::npos);
    CHECK(node.get("run") == "1");
    CHECK(node.get("pages_to_scan") == "1024");
    (void)tuner.tick();    // retried, no crash
    CHECK(tuner.status().mode == "burst");
}

TEST_CASE("ksmtune: start fails without leaving changes when the idle setting cannot be written", "[ksmtune]") {
    FakeNode node;
    fs::remove(node.sysfs() / "sleep_millisecs");
    fs::create_directory(node.sysfs() / "sleep_millisecs");   // every write refused
    KsmTuner tuner(node.options());
    auto st = tuner.start();
    REQUIRE_FALSE(st.ok());
    CHECK(st.error().message.find("sleep_millisecs") != std::string::npos);
    CHECK(node.get("pages_to_scan") == "123");    // the idle 100 was written, then undone
    CHECK(node.get("run") == "0");
    CHECK_FALSE(fs::exists(node.state()));
    CHECK(tuner.status().mode == "stopped");
}

TEST_CASE("ksmtune: the scan-time advisor is off during the tuner's life and restored at stop", "[ksmtune]") {
    FakeNode node;
    node.set("advisor_mode", "none [scan-time]");
    KsmTuner tuner(node.options());
    REQUIRE(tuner.start().ok());
    CHECK(tuner.status().original.advisor_mode == "scan-time");
    CHECK(node.get("advisor_mode") == "none");       // our idle rate must hold
    CHECK(node.get("pages_to_scan") == "100");
    tuner.kick("k");
    CHECK(node.get("advisor_mode") == "none");
    CHECK(node.get("pages_to_scan") == "1024");
    REQUIRE(tuner.stop().ok());
    // pages_to_scan is written while the advisor is still off, then the
    // advisor comes back (on a real kernel it then owns pages_to_scan).
    CHECK(node.get("pages_to_scan") == "123");
    CHECK(node.get("advisor_mode") == "scan-time");
    CHECK_FALSE(fs::exists(node.state()));
}

TEST_CASE("ksmtune: by default the admin's scan-time advisor runs between bursts, not during them", "[ksmtune]") {
    FakeNode node;
    node.set("run", "1");
    node.set("advisor_mode", "none [scan-time]");
    auto o = node.options();
    o.idle = KsmTunerOptions{}.idle;       // the default: advisor as the original
    o.burst = KsmTunerOptions{}.burst;
    KsmTuner tuner(o);
    REQUIRE(tuner.start().ok());
    CHECK(tuner.status().idle.advisor_mode == "scan-time");
    CHECK(tuner.status().current.advisor_mode == "scan-time");   // left as it was
    CHECK(node.get("run") == "1");
    tuner.kick("k");
    CHECK(tuner.status().mode == "burst");
    CHECK(node.get("advisor_mode") == "none");      // a burst sets its own rate
    REQUIRE(tuner.stop().ok());
    CHECK(node.get("advisor_mode") == "scan-time");
    CHECK(node.get("run") == "1");
}

TEST_CASE("ksmtune: a node without the advisor (Linux 6.1) is tuned without it", "[ksmtune]") {
    FakeNode node;
    fs::remove(node.sysfs() / "advisor_mode");
    KsmTuner tuner(node.options());
    REQUIRE(tuner.start().ok());
    auto st = tuner.status();
    CHECK(st.original.advisor_mode.empty());
    CHECK(st.idle.advisor_mode.empty());
    CHECK(st.burst.advisor_mode.empty());
    CHECK_FALSE(fs::exists(node.sysfs() / "advisor_mode"));
    tuner.kick("k");
    CHECK(node.get("run") == "1");
    REQUIRE(tuner.stop().ok());
    CHECK_FALSE(fs::exists(node.sysfs() / "advisor_mode"));
    CHECK(node.get("pages_to_scan") == "123");
}

TEST_CASE("ksmtune: no ksm on the node", "[ksmtune]") {
    FakeNode node;
    fs::remove(node.sysfs() / "run");
    KsmTuner tuner(node.options());
    auto st = tuner.start();
    REQUIRE_FALSE(st.ok());
    CHECK(st.error().err == ENOENT);
    CHECK_FALSE(fs::exists(node.state()));
}

TEST_CASE("ksmtune: knobs to string", "[ksmtune]") {
    CHECK(to_string(KsmKnobs{1, 100, 20, "none"}) == "run=1 pages_to_scan=100 sleep_millisecs=20 advisor_mode=none");
    CHECK(to_string(KsmKnobs{0, -1, 5, ""}) == "run=0 sleep_millisecs=5");
    CHECK(to_string(KsmMode::burst) == "burst");
}
