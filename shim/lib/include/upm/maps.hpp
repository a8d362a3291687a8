// /proc/PID/maps parsing.
//
// One line of maps becomes one Region.  The parser is strict about the
// fixed fields and lenient about the path (which may contain spaces and
// suffixes such as " (deleted)").  Input is bounded by the caller.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <map>
#include <string>
#include <string_view>
#include <vector>

#include "upm/result.hpp"

namespace upm {

struct Region {
    std::uintptr_t start = 0;
    std::uintptr_t end = 0;
    bool read = false, write = false, exec = false;
    bool shared = false;            // 's' in the perms field, else private ('p')
    std::uint64_t offset = 0;
    unsigned dev_major = 0, dev_minor = 0;
    std::uint64_t inode = 0;
    std::string path;               // "" for anonymous, "[heap]", "/usr/lib/..."
    bool deleted = false;           // path had the " (deleted)" suffix (removed from `path`)

    std::uint64_t size() const { return end - start; }
    bool anonymous() const { return inode == 0 && (path.empty() || path.rfind("[anon", 0) == 0); }
    bool pseudo() const { return !path.empty() && path.front() == '['; }  // [heap], [stack], [vdso]...
    bool prot_none() const { return !read && !write && !exec; }
    // Both map the same file (device and inode; never true for anonymous memory).
    bool same_file(const Region& o) const {
        return inode != 0 && inode == o.inode && dev_major == o.dev_major && dev_minor == o.dev_minor;
    }
    std::string perms() const;      // "rw-p" as in maps
};

// Parses the whole text of a maps file.  Fails (with the 1-based line
// number in the message) on the first malformed line.
Result<std::vector<Region>> parse_maps(std::string_view text);

// Reads and parses /proc/<pid>/maps (pid 0 = self), at most 64 MiB.
Result<std::vector<Region>> read_maps(pid_t pid);

// VmFlags of every VMA from /proc/<pid>/smaps (at most 256 MiB), keyed by
// start address, e.g. {0x7f00..., {"rd", "wr", "mr", "mw", "me", "ac", "mg"}}.
// "mg" means the VMA is mergeable (MADV_MERGEABLE / MADV_UPM / prctl).
using VmFlagsMap = std::map<std::uintptr_t, std::vector<std::string>>;
Result<VmFlagsMap> parse_smaps_vmflags(std::string_view smaps_text);
Result<VmFlagsMap> read_smaps_vmflags(pid_t pid);
// Whether the VMA at or containing `start` (a region of maps, or a part of
// one) has `flag`.
bool has_vmflag(const VmFlagsMap& flags, std::uintptr_t start, std::string_view flag);

}  // namespace upm
