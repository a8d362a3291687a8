// Starting a program under upm: where libupm-preload.so is and how the
// environment is extended.  Used by `upm run` and, later, by upm-runtime and
// upm-hook, which put the same variables into a container's spec.
#pragma once

#include <string>
#include <string_view>

#include "upm/result.hpp"

namespace upm {

// The environment the preload reads (see shim/preload/init.cpp).
inline constexpr const char* kEnvPolicy = "UPM_POLICY";          // absolute path of the policy file
inline constexpr const char* kEnvBackend = "UPM_BACKEND";        // auto|upm|ksm overrides the policy
inline constexpr const char* kEnvDomain = "UPM_DOMAIN";          // sharing domain
inline constexpr const char* kEnvLog = "UPM_LOG";                // log level, overrides log_level
inline constexpr const char* kEnvFailClosed = "UPM_FAIL_CLOSED"; // "1": any error stops the program
inline constexpr const char* kEnvPreload = "UPM_PRELOAD";        // where `upm run` finds the preload

// Absolute path of libupm-preload.so: $UPM_PRELOAD if set, else
// <dir of this executable>/../<libdir>/upm/libupm-preload.so (the installed
// layout), else the build tree's build/lib/libupm-preload.so.  The error
// names every place tried and says what to do.
Result<std::string> find_preload();

// LD_PRELOAD with `preload` appended (entries are separated by ':' or ' ');
// unchanged when it is already listed, by path or by its real path.
std::string append_ld_preload(std::string_view existing, const std::string& preload);

}  // namespace upm
