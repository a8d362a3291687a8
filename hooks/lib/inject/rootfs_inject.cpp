// The hooks.d mode of upm-hook (include/upm/rootfs_inject.hpp).
#include "upm/rootfs_inject.hpp"

#include <fcntl.h>
#include <grp.h>
#include <linux/capability.h>
#include <linux/magic.h>
#include <linux/openat2.h>
#include <sched.h>
#include <sys/mount.h>
#include <sys/pidfd.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/syscall.h>
#include <sys/fsuid.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <csignal>
#include <cstring>
#include <nlohmann/json.hpp>

#include "upm/io.hpp"
#include "upm/spec.hpp"

namespace upm {

namespace {

using detail::Fd;

using json = nlohmann::json;
using ojson = nlohmann::ordered_json;

// `path` inside the rootfs `root`: absolute links and `..` stay inside it,
// magic links (/proc/PID/root, /proc/self/fd/N) are refused, and so is any
// mount crossing (a volume, /dev, /proc: the hook is host root, and the
// container's mounts are not the image's).  `extra`: more RESOLVE_ flags.
constexpr unsigned long long kInImage = RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS | RESOLVE_NO_XDEV;

int open_in_root(int root, const char* path, int flags, unsigned long long resolve = kInImage) {
    struct open_how how {};
    how.flags = static_cast<unsigned long long>(flags) | O_CLOEXEC;
    how.resolve = resolve;
    return static_cast<int>(::syscall(SYS_openat2, root, path, &how, sizeof how));
}

// The id of the mount `fd` is on (st_dev alone cannot tell two binds of one
// filesystem apart).
bool mount_id(int fd, std::uint64_t* id) {
    struct statx sx {};
    if (::statx(fd, "", AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW, STATX_MNT_ID, &sx) != 0) return false;
    if ((sx.stx_mask & STATX_MNT_ID) == 0) {
        errno = ENOSYS;
        return false;
    }
    *id = sx.stx_mnt_id;
    return true;
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

// A new file `name` in `dir` (no file of that name may exist), read-only
// mode, holding `content`; returns an O_PATH fd of it.
Result<Fd> new_file(int dir, const char* name, std::string_view content) {
    Fd f(::openat(dir, name, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0444));
    if (f.fd < 0) return Error::sys(errno, std::string("create `") + name + "`");
    if (int e = detail::write_all(f.fd, content)) return Error::sys(e, std::string("write `") + name + "`");
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
    uid_t uid = 0;               // the container's user, host ids (mapped through its
    gid_t gid = 0;               // user namespace, if it has one)
    std::vector<gid_t> groups;
};

const std::string kCrossesMount = " resolves across a mount (a link into a volume, `/dev`, `/proc` or another mount "
                                  "of the container): upm reads and creates files only on the image's own filesystem";

std::string who(const RootfsInjection& in, const Prepared& prep) {
    std::string s = "uid " + std::to_string(in.uid) + ", gid " + std::to_string(in.gid);
    if (prep.uid != in.uid || prep.gid != in.gid)
        s += "; host uid " + std::to_string(prep.uid) + ", gid " + std::to_string(prep.gid);
    return s;
}

// The grandchild: drops to the container's user without any capability,
// resolves /etc/ld.so.preload again (directories searched with that user's
// rights, as its loader will), checks that it is the inode `expect` the
// privileged resolution found, reopens that same inode for reading through
// /proc/self/fd/N (an O_PATH fd cannot be swapped; an openat2 by name again
// could be) and reads it.  Returns the text or why not.
Result<std::string> read_as_user(int root, const struct stat& expect, const RootfsInjection& in, const Prepared& prep) {
    const std::string cannot = "`/etc/ld.so.preload` in the image cannot be read by the container's user (" + who(in, prep) + ")";
    // Not dumpable: a host process of that uid cannot ptrace us or read our
    // fds through /proc while we hold the rootfs.
    if (::prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) != 0) return Error::sys(errno, "prctl(PR_SET_DUMPABLE)");
    if (::setgroups(prep.groups.size(), prep.groups.data()) != 0) return Error::sys(errno, "setgroups");
    if (::setresgid(prep.gid, prep.gid, prep.gid) != 0) return Error::sys(errno, "setresgid " + std::to_string(prep.gid));
    if (::setresuid(prep.uid, prep.uid, prep.uid) != 0) return Error::sys(errno, "setresuid " + std::to_string(prep.uid));
    struct __user_cap_header_struct hdr {};
    hdr.version = _LINUX_CAPABILITY_VERSION_3;
    struct __user_cap_data_struct caps[_LINUX_CAPABILITY_U32S_3] {};
    if (::syscall(SYS_capset, &hdr, caps) != 0) return Error::sys(errno, "capset (dropping every capability)");
    if (::syscall(SYS_capget, &hdr, caps) != 0 || caps[0].effective != 0 || caps[1].effective != 0 ||
        caps[0].permitted != 0 || caps[1].permitted != 0)
        return Error::msg("capabilities left after dropping them");

    Fd f(open_in_root(root, "etc/ld.so.preload", O_PATH));
    if (f.fd < 0) {
        if (errno == EACCES || errno == EPERM) return Error::sys(errno, cannot);
        return Error::sys(errno, "`/etc/ld.so.preload` in the image, resolved as the container's user");
    }
    struct stat st {};
    if (::fstat(f.fd, &st) != 0) return Error::sys(errno, "stat `/etc/ld.so.preload`");
    if (st.st_dev != expect.st_dev || st.st_ino != expect.st_ino || !S_ISREG(st.st_mode))
        return Error::msg("`/etc/ld.so.preload` in the image changed while it was read");

    // /proc of this mount namespace (the runtime's, not the container's: the
    // rootfs is not pivoted yet); "self" resolves only in a procfs of a pid
    // namespace where we are visible, to us.
    const std::string noproc = "no usable procfs at `/proc` in the container's mount namespace to reopen "
                               "`/etc/ld.so.preload` safely (upm does not open the image's files by name for reading)";
    Fd proc(::open("/proc", O_PATH | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC));
    struct statfs pfs {};
    if (proc.fd < 0 || ::fstatfs(proc.fd, &pfs) != 0 || pfs.f_type != PROC_SUPER_MAGIC) return Error::msg(noproc);
    std::string fdpath = "self/fd/" + std::to_string(f.fd);
    Fd r(::openat(proc.fd, fdpath.c_str(), O_RDONLY | O_NONBLOCK | O_NOCTTY | O_CLOEXEC));
    if (r.fd < 0) {
        if (errno == EACCES || errno == EPERM) return Error::sys(errno, cannot);
        return Error::sys(errno, noproc);
    }
    struct stat rst {};
    if (::fstat(r.fd, &rst) != 0) return Error::sys(errno, "stat `/etc/ld.so.preload`");
    if (rst.st_dev != st.st_dev || rst.st_ino != st.st_ino) return Error::msg(noproc + " (`/proc/self/fd` gave another file)");

    std::string text;
    char buf[4096];
    for (;;) {
        ssize_t n = ::read(r.fd, buf, sizeof buf);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) return Error::sys(errno, "read `/etc/ld.so.preload`");
        if (n == 0) break;
        if (text.size() + static_cast<std::size_t>(n) > kMaxLdSoPreload)
            return Error{EFBIG, "`/etc/ld.so.preload` in the image is larger than " + std::to_string(kMaxLdSoPreload) + " bytes"};
        text.append(buf, static_cast<std::size_t>(n));
    }
    return text;
}

// Bounded read of everything a child wrote.
std::string read_pipe(int fd) {
    std::string out;
    char buf[4096];
    for (;;) {
        ssize_t n = ::read(fd, buf, sizeof buf);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) break;
        if (out.size() < 128 * 1024) out.append(buf, static_cast<std::size_t>(n));
    }
    return out;
}

// Runs `fn` in a forked child and returns its result, passed back through a
// pipe ("O" + text, or "E" + the error).  The children of this file are
// how it changes namespaces and credentials without touching the caller's.
// `what` names the child if it dies without answering.
template <typename Fn>
Result<std::string> in_child(const char* what, Fn&& fn) {
    int p[2];
    if (::pipe2(p, O_CLOEXEC) != 0) return Error::sys(errno, "pipe");
    Fd rd(p[0]), wr(p[1]);
    pid_t child = ::fork();
    if (child < 0) return Error::sys(errno, "fork");
    if (child == 0) {
        ::close(rd.fd);
        std::string msg;
        try {   // an exception must not unwind into the parent's code in this copy
            Result<std::string> r = fn();
            msg = r ? "O" + *r : "E" + r.error().message;
        } catch (const std::exception& e) {
            msg = std::string("E") + what + ": " + e.what();
        } catch (...) {
            msg = std::string("E") + what + ": unknown exception";
        }
        (void)detail::write_all(wr.fd, msg);
        ::_exit(0);
    }
    ::close(wr.fd);
    wr.fd = -1;
    std::string msg = read_pipe(rd.fd);
    int status = 0;
    while (::waitpid(child, &status, 0) < 0 && errno == EINTR) {
    }
    if (msg.empty()) return Error::msg(std::string(what) + " died (status " + std::to_string(status) + ")");
    if (msg.front() != 'O') return Error::msg(msg.substr(1));
    return msg.substr(1);
}

// read_as_user() in a grandchild (the child is single-threaded; its own
// credentials and capabilities stay for the mounts).
Result<std::string> read_image_file(int root, const struct stat& expect, const RootfsInjection& in, const Prepared& prep) {
    return in_child("the process reading `/etc/ld.so.preload`", [&] { return read_as_user(root, expect, in, prep); });
}

// The rootfs as the runtime mounted it in the container's mount namespace,
// and the runtime's /dev tmpfs in it.
struct Rootfs {
    Fd root;
    struct stat root_st {};
    std::uint64_t root_mnt = 0;  // the mount id of the rootfs
    Fd dev;
    struct stat dev_st {};
};

// What becomes of /etc/ld.so.preload: the inode the generated file is bound
// onto, its text in the image ("" when upm created it) and what to log.
struct LdSoPreload {
    Fd target;
    std::string existing;
    std::string action;
};

// The rootfs (runc and crun bind it onto itself before mounting /dev,
// /proc, ... into it).  Its path is the engine's (bundle and root.path), not
// the image's.
Status open_rootfs(const RootfsInjection& in, Rootfs& r) {
    if (!in.root_path.empty() && in.root_path.front() == '/') {
        r.root = Fd(::open(in.root_path.c_str(), O_PATH | O_DIRECTORY | O_CLOEXEC));
    } else {
        Fd bundle(::open(in.bundle.c_str(), O_PATH | O_DIRECTORY | O_CLOEXEC));
        if (bundle.fd < 0) return Error::sys(errno, "open bundle `" + printable(in.bundle) + "`");
        r.root = Fd(::openat(bundle.fd, in.root_path.empty() ? "rootfs" : in.root_path.c_str(),
                             O_PATH | O_DIRECTORY | O_CLOEXEC));
    }
    if (r.root.fd < 0) return Error::sys(errno, "open the rootfs `" + printable(in.root_path) + "`");
    if (::fstat(r.root.fd, &r.root_st) != 0) return Error::sys(errno, "stat the rootfs");
    if (!mount_id(r.root.fd, &r.root_mnt)) return Error::sys(errno, "statx(STATX_MNT_ID) of the rootfs");
    return Ok{};
}

// /dev: the runtime's tmpfs, which hides whatever the image has there; the
// one mount we cross on purpose, so the image's `dev` may not be a link.
Status open_dev_tmpfs(Rootfs& r) {
    r.dev = Fd(open_in_root(r.root.fd, "dev", O_PATH | O_DIRECTORY,
                            RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS | RESOLVE_NO_SYMLINKS));
    if (r.dev.fd < 0) {
        if (errno == ELOOP) return Error::msg("`/dev` in the image is a link (the runtime's tmpfs belongs on the image's own `/dev`)");
        return Error::sys(errno, "`/dev` in the rootfs");
    }
    struct statfs dev_fs {};
    if (::fstatfs(r.dev.fd, &dev_fs) != 0 || ::fstat(r.dev.fd, &r.dev_st) != 0) return Error::sys(errno, "stat `/dev`");
    if (dev_fs.f_type != TMPFS_MAGIC || r.dev_st.st_dev == r.root_st.st_dev)
        return Error::msg("`/dev` of the container is not the runtime's tmpfs (the spec mounts no tmpfs on `/dev`)");
    return Ok{};
}

// The image's /etc, on the rootfs mount only.
Result<Fd> open_image_etc(const Rootfs& r) {
    Fd etc(open_in_root(r.root.fd, "etc", O_PATH | O_DIRECTORY));
    if (etc.fd < 0) {
        if (errno == ENOENT) return Error{ENOENT, "the image has no `/etc` (or it is a link that resolves to nothing inside the rootfs)"};
        if (errno == EXDEV) return Error{EXDEV, "`/etc` in the image" + kCrossesMount};
        return Error::sys(errno, "`/etc` in the image");
    }
    std::uint64_t mnt = 0;
    if (!mount_id(etc.fd, &mnt)) return Error::sys(errno, "statx(STATX_MNT_ID) of `/etc`");
    if (mnt != r.root_mnt) return Error{EXDEV, "`/etc` in the image" + kCrossesMount};
    return etc;
}

// Absent: an empty mount point in the image, unless it is read-only.
// Created as root, on purpose: the container's user usually cannot write
// /etc.  It is a new inode (O_EXCL, O_NOFOLLOW) in the image's /etc, which
// is on the rootfs mount (open_image_etc()), empty, and nothing is read from it.
Result<LdSoPreload> create_ld_so_preload(int etc, const RootfsInjection& in) {
    if (in.root_readonly)
        return Error{EROFS, "the image has no `/etc/ld.so.preload` and the spec makes its rootfs read-only "
                            "(`root.readonly`): upm does not create files in a read-only image"};
    Fd created(::openat(etc, kLdSoPreloadFile, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0644));
    if (created.fd < 0) {
        if (errno == EROFS) return Error{EROFS, "the image has no `/etc/ld.so.preload` and its rootfs is read-only"};
        return Error::sys(errno, "create `/etc/ld.so.preload` in the image");
    }
    LdSoPreload out;
    out.target = Fd(::openat(etc, kLdSoPreloadFile, O_PATH | O_NOFOLLOW | O_CLOEXEC));
    if (out.target.fd < 0 || !same_file(created.fd, out.target.fd)) return Error::msg("`/etc/ld.so.preload` was replaced");
    out.action = "created `/etc/ld.so.preload` (empty in the image) with the preload";
    return out;
}

// The file the loader reads, links resolved inside the rootfs.  O_PATH: a
// device node (or FIFO) of the image is never opened -- the hook runs in the
// runtime's cgroup, outside the container's device allow-list; only a
// regular file of the rootfs mount is read, and only by the container's user
// (read_image_file).  `link_st`: the name itself, not followed.
Result<LdSoPreload> existing_ld_so_preload(const Rootfs& r, const struct stat& link_st, const RootfsInjection& in,
                                           const Prepared& prep) {
    Fd f(open_in_root(r.root.fd, "etc/ld.so.preload", O_PATH));
    if (f.fd < 0) {
        if (errno == ENOENT || errno == ENOTDIR)
            return Error{errno, "`/etc/ld.so.preload` in the image is a link that resolves to nothing inside the rootfs"};
        if (errno == EXDEV) return Error{EXDEV, "`/etc/ld.so.preload` in the image" + kCrossesMount};
        return Error::sys(errno, "resolve `/etc/ld.so.preload` in the image");
    }
    struct stat st {};
    struct statfs fs {};
    if (::fstat(f.fd, &st) != 0 || ::fstatfs(f.fd, &fs) != 0) return Error::sys(errno, "stat `/etc/ld.so.preload`");
    if (!S_ISREG(st.st_mode)) return Error::msg("`/etc/ld.so.preload` in the image is not a regular file");
    std::uint64_t mnt = 0;
    if (!mount_id(f.fd, &mnt)) return Error::sys(errno, "statx(STATX_MNT_ID) of `/etc/ld.so.preload`");
    if (mnt != r.root_mnt) return Error{EXDEV, "`/etc/ld.so.preload` in the image" + kCrossesMount};
    if (fs.f_type == PROC_SUPER_MAGIC || fs.f_type == SYSFS_MAGIC || fs.f_type == CGROUP_SUPER_MAGIC ||
        fs.f_type == CGROUP2_SUPER_MAGIC)
        return Error::msg("`/etc/ld.so.preload` in the image resolves into `/proc` or `/sys`");
    if (static_cast<std::size_t>(st.st_size) > kMaxLdSoPreload)
        return Error{EFBIG, "`/etc/ld.so.preload` in the image is larger than " + std::to_string(kMaxLdSoPreload) + " bytes"};
    auto text = read_image_file(r.root.fd, st, in, prep);
    if (!text) return text.error();
    LdSoPreload out;
    out.existing = std::move(*text);
    out.target = std::move(f);
    out.action = S_ISLNK(link_st.st_mode) ? "extended `/etc/ld.so.preload` (a link in the image, resolved inside the rootfs)"
                                          : "extended the image's `/etc/ld.so.preload`";
    return out;
}

// /etc/ld.so.preload, as the container's loader will find it, on the rootfs
// mount only: created when the image has none, else read.
Result<LdSoPreload> find_ld_so_preload(const Rootfs& r, const RootfsInjection& in, const Prepared& prep) {
    auto etc = open_image_etc(r);
    if (!etc) return etc.error();
    struct stat link_st {};
    if (::fstatat(etc->fd, kLdSoPreloadFile, &link_st, AT_SYMLINK_NOFOLLOW) != 0) {
        if (errno != ENOENT) return Error::sys(errno, "stat `/etc/ld.so.preload`");
        return create_ld_so_preload(etc->fd, in);
    }
    return existing_ld_so_preload(r, link_st, in, prep);
}

// With a user namespace the runtime's /dev tmpfs belongs to it, and an inode
// created there needs an owner mapped in it (EOVERFLOW for host root):
// /dev/upm and its files are created as the owner of that /dev (the
// container's root).  Only the filesystem ids change; the mounts need
// CAP_SYS_ADMIN, which setfsuid() leaves.
Status become_dev_owner(const struct stat& dev_st) {
    if (dev_st.st_uid == 0 && dev_st.st_gid == 0) return Ok{};
    (void)::setfsgid(dev_st.st_gid);
    (void)::setfsuid(dev_st.st_uid);
    if (static_cast<uid_t>(::setfsuid(static_cast<uid_t>(-1))) != dev_st.st_uid ||
        static_cast<gid_t>(::setfsgid(static_cast<gid_t>(-1))) != dev_st.st_gid)
        return Error::msg("setfsuid/setfsgid to the owner of `/dev` (" + std::to_string(dev_st.st_uid) + ")");
    return Ok{};
}

// /dev/upm, new, on the /dev tmpfs.
Result<Fd> make_upm_dir(const Rootfs& r) {
    if (::mkdirat(r.dev.fd, "upm", 0755) != 0) {
        if (errno == EEXIST) return Error::msg("`/dev/upm` exists already (injected twice?)");
        return Error::sys(errno, "mkdir `/dev/upm`");
    }
    Fd dir(::openat(r.dev.fd, "upm", O_PATH | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC));
    if (dir.fd < 0) return Error::sys(errno, "open `/dev/upm`");
    struct stat dir_st {};
    if (::fstat(dir.fd, &dir_st) != 0 || dir_st.st_dev != r.dev_st.st_dev) return Error::msg("`/dev/upm` was replaced");
    return dir;
}

// The preload and the policy in /dev/upm, read-only.
Status mount_preload_and_policy(int dir, const Prepared& prep) {
    {
        auto target = new_file(dir, kPreloadFile, {});
        if (!target) return target.error();
        if (auto m = mount_onto(prep.preload_tree.fd, target->fd); !m) return m.error().wrap("preload");
    }
    if (prep.policy_tree.fd >= 0) {
        auto target = new_file(dir, kPolicyFile, {});
        if (!target) return target.error();
        if (auto m = mount_onto(prep.policy_tree.fd, target->fd); !m) return m.error().wrap("policy");
    } else if (!prep.policy_text.empty()) {
        if (auto f = new_ro_file(dir, kPolicyFile, prep.policy_text); !f) return f.error().wrap("policy");
    }
    return Ok{};
}

// The generated list, /dev/upm/ld.so.preload, bound read-only onto `target`.
Status bind_ld_so_preload(int dir, const std::string& text, int target) {
    auto gen = new_ro_file(dir, kLdSoPreloadFile, text);
    if (!gen) return gen.error().wrap("`/dev/upm/ld.so.preload`");
    auto tree = ro_clone(gen->fd, "", AT_EMPTY_PATH);
    if (!tree) return tree.error().wrap("`/etc/ld.so.preload`");
    if (auto m = mount_onto(tree->fd, target); !m) return m.error().wrap("`/etc/ld.so.preload`");
    return Ok{};
}

// The child: in the container's mount namespace.  Returns what happened to
// /etc/ld.so.preload.
Result<std::string> inject_in_namespace(const RootfsInjection& in, const Prepared& prep) {
    Rootfs r;
    if (auto st = open_rootfs(in, r); !st) return st.error();
    if (auto st = open_dev_tmpfs(r); !st) return st.error();
    auto file = find_ld_so_preload(r, in, prep);
    if (!file) return file.error();
    const std::string entry = std::string(kContainerDirDev) + "/" + kPreloadFile;
    bool listed = false;
    std::string text = ld_so_preload_with(file->existing, entry, &listed);
    if (auto st = become_dev_owner(r.dev_st); !st) return st.error();
    auto dir = make_upm_dir(r);
    if (!dir) return dir.error();
    if (auto st = mount_preload_and_policy(dir->fd, prep); !st) return st.error();
    if (listed) return std::string("the image's `/etc/ld.so.preload` lists the preload already");
    if (auto st = bind_ld_so_preload(dir->fd, text, file->target.fd); !st) return st.error();
    return file->action;
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
        // process.user: the ids the image's file is read with (0 when absent).
        if (auto proc = doc.find("process"); proc != doc.end() && proc->is_object()) {
            if (auto user = proc->find("user"); user != proc->end() && user->is_object()) {
                auto id = [](const json& v, const char* what) -> Result<std::uint32_t> {
                    if (!v.is_number_unsigned() || v.get<std::uint64_t>() > 0xfffffffeULL)
                        return Error::msg(std::string("`process.user.") + what + "` is not an id (0 to 4294967294)");
                    return static_cast<std::uint32_t>(v.get<std::uint64_t>());
                };
                for (auto [key, out] : {std::pair{"uid", &r.uid}, std::pair{"gid", &r.gid}}) {
                    if (auto v = user->find(key); v != user->end()) {
                        auto n = id(*v, key);
                        if (!n) return n.error();
                        *out = *n;
                    }
                }
                if (auto g = user->find("additionalGids"); g != user->end()) {
                    if (!g->is_array() || g->size() > 65536)
                        return Error::msg("`process.user.additionalGids` is not an array of at most 65536 ids");
                    for (const auto& v : *g) {
                        auto n = id(v, "additionalGids");
                        if (!n) return n.error();
                        r.additional_gids.push_back(*n);
                    }
                }
            }
        }
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

std::optional<std::uint32_t> map_id(std::string_view map_text, std::uint32_t id) {
    while (!map_text.empty()) {
        auto nl = map_text.find('\n');
        std::string_view line = map_text.substr(0, nl);
        map_text = nl == std::string_view::npos ? std::string_view{} : map_text.substr(nl + 1);
        std::uint64_t f[3];
        int n = 0;
        while (n < 3) {
            auto b = line.find_first_not_of(" \t");
            if (b == std::string_view::npos) break;
            line.remove_prefix(b);
            auto e = line.find_first_of(" \t");
            auto v = detail::parse_uint(line.substr(0, e));
            if (!v || *v > 0xffffffffULL) break;
            f[n++] = *v;
            line = e == std::string_view::npos ? std::string_view{} : line.substr(e);
        }
        if (n != 3 || line.find_first_not_of(" \t") != std::string_view::npos) continue;
        if (id >= f[0] && id - f[0] < f[2] && f[1] + (id - f[0]) <= 0xfffffffeULL)
            return static_cast<std::uint32_t>(f[1] + (id - f[0]));
    }
    return std::nullopt;
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

namespace {

// The container's init, pinned: its mount namespace and the id maps of its
// user namespace (identity when it has none).
struct Target {
    Fd pidfd;                    // held while the injection runs, as the pin
    Fd ns;
    std::string proc;            // /proc/PID
    std::string uid_map, gid_map;
};

// Pin the container's init, then take its mount namespace; the pidfd says
// whether the pid still named that process afterwards.
Result<Target> pin_container(const RootfsInjection& in) {
    Target t;
    t.pidfd = Fd(static_cast<int>(::syscall(SYS_pidfd_open, static_cast<pid_t>(in.pid), 0)));
    if (t.pidfd.fd < 0) return Error::sys(errno, "pidfd_open " + std::to_string(in.pid));
    std::string ns_path = "/proc/" + std::to_string(in.pid) + "/ns/mnt";
    t.ns = Fd(::open(ns_path.c_str(), O_RDONLY | O_CLOEXEC));
    if (t.ns.fd < 0) return Error::sys(errno, "open `" + ns_path + "`");
    // The maps of its user namespace: the container's user as the host sees it.
    t.proc = "/proc/" + std::to_string(in.pid);
    auto uid_map = detail::read_file(t.proc + "/uid_map", detail::kMaxSmallFile);
    if (!uid_map) return uid_map.error().wrap("`" + t.proc + "/uid_map`");
    auto gid_map = detail::read_file(t.proc + "/gid_map", detail::kMaxSmallFile);
    if (!gid_map) return gid_map.error().wrap("`" + t.proc + "/gid_map`");
    if (::syscall(SYS_pidfd_send_signal, t.pidfd.fd, 0, nullptr, 0) != 0)
        return Error::sys(errno, "the container's process " + std::to_string(in.pid) + " is gone");
    t.uid_map = std::move(*uid_map);
    t.gid_map = std::move(*gid_map);
    return t;
}

// The container's user (`process.user`) in host ids.
Status map_container_user(const RootfsInjection& in, const Target& t, Prepared& prep) {
    auto unmapped = [&](const char* what, std::uint32_t id) {
        return Error::msg(std::string("the container's ") + what + " " + std::to_string(id) +
                          " (`process.user`) has no mapping in its user namespace (`" + t.proc + "/" + what +
                          "_map`): upm reads the image's files only as the container's user");
    };
    auto uid = map_id(t.uid_map, in.uid);
    if (!uid) return unmapped("uid", in.uid);
    auto gid = map_id(t.gid_map, in.gid);
    if (!gid) return unmapped("gid", in.gid);
    prep.uid = *uid;
    prep.gid = *gid;
    for (auto g : in.additional_gids) {
        auto h = map_id(t.gid_map, g);
        if (!h) return unmapped("gid", g);
        prep.groups.push_back(*h);
    }
    return Ok{};
}

Status check_not_our_namespace(const RootfsInjection& in, const Target& t) {
    Fd own(::open("/proc/self/ns/mnt", O_RDONLY | O_CLOEXEC));
    if (own.fd < 0) return Error::sys(errno, "open `/proc/self/ns/mnt`");
    if (same_file(t.ns.fd, own.fd))
        return Error::msg("process " + std::to_string(in.pid) + " shares our mount namespace: not a container being created");
    return Ok{};
}

// The sources, opened on the host (paths of the node configuration): the
// preload as a read-only mount, the policy as one too, or generated with
// the domain in it.
Status open_sources(const RootfsInjection& in, Prepared& prep) {
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
    return Ok{};
}

}  // namespace

Result<RootfsInjected> inject_into_rootfs(const RootfsInjection& in) {
    try {
        if (in.pid <= 0) return Error::msg("no pid of the container");
        if (in.bundle.empty() || in.bundle.front() != '/') return Error::msg("no absolute bundle path in the state");
        auto target = pin_container(in);
        if (!target) return target.error();
        Prepared prep;
        if (auto st = map_container_user(in, *target, prep); !st) return st.error();
        if (auto st = check_not_our_namespace(in, *target); !st) return st.error();
        if (auto st = open_sources(in, prep); !st) return st.error();
        auto msg = in_child("the injecting process", [&]() -> Result<std::string> {
            if (::setns(target->ns.fd, CLONE_NEWNS) != 0) return Error::sys(errno, "setns into the container's mount namespace");
            if (::chdir("/") != 0) return Error::sys(errno, "chdir");
            return inject_in_namespace(in, prep);
        });
        if (!msg) return msg.error();
        RootfsInjected out;
        out.preload = std::string(kContainerDirDev) + "/" + kPreloadFile;
        if (!in.domain.empty() || !in.policy_source.empty()) out.policy = std::string(kContainerDirDev) + "/" + kPolicyFile;
        out.ld_so_preload = std::move(*msg);
        return out;
    } catch (const std::exception& e) {
        return Error::msg(std::string("injecting: ") + e.what());
    }
}

}  // namespace upm
