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

#include <cstddef>
#include <memory>
#include <string>
#include <string_view>

namespace spdlog { class logger; }

namespace upm {

// Creates (or replaces) the process-wide logger `name` writing to stderr at
// `level` ("off", "error", "warn", "info", "debug", "trace").  Unknown
// levels fall back to "warn".
std::shared_ptr<spdlog::logger> setup_logging(std::string_view name, std::string_view level);

std::shared_ptr<spdlog::logger> logger();  // the logger set up last (never null)

// `value` made safe for a log line: control characters, DEL and bytes above
// 0x7e, the backtick (which quotes names in messages) and the backslash
// escaped as `\xNN`; at most `max` bytes, then "...".  The one sanitizer for
// untrusted values (annotation values, container ids): an id with a backtick
// cannot fake the quoting of a message.
std::string printable(std::string_view value, std::size_t max = 128);

}  // namespace upm
