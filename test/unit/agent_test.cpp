// The node agent's library parts: the request parser, the registry and its
// state file, the per-container counters, the Prometheus text format.
#include <sys/stat.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <cstdio>
#include <fstream>
#include <nlohmann/json.hpp>
#include <regex>
#include <set>
#include <sstream>

#include "upm/agent_client.hpp"
#include "upm/agent_proto.hpp"
#include "upm/agent_registry.hpp"
#include "upm/metrics.hpp"

using namespace upm;
using json = nlohmann::json;

namespace {

std::string error_of(std::string_view line) {
    auto r = parse_agent_request(line);
    REQUIRE_FALSE(r.ok());
    return r.error().message;
}

std::string temp_dir() {
    char tmpl[] = "/tmp/upm-agent-test-XXXXXX";
    REQUIRE(::mkdtemp(tmpl) != nullptr);
    return tmpl;
}

}  // namespace

TEST_CASE("agent proto: valid requests", "[agent]") {
    auto r = parse_agent_request(R"({"op":"ping"})");
    REQUIRE(r.ok());
    CHECK(r->op == AgentOp::ping);

    r = parse_agent_request(
        R"({"op":"register","id":"abc","pid":123,"cgroup":"/kubepods/pod1/c1","policy":"python-ml","domain":"tenant-a","start_time":456,"future":[1]})");
    REQUIRE(r.ok());
    CHECK(r->op == AgentOp::register_container);
    CHECK(r->id == "abc");
    CHECK(r->pid == 123);
    CHECK(r->cgroup == "/kubepods/pod1/c1");
    CHECK(r->policy == "python-ml");
    CHECK(r->domain == "tenant-a");
    REQUIRE(r->start_time);
    CHECK(*r->start_time == 456);

    r = parse_agent_request(R"({"op":"unregister","id":"abc"})" "\r");
    REQUIRE(r.ok());
    CHECK(r->op == AgentOp::unregister_container);

    r = parse_agent_request(R"({"op":"advised","pid":7,"bytes":1048576,"calls":3,"seconds":0.25})");
    REQUIRE(r.ok());
    CHECK(r->bytes == 1048576);
    CHECK(r->calls == 3);
    CHECK(r->seconds == Approx(0.25));
    r = parse_agent_request(R"({"op":"advised","id":"x","bytes":1})");
    REQUIRE(r.ok());
    CHECK(r->calls == 1);

    CHECK(parse_agent_request(R"({"op":"list"})")->op == AgentOp::list);
    CHECK(parse_agent_request(R"({"op":"status"})")->op == AgentOp::status);

    r = parse_agent_request(R"({"op":"ksm-claim","id":"c1","namespace":"team-a"})");
    REQUIRE(r.ok());
    CHECK(r->op == AgentOp::ksm_claim);
    CHECK(r->ksm_namespace == "team-a");
    r = parse_agent_request(R"({"op":"advise","id":"c1","policy":"python-ml"})");
    REQUIRE(r.ok());
    CHECK(r->op == AgentOp::advise);
    CHECK(r->policy == "python-ml");
    CHECK(parse_agent_request(R"({"op":"advise","pid":7})")->pid == 7);
    r = parse_agent_request(R"({"op":"register","id":"a","pid":1,"ksm_namespace":"shop"})");
    REQUIRE(r.ok());
    CHECK(r->ksm_namespace == "shop");
}

TEST_CASE("agent proto: every error names what is wrong", "[agent]") {
    CHECK_THAT(error_of(""), Catch::Contains("empty"));
    CHECK_THAT(error_of("   "), Catch::Contains("empty"));
    CHECK_THAT(error_of("hello"), Catch::Contains("not valid JSON"));
    CHECK_THAT(error_of("[1,2]"), Catch::Contains("not a JSON object"));
    CHECK_THAT(error_of(R"({"op":1})"), Catch::Contains("`op`"));
    CHECK_THAT(error_of(R"({"op":"reboot"})"), Catch::Contains("unknown `op` `reboot`"));
    CHECK_THAT(error_of(R"({"op":"register","pid":1})"), Catch::Contains("missing `id`"));
    CHECK_THAT(error_of(R"({"op":"register","id":"a"})"), Catch::Contains("missing `pid`"));
    CHECK_THAT(error_of(R"({"op":"register","id":"","pid":1})"), Catch::Contains("`id` is empty"));
    CHECK_THAT(error_of(R"({"op":"register","id":"a/b","pid":1})"), Catch::Contains("`/`"));
    CHECK_THAT(error_of(R"({"op":"register","id":"a\nb","pid":1})"), Catch::Contains("control character"));
    CHECK_THAT(error_of(R"({"op":"register","id":"a","pid":0})"), Catch::Contains("out of range"));
    CHECK_THAT(error_of(R"({"op":"register","id":"a","pid":-5})"), Catch::Contains("out of range"));
    CHECK_THAT(error_of(R"({"op":"register","id":"a","pid":4194305})"), Catch::Contains("out of range"));
    CHECK_THAT(error_of(R"({"op":"register","id":"a","pid":1.5})"), Catch::Contains("not an integer"));
    CHECK_THAT(error_of(R"({"op":"register","id":"a","pid":"1"})"), Catch::Contains("not an integer"));
    CHECK_THAT(error_of(R"({"op":"register","id":"a","pid":1,"cgroup":"x"})"), Catch::Contains("absolute"));
    CHECK_THAT(error_of(R"({"op":"register","id":"a","pid":1,"cgroup":"/a/../b"})"), Catch::Contains(".."));
    CHECK_THAT(error_of(R"({"op":"register","id":"a","pid":1,"policy":7})"), Catch::Contains("`policy` is not a string"));
    CHECK_THAT(error_of(R"({"op":"register","id":"a","pid":1,"domain":")" + std::string(300, 'd') + "\"}"),
               Catch::Contains("longer than 256"));
    CHECK_THAT(error_of(R"({"op":"register","id":")" + std::string(1025, 'i') + R"(","pid":1})"),
               Catch::Contains("longer than 1024"));
    CHECK_THAT(error_of(R"({"op":"advised","bytes":5})"), Catch::Contains("`id` or `pid`"));
    CHECK_THAT(error_of(R"({"op":"advised","id":"a"})"), Catch::Contains("missing `bytes`"));
    CHECK_THAT(error_of(R"({"op":"advised","id":"a","bytes":1,"seconds":-1})"), Catch::Contains("`seconds`"));
    CHECK_THAT(error_of(R"({"op":"advised","id":"a","bytes":1,"seconds":"x"})"), Catch::Contains("`seconds`"));
    CHECK_THAT(error_of(R"({"op":"ksm-claim","id":"a"})"), Catch::Contains("missing `namespace`"));
    CHECK_THAT(error_of(R"({"op":"advise"})"), Catch::Contains("`id` or `pid`"));
    CHECK_THAT(error_of(R"({"op":"advise","id":"a","policy":"../x"})"), Catch::Contains("policy NAME"));
    CHECK_THAT(error_of(R"({"op":"ksm-claim","namespace":"x"})"), Catch::Contains("missing `id`"));
    CHECK_THAT(error_of(R"({"op":"ksm-claim","id":"a","namespace":"Team_A"})"), Catch::Contains("DNS label"));
    CHECK_THAT(error_of(R"({"op":"register","id":"a","pid":1,"ksm_namespace":"a.b"})"), Catch::Contains("DNS label"));
    // Nesting, size, binary.
    CHECK_THAT(error_of(R"({"op":"ping","x":[[[[[1]]]]]})"), Catch::Contains("nested deeper"));
    CHECK_THAT(error_of(std::string(100000, '[')), Catch::Contains("longer than 65536"));
    CHECK_THAT(error_of(std::string(60000, '[')), Catch::Contains("nested deeper"));
    CHECK_THAT(error_of(std::string("{\"op\":\"ping\"}\0garbage", 22)), Catch::Contains("NUL byte"));
    CHECK_THAT(error_of("{\"op\":\"register\",\"id\":\"\xff\xfe\",\"pid\":1}"), Catch::Contains("not valid JSON"));
    std::string binary;
    for (int i = 0; i < 4096; ++i) binary += static_cast<char>((i * 131 + 7) & 0xff);
    CHECK_FALSE(parse_agent_request(binary).ok());
}

TEST_CASE("agent proto: format and parse agree; error replies are JSON", "[agent]") {
    AgentRequest r;
    r.op = AgentOp::register_container;
    r.id = "c-\"quoted\"\\";
    r.pid = 42;
    r.cgroup = "/system.slice/x.scope";
    r.policy = "p";
    r.domain = "d";
    r.start_time = 99;
    std::string line = format_agent_request(r);
    REQUIRE(line.back() == '\n');
    REQUIRE(std::count(line.begin(), line.end(), '\n') == 1);
    auto back = parse_agent_request(std::string_view(line).substr(0, line.size() - 1));
    REQUIRE(back.ok());
    CHECK(back->id == r.id);
    CHECK(back->pid == 42);
    CHECK(back->cgroup == r.cgroup);
    CHECK(*back->start_time == 99);
    r.ksm_namespace = "shop";
    line = format_agent_request(r);
    CHECK(parse_agent_request(std::string_view(line).substr(0, line.size() - 1))->ksm_namespace == "shop");
    AgentRequest claim;
    claim.op = AgentOp::ksm_claim;
    claim.id = "c";
    claim.ksm_namespace = "team-a";
    line = format_agent_request(claim);
    auto claim_back = parse_agent_request(std::string_view(line).substr(0, line.size() - 1));
    REQUIRE(claim_back.ok());
    CHECK(claim_back->op == AgentOp::ksm_claim);
    CHECK(claim_back->ksm_namespace == "team-a");

    std::string err = agent_error_reply("bad \xff byte \"here\"\n");
    REQUIRE(err.back() == '\n');
    auto doc = json::parse(err.substr(0, err.size() - 1));
    CHECK(doc["ok"] == false);
    CHECK_THAT(doc["error"].get<std::string>(), Catch::Contains("byte"));
}

TEST_CASE("agent proto: socket path from the environment", "[agent]") {
    ::setenv(kEnvAgentSocket, "/tmp/x.sock", 1);
    CHECK(agent_socket_path() == "/tmp/x.sock");
    ::setenv(kEnvAgentSocket, "", 1);
    CHECK(agent_socket_path() == kAgentSocket);
    ::unsetenv(kEnvAgentSocket);
    CHECK(agent_socket_path() == kAgentSocket);
}

TEST_CASE("agent registry: add, replace, remove, capacity, pid reuse", "[agent]") {
    agent::Registry reg(2);
    agent::Container a{.id = "a", .pid = ::getpid(), .start_ticks = agent::process_start_ticks(::getpid())};
    REQUIRE(a.start_ticks > 0);
    CHECK(*reg.add(a) == true);
    reg.find("a")->advised.bytes = 10;
    CHECK(*reg.add(a) == false);                 // same process again: counters kept
    CHECK(reg.find("a")->advised.bytes == 10);
    agent::Container b{.id = "b", .pid = ::getpid(), .start_ticks = a.start_ticks + 1};  // "reused" pid
    CHECK(*reg.add(b) == true);
    agent::Container c{.id = "c", .pid = ::getpid(), .start_ticks = a.start_ticks};
    auto full = reg.add(c);
    REQUIRE_FALSE(full.ok());
    CHECK_THAT(full.error().message, Catch::Contains("registry full"));
    CHECK(reg.find_pid(::getpid()) != nullptr);
    auto dropped = reg.prune_dead();
    REQUIRE(dropped.size() == 1);
    CHECK(dropped[0].id == "b");
    CHECK(reg.remove("a"));
    CHECK_FALSE(reg.remove("a"));
    CHECK(reg.size() == 0);
}

TEST_CASE("agent registry: the state file survives a restart, dead processes are dropped", "[agent]") {
    std::string dir = temp_dir();
    std::string path = dir + "/state.json";
    agent::Registry reg;
    agent::Container live{.id = "live", .pid = ::getpid(), .start_ticks = agent::process_start_ticks(::getpid()),
                          .cgroup = "/x", .policy = "p", .domain = "d", .registered_at = 1.5};
    live.advised = {4096, 2, 0.5};
    REQUIRE(reg.add(live).ok());
    REQUIRE(reg.add(agent::Container{.id = "dead", .pid = 4194300, .start_ticks = 1}).ok());
    reg.node_advised() = {8192, 3, 1.0};
    REQUIRE(reg.save(path).ok());
    CHECK(::access((path + ".tmp").c_str(), F_OK) != 0);
    struct stat st {};
    REQUIRE(::stat(path.c_str(), &st) == 0);
    CHECK((st.st_mode & 0777) == 0600);

    std::vector<std::string> notes;
    auto loaded = agent::Registry::load(path, 16, notes);
    REQUIRE(loaded.ok());
    CHECK(loaded->size() == 1);
    auto* c = loaded->find("live");
    REQUIRE(c);
    CHECK(c->cgroup == "/x");
    CHECK(c->policy == "p");
    CHECK(c->advised.bytes == 4096);
    CHECK(c->registered_at == Approx(1.5));
    CHECK(loaded->node_advised().calls == 3);
    REQUIRE(notes.size() == 1);
    CHECK_THAT(notes[0], Catch::Contains("`dead`") && Catch::Contains("exited"));

    notes.clear();
    auto missing = agent::Registry::load(dir + "/none.json", 16, notes);
    REQUIRE(missing.ok());
    CHECK(missing->size() == 0);
    std::ofstream(dir + "/bad.json") << "{not json";
    CHECK_FALSE(agent::Registry::load(dir + "/bad.json", 16, notes).ok());
    std::ofstream(dir + "/entries.json") << R"({"containers":[1,{"id":"x/y","pid":1},{"id":"ok","pid":1,"start_time":0}]})";
    notes.clear();
    auto odd = agent::Registry::load(dir + "/entries.json", 16, notes);
    REQUIRE(odd.ok());
    CHECK(odd->size() == 0);   // pid 1's start time is not 0
    CHECK(notes.size() == 3);
    for (const char* f : {"/state.json", "/bad.json", "/entries.json"}) ::unlink((dir + f).c_str());
    ::rmdir(dir.c_str());
}

TEST_CASE("agent registry: a snapshot counts the process tree and agrees with /proc", "[agent]") {
    agent::Registry reg;
    REQUIRE(reg.add(agent::Container{.id = "me", .pid = ::getpid(), .start_ticks = agent::process_start_ticks(::getpid())}).ok());
    auto snap = agent::take_snapshot(reg);
    REQUIRE(snap.usage.count("me") == 1);
    const auto& u = snap.usage.at("me");
    CHECK(u.source == "tree");
    CHECK(u.processes >= 1);
    CHECK(std::find(u.pids.begin(), u.pids.end(), ::getpid()) != u.pids.end());
    std::ifstream f("/proc/self/ksm_merging_pages");
    if (f) {
        std::uint64_t pages = 0;
        f >> pages;
        CHECK(u.merging_pages == pages);   // only this process (the unit test forks nothing)
        CHECK(u.saved_bytes == u.merging_pages * static_cast<std::uint64_t>(::sysconf(_SC_PAGESIZE)));
    }
    auto node = agent::node_json(reg, snap);
    CHECK(node["containers"] == 1);
    auto list = agent::containers_json(reg, &snap);
    REQUIRE(list.size() == 1);
    CHECK(list[0]["id"] == "me");
    CHECK(list[0]["processes"] == u.processes);
}

TEST_CASE("agent: process helpers", "[agent]") {
    CHECK(agent::process_start_ticks(::getpid()) > 0);
    CHECK(agent::process_start_ticks(4194301) == 0);
    CHECK(agent::process_start_ticks(-1) == 0);
    std::string cg = agent::process_cgroup(::getpid());
    CHECK((cg.empty() || cg.front() == '/'));
}

TEST_CASE("metrics: escaping and values", "[metrics]") {
    CHECK(metrics::escape_label_value("a\"b\\c\nd") == "a\\\"b\\\\c\\nd");
    CHECK(metrics::escape_label_value("plain") == "plain");
    CHECK(metrics::escape_help("x\\y\nz \"q\"") == "x\\\\y\\nz \"q\"");
    CHECK(metrics::format_value(12) == "12");
    CHECK(metrics::format_value(0.5) == "0.5");
    CHECK(metrics::format_value(-3) == "-3");
    CHECK(metrics::format_value(std::numeric_limits<double>::quiet_NaN()) == "NaN");
    CHECK(metrics::format_value(std::numeric_limits<double>::infinity()) == "+Inf");
    CHECK(metrics::format_value(-std::numeric_limits<double>::infinity()) == "-Inf");

    metrics::Writer w;
    w.family("x_total", "counter", "things\ncounted");
    w.sample("x_total", {{"id", "a\"b"}, {"k", "v"}}, std::uint64_t(18446744073709551615ull));
    w.sample("x_total", {}, 1.25);
    CHECK(w.text() ==
          "# HELP x_total things\\ncounted\n# TYPE x_total counter\n"
          "x_total{id=\"a\\\"b\",k=\"v\"} 18446744073709551615\nx_total 1.25\n");
}

TEST_CASE("metrics: the agent's exposition is well formed", "[metrics]") {
    agent::Registry reg;
    REQUIRE(reg.add(agent::Container{.id = "weird \"id\"\\", .pid = ::getpid(),
                                     .start_ticks = agent::process_start_ticks(::getpid()), .policy = "p\nq"})
                .ok());
    auto snap = agent::take_snapshot(reg);
    agent::AgentInfo info;
    info.version = "1.2.3";
    info.requests["register"] = 1;
    info.tuner_mode = "idle";
    info.tuner_modes = {"idle", "burst", "stopped"};
    info.tuner_counters["bursts"] = 2;
    std::string text = agent::render_agent_metrics(reg, snap, info);

    // Every sample belongs to the family declared last, declared once, with HELP and TYPE.
    std::regex sample_rx(R"(^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{([a-zA-Z_][a-zA-Z0-9_]*="([^"\\]|\\.)*",?)*\})? (\S+)$)");
    std::set<std::string> declared;
    std::string current;
    std::istringstream in(text);
    std::string line;
    int samples = 0;
    while (std::getline(in, line)) {
        if (line.starts_with("# HELP ")) {
            auto name = line.substr(7, line.find(' ', 7) - 7);
            CHECK(declared.insert(name).second);
            current = name;
            continue;
        }
        if (line.starts_with("# TYPE ")) {
            CHECK(line.substr(7, current.size()) == current);
            auto type = line.substr(8 + current.size());
            CHECK((type == "gauge" || type == "counter"));
            continue;
        }
        std::smatch m;
        INFO(line);
        REQUIRE(std::regex_match(line, m, sample_rx));
        CHECK(m[1] == current);
        ++samples;
    }
    CHECK(samples > 20);
    CHECK_THAT(text, Catch::Contains("upm_container_merging_pages{id=\"weird \\\"id\\\"\\\\\"}"));
    CHECK_THAT(text, Catch::Contains("policy=\"p\\nq\""));
    CHECK_THAT(text, Catch::Contains("upm_ksm_tuner_mode{mode=\"idle\"} 1"));
    CHECK_THAT(text, Catch::Contains("upm_ksm_tuner_mode{mode=\"burst\"} 0"));
    CHECK_THAT(text, Catch::Contains("upm_ksm_tuner_bursts_total 2"));
    CHECK_THAT(text, Catch::Contains("upm_agent_info{version=\"1.2.3\"} 1"));
    CHECK_THAT(text, Catch::Contains("upm_node_pages_sharing "));
}

TEST_CASE("agent: growth of a container's anonymous memory is seen as new advice", "[agent]") {
    constexpr std::uint64_t MiB = 1 << 20;
    agent::GrowthWatch watch(8 * MiB, 0.05);
    agent::Snapshot s;
    auto at = [&](std::uint64_t a_mib, std::uint64_t b_mib) -> const agent::Snapshot& {
        s.usage["a"].anon_bytes = a_mib * MiB;
        s.usage["b"].anon_bytes = b_mib * MiB;
        return s;
    };
    // First sight: baselines only (registration kicked already).
    CHECK(watch.observe(at(20, 400)).empty());
    // Small growth is noise: 7 MiB, and b's 16 MiB is under 5% of 400 MiB.
    CHECK(watch.observe(at(27, 416)).empty());
    // The model arrives: a grew by 100 MiB since its baseline.
    auto g = watch.observe(at(120, 416));
    REQUIRE(g.size() == 1);
    CHECK(g[0].id == "a");
    CHECK(g[0].bytes == 100 * MiB);
    CHECK(g[0].anon == 120 * MiB);
    // The baseline moved: no second report for the same memory.
    CHECK(watch.observe(at(121, 416)).empty());
    // Freed and allocated again counts again (the baseline follows shrinks).
    CHECK(watch.observe(at(40, 416)).empty());
    g = watch.observe(at(90, 416));
    REQUIRE(g.size() == 1);
    CHECK(g[0].bytes == 50 * MiB);
    // b grows past 5% of its baseline (400 MiB: 20 MiB).
    g = watch.observe(at(90, 421));
    REQUIRE(g.size() == 1);
    CHECK(g[0].id == "b");
    CHECK(g[0].bytes == 21 * MiB);
    // A container that left the registry is forgotten; back again, it starts over.
    s.usage.erase("a");
    CHECK(watch.observe(s).empty());
    CHECK(watch.size() == 1);
    CHECK(watch.observe(at(500, 421)).empty());
}
