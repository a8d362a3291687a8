// Docker: the runtimes of share/upm/runtimes/docker/daemon.json merged into
// /etc/docker/daemon.json.  dockerd has no drop-in directory and refuses
// unknown keys, so the main file is edited: parsed as JSON (key order kept),
// the runtime "upm" added or taken out, written back with a backup of the
// old file.  dockerd re-reads `runtimes` on SIGHUP (systemctl reload).
#include <nlohmann/json.hpp>
#include <string>

#include "planner.hpp"

namespace upm::install::detail {

namespace {

using Json = nlohmann::ordered_json;

constexpr std::string_view kDaemonJson = "/etc/docker/daemon.json";

Result<Json> parse_json(std::string_view text, std::string_view name) {
    Json doc = Json::parse(text, nullptr, false);
    if (doc.is_discarded()) return Error::msg("`" + std::string(name) + "` is not valid JSON: fix it and run again");
    if (!doc.is_object()) return Error::msg("`" + std::string(name) + "` is not a JSON object");
    if (doc.contains("runtimes") && !doc["runtimes"].is_object())
        return Error::msg("`runtimes` in `" + std::string(name) + "` is not an object");
    return doc;
}

// A runtime entry upm wrote: {"path": ".../upm-runtime", ...}.
bool is_upm_runtime(const Json& entry) {
    return entry.is_object() && entry.contains("path") && entry["path"].is_string() &&
           entry["path"].get<std::string>().ends_with("/upm-runtime");
}

std::string dump(const Json& doc) { return doc.dump(2) + "\n"; }

Status plan_install(const Options& options, Plan& plan, const std::optional<std::string>& old) {
    auto fragment_text = render_snippet(options, "docker/daemon.json", false);
    if (!fragment_text) return fragment_text.error();
    auto fragment = parse_json(*fragment_text, "share/upm/runtimes/docker/daemon.json");
    if (!fragment) return fragment.error();
    auto doc = old ? parse_json(*old, kDaemonJson) : Result<Json>(Json::object());
    if (!doc) return doc.error();
    for (const auto& [name, entry] : (*fragment)["runtimes"].items()) {
        Json& runtimes = (*doc)["runtimes"];
        if (runtimes.contains(name) && runtimes[name] != entry && !is_upm_runtime(runtimes[name]))
            return Error::msg("`" + std::string(kDaemonJson) + "` defines a runtime `" + name +
                              "` that is not upm-runtime: remove or rename it and run again");
        runtimes[name] = entry;
    }
    plan_main_file(plan, kDaemonJson, old, dump(*doc), "the runtime \"upm\" (docker run --runtime upm)");
    return Ok{};
}

Status plan_uninstall(Plan& plan, const std::optional<std::string>& old) {
    if (!old) {
        plan.unchanged.push_back(std::string(kDaemonJson) + ": not there");
        return Ok{};
    }
    auto doc = parse_json(*old, kDaemonJson);
    if (!doc) return doc.error();
    Json& runtimes = (*doc)["runtimes"];
    if (!runtimes.contains("upm") || !is_upm_runtime(runtimes["upm"])) {
        plan.unchanged.push_back(std::string(kDaemonJson) + ": no runtime \"upm\" of upm");
        return Ok{};
    }
    runtimes.erase("upm");
    if (runtimes.empty()) doc->erase("runtimes");
    // A daemon.json that upm created holds nothing else: remove it.
    std::optional<std::string> text;
    if (!doc->empty()) text = dump(*doc);
    plan_main_file(plan, kDaemonJson, old, text, "the runtime \"upm\" taken out");
    return Ok{};
}

}  // namespace

Status plan_docker(const Options& options, Plan& plan, bool install) {
    plan.restart = "systemctl reload docker";
    auto old = read_host_file(options, kDaemonJson);
    if (!old) return old.error();
    return install ? plan_install(options, plan, *old) : plan_uninstall(plan, *old);
}

}  // namespace upm::install::detail
