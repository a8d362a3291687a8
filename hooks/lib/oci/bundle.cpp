// A bundle's config.json on disk (spec.hpp): reading it bounded and without
// following a link, replacing it atomically, and checking the /run/upm
// fallback inside the rootfs.
//
// Files are opened relative to the bundle directory's fd, config.json with
// O_NOFOLLOW (a symlink there is refused, not followed); the new config.json
// is a temporary file in the same directory renamed over the old one, and
// the rename happens only if config.json is still the file that was read.
// No fsync by default: the engines write config.json without one, a bundle
// does not outlive a boot, and on a disk-backed bundle directory it cost
// 1-20 ms per container on the test machine (node setting `fsync`).
#include <fcntl.h>
#include <linux/openat2.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>

#include "upm/atomic_file.hpp"
#include "upm/io.hpp"
#include "upm/spec.hpp"

namespace upm {

namespace {

using detail::Fd;

constexpr const char* kConfigName = "config.json";

}  // namespace

Result<BundleConfig> read_bundle_config(const std::string& bundle_dir) {
    try {
        Fd dir(::open(bundle_dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
        if (dir.fd < 0) return Error::sys(errno, "open bundle `" + bundle_dir + "`");
        Fd f(::openat(dir.fd, kConfigName, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_NOCTTY | O_CLOEXEC));
        if (f.fd < 0) {
            int e = errno;
            if (e == ELOOP) return Error{e, "`config.json` in bundle `" + bundle_dir + "` is a symbolic link"};
            return Error::sys(e, "open `config.json` in bundle `" + bundle_dir + "`");
        }
        struct stat st {};
        if (::fstat(f.fd, &st) != 0) return Error::sys(errno, "stat `config.json`");
        if (!S_ISREG(st.st_mode)) return Error{EINVAL, "`config.json` in bundle `" + bundle_dir + "` is not a regular file"};
        if (static_cast<std::uint64_t>(st.st_size) > kMaxSpecFile)
            return Error{EFBIG, "`config.json` is larger than " + std::to_string(kMaxSpecFile) + " bytes"};
        BundleConfig out;
        out.mode = st.st_mode & 07777;
        out.uid = st.st_uid;
        out.gid = st.st_gid;
        out.dev = st.st_dev;
        out.ino = st.st_ino;
        out.text.resize(static_cast<std::size_t>(st.st_size) + 1);
        std::size_t have = 0;
        for (;;) {
            if (have == out.text.size()) {
                if (out.text.size() > kMaxSpecFile)
                    return Error{EFBIG, "`config.json` is larger than " + std::to_string(kMaxSpecFile) + " bytes"};
                out.text.resize(std::min(out.text.size() * 2, kMaxSpecFile + 1));
            }
            ssize_t n = ::read(f.fd, out.text.data() + have, out.text.size() - have);
            if (n < 0) {
                if (errno == EINTR) continue;
                return Error::sys(errno, "read `config.json`");
            }
            if (n == 0) break;
            have += static_cast<std::size_t>(n);
        }
        out.text.resize(have);
        return out;
    } catch (const std::exception& e) {
        return Error::msg(std::string("read `config.json`: ") + e.what());
    }
}

Status write_bundle_config(const std::string& bundle_dir, std::string_view text, const BundleConfig& original,
                           bool sync) {
    AtomicWriteOptions o{.mode = original.mode, .fsync = sync};
    // Keep the owner when we may; in a user namespace the original ids may
    // not be mapped, and a root-owned copy is still readable by the runtime.
    if (::geteuid() == 0 && (original.uid != 0 || original.gid != 0)) {
        o.uid = original.uid;
        o.gid = original.gid;
    }
    // Replace config.json only if it is still the file we read.
    o.before_rename = [&](int dir_fd) -> Status {
        struct stat st {};
        if (::fstatat(dir_fd, kConfigName, &st, AT_SYMLINK_NOFOLLOW) != 0)
            return Error::sys(errno, "stat `config.json`");
        if (st.st_dev != original.dev || st.st_ino != original.ino)
            return Error{EAGAIN, "`config.json` was replaced while upm edited it"};
        return Ok{};
    };
    auto st = write_file_atomic(bundle_dir, kConfigName, text, o);
    if (!st) return st.error().wrap("bundle");
    return Ok{};
}

Status check_container_dir(const std::string& bundle_dir, const std::string& root_path, std::string_view dir) {
    try {
        auto in_root = [](int root, const std::string& path) {
            struct open_how how {};
            how.flags = O_PATH | O_DIRECTORY | O_CLOEXEC;
            how.resolve = RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS;
            return static_cast<int>(::syscall(SYS_openat2, root, path.c_str(), &how, sizeof how));
        };
        Fd bundle(::open(bundle_dir.c_str(), O_PATH | O_DIRECTORY | O_CLOEXEC));
        if (bundle.fd < 0) return Error::sys(errno, "open bundle `" + bundle_dir + "`");
        Fd root(::openat(bundle.fd, root_path.c_str(), O_PATH | O_DIRECTORY | O_CLOEXEC));
        if (root.fd < 0) return Error::sys(errno, "open the rootfs `" + root_path + "`");
        std::string path;
        std::string_view rest = dir;
        while (!rest.empty()) {
            auto slash = rest.find('/');
            std::string_view name = rest.substr(0, slash);
            rest.remove_prefix(slash == std::string_view::npos ? rest.size() : slash + 1);
            if (name.empty()) continue;
            std::string parent = path.empty() ? "." : path;
            path += (path.empty() ? "" : "/") + std::string(name);
            Fd fd(in_root(root.fd, path));
            if (fd.fd >= 0) continue;
            int e = errno;
            if (e == ENOSYS) return Ok{};  // kernel < 5.6: leave it to the runtime
            std::string shown = "`/" + path + "` in the image";
            if (e == ENOTDIR) return Error{e, shown + " is not a directory"};
            if (e != ENOENT) return Error::sys(e, "resolving " + shown);
            // Absent is fine (the runtime creates it); a link to nowhere is not.
            Fd up(in_root(root.fd, parent));
            struct stat st {};
            if (up.fd >= 0 && ::fstatat(up.fd, std::string(name).c_str(), &st, AT_SYMLINK_NOFOLLOW) == 0 &&
                S_ISLNK(st.st_mode))
                return Error{ENOENT, shown + " is a symbolic link that does not resolve inside the rootfs"};
            return Ok{};
        }
        return Ok{};
    } catch (const std::exception& e) {
        return Error::msg(std::string("checking the rootfs: ") + e.what());
    }
}

}  // namespace upm
