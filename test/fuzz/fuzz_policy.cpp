// libFuzzer target of the policy parser and validator (upm/policy.hpp).  A
// policy comes from the node's policy directory or a user's `upm run
// --policy FILE`, and is parsed by upm-runtime, `upm policy check` and the
// preload inside every annotated process, which it must never crash.
// Properties checked beyond "no crash, no leak, no undefined behaviour"
// (ASan/UBSan):
// - a policy is returned exactly when there is no error, and only for
//   well-formed JSON (nlohmann's accept() is the oracle); every problem has
//   a location and a message;
// - an accepted policy's on_error is the declared one (default open): the
//   fail-open/closed rule of upm-runtime and `upm run` reads the latter;
// - the normalized form (policy_to_json) parses back to the same policy,
//   with no more warnings than the document had, and is stable;
// - decide() on a few fixed regions gives one decision per region and never
//   advises a class the policy does not enable.
// Seeds: test/fuzz/corpus/policy/.  Build and run: test/fuzz/README.md.
#include <cstdint>
#include <cstdlib>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "fuzz_check.hpp"
#include "upm/policy.hpp"

namespace {

upm::Classified region(std::uint64_t start, std::uint64_t len, upm::RegionClass cls, std::string path,
                       std::uint64_t inode) {
    upm::Classified c;
    c.region.start = start;
    c.region.end = start + len;
    c.region.path = std::move(path);
    c.region.inode = inode;
    c.cls = cls;
    return c;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    std::string_view text(reinterpret_cast<const char*>(data), size);

    upm::PolicyCheck check = upm::parse_policy(text, "fuzz");
    UPM_FUZZ_CHECK(check.policy.has_value() == (check.error_count() == 0), "a policy exactly when there is no error");
    UPM_FUZZ_CHECK(!check.policy || check.syntax_ok, "no policy from malformed JSON");
    UPM_FUZZ_CHECK(check.syntax_ok || !check.problems.empty(), "malformed JSON has a problem");
    UPM_FUZZ_CHECK(check.syntax_ok == nlohmann::json::accept(text, /*ignore_comments=*/true),
                   "syntax_ok is nlohmann's verdict (comments allowed)");
    for (const auto& p : check.problems) {
        UPM_FUZZ_CHECK(!p.where.empty() && !p.message.empty(), "every problem has a location and a message");
        UPM_FUZZ_CHECK(!upm::format_problem("fuzz.json", p).empty(), "format_problem gives a line");
    }
    if (!check.policy) return 0;

    const upm::Policy& policy = *check.policy;
    UPM_FUZZ_CHECK(policy.name == "fuzz", "the name is kept");
    UPM_FUZZ_CHECK(policy.on_error == check.declared_on_error.value_or(upm::FailMode::open),
                   "the declared on_error is the policy's");
    std::string normalized = upm::policy_to_json(policy);
    upm::PolicyCheck again = upm::parse_policy(normalized, "fuzz");
    UPM_FUZZ_CHECK(again.policy.has_value(), "the normalized policy parses");
    UPM_FUZZ_CHECK(again.warning_count() <= check.warning_count(), "normalizing adds no warning");
    UPM_FUZZ_CHECK(*again.policy == policy, "the normalized policy is the same policy");
    UPM_FUZZ_CHECK(upm::policy_to_json(*again.policy) == normalized, "normalization is stable");

    std::vector<upm::Classified> regions = {
        region(0x10000, 1 << 20, upm::RegionClass::heap, "[heap]", 0),
        region(0x200000, 64 << 10, upm::RegionClass::rodata, "/srv/model.bin", 5),
        region(0x300000, 4096, upm::RegionClass::anonymous, "", 0),
        region(0x400000, 1 << 20, upm::RegionClass::libdata, "/usr/lib/x86_64-linux-gnu/libc.so.6", 7),
        region(0x500000, 1 << 20, upm::RegionClass::stack, "[stack]", 0),
        region(0x600000, 1 << 20, upm::RegionClass::never, "/dev/shm/x", 6),
    };
    auto decisions = upm::decide(policy, regions);
    UPM_FUZZ_CHECK(decisions.size() == regions.size(), "one decision per region");
    for (const auto& d : decisions) {
        UPM_FUZZ_CHECK(!d.reason.empty(), "every decision has a reason");
        UPM_FUZZ_CHECK(!d.advise || (policy.classes.count(d.region.cls) && d.region.cls != upm::RegionClass::never),
                       "only enabled classes are advised");
        UPM_FUZZ_CHECK(!d.advise || d.region.region.size() >= policy.min_region_bytes,
                       "nothing below min_region_kib is advised");
    }
    return 0;
}
