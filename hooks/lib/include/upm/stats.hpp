// Kernel counters: per process and per node.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "upm/result.hpp"

namespace upm {

struct ProcessStats {
    pid_t pid = 0;
    std::string comm;
    std::uint64_t ksm_merging_pages = 0;    // /proc/PID/ksm_merging_pages
    std::uint64_t ksm_rmap_items = 0;       // /proc/PID/ksm_stat (0 if absent)
    std::optional<std::int64_t> ksm_process_profit;  // /proc/PID/ksm_stat, kernels >= 6.6
    std::uint64_t pss_bytes = 0;            // /proc/PID/smaps_rollup Pss
    std::uint64_t rss_bytes = 0;            // /proc/PID/smaps_rollup Rss
    std::uint64_t saved_bytes = 0;          // ksm_merging_pages * page size
    std::map<std::string, std::string> ksm_stat;  // every line of /proc/PID/ksm_stat
};

// A process's KSM counters: /proc/PID/ksm_merging_pages and /proc/PID/ksm_stat.
struct KsmCounters {
    bool merging_present = false;           // ksm_merging_pages was read
    std::uint64_t merging_pages = 0;
    std::uint64_t rmap_items = 0;           // ksm_stat (0 if absent)
    std::optional<std::int64_t> profit;     // ksm_process_profit, kernels >= 6.6
    std::map<std::string, std::string> stat;  // every line of ksm_stat
};

// Fails only when ksm_merging_pages exists and cannot be read (another
// user's process without CAP_SYS_PTRACE); a missing file (the process has
// exited, or an older kernel) leaves `merging_present` false.
Result<KsmCounters> read_ksm_counters(pid_t pid);

// Fails when the process does not exist or its KSM counters cannot be read
// (another user's process without CAP_SYS_PTRACE); PSS/RSS stay 0 when
// smaps_rollup is unreadable.
Result<ProcessStats> read_process_stats(pid_t pid);

// Every numeric directory of /proc, ascending.
std::vector<pid_t> list_pids();

// The fields of /proc/PID/stat that upm reads.  The one parser: comm may
// hold spaces and parentheses, so fields are counted from the last ')'.
struct ProcStat {
    std::string comm;
    char state = 0;                 // field 3
    pid_t ppid = 0;                 // 4
    std::uint64_t utime = 0;        // 14, clock ticks
    std::uint64_t stime = 0;        // 15
    std::uint64_t starttime = 0;    // 22, clock ticks after boot
};
std::optional<ProcStat> parse_proc_stat(std::string_view text);
// Reads DIR/stat, DIR being "/proc/PID" (or another proc mount's).
std::optional<ProcStat> read_proc_stat(const std::string& dir);

struct NodeStats {
    bool ksm_available = false;
    std::map<std::string, std::int64_t> ksm;    // every numeric file of /sys/kernel/mm/ksm
    std::map<std::string, std::int64_t> upm;    // /sys/kernel/mm/upm, when present
    std::map<std::string, std::string> ksm_text;  // non-numeric files, e.g. advisor_mode
    bool upm_available = false;                 // /sys/kernel/mm/upm exists
    std::uint64_t page_size = 4096;
    std::uint64_t saved_bytes = 0;              // pages_sharing * page size
};

NodeStats read_node_stats();

// The upm kernel refuses MADV_UPM until root opts the node in
// (/sys/kernel/mm/upm/enabled, docs/threat-model.md).  Writes 1 there and
// says what it found: "enabled", "already enabled", or "no upm kernel"
// (nothing written); an error when the write fails.
Result<std::string> enable_upm_kernel(const std::string& sysfs_dir = "/sys/kernel/mm/upm");

// KSM knobs, for tests and tools that switch ksmd to fast settings and back.
Result<std::map<std::string, std::string>> read_ksm_settings();   // run, pages_to_scan, sleep_millisecs, ...
Status write_ksm_setting(const std::string& name, const std::string& value);

}  // namespace upm
