// Policy parsing and validation against the shipped examples and the
// broken documents of test/fixtures/policies/.  Each bad-*.json file states
// what it must produce in leading comments:
//   // expect: WHERE | MESSAGE SUBSTRING        (one line per error)
//   // expect-fix: WHERE | FIX SUBSTRING
// and the test requires exactly those errors, in that order.
#include <dirent.h>
#include <signal.h>
#include <stdlib.h>
#include <unistd.h>

#include <algorithm>
#include <catch2/catch.hpp>

#include "helpers.hpp"
#include "upm/policy.hpp"

using namespace upm;

namespace {

std::vector<std::string> list_dir(const std::string& dir, const std::string& prefix) {
    std::vector<std::string> out;
    if (DIR* d = ::opendir(dir.c_str())) {
        while (dirent* e = ::readdir(d)) {
            std::string n = e->d_name;
            if (n.starts_with(prefix) && n.ends_with(".json")) out.push_back(n);
        }
        ::closedir(d);
    }
    std::sort(out.begin(), out.end());
    return out;
}

struct Expect {
    std::string where, text;
    bool fix = false;
};

std::vector<Expect> expectations(const std::string& text) {
    std::vector<Expect> out;
    std::size_t pos = 0;
    while (pos < text.size()) {
        auto nl = text.find('\n', pos);
        std::string line = text.substr(pos, nl == std::string::npos ? std::string::npos : nl - pos);
        pos = nl == std::string::npos ? text.size() : nl + 1;
        for (std::string tag : {"// expect: ", "// expect-fix: "}) {
            if (!line.starts_with(tag)) continue;
            auto bar = line.find(" | ");
            REQUIRE(bar != std::string::npos);
            out.push_back({line.substr(tag.size(), bar - tag.size()), line.substr(bar + 3), tag == "// expect-fix: "});
        }
    }
    return out;
}

Policy parse_ok(const std::string& text) {
    auto check = parse_policy(text, "test");
    for (const auto& p : check.problems) UNSCOPED_INFO(format_problem("test", p));
    REQUIRE(check.policy.has_value());
    return *check.policy;
}

bool has_problem(const PolicyCheck& check, const std::string& where) {
    return std::any_of(check.problems.begin(), check.problems.end(), [&](auto& p) { return p.where == where; });
}

const PolicyProblem& only_error(const PolicyCheck& check) {
    REQUIRE(check.error_count() == 1);
    return *std::find_if(check.problems.begin(), check.problems.end(), [](auto& p) { return !p.warning(); });
}

Classified region(std::uintptr_t start, std::uint64_t size, RegionClass cls, std::string path = {},
                   std::uint64_t inode = 0) {
    Classified c;
    c.region.start = start;
    c.region.end = start + size;
    c.region.read = c.region.write = true;
    c.region.path = std::move(path);
    c.region.inode = inode;
    c.cls = cls;
    c.why = "test";
    return c;
}

}  // namespace

TEST_CASE("policy: every shipped example is valid", "[policy]") {
    auto files = list_dir(UPM_POLICIES_DIR, "");
    REQUIRE(files.size() >= 4);
    for (const auto& f : files) {
        INFO(f);
        auto check = load_policy_file(test::policy_file(f));
        for (const auto& p : check.problems) UNSCOPED_INFO(format_problem(f, p));
        CHECK(check.policy.has_value());
        CHECK(check.error_count() == 0);
        CHECK(check.syntax_ok);
        if (check.policy) CHECK(check.policy->name + ".json" == f);
    }
}

TEST_CASE("policy: default.json equals default_policy()", "[policy]") {
    auto check = load_policy_file(test::policy_file("default.json"));
    REQUIRE(check.policy.has_value());
    CHECK(check.problems.empty());
    CHECK(*check.policy == default_policy());
    // and absent keys take the same defaults
    auto minimal = parse_ok("{\"version\": 1}");
    minimal.name = "default";
    CHECK(minimal.description.empty());  // free text is not inherited
    minimal.description = default_policy().description;
    CHECK(minimal == default_policy());
    CHECK(parse_ok("{}").classes == default_policy().classes);
}

TEST_CASE("policy: broken documents report every problem with its location", "[policy]") {
    auto files = list_dir(UPM_FIXTURES_DIR "/policies", "bad-");
    REQUIRE(files.size() >= 15);
    for (const auto& f : files) {
        INFO(f);
        std::string text = test::read_text(test::fixture("policies/" + f));
        auto want = expectations(text);
        REQUIRE(!want.empty());
        auto check = parse_policy(text, f);
        for (const auto& p : check.problems) UNSCOPED_INFO(format_problem(f, p));
        CHECK(!check.policy.has_value());
        std::vector<const PolicyProblem*> errors;
        for (const auto& p : check.problems)
            if (!p.warning()) errors.push_back(&p);
        std::size_t n_errors = static_cast<std::size_t>(std::count_if(want.begin(), want.end(), [](auto& e) { return !e.fix; }));
        CHECK(errors.size() == n_errors);
        for (const auto& w : want) {
            bool found = std::any_of(errors.begin(), errors.end(), [&](const PolicyProblem* p) {
                return p->where == w.where && (w.fix ? p->fix : p->message).find(w.text) != std::string::npos;
            });
            INFO("want " << (w.fix ? "fix" : "error") << " at " << w.where << ": " << w.text);
            CHECK(found);
        }
        for (const auto* p : errors) {
            CHECK(!p->message.empty());
            CHECK(!p->fix.empty());
        }
    }
}

TEST_CASE("policy: warnings do not make a policy invalid", "[policy]") {
    auto check = load_policy_file(test::fixture("policies/warn-only.json"));
    for (const auto& p : check.problems) UNSCOPED_INFO(format_problem("warn-only.json", p));
    REQUIRE(check.policy.has_value());
    CHECK(check.error_count() == 0);
    CHECK(check.warning_count() == 5);
    std::vector<std::string> where;
    for (const auto& p : check.problems) where.push_back(p.where);
    CHECK(where == std::vector<std::string>{"/classes", "/min_region_kib", "/include_paths/0", "/on_error",
                                            "/triggers/periodic"});
    CHECK(check.policy->classes.empty());
    CHECK(check.policy->on_error == FailMode::closed);
}

TEST_CASE("policy: syntax errors give line and column", "[policy]") {
    auto check = parse_policy("{\n  \"version\": 1,\n  \"classes\": [\"heap\" \"stack\"]\n}\n", "x");
    CHECK(!check.syntax_ok);
    CHECK(only_error(check).where == "line 3, column 28");  // the end of the unexpected token
    CHECK_THAT(only_error(check).message, Catch::StartsWith("syntax error"));

    auto empty = parse_policy("", "x");
    CHECK(only_error(empty).where == "line 1, column 1");
    CHECK_THAT(only_error(empty).fix, Catch::Contains("write a JSON object"));

    auto single_quotes = parse_policy("{'version': 1}", "x");
    CHECK(only_error(single_quotes).where == "line 1, column 2");

    // comments are allowed anywhere
    auto commented = parse_policy("/* a */ { // b\n \"version\": 1 /* c */ }\n// d\n", "x");
    CHECK(commented.policy.has_value());
}

TEST_CASE("policy: on_error is known even when other keys are wrong", "[policy]") {
    auto closed = load_policy_file(test::fixture("policies/bad-closed.json"));
    CHECK(!closed.policy.has_value());
    CHECK(closed.syntax_ok);
    REQUIRE(closed.declared_on_error.has_value());
    CHECK(*closed.declared_on_error == FailMode::closed);
    auto syntax = parse_policy("{\"on_error\": \"closed\",}", "x");
    CHECK(!syntax.declared_on_error.has_value());
    auto unknown = parse_policy("{\"on_error\": \"shut\", \"bogus\": 1}", "x");
    CHECK(!unknown.declared_on_error.has_value());
}

TEST_CASE("policy: values are read into the Policy", "[policy]") {
    auto p = parse_ok(R"({
        "version": 1.0,
        "classes": ["stack", "rodata"],
        "include_paths": ["/srv/models/*"],
        "exclude_paths": ["[heap]", "*.pyc"],
        "min_region_kib": 64.0,
        "triggers": {"start": false, "dlopen": false, "delays_ms": [0, 500],
                     "periodic": {"interval_ms": 100}, "signal": "SIGRTMIN+2"},
        "backend": "ksm", "domain": "tenant-a", "on_error": "open", "log_level": "debug"
    })");
    CHECK(p.classes == std::set<RegionClass>{RegionClass::stack, RegionClass::rodata});
    CHECK(p.include == std::vector<std::string>{"/srv/models/*"});
    CHECK(p.exclude == std::vector<std::string>{"[heap]", "*.pyc"});
    CHECK(p.min_region_bytes == 64 * 1024);
    CHECK(!p.triggers.at_start);
    CHECK(!p.triggers.after_dlopen);
    CHECK(p.triggers.delays == std::vector<std::chrono::milliseconds>{std::chrono::milliseconds(0),
                                                                       std::chrono::milliseconds(500)});
    CHECK(p.triggers.periodic_interval == std::chrono::milliseconds(100));
    CHECK(p.triggers.periodic_duration == std::chrono::milliseconds(0));
    CHECK(p.triggers.signal == SIGRTMIN + 2);
    CHECK(p.backend == BackendChoice::ksm);
    CHECK(p.domain == "tenant-a");
    CHECK(p.log_level == "debug");
    CHECK(parse_ok(R"({"triggers": {"signal": null}})").triggers.signal == 0);
    CHECK(parse_ok(R"({"triggers": {"signal": "SIGUSR2"}})").triggers.signal == SIGUSR2);
    CHECK(parse_ok(R"({"triggers": {"signal": "SIGRTMAX"}})").triggers.signal == SIGRTMAX);
}

TEST_CASE("policy: normalized JSON round-trips", "[policy]") {
    for (const auto& f : list_dir(UPM_POLICIES_DIR, "")) {
        INFO(f);
        auto check = load_policy_file(test::policy_file(f));
        REQUIRE(check.policy.has_value());
        std::string json = policy_to_json(*check.policy);
        CHECK(json.find("//") == std::string::npos);
        auto again = parse_policy(json, check.policy->name);
        REQUIRE(again.policy.has_value());
        CHECK(*again.policy == *check.policy);
    }
}

TEST_CASE("policy: near-miss keys get a suggestion", "[policy]") {
    auto fix_for = [](const std::string& doc) { return only_error(parse_policy(doc, "x")).fix; };
    CHECK(fix_for(R"({"min_region_kb": 16})") == "did you mean `min_region_kib`?");
    CHECK(fix_for(R"({"exclude": []})") == "did you mean `exclude_paths`?");
    CHECK(fix_for(R"({"Backend": "auto"})") == "did you mean `backend`?");
    CHECK(fix_for(R"({"triggers": {"delay_ms": []}})") == "did you mean `delays_ms`?");
    CHECK_THAT(fix_for(R"({"zzzzzz": 1})"), Catch::StartsWith("remove it; allowed keys here: `version`"));
    CHECK(fix_for(R"({"classes": ["libdta"]})") == "did you mean `libdata`?");
    CHECK(fix_for(R"({"log_level": "warning"})") == "did you mean `warn`?");
    CHECK(fix_for(R"({"triggers": {"signal": "USR2"}})") == "did you mean `SIGUSR2`?");
}

TEST_CASE("policy: names, domains and backends", "[policy]") {
    CHECK(valid_policy_name("python-ml"));
    CHECK(valid_policy_name("a"));
    CHECK(valid_policy_name("v1.2_x-y"));
    CHECK(!valid_policy_name(""));
    CHECK(!valid_policy_name("-x"));
    CHECK(!valid_policy_name(".hidden"));
    CHECK(!valid_policy_name("a/b"));
    CHECK(!valid_policy_name("a b"));
    CHECK(!valid_policy_name(std::string(65, 'a')));
    CHECK(valid_policy_name(std::string(64, 'a')));
    CHECK(valid_domain(""));
    CHECK(valid_domain("tenant-a"));
    CHECK(!valid_domain("tenant a"));
    BackendChoice b{};
    CHECK(parse_backend_choice("ksm", b));
    CHECK(b == BackendChoice::ksm);
    CHECK(!parse_backend_choice("fast", b));
    CHECK(to_string(BackendChoice::automatic) == "auto");
    CHECK(signal_name(SIGUSR2) == "SIGUSR2");
    CHECK(signal_name(SIGRTMIN + 4) == "SIGRTMIN+4");
    CHECK(signal_from_name("SIGINT") == 0);
}

TEST_CASE("policy: resolve_policy and the search path", "[policy]") {
    ::setenv("UPM_POLICY_PATH", "/nonexistent:" UPM_POLICIES_DIR, 1);
    auto dirs = policy_search_path();
    CHECK(dirs == std::vector<std::string>{"/nonexistent", UPM_POLICIES_DIR});
    auto node = resolve_policy("nodejs");
    REQUIRE(node.ok());
    CHECK(node->ends_with("/nodejs.json"));
    CHECK(node->front() == '/');
    auto file = resolve_policy(test::policy_file("default.json"));
    REQUIRE(file.ok());
    CHECK(file->ends_with("/default.json"));
    auto missing = resolve_policy("no-such-policy");
    REQUIRE(!missing.ok());
    CHECK_THAT(missing.error().message, Catch::Contains("no policy named `no-such-policy` in /nonexistent, "));
    auto bad = resolve_policy("a b");
    REQUIRE(!bad.ok());
    CHECK_THAT(bad.error().message, Catch::Contains("invalid policy name"));
    auto absent = resolve_policy("/nonexistent/x.json");
    REQUIRE(!absent.ok());
    CHECK(absent.error().err == ENOENT);
    ::unsetenv("UPM_POLICY_PATH");
    dirs = policy_search_path();
    REQUIRE(dirs.size() == 3);
    CHECK(dirs[0] == "/etc/upm/policies");
    CHECK(dirs[2].ends_with("/config/policies"));  // the source tree, last
}

TEST_CASE("policy: periodic then_interval_ms slows the trigger down after duration_ms", "[policy]") {
    auto p = parse_ok(R"({"triggers": {"periodic": {"interval_ms": 1000, "duration_ms": 3500,
                                                     "then_interval_ms": 10000}}})");
    CHECK(p.triggers.periodic_then == std::chrono::milliseconds(10000));
    // every second up to 3.5 s, then 3.5 s + k * 10 s, for ever
    CHECK(next_periodic_ms(p.triggers, 0) == 1000);
    CHECK(next_periodic_ms(p.triggers, 999) == 1000);
    CHECK(next_periodic_ms(p.triggers, 1000) == 2000);
    CHECK(next_periodic_ms(p.triggers, 2999) == 3000);
    CHECK(next_periodic_ms(p.triggers, 3000) == 13500);
    CHECK(next_periodic_ms(p.triggers, 13499) == 13500);
    CHECK(next_periodic_ms(p.triggers, 13500) == 23500);
    CHECK(next_periodic_ms(p.triggers, 86'400'000) == 86'403'500);
    // round trip through the canonical form
    auto again = parse_policy(policy_to_json(p), "again");
    REQUIRE(again.policy.has_value());
    CHECK(again.policy->triggers == p.triggers);

    // without then_interval_ms the trigger stops after duration_ms ...
    auto stop = parse_ok(R"({"triggers": {"periodic": {"interval_ms": 1000, "duration_ms": 3500}}})");
    CHECK(stop.triggers.periodic_then.count() == 0);
    CHECK(next_periodic_ms(stop.triggers, 2999) == 3000);
    CHECK(next_periodic_ms(stop.triggers, 3000) == INT64_MAX);
    // ... and without duration_ms it never stops
    auto ever = parse_ok(R"({"triggers": {"periodic": {"interval_ms": 250}}})");
    CHECK(next_periodic_ms(ever.triggers, 86'400'000) == 86'400'250);
    // no periodic trigger at all
    CHECK(next_periodic_ms(parse_ok(R"({"triggers": {"periodic": null}})").triggers, 0) == INT64_MAX);
    // the default policy: every second for a minute, then every 10 s
    CHECK(next_periodic_ms(default_policy().triggers, 59'999) == 60'000);
    CHECK(next_periodic_ms(default_policy().triggers, 60'000) == 70'000);

    // below 100 ms is an error, without duration_ms a warning (it never applies)
    auto fast = parse_policy(R"({"triggers": {"periodic": {"interval_ms": 1000, "duration_ms": 5000,
                                                           "then_interval_ms": 50}}})", "fast");
    CHECK(!fast.policy.has_value());
    CHECK(has_problem(fast, "/triggers/periodic/then_interval_ms"));
    auto useless = parse_policy(R"({"triggers": {"periodic": {"interval_ms": 1000, "then_interval_ms": 10000}}})",
                                "useless");
    REQUIRE(useless.policy.has_value());
    CHECK(useless.warning_count() == 1);
    CHECK(has_problem(useless, "/triggers/periodic/then_interval_ms"));
}

TEST_CASE("policy: periodic null switches the periodic trigger off", "[policy]") {
    auto check = parse_policy(R"({"version": 1, "triggers": {"periodic": null}})", "off");
    REQUIRE(check.policy.has_value());
    CHECK(check.policy->triggers.periodic_interval.count() == 0);
    std::string json = policy_to_json(*check.policy);
    CHECK(json.find("\"periodic\": null") != std::string::npos);
    auto again = parse_policy(json, "off");
    REQUIRE(again.policy.has_value());
    CHECK(*again.policy == *check.policy);
}

TEST_CASE("policy: load_policy_file reports unreadable files", "[policy]") {
    auto check = load_policy_file("/nonexistent/p.json");
    CHECK(!check.policy.has_value());
    CHECK(only_error(check).where == "(file)");
    CHECK_THAT(only_error(check).message, Catch::Contains("No such file or directory"));
    CHECK(format_problem("p.json", only_error(check)).starts_with("p.json: (file): error: cannot read the policy"));
}

TEST_CASE("policy: decide() explains every region", "[policy]") {
    Policy p = default_policy();  // heap, anonymous, libdata; 16 KiB
    std::vector<Classified> regions = {
        region(0x10000, 1 << 20, RegionClass::heap, "[heap]"),
        region(0x200000, 64 << 10, RegionClass::rodata, "/srv/model.bin", 5),
        region(0x300000, 8 << 10, RegionClass::anonymous),
        region(0x400000, 1 << 20, RegionClass::never, "/dev/shm/x", 6),
        region(0x500000, 1 << 20, RegionClass::text, "/usr/lib/libc.so.6", 7),
        region(0x600000, 1 << 20, RegionClass::libdata, "/usr/lib/x/libfoo.so", 8),
        region(0x700000, 1 << 20, RegionClass::anonymous),
    };
    regions[3].why = "shared mapping";
    auto d = decide(p, regions);
    REQUIRE(d.size() == regions.size());
    CHECK(d[0].advise);
    CHECK(d[0].reason == "class `heap` enabled");
    CHECK(!d[1].advise);
    CHECK(d[1].reason == "class `rodata` not enabled");
    CHECK(!d[2].advise);
    CHECK(d[2].reason == "smaller than min_region_kib (8 KiB < 16 KiB)");
    CHECK(!d[3].advise);
    CHECK(d[3].reason == "never advised: shared mapping");
    CHECK(!d[4].advise);
    CHECK_THAT(d[4].reason, Catch::StartsWith("never advised"));
    CHECK(d[5].advise);
    CHECK(d[6].advise);

    // exclude: literal pseudo-paths and globs; include: file-backed only
    p.exclude = {"[heap]", "*/x/*"};
    p.include = {"/usr/lib/y/*"};
    p.classes.insert(RegionClass::rodata);
    d = decide(p, regions);
    CHECK(!d[0].advise);
    CHECK(d[0].reason == "excluded by `[heap]`");
    CHECK(!d[1].advise);
    CHECK(d[1].reason == "path not matched by include_paths");
    CHECK(!d[5].advise);
    CHECK(d[5].reason == "excluded by `*/x/*`");
    CHECK(d[6].advise);  // anonymous: include_paths does not apply
    p.include = {"/srv/*.bin"};
    d = decide(p, regions);
    CHECK(d[1].advise);
    CHECK(d[1].reason == "class `rodata` enabled, path included");
    // an empty policy advises nothing
    p.classes.clear();
    for (const auto& x : decide(p, regions)) CHECK(!x.advise);
}

TEST_CASE("policy: everything_anonymous", "[policy]") {
    auto all_anon = load_policy_file(test::policy_file("all-anonymous.json"));
    REQUIRE(all_anon.policy.has_value());
    CHECK(everything_anonymous(*all_anon.policy));
    CHECK(!everything_anonymous(default_policy()));
    Policy p = *all_anon.policy;
    p.exclude = {"[stack]"};
    CHECK(!everything_anonymous(p));
}

TEST_CASE("policy: duplicate keys are a warning with their location", "[policy]") {
    auto check = parse_policy(R"({"classes": ["heap"], "triggers": {"start": true, "start": false},
                                  "exclude_paths": [{"a": 1, "a": 2}], "classes": ["stack"]})",
                              "x");
    std::vector<std::string> where;
    for (const auto& p : check.problems) {
        if (p.message.starts_with("duplicate key")) {
            CHECK(p.warning());
            where.push_back(p.where);
        }
    }
    CHECK(where == std::vector<std::string>{"/triggers/start", "/exclude_paths/0/a", "/classes"});
    // the object inside exclude_paths is an error of its own; the last value wins otherwise
    CHECK(check.error_count() == 1);
    auto ok = parse_policy(R"({"classes": ["heap"], "classes": ["stack"]})", "x");
    REQUIRE(ok.policy.has_value());
    CHECK(ok.policy->classes == std::set<RegionClass>{RegionClass::stack});
}

TEST_CASE("policy: files larger than 1 MiB are refused", "[policy]") {
    char path[] = "/tmp/upm-unit-big-XXXXXX";
    int fd = ::mkstemp(path);
    REQUIRE(fd >= 0);
    std::string big = "{\"description\": \"" + std::string(1024 * 1024, 'x') + "\"}";
    REQUIRE(::write(fd, big.data(), big.size()) == static_cast<ssize_t>(big.size()));
    ::close(fd);
    auto check = load_policy_file(path);
    ::unlink(path);
    CHECK(!check.policy.has_value());
    CHECK(only_error(check).where == "(file)");
    CHECK_THAT(only_error(check).message, Catch::Contains("larger than 1048576 bytes"));
    CHECK_THAT(only_error(check).fix, Catch::Contains("at most 1 MiB"));
}

TEST_CASE("policy: hostile documents stay bounded", "[policy]") {
    std::string doc = "{";
    for (int i = 0; i < 5000; ++i) doc += (i ? ",\"k" : "\"k") + std::to_string(i) + "\": 1";
    doc += ", \"" + std::string(100000, 'x') + "\": 1}";
    auto check = parse_policy(doc, "x");
    CHECK(!check.policy.has_value());
    REQUIRE(check.problems.size() == 101);
    CHECK(check.problems.back().message == "4901 more problems not shown");
    CHECK(check.problems.front().message == "unknown key `k0`");
    for (const auto& p : check.problems) CHECK(p.message.size() < 300);
    auto deep = parse_policy(std::string(10000, '[') + std::string(10000, ']'), "x");
    CHECK(only_error(deep).where == "(root)");
}
