// write_file_atomic(): see upm/atomic_file.hpp.
#include "upm/atomic_file.hpp"

#include <fcntl.h>
#include <sys/random.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>

#include "upm/io.hpp"

namespace upm {

using detail::Fd;

namespace {

constexpr int kNameAttempts = 32;

// ".NAME.upm-XXXXXXXXXXXX": 48 random bits, as mkostemp's six characters.
std::string temp_name(const std::string& name) {
    unsigned char r[6] = {};
    if (::getrandom(r, sizeof r, GRND_NONBLOCK) != static_cast<ssize_t>(sizeof r)) {
        // No entropy yet (early boot): the pid and a counter still make
        // clashes unlikely, and O_EXCL makes them harmless.
        static unsigned counter = 0;
        unsigned v = static_cast<unsigned>(::getpid()) * 2654435761u + ++counter;
        for (auto& b : r) b = static_cast<unsigned char>(v >>= 5);
    }
    char hex[13];
    std::snprintf(hex, sizeof hex, "%02x%02x%02x%02x%02x%02x", r[0], r[1], r[2], r[3], r[4], r[5]);
    return "." + name + ".upm-" + hex;
}

// Creates a fresh temporary file in `dir_fd`; never opens an existing one.
Result<Fd> create_temp(int dir_fd, const std::string& name, std::string& tmp) {
    for (int attempt = 0; attempt < kNameAttempts; ++attempt) {
        tmp = temp_name(name);
        int fd = ::openat(dir_fd, tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC, 0600);
        if (fd >= 0) return Fd(fd);
        if (errno != EEXIST) return Error::sys(errno, "create `" + tmp + "`");
    }
    return Error::sys(EEXIST, "create a temporary file for `" + name + "`: " + std::to_string(kNameAttempts) +
                                  " random names taken");
}

Status fill(int fd, const std::string& tmp, std::string_view text, const AtomicWriteOptions& o) {
    if (o.uid || o.gid) (void)!::fchown(fd, o.uid.value_or(static_cast<uid_t>(-1)), o.gid.value_or(static_cast<gid_t>(-1)));
    if (::fchmod(fd, o.mode) != 0) return Error::sys(errno, "chmod `" + tmp + "`");
    if (int e = detail::write_all(fd, text)) return Error::sys(e, "write `" + tmp + "`");
    if (o.fsync && ::fsync(fd) != 0) return Error::sys(errno, "fsync `" + tmp + "`");
    return Ok{};
}

}  // namespace

Status write_file_atomic(const std::string& dir, const std::string& name, std::string_view text,
                         const AtomicWriteOptions& o) {
    try {
        int flags = O_RDONLY | O_DIRECTORY | O_CLOEXEC | (o.nofollow_dir ? O_NOFOLLOW : 0);
        Fd d(::open(dir.c_str(), flags));
        if (d.fd < 0) return Error::sys(errno, "open directory `" + dir + "`");
        std::string tmp;
        auto f = create_temp(d.fd, name, tmp);
        if (!f) return f.error().wrap("`" + dir + "`");
        Status st = fill(f->fd, tmp, text, o);
        if (st && o.before_rename) st = o.before_rename(d.fd);
        if (st && ::renameat(d.fd, tmp.c_str(), d.fd, name.c_str()) != 0)
            st = Error::sys(errno, "rename `" + tmp + "` to `" + name + "`");
        if (!st) {
            ::unlinkat(d.fd, tmp.c_str(), 0);
            return st.error().wrap("`" + dir + "`");
        }
        if (o.fsync) ::fsync(d.fd);   // best effort: the rename is visible already
        return Ok{};
    } catch (const std::exception& e) {
        return Error::msg("write `" + dir + "/" + name + "`: " + e.what());
    }
}

Status write_file_atomic(const std::string& path, std::string_view text, const AtomicWriteOptions& o) {
    auto slash = path.rfind('/');
    std::string name = slash == std::string::npos ? path : path.substr(slash + 1);
    if (name.empty()) return Error{EINVAL, "`" + path + "` names no file"};
    return write_file_atomic(detail::dirname(path), name, text, o);
}

}  // namespace upm
