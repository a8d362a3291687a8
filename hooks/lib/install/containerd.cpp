// containerd: where the runtime handler "upm" goes depends on the config
// version (see upm/install_runtime.hpp for why).
//
// Main-file edits are text edits that keep every other line, comment and
// blank as it was; TOML is parsed (toml11) to understand the file before an
// edit and to check the result after it.  Whatever is marked by the markers
// below is what uninstall takes out again.
#include <fnmatch.h>

#include <algorithm>
#include <filesystem>
#include <initializer_list>
#include <sstream>
#include <string>
#include <toml.hpp>
#include <vector>

#include "planner.hpp"

namespace upm::install::detail {

namespace {

constexpr std::string_view kConfig = "/etc/containerd/config.toml";
constexpr std::string_view kDropin = "/etc/containerd/conf.d/99-upm.toml";
constexpr std::string_view kImport = "/etc/containerd/conf.d/*.toml";
constexpr std::string_view kCreated = "# Created by `upm install-runtime`; `upm uninstall-runtime` removes it.";
constexpr std::string_view kBlockBegin = "# BEGIN upm install-runtime";
constexpr std::string_view kBlockEnd = "# END upm install-runtime";
constexpr std::string_view kImportMarker = "# upm install-runtime added the import of conf.d:";
constexpr std::string_view kRestart = "systemctl restart containerd";

std::vector<std::string> split_lines(std::string_view text) {
    std::vector<std::string> lines;
    std::istringstream in{std::string(text)};
    for (std::string line; std::getline(in, line);) lines.push_back(line);
    return lines;
}

std::string join_lines(const std::vector<std::string>& lines) {
    std::string out;
    for (const auto& l : lines) out += l + "\n";
    return out;
}

std::string_view ltrim(std::string_view s) {
    while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
    return s;
}

// A top-level `KEY = ...` line (before the first table header), or -1.
int find_top_key(const std::vector<std::string>& lines, std::string_view key) {
    for (std::size_t i = 0; i < lines.size(); ++i) {
        std::string_view l = ltrim(lines[i]);
        if (l.starts_with("[")) break;
        if (!l.starts_with(key)) continue;
        std::string_view rest = ltrim(l.substr(key.size()));
        if (rest.starts_with("=")) return static_cast<int>(i);
    }
    return -1;
}

Result<toml::value> parse_toml(std::string_view text, std::string_view name) {
    try {
        std::istringstream in{std::string(text)};
        return toml::parse(in, std::string(name));
    } catch (const std::exception& e) {
        return Error::msg("`" + std::string(name) + "` is not TOML upm understands: " + e.what());
    }
}

// `version` of a containerd config (containerd reads a file without it as 1).
Result<int> config_version(const toml::value& doc) {
    if (!doc.contains("version")) return 1;
    const auto& v = doc.at("version");
    if (!v.is_integer()) return Error::msg("`version` is not an integer");
    return static_cast<int>(v.as_integer());
}

Result<std::vector<std::string>> config_imports(const toml::value& doc) {
    std::vector<std::string> out;
    if (!doc.contains("imports")) return out;
    const auto& v = doc.at("imports");
    if (!v.is_array()) return Error::msg("`imports` is not an array");
    for (const auto& e : v.as_array()) {
        if (!e.is_string()) return Error::msg("`imports` has an entry that is not a string");
        out.push_back(e.as_string().str);
    }
    return out;
}

bool has_table(const toml::value& doc, std::initializer_list<std::string> keys) {
    const toml::value* v = &doc;
    for (const auto& k : keys) {
        if (!v->is_table() || !v->contains(k)) return false;
        v = &v->at(k);
    }
    return true;
}

bool imports_cover_dropin(const std::vector<std::string>& imports) {
    for (std::string pattern : imports) {
        if (!pattern.starts_with("/")) pattern = "/etc/containerd/" + pattern;
        if (::fnmatch(pattern.c_str(), std::string(kDropin).c_str(), FNM_PATHNAME) == 0) return true;
    }
    return false;
}

std::string imports_line(const std::vector<std::string>& imports) {
    std::string line = "imports = [";
    for (std::size_t i = 0; i < imports.size(); ++i)
        line += (i ? ", " : "") + toml::format(toml::value(imports[i]));
    return line + "]";
}

// The text without the block between kBlockBegin and kBlockEnd (and the
// blank line before it), and whether there was one.
std::pair<std::string, bool> without_block(std::string_view text) {
    auto lines = split_lines(text);
    auto begin = std::find_if(lines.begin(), lines.end(), [](auto& l) { return l.starts_with(kBlockBegin); });
    if (begin == lines.end()) return {std::string(text), false};
    auto end = std::find_if(begin, lines.end(), [](auto& l) { return l.starts_with(kBlockEnd); });
    if (end != lines.end()) ++end;
    if (begin != lines.begin() && (begin - 1)->empty()) --begin;
    lines.erase(begin, end);
    return {join_lines(lines), true};
}

// True when the text holds nothing but what upm created (kCreated, version,
// the import), so uninstall may remove the file.
bool only_upm_left(std::string_view text) {
    auto lines = split_lines(text);
    if (lines.empty() || lines[0] != kCreated) return false;
    auto doc = parse_toml(text, kConfig);
    if (!doc || !doc->is_table()) return false;
    for (const auto& [key, value] : doc->as_table())
        if (key != "version" && !(key == "imports" && value.is_array() && value.as_array().empty())) return false;
    return true;
}

// --- config version 2 (containerd 1.x): a block in the main file ----------

std::string block_of(std::string_view snippet) {
    auto lines = split_lines(snippet);
    auto first = std::find_if(lines.begin(), lines.end(), [](auto& l) { return ltrim(l).starts_with("["); });
    std::vector<std::string> block{std::string(kBlockBegin) + ": the runtime handler \"upm\" (docs/install.md).",
                                   "# containerd 1.x replaces a whole plugin section from an imported file, so",
                                   "# this is in the main file; `upm uninstall-runtime` removes the block."};
    block.insert(block.end(), first, lines.end());
    block.push_back(std::string(kBlockEnd));
    return join_lines(block);
}

Status check_v2(std::string_view text, const Options& options) {
    auto doc = parse_toml(text, kConfig);
    if (!doc) return doc.error().wrap("after the edit");
    const std::initializer_list<std::string> upm = {"plugins", "io.containerd.grpc.v1.cri", "containerd", "runtimes",
                                                    "upm", "options"};
    if (!has_table(*doc, upm)) return Error::msg("after the edit, the runtime `upm` is missing (a bug in upm)");
    const toml::value& opts = doc->at("plugins").at("io.containerd.grpc.v1.cri").at("containerd").at("runtimes")
                                  .at("upm").at("options");
    std::string binary = opts.contains("BinaryName") && opts.at("BinaryName").is_string()
                             ? opts.at("BinaryName").as_string().str
                             : std::string();
    if (binary != options.bin_dir + "/upm-runtime")
        return Error::msg("after the edit, BinaryName is `" + binary + "` (a bug in upm)");
    return Ok{};
}

Status plan_v2(const Options& options, Plan& plan, const std::optional<std::string>& old,
               const toml::value& doc, bool install) {
    auto [rest, had_block] = without_block(old ? *old : "");
    if (!install) {
        if (!had_block) plan.unchanged.push_back(std::string(kConfig) + ": no upm block");
        else plan_main_file(plan, kConfig, old, only_upm_left(rest) ? std::nullopt : std::optional(rest),
                            "the runtime handler \"upm\" taken out");
        return Ok{};
    }
    if (!had_block && has_table(doc, {"plugins", "io.containerd.grpc.v1.cri", "containerd", "runtimes", "upm"}))
        return Error::msg("`" + std::string(kConfig) + "` defines a runtime `upm` already, not written by upm " +
                          "install-runtime: remove that table (or rename it) and run again");
    auto snippet = render_snippet(options, "containerd/99-upm.toml", false);
    if (!snippet) return snippet.error();
    if (!old) rest = std::string(kCreated) + "\nversion = 2\n";
    if (!rest.empty() && !rest.ends_with("\n")) rest += "\n";
    std::string text = rest + "\n" + block_of(*snippet);
    if (auto st = check_v2(text, options); !st) return st;
    plan_main_file(plan, kConfig, old, text, "the runtime handler \"upm\" (config version 2, containerd 1.x)");
    return Ok{};
}

// --- config version 3 (containerd 2.x): a drop-in and its import ----------

Result<std::string> add_import(std::string_view text, const std::vector<std::string>& imports) {
    auto lines = split_lines(text);
    std::vector<std::string> wanted = imports;
    wanted.push_back(std::string(kImport));
    std::string marker = std::string(kImportMarker) + " \"" + std::string(kImport) + "\"";
    int at = find_top_key(lines, "imports");
    if (at >= 0) {
        // Rewrite the line only if it holds the whole array.
        auto alone = parse_toml(lines[at], kConfig);
        auto alone_imports = alone ? config_imports(*alone) : Result<std::vector<std::string>>(Error::msg(""));
        if (!alone_imports || *alone_imports != imports)
            return Error::msg("`imports` in `" + std::string(kConfig) + "` spans several lines: add \"" +
                              std::string(kImport) + "\" to it by hand and run again");
        lines[at] = imports_line(wanted);
        lines.insert(lines.begin() + at, marker);
        return join_lines(lines);
    }
    int version = find_top_key(lines, "version");
    auto pos = lines.begin() + (version >= 0 ? version + 1 : 0);
    pos = lines.insert(pos, imports_line(wanted));
    lines.insert(pos, marker);
    return join_lines(lines);
}

// The text without upm's import (restored as it was before), or unchanged.
Result<std::string> remove_import(std::string_view text) {
    auto lines = split_lines(text);
    auto m = std::find_if(lines.begin(), lines.end(), [](auto& l) { return l.starts_with(kImportMarker); });
    if (m == lines.end() || m + 1 == lines.end()) return std::string(text);
    auto line = parse_toml(*(m + 1), kConfig);
    if (!line) return line.error();
    auto imports = config_imports(*line);
    if (!imports) return imports.error();
    std::erase(*imports, std::string(kImport));
    if (imports->empty()) lines.erase(m, m + 2);
    else {
        *(m + 1) = imports_line(*imports);
        lines.erase(m);
    }
    return join_lines(lines);
}

Status plan_v3_install(const Options& options, Plan& plan, const std::optional<std::string>& old,
                       const toml::value& doc) {
    auto st = plan_dropin(options, plan, kDropin, "containerd/99-upm.containerd2.toml",
                          "the runtime handler \"upm\" (config version 3, containerd 2.x)");
    if (!st) return st;
    auto imports = config_imports(doc);
    if (!imports) return imports.error().wrap(std::string(kConfig));
    if (imports_cover_dropin(*imports)) {
        plan.unchanged.push_back(std::string(kConfig) + ": imports conf.d already");
        return Ok{};
    }
    std::string base = old ? *old : std::string(kCreated) + "\nversion = 3\n";
    auto text = add_import(base, *imports);
    if (!text) return text.error();
    auto check = parse_toml(*text, kConfig);
    if (!check) return check.error().wrap("after the edit");
    auto after = config_imports(*check);
    if (!after || !imports_cover_dropin(*after)) return Error::msg("after the edit, conf.d is not imported (a bug)");
    plan_main_file(plan, kConfig, old, *text, "the import of " + std::string(kImport));
    return Ok{};
}

// The import goes only if upm added it and no other file is left in conf.d.
Status plan_v3_uninstall(const Options& options, Plan& plan, const std::optional<std::string>& old) {
    auto st = plan_remove_dropin(options, plan, kDropin);
    if (!st || !old) return st;
    auto text = remove_import(*old);
    if (!text) return text.error().wrap(std::string(kConfig));
    if (*text == *old) return Ok{};
    std::error_code ec;
    std::string dir = (options.root == "/" ? "" : options.root) + "/etc/containerd/conf.d";
    for (const auto& entry : std::filesystem::directory_iterator(dir, ec)) {
        auto name = entry.path().filename().string();
        bool ours = "/etc/containerd/conf.d/" + name == kDropin &&
                    std::any_of(plan.changes.begin(), plan.changes.end(), [](auto& c) { return c.path == kDropin; });
        if (!ours && name.ends_with(".toml")) {
            plan.unchanged.push_back(std::string(kConfig) + ": the import of conf.d kept (`" + name +
                                     "` is there too)");
            return Ok{};
        }
    }
    plan_main_file(plan, kConfig, old, only_upm_left(*text) ? std::nullopt : std::optional(*text),
                   "the import of conf.d that upm added taken out");
    return Ok{};
}

}  // namespace

Status plan_containerd(const Options& options, Plan& plan, bool install) {
    plan.restart = std::string(kRestart);
    auto old = read_host_file(options, kConfig);
    if (!old) return old.error();
    int version = options.containerd_config_version;
    toml::value doc = toml::table{};
    if (*old) {
        auto parsed = parse_toml(**old, kConfig);
        if (!parsed) return parsed.error();
        doc = *parsed;
        auto v = config_version(doc);
        if (!v) return v.error().wrap(std::string(kConfig));
        version = *v;
    } else if (!install) {
        version = 3;  // no main file: only a drop-in can be there
    } else if (version == 0) {
        return Error::msg("there is no `" + std::string(kConfig) + "`: say which containerd runs here with " +
                          "--containerd-config-version 2 (containerd 1.x) or 3 (containerd 2.x)");
    }
    if (version == 2) return plan_v2(options, plan, *old, doc, install);
    if (version == 3) return install ? plan_v3_install(options, plan, *old, doc) : plan_v3_uninstall(options, plan, *old);
    return Error::msg("`" + std::string(kConfig) + "` has config version " + std::to_string(version) +
                      "; upm supports 2 (containerd 1.x) and 3 (containerd 2.x): migrate it with " +
                      "`containerd config migrate` and run again");
}

}  // namespace upm::install::detail
