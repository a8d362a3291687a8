// Locating the preload and extending LD_PRELOAD; see launch.hpp.
//
// The build-tree location (UPM_BUILD_PRELOAD) and the install libdir
// (UPM_INSTALL_LIBDIR) are compiled in by hooks/lib/CMakeLists.txt.
#include "upm/launch.hpp"

#include "upm/io.hpp"

#include <limits.h>
#include <stdlib.h>
#include <unistd.h>

#include <cerrno>
#include <vector>

namespace upm {

namespace {

bool readable(const std::string& path) { return !path.empty() && ::access(path.c_str(), R_OK) == 0; }

std::string real_path(const std::string& path) {
    char buf[PATH_MAX];
    return ::realpath(path.c_str(), buf) ? std::string(buf) : path;
}

std::string exe_dir() {
    char buf[PATH_MAX];
    ssize_t n = ::readlink("/proc/self/exe", buf, sizeof buf - 1);
    if (n <= 0) return {};
    std::string exe(buf, static_cast<std::size_t>(n));
    return detail::dirname(exe);
}

}  // namespace

Result<std::string> find_preload() {
    try {
        if (const char* env = ::secure_getenv(kEnvPreload); env && *env) {
            if (readable(env)) return real_path(env);
            return Error::sys(errno, std::string("$UPM_PRELOAD names `") + env + "`, which cannot be read");
        }
        std::vector<std::string> candidates;
        if (auto dir = exe_dir(); !dir.empty()) {
            candidates.push_back(dir + "/../" UPM_INSTALL_LIBDIR "/upm/libupm-preload.so");
            if (std::string_view(UPM_INSTALL_LIBDIR) != "lib")
                candidates.push_back(dir + "/../lib/upm/libupm-preload.so");
        }
        candidates.emplace_back(UPM_BUILD_PRELOAD);
        std::string tried;
        for (const auto& c : candidates) {
            if (readable(c)) return real_path(c);
            tried += (tried.empty() ? "`" : ", `") + c + "`";
        }
        return Error{ENOENT, "libupm-preload.so not found (tried " + tried + "); set $UPM_PRELOAD to its path"};
    } catch (const std::exception& e) {
        return Error::msg(std::string("locating libupm-preload.so: ") + e.what());
    }
}

std::string append_ld_preload(std::string_view existing, const std::string& preload) {
    std::string_view rest = existing;
    while (!rest.empty()) {
        auto sep = rest.find_first_of(": ");
        std::string entry(rest.substr(0, sep));
        rest.remove_prefix(sep == std::string_view::npos ? rest.size() : sep + 1);
        if (!entry.empty() && (entry == preload || real_path(entry) == preload)) return std::string(existing);
    }
    // Drop trailing separators so that we never produce an empty entry.
    auto end = existing.find_last_not_of(": ");
    if (end == std::string_view::npos) return preload;
    return std::string(existing.substr(0, end + 1)) + ":" + preload;
}

}  // namespace upm
