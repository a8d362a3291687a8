// Bounded file I/O helpers; see io.hpp.
#include "upm/io.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <charconv>

namespace upm::detail {

Result<std::string> read_file(const std::string& path, std::size_t max) {
    try {
        // O_NONBLOCK: opening a FIFO must not wait for a writer.  Only
        // regular files are read (a FIFO or device would block or never end;
        // /proc and /sys files are regular).
        Fd f(::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK));
        if (f.fd < 0) return Error::sys(errno, "open `" + path + "`");
        struct stat st {};
        if (::fstat(f.fd, &st) != 0) return Error::sys(errno, "stat `" + path + "`");
        if (!S_ISREG(st.st_mode)) return Error{EINVAL, "read `" + path + "`: not a regular file"};
        std::string out;
        for (;;) {
            // Read at most one byte past the bound, to tell "exactly max" from "more".
            std::size_t chunk = std::min<std::size_t>(64 * 1024, max + 1 - out.size());
            std::size_t old = out.size();
            out.resize(old + chunk);
            ssize_t n = ::read(f.fd, out.data() + old, chunk);
            if (n < 0) {
                out.resize(old);
                if (errno == EINTR) continue;
                return Error::sys(errno, "read `" + path + "`");
            }
            out.resize(old + static_cast<std::size_t>(n));
            if (n == 0) break;
            if (out.size() > max)
                return Error::sys(EFBIG, "read `" + path + "`: larger than " +
                                             std::to_string(max) + " bytes");
        }
        return out;
    } catch (const std::exception& e) {
        return Error::msg("read `" + path + "`: " + e.what());
    }
}

Status write_file(const std::string& path, std::string_view value) {
    Fd f(::open(path.c_str(), O_WRONLY | O_CLOEXEC | O_NOCTTY));
    if (f.fd < 0) return Error::sys(errno, "open `" + path + "`");
    if (int e = write_all(f.fd, value)) return Error::sys(e, "write `" + path + "`");
    return Ok{};
}

int write_all(int fd, std::string_view data) {
    while (!data.empty()) {
        ssize_t n = ::write(fd, data.data(), data.size());
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) return n < 0 ? errno : EIO;
        data.remove_prefix(static_cast<std::size_t>(n));
    }
    return 0;
}

std::string dirname(std::string_view path) {
    auto slash = path.rfind('/');
    if (slash == std::string_view::npos) return ".";
    if (slash == 0) return "/";
    return std::string(path.substr(0, slash));
}

std::string proc_dir(int pid) {
    return pid == 0 ? std::string("/proc/self") : "/proc/" + std::to_string(pid);
}

std::string_view trim(std::string_view s) {
    const char* ws = " \t\r\n";
    auto b = s.find_first_not_of(ws);
    if (b == std::string_view::npos) return {};
    auto e = s.find_last_not_of(ws);
    return s.substr(b, e - b + 1);
}

std::optional<std::int64_t> parse_int(std::string_view s) {
    if (!s.empty() && s.front() == '+') s.remove_prefix(1);
    std::int64_t v = 0;
    auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
    if (s.empty() || ec != std::errc() || p != s.data() + s.size()) return std::nullopt;
    return v;
}

std::optional<std::uint64_t> parse_uint(std::string_view s, int base) {
    std::uint64_t v = 0;
    auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), v, base);
    if (s.empty() || ec != std::errc() || p != s.data() + s.size()) return std::nullopt;
    return v;
}

bool json_nests_deeper(std::string_view text, int limit) {
    int depth = 0;
    bool in_string = false, escaped = false;
    for (char c : text) {
        if (in_string) {
            if (escaped) escaped = false;
            else if (c == '\\') escaped = true;
            else if (c == '"') in_string = false;
        } else if (c == '"') {
            in_string = true;
        } else if (c == '[' || c == '{') {
            if (++depth > limit) return true;
        } else if (c == ']' || c == '}') {
            --depth;
        }
    }
    return false;
}

}  // namespace upm::detail
