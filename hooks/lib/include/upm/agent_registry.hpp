// The node agent's registry of running containers and what they save.
//
// A container is an id, a main pid (with its /proc start time, so that a
// reused pid is never taken for the container), an optional cgroup v2 path,
// the policy and sharing domain it runs with, and the advise calls reported
// for it.  The registry is persisted (state file, written atomically after
// every change) and rebuilt from it at start-up against /proc: entries whose
// process is gone are dropped.
//
// Savings are the kernel's own counters, summed over the container's
// processes: every process of its cgroup (cgroup.procs of the cgroup and its
// descendants) or, without a cgroup, the main pid and its descendants.
// docs/agent.md lists the fields.
#pragma once

#include <sys/types.h>

#include <cstddef>
#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "upm/agent_proto.hpp"
#include "upm/result.hpp"
#include "upm/stats.hpp"

namespace upm::agent {

inline constexpr std::size_t kDefaultMaxContainers = 4096;
inline constexpr std::size_t kMaxStateFile = 16 * 1024 * 1024;
inline constexpr std::size_t kMaxProcessesPerContainer = 65536;

struct AdviseCounters {
    std::uint64_t bytes = 0;     // bytes advised (sum of `advised` messages)
    std::uint64_t calls = 0;     // madvise calls they took
    double seconds = 0;          // time the calls took
};

struct Container {
    std::string id;
    long pid = 0;
    std::uint64_t start_ticks = 0;   // field 22 of /proc/PID/stat
    std::string cgroup;              // cgroup v2 path, "" = the process tree of pid
    std::string policy, domain;
    std::string ksm_namespace;       // the namespace it holds the KSM backend for ("ksm-claim"), "" = none
    double registered_at = 0;        // unix time, seconds
    AdviseCounters advised;
};

// The kernel counters of one container's processes.
struct ContainerUsage {
    std::size_t processes = 0;
    std::uint64_t merging_pages = 0;           // sum of /proc/PID/ksm_merging_pages
    std::uint64_t rmap_items = 0;              // sum of ksm_rmap_items (/proc/PID/ksm_stat)
    std::optional<std::int64_t> profit_bytes;  // sum of ksm_process_profit, kernels >= 6.6
    std::uint64_t saved_bytes = 0;             // merging_pages * page size
    std::uint64_t anon_bytes = 0;              // sum of RssAnon (/proc/PID/status): resident anonymous memory
    std::string source;                        // "cgroup" or "tree"
    std::vector<pid_t> pids;                   // the processes counted (ascending)
};

class Registry {
public:
    explicit Registry(std::size_t capacity = kDefaultMaxContainers) : capacity_(capacity) {}

    // Adds or replaces (same id) a container.  Errors: the registry is full.
    // Returns true when the id is new.
    Result<bool> add(Container c);
    bool remove(const std::string& id);
    Container* find(const std::string& id);
    Container* find_pid(long pid);   // the container whose main pid this is
    const std::map<std::string, Container>& containers() const { return containers_; }
    std::size_t size() const { return containers_.size(); }
    std::size_t capacity() const { return capacity_; }

    // Drops every container whose main process has exited or whose pid now
    // belongs to another process (start time differs); returns them.
    std::vector<Container> prune_dead();

    // Advise counters of the whole node (every `advised` message, attributed or not).
    AdviseCounters& node_advised() { return node_advised_; }
    const AdviseCounters& node_advised() const { return node_advised_; }

    nlohmann::json to_json() const;                 // {"version":1,"containers":[...],"advised":{...}}
    static nlohmann::json container_json(const Container& c);

    // Writes to_json() to `path` atomically (temporary file, fsync, rename), mode 0600.
    Status save(const std::string& path) const;

    // Reads a state file; entries that are invalid or whose process is gone
    // (or reused) are skipped and described in `notes`.  A missing file is
    // an empty registry.
    static Result<Registry> load(const std::string& path, std::size_t capacity, std::vector<std::string>& notes);

private:
    std::size_t capacity_;
    std::map<std::string, Container> containers_;
    AdviseCounters node_advised_;
};

// ksmd's CPU time: utime + stime of the kernel thread `ksmd`.
struct KsmdCpu {
    pid_t pid = 0;                  // 0 when not found
    double seconds = 0;
};

struct Snapshot {
    std::map<std::string, ContainerUsage> usage;   // by container id
    NodeStats node;
    KsmdCpu ksmd;
    double taken_at = 0;                           // unix time
};

// Reads the counters of every registered container and of the node.
// `cgroup_root` is where cgroup v2 is mounted.
Snapshot take_snapshot(const Registry& registry, const std::string& cgroup_root = "/sys/fs/cgroup");

// How upmd learns that memory was advised without a message from inside the
// container: the resident anonymous memory of each registered container
// (RssAnon summed over its processes, a counter the kernel keeps; merging
// does not lower it).  A container whose anonymous memory grew by at least
// max(min_bytes, fraction of its baseline) since the baseline is reported,
// and its baseline moves to the new value; a shrink lowers the baseline, so
// memory freed and allocated again counts again.  The first sight of a
// container only sets its baseline (its registration kicked already).
// docs/agent.md, "Learning when memory is advised", has the reasoning.
struct Growth {
    std::string id;
    std::uint64_t bytes = 0;   // grown since the baseline
    std::uint64_t anon = 0;    // now
};

class GrowthWatch {
public:
    explicit GrowthWatch(std::uint64_t min_bytes = 8ull << 20, double fraction = 0.05)
        : min_bytes_(min_bytes), fraction_(fraction) {}
    std::vector<Growth> observe(const Snapshot& s);
    std::size_t size() const { return base_.size(); }

private:
    std::uint64_t min_bytes_;
    double fraction_;
    std::map<std::string, std::uint64_t> base_;
};

// The `status` reply's "containers" array and "node" object (docs/agent.md).
nlohmann::json containers_json(const Registry& registry, const Snapshot* snapshot);
nlohmann::json node_json(const Registry& registry, const Snapshot& snapshot);

double unix_now();


}  // namespace upm::agent
