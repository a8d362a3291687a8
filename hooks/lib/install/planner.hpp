// The engine planners of `upm install-runtime` and what they share; see
// upm/install_runtime.hpp.  Internal to hooks/lib/install/.
#pragma once

#include <optional>
#include <string>
#include <string_view>

#include "upm/install_runtime.hpp"
#include "upm/result.hpp"

namespace upm::install::detail {

// The first line of every drop-in upm writes; uninstall removes only files
// that start with it.
inline constexpr std::string_view kDropinMarker = "# Installed by `upm install-runtime`";

// The content of a host file (under options.root), or nullopt if it does not
// exist.  Refuses files over 1 MiB: no engine configuration is that large.
Result<std::optional<std::string>> read_host_file(const Options& options, std::string_view path);

// A snippet of share/upm/runtimes/ with /usr/bin/upm- replaced by
// options.bin_dir, preceded by kDropinMarker (as a comment) when `marker`.
Result<std::string> render_snippet(const Options& options, std::string_view rel, bool marker);

// Adds to `plan` the write of the drop-in `path` from snippet `rel`, or its
// removal (uninstall), or nothing when it is already as wanted.
Status plan_dropin(const Options& options, Plan& plan, std::string_view path, std::string_view rel,
                   std::string_view why);
Status plan_remove_dropin(const Options& options, Plan& plan, std::string_view path);

// A write (or removal, when `content` is nullopt) of a main configuration
// file that exists or not (`old`), with a backup if it exists.
void plan_main_file(Plan& plan, std::string_view path, const std::optional<std::string>& old,
                    const std::optional<std::string>& content, std::string why);

Status plan_containerd(const Options& options, Plan& plan, bool install);
Status plan_docker(const Options& options, Plan& plan, bool install);

}  // namespace upm::install::detail
