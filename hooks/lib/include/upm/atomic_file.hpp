// Replacing a file atomically: a temporary file next to it, then rename().
//
// The one helper every host program uses (the bundle's config.json, upmd's
// state and textfile metrics, the ksm tuner's saved settings).  The choices
// that differ between callers are parameters, not copies.
//
// The temporary file is created the mkostemp way: a random name in the
// target's directory, O_CREAT | O_EXCL | O_NOFOLLOW | O_NONBLOCK, so whatever
// another user planted in a writable directory -- a FIFO (an open without
// O_NONBLOCK would hang), a symbolic or hard link to another file (O_TRUNC
// would truncate it), a stale file -- is never opened: the name is taken
// again, and a predictable name cannot be squatted.
#pragma once

#include <sys/stat.h>
#include <sys/types.h>

#include <functional>
#include <optional>
#include <string>
#include <string_view>

#include "upm/result.hpp"

namespace upm {

struct AtomicWriteOptions {
    mode_t mode = 0600;                 // of the new file (fchmod, whatever the umask)
    bool fsync = true;                  // fsync the file before the rename, the directory after
    bool nofollow_dir = false;          // refuse a directory that is a symbolic link
    std::optional<uid_t> uid;           // chown the new file (best effort: needs root)
    std::optional<gid_t> gid;
    // Called with the directory fd just before the rename; an error stops it
    // (spec editing: "config.json is still the file we read").
    std::function<Status(int dir_fd)> before_rename;
};

// Writes `text` to DIR/NAME: a temporary file in DIR, renamed over NAME.
// On any failure the temporary file is removed and NAME is left as it was.
Status write_file_atomic(const std::string& dir, const std::string& name, std::string_view text,
                         const AtomicWriteOptions& options = {});

// The same for a path (its directory: detail::dirname()).
Status write_file_atomic(const std::string& path, std::string_view text, const AtomicWriteOptions& options = {});

}  // namespace upm
