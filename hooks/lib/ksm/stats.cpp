// Kernel counters: /proc/PID/{comm,ksm_merging_pages,ksm_stat,smaps_rollup}
// and /sys/kernel/mm/{ksm,upm}/.  Every file is small and read with a
// 64 KiB bound.  Missing files (older kernels) read as 0, so the same code
// works on 6.1 and later.
#include "upm/stats.hpp"

#include <dirent.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <memory>

#include "upm/io.hpp"

namespace upm {

using detail::parse_int;
using detail::parse_uint;
using detail::read_file;
using detail::trim;

namespace {

using DirPtr = std::unique_ptr<DIR, int (*)(DIR*)>;
DirPtr open_dir(const std::string& path) { return DirPtr(::opendir(path.c_str()), ::closedir); }

std::uint64_t page_size() {
    long p = ::sysconf(_SC_PAGESIZE);
    return p > 0 ? static_cast<std::uint64_t>(p) : 4096;
}

// "Pss:                 123 kB" -> 123 * 1024
std::uint64_t rollup_bytes(std::string_view text, std::string_view key) {
    std::size_t pos = 0;
    while (pos < text.size()) {
        auto nl = text.find('\n', pos);
        auto line = text.substr(pos, nl == std::string_view::npos ? std::string_view::npos : nl - pos);
        pos = nl == std::string_view::npos ? text.size() : nl + 1;
        if (!line.starts_with(key) || line.size() <= key.size() || line[key.size()] != ':') continue;
        auto rest = trim(line.substr(key.size() + 1));
        auto sp = rest.find(' ');
        auto v = parse_uint(rest.substr(0, sp));
        if (!v) return 0;
        return rest.ends_with("kB") ? *v * 1024 : *v;
    }
    return 0;
}

// Reads every regular file of a sysfs directory into numeric and text maps.
bool read_sysfs_dir(const std::string& dir, std::map<std::string, std::int64_t>& numbers,
                    std::map<std::string, std::string>* texts) {
    auto d = open_dir(dir);
    if (!d) return false;
    std::size_t count = 0;
    while (dirent* e = ::readdir(d.get())) {
        if (e->d_name[0] == '.' || ++count > 256) continue;
        std::string name = e->d_name;
        auto text = read_file(dir + "/" + name, detail::kMaxSmallFile);
        if (!text) continue;  // write-only or unreadable knob
        auto value = trim(*text);
        if (auto n = parse_int(value))
            numbers[name] = *n;
        else if (texts)
            (*texts)[name] = std::string(value);
    }
    return true;
}

}  // namespace

Result<KsmCounters> read_ksm_counters(pid_t pid) {
    KsmCounters k;
    const std::string dir = detail::proc_dir(pid);
    auto merging = read_file(dir + "/ksm_merging_pages", detail::kMaxSmallFile);
    if (merging) {
        k.merging_present = true;
        k.merging_pages = parse_uint(trim(*merging)).value_or(0);
    } else if (merging.error().err != ENOENT) {
        return merging.error();
    }
    if (auto stat = read_file(dir + "/ksm_stat", detail::kMaxSmallFile)) {
        std::string_view text = *stat;
        while (!text.empty()) {
            auto nl = text.find('\n');
            auto line = text.substr(0, nl);
            text.remove_prefix(nl == std::string_view::npos ? text.size() : nl + 1);
            // "ksm_rmap_items 12" or "ksm_merge_any: no"
            auto sp = line.find(' ');
            if (sp == std::string_view::npos) continue;
            auto key = line.substr(0, sp);
            if (key.ends_with(':')) key.remove_suffix(1);
            auto value = trim(line.substr(sp + 1));
            k.stat[std::string(key)] = std::string(value);
            if (key == "ksm_rmap_items") k.rmap_items = parse_uint(value).value_or(0);
            if (key == "ksm_process_profit") k.profit = parse_int(value);
        }
    }
    return k;
}

Result<ProcessStats> read_process_stats(pid_t pid) {
    try {
        ProcessStats s;
        s.pid = pid;
        std::string dir = detail::proc_dir(pid);
        auto comm = read_file(dir + "/comm", detail::kMaxSmallFile);
        if (!comm) {
            if (comm.error().err == ENOENT) return Error{ESRCH, "process " + std::to_string(pid) + ": no such process"};
            return comm.error().wrap("process " + std::to_string(pid));
        }
        s.comm = std::string(trim(*comm));

        auto ksm = read_ksm_counters(pid);
        if (!ksm) return ksm.error().wrap("process " + std::to_string(pid));
        s.ksm_merging_pages = ksm->merging_pages;
        s.ksm_rmap_items = ksm->rmap_items;
        s.ksm_process_profit = ksm->profit;
        s.ksm_stat = std::move(ksm->stat);
        if (auto rollup = read_file(dir + "/smaps_rollup", detail::kMaxSmallFile)) {
            s.pss_bytes = rollup_bytes(*rollup, "Pss");
            s.rss_bytes = rollup_bytes(*rollup, "Rss");
        }
        s.saved_bytes = s.ksm_merging_pages * page_size();
        return s;
    } catch (const std::exception& e) {
        return Error::msg("process " + std::to_string(pid) + ": " + e.what());
    }
}

std::vector<pid_t> list_pids() {
    std::vector<pid_t> pids;
    try {
        auto d = open_dir("/proc");
        if (!d) return pids;
        while (dirent* e = ::readdir(d.get())) {
            auto n = parse_uint(e->d_name);
            if (n && *n > 0 && *n < (1u << 30)) pids.push_back(static_cast<pid_t>(*n));
        }
        std::sort(pids.begin(), pids.end());
    } catch (...) {
    }
    return pids;
}

NodeStats read_node_stats() {
    NodeStats n;
    try {
        n.page_size = page_size();
        n.ksm_available = read_sysfs_dir("/sys/kernel/mm/ksm", n.ksm, &n.ksm_text);
        n.upm_available = read_sysfs_dir("/sys/kernel/mm/upm", n.upm, nullptr);
        auto it = n.ksm.find("pages_sharing");
        if (it != n.ksm.end() && it->second > 0) n.saved_bytes = static_cast<std::uint64_t>(it->second) * n.page_size;
    } catch (...) {
    }
    return n;
}

Result<std::map<std::string, std::string>> read_ksm_settings() {
    try {
        const std::string dir = "/sys/kernel/mm/ksm";
        auto d = open_dir(dir);
        if (!d) return Error::sys(errno, "open `" + dir + "`");
        std::map<std::string, std::string> out;
        while (dirent* e = ::readdir(d.get())) {
            if (e->d_name[0] == '.') continue;
            std::string path = dir + "/" + e->d_name;
            struct stat st {};
            // Settings are the writable files; counters are read-only.
            if (::stat(path.c_str(), &st) != 0 || !S_ISREG(st.st_mode) || !(st.st_mode & S_IWUSR)) continue;
            if (auto text = read_file(path, detail::kMaxSmallFile)) out[e->d_name] = std::string(trim(*text));
        }
        return out;
    } catch (const std::exception& e) {
        return Error::msg(std::string("reading ksm settings: ") + e.what());
    }
}

Status write_ksm_setting(const std::string& name, const std::string& value) {
    try {
        if (name.empty() || name.find('/') != std::string::npos || name.front() == '.')
            return Error{EINVAL, "invalid ksm setting `" + name + "`"};
        auto st = detail::write_file("/sys/kernel/mm/ksm/" + name, value);
        if (!st) return st.error().wrap("setting ksm `" + name + "` to `" + value + "`");
        return Ok{};
    } catch (const std::exception& e) {
        return Error::msg(std::string("writing ksm setting: ") + e.what());
    }
}

std::optional<ProcStat> parse_proc_stat(std::string_view text) {
    auto open = text.find('(');
    auto close = text.rfind(')');
    if (open == std::string_view::npos || close == std::string_view::npos || close < open) return std::nullopt;
    ProcStat out;
    out.comm = std::string(text.substr(open + 1, close - open - 1));
    std::string_view rest = text.substr(close + 1);
    int field = 2;   // the comm; the next one is 3
    std::size_t pos = 0;
    while (field < 22) {
        while (pos < rest.size() && rest[pos] == ' ') ++pos;
        if (pos >= rest.size()) return std::nullopt;
        auto end = std::min(rest.find(' ', pos), rest.size());
        auto v = rest.substr(pos, end - pos);
        switch (++field) {
        case 3: out.state = v.front(); break;
        case 4: out.ppid = static_cast<pid_t>(detail::parse_int(v).value_or(0)); break;
        case 14: out.utime = detail::parse_uint(v).value_or(0); break;
        case 15: out.stime = detail::parse_uint(v).value_or(0); break;
        case 22: out.starttime = detail::parse_uint(v).value_or(0); break;
        default: break;
        }
        pos = end;
    }
    return out;
}

std::optional<ProcStat> read_proc_stat(const std::string& dir) {
    auto text = detail::read_file(dir + "/stat", detail::kMaxSmallFile);
    if (!text) return std::nullopt;
    return parse_proc_stat(*text);
}

Result<std::string> enable_upm_kernel(const std::string& sysfs_dir) {
    const std::string file = sysfs_dir + "/enabled";
    auto now = detail::read_file(file, detail::kMaxSmallFile);
    if (!now) {
        if (now.error().err == ENOENT) return std::string("no upm kernel");
        return now.error();
    }
    if (detail::trim(*now) == "1") return std::string("already enabled");
    auto st = detail::write_file(file, "1");
    if (!st) return st.error();
    return std::string("enabled");
}

}  // namespace upm
