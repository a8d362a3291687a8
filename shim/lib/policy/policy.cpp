// Policy parsing, validation and decisions.
//
// parse_policy() implements config/policy.schema.json by hand instead of
// with a generic schema validator, for two reasons: the preload must not
// carry a validator, and a generic validator explains errors in schema terms
// ("is not valid under any of the given schemas") where an operator needs the
// location, what is wrong and what to write instead.  The schema stays the
// reference: test/unit checks the examples against this code and the
// integration tests check `upm policy check --normalized` output against the
// schema with python3-jsonschema.
//
// Validation never stops at the first problem: every key is checked, every
// problem is collected with its JSON pointer, and the policy is built only
// when there is no error.  Absent keys take the values of default_policy(),
// which equals config/policies/default.json.  The document is parsed as
// ordered_json so that problems come out in document order.
#include "upm/policy.hpp"

#include <fnmatch.h>
#include <limits.h>
#include <signal.h>
#include <stdlib.h>
#include <unistd.h>
#include <sys/stat.h>

#include <algorithm>
#include <array>
#include <cctype>
#include <cmath>
#include <cstdlib>
#include <functional>
#include <nlohmann/json.hpp>

#include "upm/io.hpp"

namespace upm {

using json = nlohmann::ordered_json;

namespace {

// ---- vocabulary -----------------------------------------------------------

constexpr std::array<std::string_view, 16> kRootKeys{
    "$comment", "version", "description", "classes", "include_paths", "exclude_paths",
    "min_region_kib", "triggers", "backend", "domain", "on_error", "log_level",
    "trim", "layout", "hash_seed", "advice"};
constexpr std::array<std::string_view, 4> kAdviceModes{"auto", "preload", "remote", "both"};
constexpr std::array<std::string_view, 3> kLayouts{"randomized", "shared-per-domain", "fixed"};
constexpr std::array<std::string_view, 2> kHashSeeds{"random", "per-domain"};
constexpr std::array<std::string_view, 6> kTriggerKeys{"$comment", "start", "dlopen", "delays_ms", "periodic",
                                                       "signal"};
constexpr std::array<std::string_view, 4> kPeriodicKeys{"$comment", "interval_ms", "duration_ms", "then_interval_ms"};
constexpr std::array<std::string_view, 5> kClasses{"heap", "anonymous", "libdata", "rodata", "stack"};
constexpr std::array<std::string_view, 8> kSignals{"SIGUSR1",    "SIGUSR2",    "SIGRTMIN",   "SIGRTMIN+1",
                                                   "SIGRTMIN+2", "SIGRTMIN+3", "SIGRTMIN+4", "SIGRTMAX"};
constexpr std::array<std::string_view, 3> kBackends{"auto", "upm", "ksm"};
constexpr std::array<std::string_view, 2> kFailModes{"open", "closed"};
constexpr std::array<std::string_view, 5> kLogLevels{"off", "error", "warn", "info", "debug"};

constexpr std::int64_t kMaxMs = 86400000;

template <std::size_t N>
std::string list_names(const std::array<std::string_view, N>& names, bool skip_comment = true) {
    std::string out;
    for (auto n : names) {
        if (skip_comment && n == "$comment") continue;
        if (!out.empty()) out += ", ";
        out += "`" + std::string(n) + "`";
    }
    return out;
}

// Optimal string alignment distance (Levenshtein plus adjacent
// transpositions, so "opne" is one edit from "open"), case-insensitive.
std::size_t edit_distance(std::string_view a, std::string_view b) {
    auto lower = [](char c) { return static_cast<char>(std::tolower(static_cast<unsigned char>(c))); };
    std::vector<std::vector<std::size_t>> d(a.size() + 1, std::vector<std::size_t>(b.size() + 1));
    for (std::size_t i = 0; i <= a.size(); ++i) d[i][0] = i;
    for (std::size_t j = 0; j <= b.size(); ++j) d[0][j] = j;
    for (std::size_t i = 1; i <= a.size(); ++i) {
        for (std::size_t j = 1; j <= b.size(); ++j) {
            std::size_t cost = lower(a[i - 1]) == lower(b[j - 1]) ? 0 : 1;
            d[i][j] = std::min({d[i - 1][j] + 1, d[i][j - 1] + 1, d[i - 1][j - 1] + cost});
            if (i > 1 && j > 1 && lower(a[i - 1]) == lower(b[j - 2]) && lower(a[i - 2]) == lower(b[j - 1]))
                d[i][j] = std::min(d[i][j], d[i - 2][j - 2] + 1);
        }
    }
    return d[a.size()][b.size()];
}

// The closest name, if it is close enough to be a plausible typo.
template <std::size_t N>
std::string near_miss(std::string_view word, const std::array<std::string_view, N>& names) {
    if (word.size() > 64) return {};  // no name is that long; keeps the distance table small
    std::string_view best;
    std::size_t best_d = SIZE_MAX;
    for (auto n : names) {
        if (n == "$comment") continue;
        std::size_t d = edit_distance(word, n);
        if (d < best_d) {
            best_d = d;
            best = n;
        }
    }
    if (best.empty()) return {};
    if (best_d <= std::max<std::size_t>(1, std::min<std::size_t>(3, word.size() / 3))) return std::string(best);
    // "exclude" for "exclude_paths", "min_region" for "min_region_kib"
    if (word.size() >= 3 && (best.starts_with(word) || word.starts_with(best))) return std::string(best);
    for (auto n : names)
        if (word.size() >= 3 && n != "$comment" && (n.starts_with(word) || word.starts_with(n))) return std::string(n);
    return {};
}

std::string pointer_escape(std::string_view key) {
    std::string out;
    for (char c : key) {
        if (c == '~')
            out += "~0";
        else if (c == '/')
            out += "~1";
        else
            out += c;
    }
    return out;
}

std::string type_name(const json& v) {
    switch (v.type()) {
        case json::value_t::null: return "null";
        case json::value_t::boolean: return "a boolean";
        case json::value_t::string: return "a string";
        case json::value_t::array: return "an array";
        case json::value_t::object: return "an object";
        case json::value_t::number_integer:
        case json::value_t::number_unsigned: return "an integer";
        case json::value_t::number_float: return "a number";
        default: return "an unsupported value";
    }
}

std::size_t utf8_length(std::string_view s) {
    return static_cast<std::size_t>(
        std::count_if(s.begin(), s.end(), [](char c) { return (static_cast<unsigned char>(c) & 0xC0) != 0x80; }));
}

// A user-supplied name, cut short for messages (keys may be very long).
std::string clip(std::string_view s) {
    return s.size() > 64 ? std::string(s.substr(0, 61)) + "..." : std::string(s);
}

// A short rendering of a value for messages.
std::string show(const json& v) {
    std::string s = v.dump();
    if (s.size() > 40) s = s.substr(0, 37) + "...";
    return s;
}

// ---- the validator ----------------------------------------------------------

class Validator {
public:
    explicit Validator(std::vector<PolicyProblem>& problems) : problems_(problems) {}

    void error(const std::string& where, std::string message, std::string fix) {
        ++errors_;
        add({Level::error, std::move(message), clip_where(where), std::move(fix)});
    }
    void warn(const std::string& where, std::string message, std::string fix) {
        add({Level::warn, std::move(message), clip_where(where), std::move(fix)});
    }
    std::size_t errors() const { return errors_; }

    // At most kMaxProblems are kept; then one line says how many were not.
    void finish() {
        if (dropped_ > 0)
            problems_.push_back({errors_ > 0 ? Level::error : Level::warn,
                                 std::to_string(dropped_) + " more problems not shown", "(document)",
                                 "fix the problems above first"});
    }

    void type_error(const std::string& where, const json& v, const std::string& expected, std::string fix) {
        error(where, "expected " + expected + ", got " + type_name(v), std::move(fix));
    }

    // JSON Schema "integer": any number with a zero fractional part.
    std::optional<std::int64_t> integer(const std::string& where, const json& v, std::int64_t min, std::int64_t max,
                                        const std::string& example) {
        std::string fix = "write an integer from " + std::to_string(min) + " to " + std::to_string(max) +
                          ", e.g. `" + example + "`";
        std::int64_t value = 0;
        if (v.is_number_unsigned()) {
            auto u = v.get<std::uint64_t>();
            value = u > static_cast<std::uint64_t>(INT64_MAX) ? INT64_MAX : static_cast<std::int64_t>(u);
        } else if (v.is_number_integer()) {
            value = v.get<std::int64_t>();
        } else if (v.is_number_float()) {
            double d = v.get<double>();
            if (!std::isfinite(d) || std::floor(d) != d) {
                error(where, "expected an integer, got " + show(v), fix);
                return std::nullopt;
            }
            value = d >= 9.2e18 ? INT64_MAX : d <= -9.2e18 ? INT64_MIN : static_cast<std::int64_t>(d);
        } else {
            type_error(where, v, "an integer", fix);
            return std::nullopt;
        }
        if (value < min || value > max) {
            error(where, show(v) + " is out of range (" + std::to_string(min) + " to " + std::to_string(max) + ")",
                  fix);
            return std::nullopt;
        }
        return value;
    }

    std::optional<bool> boolean(const std::string& where, const json& v) {
        if (!v.is_boolean()) {
            type_error(where, v, "a boolean", "write `true` or `false` (without quotes)");
            return std::nullopt;
        }
        return v.get<bool>();
    }

    std::optional<std::string> string(const std::string& where, const json& v, const std::string& fix) {
        if (!v.is_string()) {
            type_error(where, v, "a string", fix);
            return std::nullopt;
        }
        return v.get<std::string>();
    }

    template <std::size_t N>
    std::optional<std::string> one_of(const std::string& where, const json& v,
                                      const std::array<std::string_view, N>& names, const std::string& what) {
        std::string fix = "use one of " + list_names(names);
        if (!v.is_string()) {
            type_error(where, v, "a string", fix);
            return std::nullopt;
        }
        auto s = v.get<std::string>();
        if (std::find(names.begin(), names.end(), s) != names.end()) return s;
        auto guess = near_miss(s, names);
        error(where, "unknown " + what + " `" + clip(s) + "`", guess.empty() ? fix : "did you mean `" + guess + "`?");
        return std::nullopt;
    }

    template <std::size_t N>
    bool object(const std::string& where, const json& v, const std::array<std::string_view, N>& keys,
                const std::string& example) {
        if (!v.is_object()) {
            type_error(where, v, "an object", "write an object, e.g. `" + example + "`");
            return false;
        }
        for (const auto& [key, value] : v.items()) {
            if (std::find(keys.begin(), keys.end(), key) != keys.end()) continue;
            auto guess = near_miss(key, keys);
            error(where + "/" + pointer_escape(key), "unknown key `" + clip(key) + "`",
                  guess.empty() ? "remove it; allowed keys here: " + list_names(keys)
                                : "did you mean `" + guess + "`?");
        }
        return true;
    }

    // An array of at most max_items; returns false (after reporting) if v is not one.
    bool array(const std::string& where, const json& v, std::size_t max_items, const std::string& example) {
        if (!v.is_array()) {
            type_error(where, v, "an array", "write a list in brackets, e.g. `" + example + "`");
            return false;
        }
        if (v.size() > max_items)
            error(where, "too many items (" + std::to_string(v.size()) + ", at most " + std::to_string(max_items) + ")",
                  "remove " + std::to_string(v.size() - max_items) + " of them");
        return true;
    }

private:
    static constexpr std::size_t kMaxProblems = 100;

    static std::string clip_where(const std::string& where) {
        if (where.empty()) return "(root)";
        return where.size() > 200 ? where.substr(0, 197) + "..." : where;
    }
    void add(PolicyProblem p) {
        if (problems_.size() < kMaxProblems)
            problems_.push_back(std::move(p));
        else
            ++dropped_;
    }

    std::vector<PolicyProblem>& problems_;
    std::size_t errors_ = 0;
    std::size_t dropped_ = 0;
};

// ---- keys ---------------------------------------------------------------------

void check_classes(Validator& val, const json& v, Policy& p) {
    const std::string where = "/classes";
    if (!val.array(where, v, kClasses.size(), "[\"heap\", \"anonymous\"]")) return;
    std::set<RegionClass> classes;
    for (std::size_t i = 0; i < v.size(); ++i) {
        std::string item = where + "/" + std::to_string(i);
        const json& c = v[i];
        if (c.is_string() && (c == "text" || c == "never")) {
            val.error(item, "class `" + c.get<std::string>() + "` cannot be advised",
                      "remove it; executable code and the `never` regions are never advised");
            continue;
        }
        auto name = val.one_of(item, c, kClasses, "class");
        if (!name) continue;
        RegionClass rc{};
        parse_region_class(*name, rc);
        if (!classes.insert(rc).second)
            val.error(item, "class `" + *name + "` is listed twice", "remove the duplicate");
    }
    if (v.empty())
        val.warn(where, "no class selected: nothing will be advised",
                 "list the classes to advise, e.g. `[\"heap\", \"anonymous\", \"libdata\"]`");
    p.classes = std::move(classes);
}

void check_globs(Validator& val, const std::string& key, const json& v, std::vector<std::string>& out) {
    const std::string where = "/" + key;
    if (!val.array(where, v, 64, "[\"*/libtorch*.so*\"]")) return;
    std::vector<std::string> globs;
    for (std::size_t i = 0; i < v.size(); ++i) {
        std::string item = where + "/" + std::to_string(i);
        auto s = val.string(item, v[i], "write a quoted fnmatch(3) pattern, e.g. `\"*.pyc\"`");
        if (!s) continue;
        std::size_t len = utf8_length(*s);
        if (len < 1 || len > 256) {
            val.error(item, "pattern length " + std::to_string(len) + " is out of range (1 to 256)",
                      len < 1 ? "remove the empty pattern" : "shorten the pattern, e.g. with `*`");
            continue;
        }
        char first = s->front();
        bool pseudo_ok = key == "exclude_paths" && first == '[';
        if (first != '/' && first != '*' && first != '?' && first != '[' && !pseudo_ok)
            val.warn(item, "pattern `" + *s + "` never matches: mapping paths are absolute",
                     "write `*/" + *s + "` or an absolute path");
        globs.push_back(*s);
    }
    out = std::move(globs);
}

void check_periodic(Validator& val, const json& v, Triggers& t) {
    const std::string where = "/triggers/periodic";
    if (!val.object(where, v, kPeriodicKeys, "{\"interval_ms\": 1000, \"duration_ms\": 60000}")) return;
    std::optional<std::int64_t> interval, duration, then;
    for (const auto& [key, value] : v.items()) {
        std::string item = where + "/" + pointer_escape(key);
        if (key == "$comment")
            val.string(item, value, "write the comment as a string");
        else if (key == "interval_ms")
            interval = val.integer(item, value, 100, kMaxMs, "1000");
        else if (key == "duration_ms")
            duration = val.integer(item, value, 0, kMaxMs, "60000");
        else if (key == "then_interval_ms")
            then = val.integer(item, value, 0, kMaxMs, "10000");
    }
    if (!v.contains("interval_ms")) {
        val.error(where, "missing `interval_ms`", "add `\"interval_ms\": 1000` (re-advise every second)");
        return;
    }
    if (interval) t.periodic_interval = std::chrono::milliseconds(*interval);
    t.periodic_duration = std::chrono::milliseconds(duration.value_or(0));
    t.periodic_then = std::chrono::milliseconds(then.value_or(0));
    if (then && *then != 0 && *then < 100)
        val.error(where + "/then_interval_ms", "then_interval_ms (" + std::to_string(*then) + ") is below 100",
                  "write 0 to stop after duration_ms, or at least 100 (every 10 s: 10000)");
    if (then && *then != 0 && duration.value_or(0) == 0)
        val.warn(where + "/then_interval_ms",
                 "then_interval_ms has no effect: without duration_ms the trigger runs every interval_ms for the "
                 "whole life of the process",
                 "set duration_ms (e.g. 60000) to slow down after the first minute, or drop then_interval_ms");
    if (interval && duration && *duration != 0 && *duration < *interval)
        val.warn(where, "duration_ms (" + std::to_string(*duration) + ") is shorter than interval_ms (" +
                            std::to_string(*interval) + "): the periodic trigger never fires",
                 "make duration_ms at least interval_ms, or 0 for the whole life of the process");
}

void check_triggers(Validator& val, const json& v, Triggers& t) {
    const std::string where = "/triggers";
    if (!val.object(where, v, kTriggerKeys, "{\"start\": true}")) return;
    for (const auto& [key, value] : v.items()) {
        std::string item = where + "/" + pointer_escape(key);
        if (key == "$comment") {
            val.string(item, value, "write the comment as a string");
        } else if (key == "start") {
            if (auto b = val.boolean(item, value)) t.at_start = *b;
        } else if (key == "dlopen") {
            if (auto b = val.boolean(item, value)) t.after_dlopen = *b;
        } else if (key == "delays_ms") {
            if (!val.array(item, value, 64, "[5000, 60000]")) continue;
            t.delays.clear();
            for (std::size_t i = 0; i < value.size(); ++i)
                if (auto ms = val.integer(item + "/" + std::to_string(i), value[i], 0, kMaxMs, "5000"))
                    t.delays.emplace_back(*ms);
        } else if (key == "periodic") {
            if (value.is_null()) {  // explicitly off
                t.periodic_interval = std::chrono::milliseconds(0);
                t.periodic_duration = std::chrono::milliseconds(0);
                t.periodic_then = std::chrono::milliseconds(0);
                continue;
            }
            check_periodic(val, value, t);
        } else if (key == "signal") {
            if (value.is_null()) {
                t.signal = 0;
                continue;
            }
            if (value.is_string() && value.get<std::string>().starts_with("SIG") &&
                std::find(kSignals.begin(), kSignals.end(), value.get<std::string>()) == kSignals.end() &&
                near_miss(value.get<std::string>(), kSignals).empty()) {
                val.error(item, "signal `" + clip(value.get<std::string>()) + "` is not allowed",
                          "use one a program normally leaves alone: " + list_names(kSignals) +
                              ", or null for none");
                continue;
            }
            if (value.is_string() && signal_from_name("SIG" + value.get<std::string>()) != 0) {
                val.error(item, "unknown signal `" + value.get<std::string>() + "`",
                          "did you mean `SIG" + value.get<std::string>() + "`?");
                continue;
            }
            if (auto s = val.one_of(item, value, kSignals, "signal")) t.signal = signal_from_name(*s);
        }
    }
}

void check_description(Validator& val, const std::string& where, const json& value, Policy& p) {
    if (auto s = val.string(where, value, "write a quoted text")) {
        if (utf8_length(*s) > 1024)
            val.error(where, "description is longer than 1024 characters", "shorten it");
        else
            p.description = *s;
    }
}

void check_min_region(Validator& val, const std::string& where, const json& value, Policy& p) {
    if (auto kib = val.integer(where, value, 4, 16777216, "16")) {
        p.min_region_bytes = static_cast<std::uint64_t>(*kib) * 1024;
        if (*kib < 16)
            val.warn(where,
                     "regions smaller than 16 KiB are advised: many tiny regions cost more to advise "
                     "than they save",
                     "use 16 or more unless small regions are known to be duplicated");
    }
}

void check_domain(Validator& val, const std::string& where, const json& value, Policy& p) {
    if (auto s = val.string(where, value, "write a quoted name, e.g. `\"tenant-a\"`")) {
        // Up to kMaxDomain: the copy upm-hook createRuntime writes
        // carries the domain scoped by the namespace (docs/hardening.md).
        if (valid_domain(*s))
            p.domain = *s;
        else
            val.error(where, "invalid domain `" + clip(*s) + "`",
                      "use up to 132 letters, digits, `.`, `_` or `-`, starting with a letter or digit, "
                      "or \"\" for the runtime's default");
    }
}

void check_on_error(Validator& val, const std::string& where, const json& value, Policy& p,
                    std::optional<FailMode>& declared_on_error) {
    if (auto s = val.one_of(where, value, kFailModes, "on_error mode")) {
        p.on_error = *s == "closed" ? FailMode::closed : FailMode::open;
        declared_on_error = p.on_error;
        if (p.on_error == FailMode::closed)
            val.warn(where,
                     "on_error `closed` stops the program (exit status 127) when upm cannot apply the "
                     "policy",
                     "use `open` unless the program must not run without deduplication");
    }
}

void check_layout(Validator& val, const std::string& where, const json& value, Policy& p) {
    if (auto s = val.one_of(where, value, kLayouts, "layout")) {
        p.layout = *s == "fixed" ? Layout::fixed
                   : *s == "shared-per-domain" ? Layout::shared_per_domain
                                               : Layout::randomized;
        if (p.layout == Layout::fixed)
            val.warn(where,
                     "layout `fixed` weakens ASLR: every process started under this policy, in every "
                     "domain, has the same well-known addresses (docs/hardening.md)",
                     "use `shared-per-domain` to keep layouts apart between domains, or `randomized`");
        else if (p.layout == Layout::shared_per_domain)
            val.warn(where,
                     "layout `shared-per-domain` weakens ASLR: processes of one domain share their "
                     "addresses, and the executable, [heap] and [stack] are at fixed addresses in every "
                     "domain (docs/hardening.md)",
                     "use it only for domains whose processes trust each other; `randomized` keeps ASLR");
    }
}

void check_hash_seed(Validator& val, const std::string& where, const json& value, Policy& p) {
    if (auto s = val.one_of(where, value, kHashSeeds, "hash seed mode")) {
        p.hash_seed = *s == "per-domain" ? HashSeed::per_domain : HashSeed::random;
        if (p.hash_seed == HashSeed::per_domain)
            val.warn(where,
                     "hash_seed `per-domain` weakens hash randomisation: processes of one domain share "
                     "their hash seeds (PYTHONHASHSEED, PERL_HASH_SEED), so one that learns its seed can "
                     "predict hash collisions in the others (docs/hardening.md)",
                     "use it only for domains whose processes trust each other; `random` keeps it");
    }
}

// One member of the document (unknown keys are reported by Validator::object).
void check_root_key(Validator& val, const std::string& key, const json& value, Policy& p,
                    std::optional<FailMode>& declared_on_error) {
    std::string where = "/" + pointer_escape(key);
    if (key == "$comment") {
        val.string(where, value, "write the comment as a string");
    } else if (key == "version") {
        if (!value.is_number() || value != json(1))
            val.error(where, value.is_number() ? "unsupported version " + show(value)
                                               : "expected the integer 1, got " + type_name(value),
                      "write `\"version\": 1` (the only format version)");
    } else if (key == "description") {
        check_description(val, where, value, p);
    } else if (key == "classes") {
        check_classes(val, value, p);
    } else if (key == "include_paths") {
        check_globs(val, key, value, p.include);
    } else if (key == "exclude_paths") {
        check_globs(val, key, value, p.exclude);
    } else if (key == "min_region_kib") {
        check_min_region(val, where, value, p);
    } else if (key == "triggers") {
        check_triggers(val, value, p.triggers);
    } else if (key == "backend") {
        if (auto s = val.one_of(where, value, kBackends, "backend")) parse_backend_choice(*s, p.backend);
    } else if (key == "domain") {
        check_domain(val, where, value, p);
    } else if (key == "on_error") {
        check_on_error(val, where, value, p, declared_on_error);
    } else if (key == "log_level") {
        if (auto s = val.one_of(where, value, kLogLevels, "log level")) p.log_level = *s;
    } else if (key == "trim") {
        if (auto b = val.boolean(where, value)) p.trim = *b;
    } else if (key == "layout") {
        check_layout(val, where, value, p);
    } else if (key == "hash_seed") {
        check_hash_seed(val, where, value, p);
    } else if (key == "advice") {
        if (auto s = val.one_of(where, value, kAdviceModes, "advice mode")) parse_advice_mode(*s, p.advice);
    }
}

void check_root(Validator& val, const json& doc, Policy& p, std::optional<FailMode>& declared_on_error) {
    if (!val.object("", doc, kRootKeys, "{\"version\": 1}")) return;
    for (const auto& [key, value] : doc.items()) check_root_key(val, key, value, p, declared_on_error);
    const Triggers& t = p.triggers;
    if (val.errors() == 0 && !t.at_start && !t.after_dlopen && t.delays.empty() && t.periodic_interval.count() == 0 &&
        t.signal == 0)
        val.warn("/triggers", "no trigger is enabled: regions are advised only through the C API",
                 "enable `start` unless the program calls `upm_advise_all()` itself");
}

// 1-based line and column of the byte at 1-based index `byte` (nlohmann's
// parse_error::byte: the last character read).
std::pair<std::size_t, std::size_t> line_column(std::string_view text, std::size_t byte) {
    std::size_t upto = std::min(byte == 0 ? 0 : byte - 1, text.size());
    std::size_t line = 1, col = 1;
    for (std::size_t i = 0; i < upto; ++i) {
        if (text[i] == '\n') {
            ++line;
            col = 1;
        } else {
            ++col;
        }
    }
    return {line, col};
}

// Duplicate keys: JSON parsers keep the last value silently (so does a JSON
// Schema validator); we warn, since the first value was probably meant to
// count.  Tracks the JSON pointer of the current position from the parser's
// events.
class DuplicateKeys {
public:
    explicit DuplicateKeys(std::vector<PolicyProblem>& problems) : problems_(problems) {}

    bool operator()(int /*depth*/, json::parse_event_t event, json& parsed) {
        switch (event) {
            case json::parse_event_t::object_start: frames_.push_back({true, {}, {}, 0}); break;
            case json::parse_event_t::array_start: frames_.push_back({false, {}, {}, 0}); break;
            case json::parse_event_t::key:
                if (!frames_.empty() && parsed.is_string()) {
                    Frame& f = frames_.back();
                    f.current = parsed.get<std::string>();
                    if (!f.keys.insert(f.current).second && problems_.size() < 100)
                        problems_.push_back({Level::warn,
                                             "duplicate key `" + clip(f.current) + "`: only the last value is used",
                                             pointer(), "remove one of them"});
                }
                break;
            case json::parse_event_t::object_end:
            case json::parse_event_t::array_end:
                if (!frames_.empty()) frames_.pop_back();
                element_done();
                break;
            case json::parse_event_t::value: element_done(); break;
        }
        return true;
    }

private:
    struct Frame {
        bool object;
        std::set<std::string> keys;
        std::string current;
        std::size_t index;
    };

    void element_done() {
        if (!frames_.empty() && !frames_.back().object) ++frames_.back().index;
    }

    std::string pointer() const {
        std::string out;
        for (const auto& f : frames_) out += "/" + (f.object ? pointer_escape(f.current) : std::to_string(f.index));
        return out;
    }

    std::vector<PolicyProblem>& problems_;
    std::vector<Frame> frames_;
};

PolicyProblem syntax_problem(std::string_view text, const json::parse_error& e) {
    auto [line, col] = line_column(text, e.byte);
    std::string what = e.what();
    // "[json.exception.parse_error.101] parse error at line 1, column 2: syntax error ..." -> "syntax error ..."
    auto colon = what.find(": ", what.find("parse error"));
    if (colon != std::string::npos) what = what.substr(colon + 2);
    // Drop nlohmann's "; last read: '...'" echo of the input.
    if (auto lr = what.find("; last read: '"); lr != std::string::npos) {
        auto end = what.find("'", lr + 14);
        what.erase(lr, end == std::string::npos ? std::string::npos : end + 1 - lr);
    }
    std::string fix = "fix the JSON syntax there (comments are allowed, trailing commas are not)";
    if (what.find("unexpected '}'") != std::string::npos || what.find("unexpected ']'") != std::string::npos)
        fix = "remove the trailing comma before it, or add the missing value";
    else if (what.find("unexpected end of input") != std::string::npos)
        fix = text.find_first_not_of(" \t\r\n") == std::string_view::npos
                  ? "write a JSON object, e.g. `{\"version\": 1}`"
                  : "close every `{`, `[`, string and comment";
    else if (what.find("invalid literal") != std::string::npos)
        fix = "quote strings with double quotes; literals are `true`, `false` and `null`";
    return PolicyProblem{Level::error, what, "line " + std::to_string(line) + ", column " + std::to_string(col), fix};
}

}  // namespace

// ---- public functions ---------------------------------------------------------

std::size_t PolicyCheck::error_count() const {
    return static_cast<std::size_t>(std::count_if(problems.begin(), problems.end(), [](auto& p) { return !p.warning(); }));
}

std::size_t PolicyCheck::warning_count() const { return problems.size() - error_count(); }

std::int64_t next_periodic_ms(const Triggers& t, std::int64_t after_ms) {
    const std::int64_t interval = t.periodic_interval.count();
    const std::int64_t duration = t.periodic_duration.count();
    const std::int64_t then = t.periodic_then.count();
    if (interval <= 0) return INT64_MAX;
    if (after_ms < 0) after_ms = -1;
    const std::int64_t tick = (after_ms / interval + 1) * interval;
    if (duration == 0 || tick <= duration) return tick;
    if (then <= 0) return INT64_MAX;
    if (after_ms < duration) return duration + then;
    return duration + ((after_ms - duration) / then + 1) * then;
}

const Policy& default_policy() {
    static const Policy p = [] {
        Policy d;
        d.name = "default";
        d.description = "upm default: heap, anonymous and library data; re-advise every second for a minute, then every 10 s";
        d.classes = {RegionClass::heap, RegionClass::anonymous, RegionClass::libdata};
        d.min_region_bytes = 16 * 1024;
        d.triggers.at_start = true;
        d.triggers.after_dlopen = true;
        d.triggers.periodic_interval = std::chrono::milliseconds(1000);
        d.triggers.periodic_duration = std::chrono::milliseconds(60000);
        d.triggers.periodic_then = std::chrono::milliseconds(10000);
        d.triggers.signal = 0;
        d.backend = BackendChoice::automatic;
        d.on_error = FailMode::open;
        d.log_level = "off";
        return d;
    }();
    return p;
}

PolicyCheck parse_policy(std::string_view text, std::string_view name) {
    PolicyCheck check;
    try {
        json doc;
        std::vector<PolicyProblem> duplicates;
        try {
            DuplicateKeys dup(duplicates);
            doc = json::parse(text.begin(), text.end(), std::ref(dup), /*allow_exceptions=*/true,
                              /*ignore_comments=*/true);
        } catch (const json::parse_error& e) {
            check.problems.push_back(syntax_problem(text, e));
            return check;
        }
        check.problems = std::move(duplicates);
        check.syntax_ok = true;
        Policy p = default_policy();
        p.name = std::string(name);
        p.description.clear();  // free text: not inherited from the default
        Validator val(check.problems);
        check_root(val, doc, p, check.declared_on_error);
        val.finish();
        if (val.errors() == 0) check.policy = std::move(p);
    } catch (const std::exception& e) {
        check.policy.reset();
        check.problems.push_back({Level::error, std::string("internal error: ") + e.what(), "(document)",
                                  "report this as a bug in upm"});
    }
    return check;
}

std::string format_problem(std::string_view file, const PolicyProblem& p) {
    try {
        std::string out = std::string(file) + ": " + p.where + ": " + (p.warning() ? "warning: " : "error: ") + p.message;
        if (!p.fix.empty()) out += " (fix: " + p.fix + ")";
        return out;
    } catch (...) {
        return {};
    }
}

PolicyCheck load_policy_file(const std::string& path) {
    std::string stem = path.substr(path.rfind('/') == std::string::npos ? 0 : path.rfind('/') + 1);
    if (stem.size() > 5 && stem.ends_with(".json")) stem.resize(stem.size() - 5);
    auto text = detail::read_file(path, detail::kMaxPolicyFile);
    if (!text) {
        PolicyCheck check;
        check.problems.push_back({Level::error, "cannot read the policy: " + text.error().message, "(file)",
                                  text.error().err == EFBIG ? "a policy is at most 1 MiB; shorten it"
                                                            : "check the path and its permissions"});
        return check;
    }
    return parse_policy(*text, stem);
}

bool valid_policy_name(std::string_view name) {
    if (name.empty() || name.size() > 64) return false;
    auto ok = [](char c) { return std::isalnum(static_cast<unsigned char>(c)) != 0; };
    if (!ok(name.front())) return false;
    return std::all_of(name.begin(), name.end(), [&](char c) { return ok(c) || c == '.' || c == '_' || c == '-'; });
}

bool valid_domain_name(std::string_view domain) {
    return domain.empty() || (domain.size() <= kMaxDomainName && valid_policy_name(domain));
}

bool valid_domain(std::string_view domain) {
    if (domain.empty()) return true;
    if (domain.size() > kMaxDomain) return false;
    auto ok = [](char c) { return std::isalnum(static_cast<unsigned char>(c)) != 0; };
    if (!ok(domain.front())) return false;
    return std::all_of(domain.begin(), domain.end(), [&](char c) { return ok(c) || c == '.' || c == '_' || c == '-'; });
}

std::vector<std::string> policy_search_path() {
    std::vector<std::string> dirs;
    try {
        const char* env = ::secure_getenv("UPM_POLICY_PATH");
        if (env && *env) {
            std::string_view rest = env;
            while (!rest.empty()) {
                auto colon = rest.find(':');
                auto dir = rest.substr(0, colon);
                if (!dir.empty()) dirs.emplace_back(dir);
                rest.remove_prefix(colon == std::string_view::npos ? rest.size() : colon + 1);
            }
            return dirs;
        }
        dirs.emplace_back("/etc/upm/policies");
        dirs.emplace_back(UPM_POLICY_DIR);
#ifdef UPM_SOURCE_POLICY_DIR
        // Last resort for programs run from the build tree, before install.
        dirs.emplace_back(UPM_SOURCE_POLICY_DIR);
#endif
    } catch (...) {
    }
    return dirs;
}

Result<std::string> resolve_policy(std::string_view file_or_name) {
    try {
        std::string arg(file_or_name);
        auto absolute = [](const std::string& path) -> Result<std::string> {
            char buf[PATH_MAX];
            if (!::realpath(path.c_str(), buf)) return Error::sys(errno, "policy file `" + path + "`");
            struct stat st {};
            if (::stat(buf, &st) != 0) return Error::sys(errno, "policy file `" + path + "`");
            if (!S_ISREG(st.st_mode)) return Error{EINVAL, "policy file `" + path + "` is not a regular file"};
            return std::string(buf);
        };
        if (arg.find('/') != std::string::npos || arg.ends_with(".json")) return absolute(arg);
        if (!valid_policy_name(arg))
            return Error{EINVAL, "invalid policy name `" + arg +
                                     "`: give a file path, or a name of letters, digits, `.`, `_` and `-`"};
        auto dirs = policy_search_path();
        std::string tried;
        for (const auto& dir : dirs) {
            std::string path = dir + "/" + arg + ".json";
            if (::access(path.c_str(), R_OK) == 0) return absolute(path);
            tried += (tried.empty() ? "" : ", ") + dir;
        }
        return Error{ENOENT, "no policy named `" + arg + "` in " + (tried.empty() ? "(no directory)" : tried) +
                                 " (give a file path, or set $UPM_POLICY_PATH)"};
    } catch (const std::exception& e) {
        return Error::msg(std::string("resolving policy: ") + e.what());
    }
}

std::string_view to_string(BackendChoice b) {
    switch (b) {
        case BackendChoice::automatic: return "auto";
        case BackendChoice::upm: return "upm";
        case BackendChoice::ksm: return "ksm";
    }
    return "auto";
}

bool parse_backend_choice(std::string_view name, BackendChoice& out) {
    if (name == "auto") out = BackendChoice::automatic;
    else if (name == "upm") out = BackendChoice::upm;
    else if (name == "ksm") out = BackendChoice::ksm;
    else return false;
    return true;
}

std::string_view to_string(FailMode m) { return m == FailMode::closed ? "closed" : "open"; }

std::string_view to_string(AdviceMode a) {
    switch (a) {
        case AdviceMode::automatic: return "auto";
        case AdviceMode::preload: return "preload";
        case AdviceMode::remote: return "remote";
        case AdviceMode::both: return "both";
    }
    return "auto";
}

bool parse_advice_mode(std::string_view name, AdviceMode& out) {
    if (name == "auto") out = AdviceMode::automatic;
    else if (name == "preload") out = AdviceMode::preload;
    else if (name == "remote") out = AdviceMode::remote;
    else if (name == "both") out = AdviceMode::both;
    else return false;
    return true;
}

std::string_view to_string(Layout l) {
    switch (l) {
        case Layout::randomized: return "randomized";
        case Layout::shared_per_domain: return "shared-per-domain";
        case Layout::fixed: return "fixed";
    }
    return "randomized";
}

std::string_view to_string(HashSeed h) { return h == HashSeed::per_domain ? "per-domain" : "random"; }

int signal_from_name(std::string_view name) {
    if (name == "SIGUSR1") return SIGUSR1;
    if (name == "SIGUSR2") return SIGUSR2;
    if (name == "SIGRTMAX") return SIGRTMAX;
    if (name == "SIGRTMIN") return SIGRTMIN;
    if (name.starts_with("SIGRTMIN+") && name.size() == 10 && name[9] >= '1' && name[9] <= '4')
        return SIGRTMIN + (name[9] - '0');
    return 0;
}

std::string signal_name(int signo) {
    if (signo == 0) return {};
    for (auto n : kSignals)
        if (signal_from_name(n) == signo) return std::string(n);
    return "signal " + std::to_string(signo);
}

bool everything_anonymous(const Policy& p) {
    std::set<RegionClass> anon{RegionClass::heap, RegionClass::anonymous, RegionClass::stack};
    return p.classes == anon && p.include.empty() && p.exclude.empty() && p.min_region_bytes <= 4096;
}

std::string policy_to_json(const Policy& p) {
    try {
        json doc;
        doc["version"] = 1;
        doc["description"] = p.description;
        json classes = json::array();
        for (auto name : kClasses) {
            RegionClass rc{};
            parse_region_class(name, rc);
            if (p.classes.count(rc)) classes.push_back(name);
        }
        doc["classes"] = classes;
        doc["include_paths"] = p.include;
        doc["exclude_paths"] = p.exclude;
        doc["min_region_kib"] = p.min_region_bytes / 1024;
        json t;
        t["start"] = p.triggers.at_start;
        t["dlopen"] = p.triggers.after_dlopen;
        t["delays_ms"] = json::array();
        for (auto d : p.triggers.delays) t["delays_ms"].push_back(d.count());
        if (p.triggers.periodic_interval.count() > 0) {
            t["periodic"] = {{"interval_ms", p.triggers.periodic_interval.count()},
                             {"duration_ms", p.triggers.periodic_duration.count()}};
            if (p.triggers.periodic_then.count() > 0)
                t["periodic"]["then_interval_ms"] = p.triggers.periodic_then.count();
        } else {
            t["periodic"] = nullptr;
        }
        t["signal"] = p.triggers.signal ? json(signal_name(p.triggers.signal)) : json(nullptr);
        doc["triggers"] = t;
        doc["backend"] = to_string(p.backend);
        doc["domain"] = p.domain;
        doc["on_error"] = to_string(p.on_error);
        doc["log_level"] = p.log_level;
        doc["trim"] = p.trim;
        doc["layout"] = to_string(p.layout);
        doc["hash_seed"] = to_string(p.hash_seed);
        doc["advice"] = to_string(p.advice);
        return doc.dump(2) + "\n";
    } catch (const std::exception&) {
        return "{}\n";
    }
}

// ---- decisions ------------------------------------------------------------------

namespace {

bool glob_match(const std::string& pattern, const std::string& path) {
    return pattern == path || ::fnmatch(pattern.c_str(), path.c_str(), 0) == 0;
}

std::string kib(std::uint64_t bytes) { return std::to_string(bytes / 1024) + " KiB"; }

}  // namespace

std::vector<Decision> decide(const Policy& policy, const std::vector<Classified>& regions) {
    std::vector<Decision> out;
    try {
        out.reserve(regions.size());
        for (const auto& c : regions) {
            Decision d{c, false, {}};
            const Region& r = c.region;
            bool file_backed = r.inode != 0 && !r.path.empty() && r.path.front() == '/';
            if (c.cls == RegionClass::never || c.cls == RegionClass::text) {
                d.reason = "never advised: " + c.why;
            } else if (!policy.classes.count(c.cls)) {
                d.reason = "class `" + std::string(to_string(c.cls)) + "` not enabled";
            } else if (auto ex = std::find_if(policy.exclude.begin(), policy.exclude.end(),
                                              [&](const std::string& g) { return !r.path.empty() && glob_match(g, r.path); });
                       ex != policy.exclude.end()) {
                d.reason = "excluded by `" + *ex + "`";
            } else if (file_backed && !policy.include.empty() &&
                       std::none_of(policy.include.begin(), policy.include.end(),
                                    [&](const std::string& g) { return glob_match(g, r.path); })) {
                d.reason = "path not matched by include_paths";
            } else if (r.size() < policy.min_region_bytes) {
                d.reason = "smaller than min_region_kib (" + kib(r.size()) + " < " + kib(policy.min_region_bytes) + ")";
            } else {
                d.advise = true;
                d.reason = "class `" + std::string(to_string(c.cls)) + "` enabled";
                if (file_backed && !policy.include.empty()) d.reason += ", path included";
            }
            out.push_back(std::move(d));
        }
    } catch (...) {
        // Out of memory: decide nothing rather than throw into the host program.
    }
    return out;
}

}  // namespace upm
