// The hardening settings' library side (docs/hardening.md): the domain
// secret (creation, permissions), HMAC derivation, the plan a policy gives,
// and the spec edit (launcher wrapping, env, idempotence).
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "upm/hardening.hpp"
#include "upm/spec.hpp"

using namespace upm;
using ojson = nlohmann::ordered_json;
namespace fs = std::filesystem;

namespace {

struct TempDir {
    fs::path path;
    TempDir() {
        char tmpl[] = "/tmp/upm-hardening-test-XXXXXX";
        path = ::mkdtemp(tmpl);
    }
    ~TempDir() { fs::remove_all(path); }
};

// RAII $UPM_DOMAIN_SECRET.
struct SecretEnv {
    explicit SecretEnv(const std::string& p) { ::setenv(kEnvDomainSecret, p.c_str(), 1); }
    ~SecretEnv() { ::unsetenv(kEnvDomainSecret); }
};

Policy with(Layout l, HashSeed h) {
    Policy p = default_policy();
    p.layout = l;
    p.hash_seed = h;
    return p;
}

}  // namespace

TEST_CASE("hardening: the secret is created once, 0600, and refused when others may read it", "[hardening]") {
    TempDir d;
    std::string path = (d.path / "sub" / "secret").string();
    auto a = load_domain_secret(path);
    REQUIRE(a);
    CHECK(a->size() == 32);
    struct stat st {};
    REQUIRE(::stat(path.c_str(), &st) == 0);
    CHECK((st.st_mode & 0777) == 0600);
    REQUIRE(::stat((d.path / "sub").c_str(), &st) == 0);
    CHECK((st.st_mode & 0777) == 0700);
    auto b = load_domain_secret(path);
    REQUIRE(b);
    CHECK(*a == *b);                                   // created once
    CHECK_FALSE(load_domain_secret((d.path / "none").string(), false));   // no create
    ::chmod(path.c_str(), 0640);
    auto c = load_domain_secret(path);
    REQUIRE_FALSE(c);
    CHECK(c.error().message.find("group or others") != std::string::npos);
    ::chmod(path.c_str(), 0600);
    std::ofstream(path, std::ios::trunc) << "short";
    CHECK_FALSE(load_domain_secret(path));
}

TEST_CASE("hardening: derivation is keyed, per purpose and per domain", "[hardening]") {
    std::vector<unsigned char> k1(32, 1), k2(32, 2);
    auto a = derive_for_domain(k1, "layout", "tenant-a");
    auto a2 = derive_for_domain(k1, "layout", "tenant-a");
    auto b = derive_for_domain(k1, "layout", "tenant-b");
    auto p = derive_for_domain(k1, "python-hash-seed", "tenant-a");
    auto o = derive_for_domain(k2, "layout", "tenant-a");
    REQUIRE((a && a2 && b && p && o));
    CHECK(*a == *a2);
    CHECK(*a != *b);
    CHECK(*a != *p);
    CHECK(*a != *o);
    // the framing keeps purpose and domain apart
    CHECK(*derive_for_domain(k1, "ab", "c") != *derive_for_domain(k1, "a", "bc"));
    for (auto* d : {&*a, &*b, &*o}) {
        std::uint64_t r = layout_rlimit(*d);
        CHECK(r >= kLayoutBase);
        CHECK(r < kLayoutBase + (std::uint64_t{1} << kLayoutBits) * 4096);
        CHECK(r % 4096 == 0);
        CHECK(python_hash_seed(*d) != 0);
    }
}

TEST_CASE("hardening: plans", "[hardening]") {
    TempDir d;
    SecretEnv env((d.path / "secret").string());
    auto none = plan_hardening(default_policy(), "tenant-a");
    CHECK(none.empty());
    CHECK(none.problems.empty());
    CHECK_FALSE(fs::exists(d.path / "secret"));        // not created when not needed

    auto fixed = plan_hardening(with(Layout::fixed, HashSeed::random), "");
    CHECK(fixed.no_randomize);
    CHECK(fixed.stack_rlimit == 0);
    CHECK(fixed.summary == "layout `fixed`");

    auto nodomain = plan_hardening(with(Layout::shared_per_domain, HashSeed::per_domain), "");
    CHECK(nodomain.empty());
    REQUIRE(nodomain.problems.size() == 1);
    CHECK(nodomain.problems[0].find("no sharing domain") != std::string::npos);

    auto a = plan_hardening(with(Layout::shared_per_domain, HashSeed::per_domain), "tenant-a");
    auto b = plan_hardening(with(Layout::shared_per_domain, HashSeed::per_domain), "tenant-b");
    CHECK(a.no_randomize);
    CHECK(a.stack_rlimit >= kLayoutBase);
    CHECK(a.stack_rlimit != b.stack_rlimit);
    REQUIRE(a.env.size() == 3);
    CHECK(a.env[0].first == "PYTHONHASHSEED");
    CHECK(a.env[0].second != b.env[0].second);
    CHECK(a.summary == "layout `shared-per-domain`, hash seed `per-domain`");
    CHECK(plan_hardening(with(Layout::shared_per_domain, HashSeed::per_domain), "tenant-a").env == a.env);
}

TEST_CASE("hardening: spec edit wraps args once, adds only missing env, undoes itself", "[hardening]") {
    HardeningPlan plan;
    plan.no_randomize = true;
    plan.stack_rlimit = kLayoutBase + 4096;
    plan.env = {{"PYTHONHASHSEED", "7"}, {"PERL_HASH_SEED", "0x1"}, {"PERL_PERTURB_KEYS", "DETERMINISTIC"}};
    ojson doc = ojson::parse(R"({"process": {"args": ["python3", "app.py"], "env": ["PATH=/bin", "PERL_HASH_SEED=0x9"]},
                                 "mounts": [{"destination": "/proc", "type": "proc"}]})");
    REQUIRE(edit_spec_hardening(doc, plan, "/usr/lib/upm/upm-exec", "/dev/upm"));
    auto args = doc["process"]["args"].get<std::vector<std::string>>();
    CHECK(args == std::vector<std::string>{"/dev/upm/upm-exec", "-R", "-s", std::to_string(kLayoutBase + 4096), "--",
                                           "python3", "app.py"});
    // PYTHONHASHSEED added; the Perl pair not (the spec sets one of them)
    CHECK(doc["process"]["env"] == ojson::parse(R"(["PATH=/bin", "PERL_HASH_SEED=0x9", "PYTHONHASHSEED=7"])"));
    REQUIRE(doc["mounts"].size() == 2);
    CHECK(doc["mounts"][1]["destination"] == "/dev/upm/upm-exec");
    CHECK(doc["mounts"][1]["options"] == ojson::parse(R"(["bind", "ro", "nosuid", "nodev"])"));
    ojson again = doc;
    REQUIRE(edit_spec_hardening(again, plan, "/usr/lib/upm/upm-exec", "/dev/upm"));
    CHECK(again == doc);                                // idempotent
    HardeningPlan off;
    REQUIRE(edit_spec_hardening(again, off, "", "/dev/upm"));
    CHECK(again["process"]["args"] == ojson::parse(R"(["python3", "app.py"])"));
    CHECK(again["mounts"].size() == 1);
    CHECK(unwrap_exec_args({"/bin/sh", "--", "x"}) == std::vector<std::string>{"/bin/sh", "--", "x"});
}
