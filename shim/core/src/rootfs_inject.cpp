// The hooks.d mode of upm-hook (include/upm/rootfs_inject.hpp).
#include "upm/rootfs_inject.hpp"

#include <fcntl.h>
#include <linux/magic.h>
#include <linux/openat2.h>
#include <sched.h>
#include <sys/mount.h>
#include <sys/pidfd.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <csignal>
#include <cstring>
#include <nlohmann/json.hpp>

#include "io.hpp"
#include "upm/spec.hpp"

namespace upm {

namespace {

using detail::Fd;

using json = nlohmann::json;
using ojson = nlohmann::ordered_json;

// `path` inside the rootfs `root`: absolute links and `..` stay inside it,
// magic links (/proc/PID/root, /proc/self/fd/N) are refused.
int open_in_root(int root, const char* path, int flags) {
    struct open_how how {};
    how.flags = static_cast<unsigned long long>(flags) | O_CLOEXEC;
    how.resolve = RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS;
    return static_cast<int>(::syscall(SYS_openat2, root, path, &how, sizeof how));
}

bool same_file(int a, int b) {
    struct stat sa {}, sb {};
    return ::fstat(a, &sa) == 0 && ::fstat(b, &sb) == 0 && sa.st_dev == sb.st_dev && sa.st_ino == sb.st_ino;
}

// A detached, read-only clone of the mount at (dfd, path).
Result<Fd> ro_clone(int dfd, const char* path, int extra_flags) {
    Fd tree(::open_tree(dfd, path, OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC | extra_flags));
    if (tree.fd < 0) return Error::sys(errno, "open_tree");
    struct mount_attr attr {};
    attr.attr_set = MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV;
    if (::mount_setattr(tree.fd, "", AT_EMPTY_PATH, &attr, sizeof attr) != 0)
        return Error::sys(errno, "mount_setattr read-only");
    return tree;
}

Status mount_onto(int tree, int target) {
    if (::move_mount(tree, "", target, "", MOVE_MOUNT_F_EMPTY_PATH | MOVE_MOUNT_T_EMPTY_PATH) != 0)
        return Error::sys(errno, "move_mount");
    return Ok{};
}

Status write_all(int fd, std::string_view data) {
    while (!data.empty()) {
        ssize_t w = ::write(fd, data.data(), data.size());
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) return Error::sys(w < 0 ? errno : EIO, "write");
        data.remove_prefix(static_cast<std::size_t>(w));
    }
    return Ok{};
}

// A new file `name` in `dir` (no file of that name may exist), read-only
// mode, holding `content`; returns an O_PATH fd of it.
Result<Fd> new_file(int dir, const char* name, std::string_view content) {
    Fd f(::openat(dir, name, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0444));
    if (f.fd < 0) return Error::sys(errno, std::string("create `") + name + "`");
    if (auto w = write_all(f.fd, content); !w) return w.error().wrap(std::string("`") + name + "`");
    Fd path(::openat(dir, name, O_PATH | O_NOFOLLOW | O_CLOEXEC));
    if (path.fd < 0) return Error::sys(errno, std::string("open `") + name + "`");
    if (!same_file(f.fd, path.fd)) return Error::msg(std::string("`") + name + "` was replaced");
    return path;
}

// A file in the /dev/upm directory, made read-only by a bind of itself.
Result<Fd> new_ro_file(int dir, const char* name, std::string_view content) {
    auto f = new_file(dir, name, content);
    if (!f) return f.error();
    auto tree = ro_clone(f->fd, "", AT_EMPTY_PATH);
    if (!tree) return tree.error().wrap(std::string("`") + name + "`");
    if (auto m = mount_onto(tree->fd, f->fd); !m) return m.error().wrap(std::string("`") + name + "`");
    return Fd(::openat(dir, name, O_PATH | O_NOFOLLOW | O_CLOEXEC));
}

struct Prepared {                // made in the host's mount namespace, used in the container's
    Fd preload_tree;
    Fd policy_tree;              // -1 when the policy is generated (domain) or absent
    std::string policy_text;     // generated policy; "" = none
};

// The child: in the container's mount namespace.  Returns what happened to
// /etc/ld.so.preload.
Result<std::string> inject_in_namespace(const RootfsInjection& in, const Prepared& prep) {
    // The rootfs as the runtime mounted it in this namespace (runc and crun
    // bind it onto itself before mounting /dev, /proc, ... into it).  Its
    // path is the engine's (bundle and root.path), not the image's.
    Fd root;
    if (!in.root_path.empty() && in.root_path.front() == '/') {
        root = Fd(::open(in.root_path.c_str(), O_PATH | O_DIRECTORY | O_CLOEXEC));
    } else {
        Fd bundle(::open(in.bundle.c_str(), O_PATH | O_DIRECTORY | O_CLOEXEC));
        if (bundle.fd < 0) return Error::sys(errno, "open bundle `" + printable(in.bundle) + "`");
        root = Fd(::openat(bundle.fd, in.root_path.empty() ? "rootfs" : in.root_path.c_str(),
                           O_PATH | O_DIRECTORY | O_CLOEXEC));
    }
    if (root.fd < 0) return Error::sys(errno, "open the rootfs `" + printable(in.root_path) + "`");
    struct stat root_st {};
    if (::fstat(root.fd, &root_st) != 0) return Error::sys(errno, "stat the rootfs");

    // /dev: the runtime's tmpfs, which hides whatever the image has there.
    Fd dev(open_in_root(root.fd, "dev", O_PATH | O_DIRECTORY));
    if (dev.fd < 0) return Error::sys(errno, "`/dev` in the rootfs");
    struct statfs dev_fs {};
    struct stat dev_st {};
    if (::fstatfs(dev.fd, &dev_fs) != 0 || ::fstat(dev.fd, &dev_st) != 0) return Error::sys(errno, "stat `/dev`");
    if (dev_fs.f_type != TMPFS_MAGIC || dev_st.st_dev == root_st.st_dev)
        return Error::msg("`/dev` of the container is not the runtime's tmpfs (the spec mounts no tmpfs on `/dev`)");

    // /etc/ld.so.preload, as the container's loader will find it.
    const std::string entry = std::string(kContainerDirDev) + "/" + kPreloadFile;
    Fd etc(open_in_root(root.fd, "etc", O_PATH | O_DIRECTORY));
    if (etc.fd < 0) {
        if (errno == ENOENT) return Error{ENOENT, "the image has no `/etc` (or it is a link that resolves to nothing inside the rootfs)"};
        return Error::sys(errno, "`/etc` in the image");
    }
    struct stat link_st {};
    std::string existing;
    Fd target;
    std::string action;
    if (::fstatat(etc.fd, kLdSoPreloadFile, &link_st, AT_SYMLINK_NOFOLLOW) != 0) {
        if (errno != ENOENT) return Error::sys(errno, "stat `/etc/ld.so.preload`");
        // Absent: an empty mount point in the image, unless it is read-only.
        if (in.root_readonly)
            return Error{EROFS, "the image has no `/etc/ld.so.preload` and the spec makes its rootfs read-only "
                                "(`root.readonly`): upm does not create files in a read-only image"};
        Fd created(::openat(etc.fd, kLdSoPreloadFile, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0644));
        if (created.fd < 0) {
            if (errno == EROFS)
                return Error{EROFS, "the image has no `/etc/ld.so.preload` and its rootfs is read-only"};
            return Error::sys(errno, "create `/etc/ld.so.preload` in the image");
        }
        target = Fd(::openat(etc.fd, kLdSoPreloadFile, O_PATH | O_NOFOLLOW | O_CLOEXEC));
        if (target.fd < 0 || !same_file(created.fd, target.fd)) return Error::msg("`/etc/ld.so.preload` was replaced");
        action = "created `/etc/ld.so.preload` (empty in the image) with the preload";
    } else {
        // The file the loader reads, links resolved inside the rootfs.
        Fd f(open_in_root(root.fd, "etc/ld.so.preload", O_RDONLY | O_NONBLOCK | O_NOCTTY));
        if (f.fd < 0) {
            if (errno == ENOENT || errno == ENOTDIR)
                return Error{errno, "`/etc/ld.so.preload` in the image is a link that resolves to nothing inside the rootfs"};
            return Error::sys(errno, "open `/etc/ld.so.preload` in the image");
        }
        struct stat st {};
        struct statfs fs {};
        if (::fstat(f.fd, &st) != 0 || ::fstatfs(f.fd, &fs) != 0) return Error::sys(errno, "stat `/etc/ld.so.preload`");
        if (!S_ISREG(st.st_mode)) return Error::msg("`/etc/ld.so.preload` in the image is not a regular file");
        if (fs.f_type == PROC_SUPER_MAGIC || fs.f_type == SYSFS_MAGIC || fs.f_type == CGROUP_SUPER_MAGIC ||
            fs.f_type == CGROUP2_SUPER_MAGIC)
            return Error::msg("`/etc/ld.so.preload` in the image resolves into `/proc` or `/sys`");
        if (static_cast<std::size_t>(st.st_size) > kMaxLdSoPreload)
            return Error{EFBIG, "`/etc/ld.so.preload` in the image is larger than " + std::to_string(kMaxLdSoPreload) + " bytes"};
        char buf[4096];
        for (;;) {
            ssize_t n = ::read(f.fd, buf, sizeof buf);
            if (n < 0 && errno == EINTR) continue;
            if (n < 0) return Error::sys(errno, "read `/etc/ld.so.preload`");
            if (n == 0) break;
            if (existing.size() + static_cast<std::size_t>(n) > kMaxLdSoPreload)
                return Error{EFBIG, "`/etc/ld.so.preload` in the image is larger than " + std::to_string(kMaxLdSoPreload) + " bytes"};
            existing.append(buf, static_cast<std::size_t>(n));
        }
        target = std::move(f);
        action = S_ISLNK(link_st.st_mode) ? "extended `/etc/ld.so.preload` (a link in the image, resolved inside the rootfs)"
                                          : "extended the image's `/etc/ld.so.preload`";
    }
    bool listed = false;
    std::string text = ld_so_preload_with(existing, entry, &listed);

    if (::mkdirat(dev.fd, "upm", 0755) != 0) {
        if (errno == EEXIST) return Error::msg("`/dev/upm` exists already (injected twice?)");
        return Error::sys(errno, "mkdir `/dev/upm`");
    }
    Fd dir(::openat(dev.fd, "upm", O_PATH | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC));
    if (dir.fd < 0) return Error::sys(errno, "open `/dev/upm`");
    struct stat dir_st {};
    if (::fstat(dir.fd, &dir_st) != 0 || dir_st.st_dev != dev_st.st_dev) return Error::msg("`/dev/upm` was replaced");

    // The preload and the policy, read-only.
    {
        auto target = new_file(dir.fd, kPreloadFile, {});
        if (!target) return target.error();
        if (auto m = mount_onto(prep.preload_tree.fd, target->fd); !m) return m.error().wrap("preload");
    }
    if (prep.policy_tree.fd >= 0) {
        auto target = new_file(dir.fd, kPolicyFile, {});
        if (!target) return target.error();
        if (auto m = mount_onto(prep.policy_tree.fd, target->fd); !m) return m.error().wrap("policy");
    } else if (!prep.policy_text.empty()) {
        if (auto f = new_ro_file(dir.fd, kPolicyFile, prep.policy_text); !f) return f.error().wrap("policy");
    }

    if (listed) return std::string("the image's `/etc/ld.so.preload` lists the preload already");
    auto gen = new_ro_file(dir.fd, kLdSoPreloadFile, text);
    if (!gen) return gen.error().wrap("`/dev/upm/ld.so.preload`");
    auto tree = ro_clone(gen->fd, "", AT_EMPTY_PATH);
    if (!tree) return tree.error().wrap("`/etc/ld.so.preload`");
    if (auto m = mount_onto(tree->fd, target.fd); !m) return m.error().wrap("`/etc/ld.so.preload`");
    return action;
}

// Bounded read of everything the child wrote.
std::string read_pipe(int fd) {
    std::string out;
    char buf[4096];
    for (;;) {
        ssize_t n = ::read(fd, buf, sizeof buf);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) break;
        if (out.size() < 64 * 1024) out.append(buf, static_cast<std::size_t>(n));
    }
    return out;
}

}  // namespace

Result<SpecRoot> read_spec_root(std::string_view config_text) {
    try {
        auto ann = read_upm_annotations(config_text);  // checks the nesting depth first
        if (!ann) return ann.error();
        json doc = json::parse(config_text);
        SpecRoot r;
        if (auto root = doc.find("root"); root != doc.end() && root->is_object()) {
            if (auto p = root->find("path"); p != root->end() && p->is_string()) r.path = p->get<std::string>();
            if (auto ro = root->find("readonly"); ro != root->end() && ro->is_boolean()) r.readonly = ro->get<bool>();
        }
        if (r.path.size() > 4096 || r.path.find('\0') != std::string::npos)
            return Error::msg("`root.path` is longer than 4096 bytes or has a NUL");
        if (auto mounts = doc.find("mounts"); mounts != doc.end() && mounts->is_array()) {
            for (const auto& m : *mounts) {
                if (!m.is_object()) continue;
                auto d = m.find("destination");
                if (d == m.end() || !d->is_string()) continue;
                const auto& dest = d->get_ref<const std::string&>();
                if (dest == std::string(kContainerDirDev) + "/" + kPreloadFile ||
                    dest == std::string(kContainerDirRun) + "/" + kPreloadFile)
                    r.injected = true;
                auto t = m.find("type");
                if ((dest == "/dev" || dest == "/dev/") && t != m.end() && t->is_string() && *t == "tmpfs")
                    r.dev_tmpfs = true;
            }
        }
        return r;
    } catch (const std::exception& e) {
        return Error::msg(std::string("config.json: ") + e.what());
    }
}

std::string ld_so_preload_with(std::string_view existing, std::string_view entry, bool* listed) {
    // glibc (elf/rtld.c): `#` starts a comment to the end of the line;
    // entries are separated by blanks, tabs, newlines or `:`.
    bool in_comment = false;
    std::size_t start = std::string_view::npos;
    bool found = false;
    for (std::size_t i = 0; i <= existing.size() && !found; ++i) {
        char c = i < existing.size() ? existing[i] : '\n';
        bool sep = c == ' ' || c == '\t' || c == '\n' || c == ':' || c == '#' || in_comment;
        if (c == '#') in_comment = true;
        if (c == '\n') in_comment = false;
        if (!sep && start == std::string_view::npos) start = i;
        if (sep && start != std::string_view::npos) {
            if (existing.substr(start, i - start) == entry) found = true;
            start = std::string_view::npos;
        }
    }
    if (listed) *listed = found;
    std::string out(existing);
    if (found) return out;
    if (!out.empty() && out.back() != '\n') out += '\n';
    out += entry;
    out += '\n';
    return out;
}

Result<std::string> policy_with_domain(std::string_view policy_text, std::string_view domain) {
    try {
        ojson doc = policy_text.empty() ? ojson::object({{"version", 1}})
                                        : ojson::parse(policy_text, nullptr, true, /*ignore_comments=*/true);
        if (!doc.is_object()) return Error::msg("the policy is not a JSON object");
        doc["domain"] = std::string(domain);
        return doc.dump(2) + "\n";
    } catch (const std::exception& e) {
        return Error::msg(std::string("the policy: ") + e.what());
    }
}

Result<RootfsInjected> inject_into_rootfs(const RootfsInjection& in) {
    try {
        if (in.pid <= 0) return Error::msg("no pid of the container");
        if (in.bundle.empty() || in.bundle.front() != '/') return Error::msg("no absolute bundle path in the state");

        // Pin the container's init, then take its mount namespace; the
        // pidfd says whether the pid still named that process afterwards.
        Fd pidfd(static_cast<int>(::syscall(SYS_pidfd_open, static_cast<pid_t>(in.pid), 0)));
        if (pidfd.fd < 0) return Error::sys(errno, "pidfd_open " + std::to_string(in.pid));
        std::string ns_path = "/proc/" + std::to_string(in.pid) + "/ns/mnt";
        Fd ns(::open(ns_path.c_str(), O_RDONLY | O_CLOEXEC));
        if (ns.fd < 0) return Error::sys(errno, "open `" + ns_path + "`");
        if (::syscall(SYS_pidfd_send_signal, pidfd.fd, 0, nullptr, 0) != 0)
            return Error::sys(errno, "the container's process " + std::to_string(in.pid) + " is gone");
        Fd own(::open("/proc/self/ns/mnt", O_RDONLY | O_CLOEXEC));
        if (own.fd < 0) return Error::sys(errno, "open `/proc/self/ns/mnt`");
        if (same_file(ns.fd, own.fd))
            return Error::msg("process " + std::to_string(in.pid) + " shares our mount namespace: not a container being created");

        // The sources, opened on the host (paths of the node configuration).
        Prepared prep;
        auto preload = ro_clone(AT_FDCWD, in.preload_source.c_str(), 0);
        if (!preload) return preload.error().wrap("preload `" + in.preload_source + "`");
        struct stat st {};
        if (::fstat(preload->fd, &st) != 0 || !S_ISREG(st.st_mode))
            return Error::msg("preload `" + in.preload_source + "` is not a regular file");
        prep.preload_tree = std::move(*preload);
        if (!in.domain.empty()) {
            std::string text;
            if (!in.policy_source.empty()) {
                auto t = detail::read_file(in.policy_source, detail::kMaxPolicyFile);
                if (!t) return t.error().wrap("policy `" + in.policy_source + "`");
                text = std::move(*t);
            }
            auto gen = policy_with_domain(text, in.domain);
            if (!gen) return gen.error();
            prep.policy_text = std::move(*gen);
        } else if (!in.policy_source.empty()) {
            auto policy = ro_clone(AT_FDCWD, in.policy_source.c_str(), 0);
            if (!policy) return policy.error().wrap("policy `" + in.policy_source + "`");
            if (::fstat(policy->fd, &st) != 0 || !S_ISREG(st.st_mode))
                return Error::msg("policy `" + in.policy_source + "` is not a regular file");
            prep.policy_tree = std::move(*policy);
        }

        int p[2];
        if (::pipe2(p, O_CLOEXEC) != 0) return Error::sys(errno, "pipe");
        Fd rd(p[0]), wr(p[1]);
        pid_t child = ::fork();
        if (child < 0) return Error::sys(errno, "fork");
        if (child == 0) {
            ::close(rd.fd);
            std::string msg;
            if (::setns(ns.fd, CLONE_NEWNS) != 0) {
                msg = "E" + std::string(Error::sys(errno, "setns into the container's mount namespace").message);
            } else if (::chdir("/") != 0) {
                msg = "Echdir: " + std::string(std::strerror(errno));
            } else {
                auto r = inject_in_namespace(in, prep);
                msg = r ? "O" + *r : "E" + r.error().message;
            }
            (void)write_all(wr.fd, msg);
            ::_exit(0);
        }
        ::close(wr.fd);
        wr.fd = -1;
        std::string msg = read_pipe(rd.fd);
        int status = 0;
        while (::waitpid(child, &status, 0) < 0 && errno == EINTR) {
        }
        if (msg.empty()) return Error::msg("the injecting process died (status " + std::to_string(status) + ")");
        if (msg.front() != 'O') return Error::msg(msg.substr(1));
        RootfsInjected out;
        out.preload = std::string(kContainerDirDev) + "/" + kPreloadFile;
        if (!in.domain.empty() || !in.policy_source.empty()) out.policy = std::string(kContainerDirDev) + "/" + kPolicyFile;
        out.ld_so_preload = msg.substr(1);
        return out;
    } catch (const std::exception& e) {
        return Error::msg(std::string("injecting: ") + e.what());
    }
}

}  // namespace upm
