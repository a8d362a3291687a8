// Logging set-up shared by every upm program.
//
// Levels (spdlog): error = something failed and upm did less than asked;
// warn = suspicious input or a fallback; info = one line per decision an
// operator may want at 3 a.m. (backend chosen, regions advised);
// debug = per-region detail.  Messages: lowercase, no final period, names in
// backticks, errno text included.  The preload is silent unless a level is
// set (policy log_level or $UPM_LOG); it logs to stderr with a "upm[pid]"
// prefix.
#pragma once

#include <memory>
#include <string_view>

namespace spdlog { class logger; }

namespace upm {

// Creates (or replaces) the process-wide logger `name` writing to stderr at
// `level` ("off", "error", "warn", "info", "debug", "trace").  Unknown
// levels fall back to "warn".
std::shared_ptr<spdlog::logger> setup_logging(std::string_view name, std::string_view level);

std::shared_ptr<spdlog::logger> logger();  // the logger set up last (never null)

}  // namespace upm
