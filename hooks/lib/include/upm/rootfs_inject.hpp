// The hooks.d mode of upm-hook: injecting the preload into a container that
// the runtime is creating, from a `createRuntime` hook (docs/runtime.md,
// "Hooks directory mode").
//
// CRI-O and podman run hooks from a hooks directory and let nothing else
// change the container; by the time a hook runs, the runtime has read
// config.json, so LD_PRELOAD cannot be set (runtime-spec lifecycle step 2).
// At `createRuntime` (runc 1.1 and crun 1.8 alike) the container's mount
// namespace exists, its rootfs is mounted at its host path and not yet
// pivoted, and the runtime's tmpfs is on its /dev.  inject_into_rootfs():
//
//   1. pins the container's init (pidfd_open) and opens its mount namespace;
//   2. clones the preload (and the policy) as detached read-only mounts
//      (open_tree + mount_setattr) while still in the host's namespace;
//   3. forks a child that enters the container's mount namespace and, from
//      an fd of the rootfs, resolves every path of the image with
//      openat2(RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS | RESOLVE_NO_XDEV):
//      links stay inside the rootfs and no path of the image may cross a
//      mount (a volume, /dev, /proc) -- the hook is host root, the mounts of
//      the container are not the image's (the runtime's /dev tmpfs is the
//      one crossed on purpose, and the image's `dev` may not be a link).
//      /etc/ld.so.preload is resolved with O_PATH (a device node is never
//      opened: the hook runs outside the container's device cgroup) and
//      type-checked on that fd; its text is read by a grandchild with the
//      container's uid, gid and groups (process.user, mapped through the
//      init's /proc/PID/uid_map and gid_map) and no capabilities, which
//      reopens the same inode through /proc/self/fd;
//   4. mounts the preload and policy under /dev/upm (the runtime's tmpfs,
//      never the image; created as that tmpfs's owner, which a user
//      namespace makes the container's root) and binds a read-only file
//      with the image's /etc/ld.so.preload entries plus ours over the file
//      the container's loader will read (move_mount onto that file's O_PATH
//      fd).
//
// Nothing is written outside the rootfs mount and the container's /dev
// tmpfs; the only write into the image is an empty /etc/ld.so.preload mount
// point when the image has none and its rootfs is writable (root.readonly
// false).  It is created as root (the container's user usually cannot write
// /etc) with O_CREAT | O_EXCL | O_NOFOLLOW in an /etc that is on the rootfs
// mount: a new, empty inode of the image's own filesystem, never opened for
// reading.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "upm/result.hpp"

namespace upm {

inline constexpr std::size_t kMaxLdSoPreload = 64 * 1024;  // bytes of the image's /etc/ld.so.preload read
inline constexpr const char* kLdSoPreloadFile = "ld.so.preload";

// What upm-hook needs of config.json besides prepare_bundle()'s verdict.
struct SpecRoot {
    std::string path;            // root.path ("" = absent)
    bool readonly = false;       // root.readonly
    bool injected = false;       // our mounts are already in `mounts` (upm-runtime or the precreate hook ran)
    bool dev_tmpfs = false;      // `mounts` has a tmpfs on /dev
    std::uint32_t uid = 0;       // process.user.uid, gid, additionalGids: the
    std::uint32_t gid = 0;       // container's ids (inside its user namespace)
    std::vector<std::uint32_t> additional_gids;
};
Result<SpecRoot> read_spec_root(std::string_view config_text);

struct RootfsInjection {
    long pid = 0;                // the container's init, from the state
    std::string bundle;          // absolute, from the state
    std::string root_path;       // root.path: relative to the bundle or absolute
    bool root_readonly = false;  // root.readonly: never create a file in the image
    std::string preload_source;  // host path of libupm-preload.so
    std::string policy_source;   // host path of the policy; "" = the built-in default
    std::string domain;          // validated sharing domain; "" = the policy's
    std::uint32_t uid = 0;       // the container's user (process.user), as seen inside
    std::uint32_t gid = 0;       // the container: the image's file is read with these
    std::vector<std::uint32_t> additional_gids;  // ids mapped to the host's
};

struct RootfsInjected {
    std::string preload;         // in the container: /dev/upm/libupm-preload.so
    std::string policy;          // in the container: /dev/upm/policy.json, "" = none
    std::string ld_so_preload;   // what happened to /etc/ld.so.preload, for the log
};

// Does it.  Must be called by a single-threaded process (it forks and the
// child calls setns).  Fails before mounting anything when the pid's mount
// namespace is the caller's own, the rootfs has no tmpfs on /dev (or /dev
// is a link), /etc is missing, resolves to nothing inside the rootfs or
// across a mount, /etc/ld.so.preload is not a regular file, larger than
// kMaxLdSoPreload, resolves across a mount (into a volume, /dev, /proc) or
// to nothing inside the rootfs, cannot be read by the container's user (or
// that user has no mapping in the container's user namespace, or /proc is
// not there to reopen it), or is absent while the rootfs is read-only.  A
// later failure (a mount) can leave files and mounts under the container's
// /dev/upm and the empty mount point in the image, never a preload the
// loader would be told about.  Never throws.
Result<RootfsInjected> inject_into_rootfs(const RootfsInjection& in);

// The id that `id` of a user namespace is outside it, by the text of a
// /proc/PID/uid_map or gid_map (lines "inside outside count"); nullopt when
// no line maps it.
std::optional<std::uint32_t> map_id(std::string_view map_text, std::uint32_t id);

// The text of /etc/ld.so.preload with `entry` added on a line of its own,
// unless glibc would already load it from `existing` (entries separated by
// white space or `:`, `#` comments to the end of the line); `listed` says
// which.
std::string ld_so_preload_with(std::string_view existing, std::string_view entry, bool* listed = nullptr);

// A policy document with "domain" set (comments dropped); the built-in
// default's document with only the domain when `policy_text` is empty.
Result<std::string> policy_with_domain(std::string_view policy_text, std::string_view domain);

}  // namespace upm
