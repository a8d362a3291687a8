// The one diagnostic type of upm and its level.
//
// Policy checks, node configuration checks, the notes of spec editing and
// what upm-hook reports of the node agent are all a Problem: a level, a
// message, and where the reader should look and what to do when there is
// a place and a fix.  Messages: lowercase, no final period, names in
// backticks (docs/design.md).
#pragma once

#include <string>
#include <string_view>

namespace upm {

// The one log-level type.  Programs map it onto their logger
// (log_sinks.hpp: to_spdlog()); the node log and upm-runtime's runtime log
// print to_string().
enum class Level { debug, info, warn, error };

std::string_view to_string(Level level);   // "debug", "info", "warn", "error"
// "debug", "info", "warn" (or "warning"), "error"; anything else: `fallback`.
Level parse_level(std::string_view name, Level fallback);

struct Problem {
    Level level = Level::error;  // warn: accepted but suspicious; info, debug: notes
    std::string message;         // what is wrong (or what happened)
    std::string where = {};      // JSON pointer ("/triggers/delays_ms/2"), "line 3, column 7", "(file)"; "" for none
    std::string fix = {};        // what to do about it; "" when the message says it

    bool warning() const { return level == Level::warn; }
};

}  // namespace upm
