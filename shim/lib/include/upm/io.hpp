// Bounded file reading for /proc, /sys and policy files, owned fds (upm::detail).
//
// Every input upm reads comes from a file another party controls (a process's
// /proc entries, a policy file, sysfs), so every read has an upper bound and
// fails with EFBIG instead of growing without limit.  Plain open/read, no
// iostreams: this code runs inside the preload at process start-up.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <unistd.h>
#include <string>
#include <string_view>

#include "upm/result.hpp"

namespace upm::detail {

inline constexpr std::size_t kMaxSmallFile = 64 * 1024;        // /proc and /sys counters
inline constexpr std::size_t kMaxPolicyFile = 1024 * 1024;     // policy documents
inline constexpr std::size_t kMaxMapsFile = 64 * 1024 * 1024;  // /proc/PID/maps

// Reads a whole file, at most `max` bytes (EFBIG when larger).
Result<std::string> read_file(const std::string& path, std::size_t max);

// Writes `value` to an existing file (sysfs knobs).
Status write_file(const std::string& path, std::string_view value);

// Writes all of `data` to `fd`, again after EINTR and short writes.
// Returns 0, or the errno of the write that failed (EIO for one that wrote
// nothing).  The one write loop of upm: every other writer calls it.
int write_all(int fd, std::string_view data);

// The directory part of `path`: "." without a slash, "/" for "/name",
// else everything before the last slash.
std::string dirname(std::string_view path);

// "/proc/self" for pid 0, else "/proc/<pid>".
std::string proc_dir(int pid);

std::string_view trim(std::string_view s);

// Parses a decimal integer (optional sign), the whole string; nullopt otherwise.
std::optional<std::int64_t> parse_int(std::string_view s);
std::optional<std::uint64_t> parse_uint(std::string_view s, int base = 10);

// True when JSON `text` nests objects and arrays deeper than `limit`
// (brackets inside strings not counted).  Checked before parsing untrusted
// documents: nlohmann's parser recurses.  Stops at the first level too many.
bool json_nests_deeper(std::string_view text, int limit);

// An owned file descriptor, closed when it goes out of scope; -1 = none.
struct Fd {
    int fd = -1;
    Fd() = default;
    explicit Fd(int f) : fd(f) {}
    Fd(const Fd&) = delete;
    Fd& operator=(const Fd&) = delete;
    Fd(Fd&& o) noexcept : fd(o.fd) { o.fd = -1; }
    Fd& operator=(Fd&& o) noexcept {
        if (this != &o) {
            if (fd >= 0) ::close(fd);
            fd = o.fd;
            o.fd = -1;
        }
        return *this;
    }
    ~Fd() {
        if (fd >= 0) ::close(fd);
    }
};

}  // namespace upm::detail
