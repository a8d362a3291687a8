// libFuzzer target of the node configuration parser (upm/nodeconfig.hpp,
// /etc/upm/config.json), which upm-runtime and upm-hook read on every call.
// Properties checked beyond "no crash, no leak, no undefined behaviour"
// (ASan/UBSan):
// - every key that is not reported keeps a valid value: paths absolute (or
//   "" where allowed), log_level one of the five, default_policy a NAME, an
//   absolute path or "", no NUL byte anywhere;
// - a document with errors changes only the keys it got right: a key that
//   has an error keeps its default;
// - malformed JSON gives exactly the defaults and one problem;
// - parsing is independent of the defaults given (same problems).
// Seeds: test/fuzz/corpus/nodeconfig/.  Build and run: test/fuzz/README.md.
#include <cstdint>
#include <string>
#include <string_view>

#include <nlohmann/json.hpp>

#include "fuzz_check.hpp"
#include "upm/nodeconfig.hpp"
#include "upm/policy.hpp"

namespace {

bool absolute_or_empty(const std::string& s, bool empty_ok) {
    if (s.empty()) return empty_ok;
    return s.front() == '/';
}

bool reported(const upm::NodeConfigLoad& load, std::string_view key) {
    for (const auto& p : load.problems)
        if (!p.warning() && p.where == "/" + std::string(key)) return true;
    return false;
}

bool same(const upm::NodeConfig& a, const upm::NodeConfig& b) {
    return a.runtime == b.runtime && a.preload == b.preload && a.policy_dir == b.policy_dir &&
           a.default_policy == b.default_policy && a.hook == b.hook && a.log_file == b.log_file &&
           a.log_level == b.log_level && a.fsync == b.fsync && a.source == b.source;
}

void check_valid(const upm::NodeConfig& c) {
    for (const std::string* s : {&c.runtime, &c.preload, &c.policy_dir, &c.default_policy, &c.hook, &c.log_file,
                                 &c.log_level})
        UPM_FUZZ_CHECK(s->find('\0') == std::string::npos, "no NUL byte in a setting");
    UPM_FUZZ_CHECK(absolute_or_empty(c.runtime, false), "runtime is an absolute path");
    UPM_FUZZ_CHECK(absolute_or_empty(c.preload, false), "preload is an absolute path");
    UPM_FUZZ_CHECK(absolute_or_empty(c.policy_dir, false), "policy_dir is an absolute path");
    UPM_FUZZ_CHECK(absolute_or_empty(c.hook, true), "hook is an absolute path or empty");
    UPM_FUZZ_CHECK(absolute_or_empty(c.log_file, true), "log_file is an absolute path or empty");
    UPM_FUZZ_CHECK(c.default_policy.empty() || c.default_policy.front() == '/' ||
                       upm::valid_policy_name(c.default_policy),
                   "default_policy is a NAME, an absolute path or empty");
    UPM_FUZZ_CHECK(c.log_level == "off" || c.log_level == "error" || c.log_level == "warn" || c.log_level == "info" ||
                       c.log_level == "debug",
                   "log_level is a known level");
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    std::string_view text(reinterpret_cast<const char*>(data), size);

    upm::NodeConfig defaults;
    defaults.runtime = "/usr/bin/runc";
    defaults.preload = "/usr/lib/upm/libupm-preload.so";
    defaults.hook = "/usr/bin/upm-hook";
    upm::NodeConfigLoad load = upm::parse_node_config(text, defaults);
    check_valid(load.config);
    UPM_FUZZ_CHECK(load.config.source.empty(), "parsing does not name a file");
    for (const auto& p : load.problems) {
        UPM_FUZZ_CHECK(!p.where.empty() && !p.message.empty(), "every problem has a location and a message");
        UPM_FUZZ_CHECK(!upm::format_problem("config.json", p).empty(), "format_problem gives a line");
    }

    // Malformed JSON (nlohmann's own verdict, comments allowed): the defaults.
    if (!nlohmann::json::accept(text, /*ignore_comments=*/true)) {
        UPM_FUZZ_CHECK(same(load.config, defaults), "malformed JSON: every key keeps its default");
        UPM_FUZZ_CHECK(load.problems.size() == 1 && !load.problems[0].warning(), "malformed JSON: one error");
    }

    // A key with an error keeps its default.
    const upm::NodeConfig& c = load.config;
    if (reported(load, "runtime")) UPM_FUZZ_CHECK(c.runtime == defaults.runtime, "runtime with an error: default");
    if (reported(load, "preload")) UPM_FUZZ_CHECK(c.preload == defaults.preload, "preload with an error: default");
    if (reported(load, "policy_dir"))
        UPM_FUZZ_CHECK(c.policy_dir == defaults.policy_dir, "policy_dir with an error: default");
    if (reported(load, "default_policy"))
        UPM_FUZZ_CHECK(c.default_policy == defaults.default_policy, "default_policy with an error: default");
    if (reported(load, "hook")) UPM_FUZZ_CHECK(c.hook == defaults.hook, "hook with an error: default");
    if (reported(load, "log_file")) UPM_FUZZ_CHECK(c.log_file == defaults.log_file, "log_file with an error: default");
    if (reported(load, "log_level"))
        UPM_FUZZ_CHECK(c.log_level == defaults.log_level, "log_level with an error: default");
    if (reported(load, "fsync")) UPM_FUZZ_CHECK(c.fsync == defaults.fsync, "fsync with an error: default");

    // Other defaults: the same problems; the keys the document set are the same.
    upm::NodeConfig other;
    other.runtime = "/opt/crun";
    other.preload = "/opt/libupm-preload.so";
    other.log_level = "debug";
    other.fsync = true;
    upm::NodeConfigLoad load2 = upm::parse_node_config(text, other);
    UPM_FUZZ_CHECK(load2.problems.size() == load.problems.size(), "problems do not depend on the defaults");
    for (std::size_t i = 0; i < load.problems.size(); ++i)
        UPM_FUZZ_CHECK(load2.problems[i].where == load.problems[i].where &&
                           load2.problems[i].message == load.problems[i].message,
                       "problems do not depend on the defaults");
    if (c.runtime != defaults.runtime) UPM_FUZZ_CHECK(load2.config.runtime == c.runtime, "runtime set by the document");
    if (c.log_file != defaults.log_file)
        UPM_FUZZ_CHECK(load2.config.log_file == c.log_file, "log_file set by the document");
    return 0;
}
