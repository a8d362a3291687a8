// The runc/crun command line upm-runtime is given (spec.hpp,
// parse_runtime_args()): which subcommand, which bundle, where the runtime logs.
#include <algorithm>
#include <optional>

#include "upm/spec.hpp"

namespace upm {

namespace {

template <typename Set>
bool contains(const Set& set, std::string_view s) {
    return std::find(std::begin(set), std::end(set), s) != std::end(set);
}

// ---- command line ----------------------------------------------------------

// Global flags of runc (urfave/cli) and crun (argp) that take a value.
constexpr std::string_view kGlobalValueFlags[] = {
    "log", "log-format", "log-level", "root", "criu", "rootless", "cgroup-manager"};
// Options of create/run (runc and crun) that take a value; "bundle"/"b" and
// "config"/"f" are handled apart.
constexpr std::string_view kCommandValueFlags[] = {"console-socket", "pid-file",
                                                                        "preserve-fds", "pidfd-socket"};
constexpr std::string_view kCommandLongFlags[] = {
    "bundle", "config", "console-socket", "pid-file", "preserve-fds", "pidfd-socket", "detach", "keep",
    "no-pivot", "no-new-keyring", "no-subreaper", "help"};

bool flag_true(const std::optional<std::string>& value) {
    return !value || *value == "true" || *value == "1" || *value == "t" || *value == "TRUE" || *value == "True";
}

}  // namespace

bool take_enable_flag(std::vector<std::string>& args) {
    auto command = parse_runtime_args(args).command_index;
    auto end = command < 0 ? args.end() : args.begin() + command;
    auto it = std::find(args.begin(), end, kRuntimeEnableFlag);
    if (it == end) return false;
    args.erase(std::remove(args.begin(), end, kRuntimeEnableFlag), end);
    return true;
}

RuntimeArgs parse_runtime_args(const std::vector<std::string>& args) {
    RuntimeArgs r;
    try {
        std::size_t i = 0;
        for (; i < args.size(); ++i) {
            const std::string& a = args[i];
            if (a == "--") {
                ++i;
                break;
            }
            if (a.size() < 2 || a[0] != '-') break;
            std::string name = a.substr(a[1] == '-' ? 2 : 1);
            std::optional<std::string> value;
            if (auto eq = name.find('='); eq != std::string::npos) {
                value = name.substr(eq + 1);
                name.resize(eq);
            }
            if (contains(kGlobalValueFlags, name) && !value) value = i + 1 < args.size() ? args[++i] : "";
            if (name == "log") r.log_file = *value;
            else if (name == "log-format") r.log_format = *value;
            else if (name == "debug") r.debug = flag_true(value);
        }
        if (i >= args.size()) return r;
        r.command_index = static_cast<int>(i);
        r.command = args[i];
        if (!edits_bundle(r)) return r;
        for (std::size_t j = i + 1; j < args.size(); ++j) {
            const std::string& a = args[j];
            if (a == "--") break;
            if (a.size() < 2 || a[0] != '-') {
                if (r.container_id.empty()) r.container_id = a;
                continue;
            }
            std::string name = a.substr(a[1] == '-' ? 2 : 1);
            std::optional<std::string> value;
            if (auto eq = name.find('='); eq != std::string::npos) {
                value = name.substr(eq + 1);
                name.resize(eq);
            }
            if (a[1] != '-' && !value && !contains(kCommandLongFlags, name) && name.size() > 1 &&
                (name[0] == 'b' || name[0] == 'f')) {
                // argp's attached short value: -b/path/to/bundle
                value = name.substr(1);
                name.resize(1);
            }
            bool is_bundle = name == "bundle" || name == "b";
            bool is_config = name == "config" || name == "f";
            if ((is_bundle || is_config || contains(kCommandValueFlags, name)) && !value)
                value = j + 1 < args.size() ? args[++j] : "";
            if (is_bundle) r.bundle = value->empty() ? "." : *value;
            if (is_config) r.config_override = true;
        }
    } catch (...) {
        // Out of memory: whatever was parsed; the caller passes through.
    }
    return r;
}

bool edits_bundle(const RuntimeArgs& args) { return args.command == "create" || args.command == "run"; }

}  // namespace upm
