// The node agent's registry, its state file and the per-container counters
// (upm/agent_registry.hpp).
#include "upm/agent_registry.hpp"

#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <functional>
#include <set>
#include <unordered_map>

#include "upm/atomic_file.hpp"
#include "upm/io.hpp"
#include "upm/log.hpp"
#include "upm/stats.hpp"
#include "upm/agent_client.hpp"

namespace upm::agent {

using json = nlohmann::json;
using detail::parse_int;
using detail::parse_uint;
using detail::read_file;
using detail::trim;

double unix_now() {
    return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
}

// ---- registry ---------------------------------------------------------------

Result<bool> Registry::add(Container c) {
    auto it = containers_.find(c.id);
    if (it != containers_.end()) {
        // Re-registration (a retried hook): keep the advise counters when it
        // is the same process.
        if (it->second.pid == c.pid && it->second.start_ticks == c.start_ticks) c.advised = it->second.advised;
        it->second = std::move(c);
        return false;
    }
    if (containers_.size() >= capacity_)
        return Error{ENOSPC, "registry full (" + std::to_string(capacity_) +
                                 " containers; raise upmd --max-containers or unregister stopped ones)"};
    std::string id = c.id;
    containers_.emplace(std::move(id), std::move(c));
    return true;
}

bool Registry::remove(const std::string& id) { return containers_.erase(id) > 0; }

Container* Registry::find(const std::string& id) {
    auto it = containers_.find(id);
    return it == containers_.end() ? nullptr : &it->second;
}

Container* Registry::find_pid(long pid) {
    for (auto& [id, c] : containers_)
        if (c.pid == pid) return &c;
    return nullptr;
}

std::vector<Container> Registry::prune_dead() {
    std::vector<Container> dropped;
    for (auto it = containers_.begin(); it != containers_.end();) {
        std::uint64_t now = process_start_ticks(it->second.pid);
        if (now == 0 || now != it->second.start_ticks) {
            dropped.push_back(std::move(it->second));
            it = containers_.erase(it);
        } else {
            ++it;
        }
    }
    return dropped;
}

json Registry::container_json(const Container& c) {
    json j;
    j["id"] = c.id;
    j["pid"] = c.pid;
    j["start_time"] = c.start_ticks;
    j["cgroup"] = c.cgroup;
    j["policy"] = c.policy;
    j["domain"] = c.domain;
    if (!c.ksm_namespace.empty()) j["ksm_namespace"] = c.ksm_namespace;
    j["registered_at"] = c.registered_at;
    j["advised_bytes"] = c.advised.bytes;
    j["advise_calls"] = c.advised.calls;
    j["advise_seconds"] = c.advised.seconds;
    return j;
}

json Registry::to_json() const {
    json list = json::array();
    for (const auto& [id, c] : containers_) list.push_back(container_json(c));
    json doc;
    doc["version"] = 1;
    doc["containers"] = std::move(list);
    doc["advised"] = {{"bytes", node_advised_.bytes}, {"calls", node_advised_.calls}, {"seconds", node_advised_.seconds}};
    return doc;
}

Status Registry::save(const std::string& path) const {
    std::string text;
    try {
        text = to_json().dump(1, ' ', false, json::error_handler_t::replace) + "\n";
    } catch (const std::exception& e) {
        return Error::msg(std::string("state file: ") + e.what());
    }
    auto st = write_file_atomic(path, text, {.mode = 0600});
    if (!st) return st.error().wrap("state file");
    return Ok{};
}

Result<Registry> Registry::load(const std::string& path, std::size_t capacity, std::vector<std::string>& notes) {
    Registry r(capacity);
    auto text = read_file(path, kMaxStateFile);
    if (!text) {
        if (text.error().err == ENOENT) return r;
        return text.error().wrap("state file");
    }
    json doc = json::parse(*text, nullptr, false);
    if (doc.is_discarded() || !doc.is_object())
        return Error::msg("state file `" + path + "`: not a JSON object (move it away to start with an empty registry)");
    try {
        auto adv = doc.find("advised");
        if (adv != doc.end() && adv->is_object()) {
            r.node_advised_.bytes = adv->value("bytes", std::uint64_t(0));
            r.node_advised_.calls = adv->value("calls", std::uint64_t(0));
            r.node_advised_.seconds = adv->value("seconds", 0.0);
        }
        auto list = doc.find("containers");
        if (list == doc.end() || !list->is_array()) return r;
        for (const auto& e : *list) {
            if (!e.is_object()) {
                notes.push_back("state file: skipped an entry that is not an object");
                continue;
            }
            // The same checks as a `register` request.
            json req = e;
            req["op"] = "register";
            auto parsed = parse_agent_request(req.dump(-1, ' ', false, json::error_handler_t::replace));
            if (!parsed) {
                notes.push_back("state file: skipped an invalid entry: " + parsed.error().message);
                continue;
            }
            Container c;
            c.id = parsed->id;
            c.pid = parsed->pid;
            c.start_ticks = parsed->start_time.value_or(0);
            c.cgroup = parsed->cgroup;
            c.policy = parsed->policy;
            c.domain = parsed->domain;
            c.ksm_namespace = parsed->ksm_namespace;
            c.registered_at = e.value("registered_at", 0.0);
            c.advised.bytes = e.value("advised_bytes", std::uint64_t(0));
            c.advised.calls = e.value("advise_calls", std::uint64_t(0));
            c.advised.seconds = e.value("advise_seconds", 0.0);
            std::uint64_t now = process_start_ticks(c.pid);
            if (now == 0) {
                notes.push_back("container `" + printable(c.id) + "`: process " + std::to_string(c.pid) +
                                " has exited, dropped");
                continue;
            }
            if (now != c.start_ticks) {
                notes.push_back("container `" + printable(c.id) + "`: pid " + std::to_string(c.pid) +
                                " now belongs to another process, dropped");
                continue;
            }
            auto added = r.add(std::move(c));
            if (!added) {
                notes.push_back("state file: " + added.error().message);
                break;
            }
        }
    } catch (const std::exception& e) {
        return Error::msg("state file `" + path + "`: " + e.what());
    }
    return r;
}

// ---- counters -------------------------------------------------------------

namespace {

struct ProcInfo {
    pid_t ppid = 0;
    std::string comm;
    std::uint64_t utime = 0, stime = 0;
};

bool read_stat(pid_t pid, ProcInfo& out) {
    auto st = read_proc_stat("/proc/" + std::to_string(pid));
    if (!st) return false;
    out.ppid = st->ppid;
    out.comm = std::move(st->comm);
    out.utime = st->utime;
    out.stime = st->stime;
    return true;
}

bool is_cgroup2(const std::string& dir) {
    struct statfs fs {};
    return ::statfs(dir.c_str(), &fs) == 0 && fs.f_type == 0x63677270;  // CGROUP2_SUPER_MAGIC
}

// Where cgroup v2 is mounted: `root` itself, or its `unified` (hybrid set-ups).
std::string cgroup2_root(const std::string& root) {
    if (is_cgroup2(root)) return root;
    if (is_cgroup2(root + "/unified")) return root + "/unified";
    return {};
}

// Pids of a cgroup and its descendants (bounded).
bool cgroup_pids(const std::string& dir, int depth, std::vector<pid_t>& out) {
    auto text = read_file(dir + "/cgroup.procs", 4 * 1024 * 1024);
    if (!text) return false;
    std::string_view t = *text;
    while (!t.empty() && out.size() < kMaxProcessesPerContainer) {
        auto nl = t.find('\n');
        if (auto v = parse_uint(trim(t.substr(0, nl))); v && *v > 0) out.push_back(static_cast<pid_t>(*v));
        t.remove_prefix(nl == std::string_view::npos ? t.size() : nl + 1);
    }
    if (depth >= 16) return true;
    DIR* d = ::opendir(dir.c_str());
    if (!d) return true;
    std::size_t subdirs = 0;
    while (dirent* e = ::readdir(d)) {
        if (e->d_name[0] == '.' || e->d_type != DT_DIR) continue;
        if (++subdirs > 1024) break;
        cgroup_pids(dir + "/" + e->d_name, depth + 1, out);
    }
    ::closedir(d);
    return true;
}

// The process's KSM counters, added to the container's (a process that has
// exited meanwhile, or a kernel without the files, adds nothing).
void add_process(pid_t pid, ContainerUsage& u) {
    auto k = read_ksm_counters(pid);
    if (!k || !k->merging_present) return;
    if (auto status = read_file("/proc/" + std::to_string(pid) + "/status", detail::kMaxSmallFile)) {
        // "RssAnon:\t  123456 kB"
        if (auto pos = status->find("\nRssAnon:"); pos != std::string::npos) {
            std::string_view v(*status);
            v.remove_prefix(pos + 9);
            v = v.substr(0, v.find('\n'));
            v = trim(v);
            if (auto kb = parse_uint(v.substr(0, v.find(' ')))) u.anon_bytes += *kb * 1024;
        }
    }
    u.processes++;
    u.pids.push_back(pid);
    u.merging_pages += k->merging_pages;
    u.rmap_items += k->rmap_items;
    if (k->profit) u.profit_bytes = u.profit_bytes.value_or(0) + *k->profit;
}

}  // namespace

Snapshot take_snapshot(const Registry& registry, const std::string& cgroup_root) {
    Snapshot s;
    s.taken_at = unix_now();
    s.node = read_node_stats();
    const std::uint64_t psize = s.node.page_size;
    const std::string cg2 = cgroup2_root(cgroup_root);
    static const long ticks = ::sysconf(_SC_CLK_TCK) > 0 ? ::sysconf(_SC_CLK_TCK) : 100;

    // One pass over /proc: parents (for process trees) and ksmd.
    std::unordered_map<pid_t, std::vector<pid_t>> children;
    for (pid_t pid : list_pids()) {
        ProcInfo info;
        if (!read_stat(pid, info)) continue;
        children[info.ppid].push_back(pid);
        if (info.ppid == 2 && info.comm == "ksmd") {
            s.ksmd.pid = pid;
            s.ksmd.seconds = static_cast<double>(info.utime + info.stime) / static_cast<double>(ticks);
        }
    }

    for (const auto& [id, c] : registry.containers()) {
        ContainerUsage u;
        std::vector<pid_t> pids;
        if (!c.cgroup.empty() && c.cgroup != "/" && !cg2.empty() && cgroup_pids(cg2 + c.cgroup, 0, pids)) {
            u.source = "cgroup";
        } else {
            u.source = "tree";
            pids.clear();
            std::vector<pid_t> stack{static_cast<pid_t>(c.pid)};
            std::set<pid_t> seen;
            while (!stack.empty() && pids.size() < kMaxProcessesPerContainer) {
                pid_t p = stack.back();
                stack.pop_back();
                if (!seen.insert(p).second) continue;
                pids.push_back(p);
                auto it = children.find(p);
                if (it != children.end()) stack.insert(stack.end(), it->second.begin(), it->second.end());
            }
        }
        std::sort(pids.begin(), pids.end());
        pids.erase(std::unique(pids.begin(), pids.end()), pids.end());
        for (pid_t p : pids) add_process(p, u);
        u.saved_bytes = u.merging_pages * psize;
        s.usage.emplace(id, std::move(u));
    }
    return s;
}

std::vector<Growth> GrowthWatch::observe(const Snapshot& s) {
    std::vector<Growth> out;
    for (auto it = base_.begin(); it != base_.end();) {
        if (!s.usage.count(it->first)) it = base_.erase(it);
        else ++it;
    }
    for (const auto& [id, u] : s.usage) {
        auto [it, fresh] = base_.emplace(id, u.anon_bytes);
        if (fresh) continue;
        std::uint64_t& base = it->second;
        if (u.anon_bytes <= base) {
            base = u.anon_bytes;
            continue;
        }
        std::uint64_t grown = u.anon_bytes - base;
        auto need = std::max<std::uint64_t>(min_bytes_, static_cast<std::uint64_t>(fraction_ * static_cast<double>(base)));
        if (grown < need) continue;
        out.push_back({id, grown, u.anon_bytes});
        base = u.anon_bytes;
    }
    return out;
}

json containers_json(const Registry& registry, const Snapshot* snapshot) {
    json list = json::array();
    for (const auto& [id, c] : registry.containers()) {
        json j = Registry::container_json(c);
        if (snapshot) {
            auto it = snapshot->usage.find(id);
            if (it != snapshot->usage.end()) {
                const auto& u = it->second;
                j["processes"] = u.processes;
                constexpr std::size_t kMaxListedPids = 1024;   // keeps a status reply of big containers small
                j["pids"] = u.pids.size() <= kMaxListedPids
                                ? u.pids
                                : std::vector<pid_t>(u.pids.begin(), u.pids.begin() + kMaxListedPids);
                j["pids_truncated"] = u.pids.size() > kMaxListedPids;
                j["source"] = u.source;
                j["ksm_merging_pages"] = u.merging_pages;
                j["ksm_rmap_items"] = u.rmap_items;
                j["ksm_profit_bytes"] = u.profit_bytes ? json(*u.profit_bytes) : json(nullptr);
                j["saved_bytes"] = u.saved_bytes;
                j["anon_bytes"] = u.anon_bytes;
            }
        }
        list.push_back(std::move(j));
    }
    return list;
}

json node_json(const Registry& registry, const Snapshot& s) {
    const auto& n = s.node;
    auto get = [&](const char* key) -> json {
        auto it = n.ksm.find(key);
        return it == n.ksm.end() ? json(nullptr) : json(it->second);
    };
    json j;
    j["ksm_available"] = n.ksm_available;
    j["upm_available"] = n.upm_available;
    j["page_size"] = n.page_size;
    j["pages_shared"] = get("pages_shared");
    j["pages_sharing"] = get("pages_sharing");
    j["pages_unshared"] = get("pages_unshared");
    j["general_profit"] = get("general_profit");
    j["full_scans"] = get("full_scans");
    j["run"] = get("run");
    j["pages_to_scan"] = get("pages_to_scan");
    j["sleep_millisecs"] = get("sleep_millisecs");
    j["saved_bytes"] = n.saved_bytes;
    j["ksmd_pid"] = s.ksmd.pid ? json(s.ksmd.pid) : json(nullptr);
    j["ksmd_cpu_seconds"] = s.ksmd.pid ? json(s.ksmd.seconds) : json(nullptr);
    std::uint64_t pages = 0, saved = 0;
    for (const auto& [id, u] : s.usage) {
        pages += u.merging_pages;
        saved += u.saved_bytes;
    }
    j["containers"] = registry.size();
    j["containers_merging_pages"] = pages;
    j["containers_saved_bytes"] = saved;
    const auto& a = registry.node_advised();
    j["advised_bytes"] = a.bytes;
    j["advise_calls"] = a.calls;
    j["advise_seconds"] = a.seconds;
    j["taken_at"] = s.taken_at;
    return j;
}

}  // namespace upm::agent
