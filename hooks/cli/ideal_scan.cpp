// The page scanner of `upm ideal` (ideal_scan.hpp says what it counts).
//
// Four passes, so that memory stays at ~50 bytes per scanned page and every
// frame is read once:
//   1. per process: maps -> classes -> pagemap of the selected regions ->
//      one Mapping (16 bytes) per present private anonymous page;
//   2. sort the mappings by frame number -> one Frame (32 bytes) per frame;
//   3. /proc/kpageflags for the frames, in windows along the sorted frames
//      (each window ends at the last frame it needs, windows never overlap,
//      so kpageflags is read at most once);
//   4. the content of every frame through /proc/PID/mem of one of its
//      mappings, in runs of consecutive addresses, hashed with XXH3-128.
#include "ideal_scan.hpp"

#include <fcntl.h>
#include <unistd.h>

#define XXH_INLINE_ALL  // header-only: no run-time dependency on libxxhash
#include <xxhash.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <set>
#include <string_view>

#include "upm/maps.hpp"
#include "upm/object_bss.hpp"

namespace upm::ideal {

namespace {

constexpr std::uint64_t kPresent = std::uint64_t{1} << 63;
constexpr std::uint64_t kFileOrShared = std::uint64_t{1} << 61;
constexpr std::uint64_t kPfnMask = (std::uint64_t{1} << 55) - 1;

constexpr int kKpfAnon = 12;
constexpr int kKpfNopage = 20;
constexpr int kKpfKsm = 21;
constexpr int kKpfZeroPage = 24;

constexpr std::size_t kPagemapChunk = 64 * 1024;  // entries per pagemap read (512 KiB)
constexpr std::size_t kFlagsWindow = 8 * 1024;    // entries per kpageflags read (64 KiB)
constexpr std::size_t kReadRun = 256;             // pages per /proc/PID/mem read

struct Fd {
    int fd = -1;
    explicit Fd(int f) : fd(f) {}
    Fd(const Fd&) = delete;
    Fd& operator=(const Fd&) = delete;
    ~Fd() {
        if (fd >= 0) ::close(fd);
    }
};

// pread until `len` bytes or EOF/error; returns the bytes read, -1 (errno
// set) when nothing could be read because of an error.
ssize_t pread_full(int fd, void* buf, std::size_t len, std::uint64_t off) {
    std::size_t got = 0;
    while (got < len) {
        ssize_t n = ::pread(fd, static_cast<char*>(buf) + got, len - got, static_cast<off_t>(off + got));
        if (n < 0) {
            if (errno == EINTR) continue;
            return got > 0 ? static_cast<ssize_t>(got) : -1;
        }
        if (n == 0) break;
        got += static_cast<std::size_t>(n);
    }
    return static_cast<ssize_t>(got);
}

std::string proc_path(pid_t pid, const char* what) { return "/proc/" + std::to_string(pid) + "/" + what; }

// RssAnon of /proc/PID/status in pages, 0 when unknown: only to size arrays.
std::uint64_t rss_anon_pages(pid_t pid, std::uint64_t page_size) {
    std::string path = proc_path(pid, "status");
    Fd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
    if (fd.fd < 0) return 0;
    char buf[8192];
    ssize_t n = pread_full(fd.fd, buf, sizeof buf - 1, 0);
    if (n <= 0) return 0;
    buf[n] = 0;
    const char* p = std::strstr(buf, "\nRssAnon:");
    if (!p) return 0;
    unsigned long long kib = std::strtoull(p + 10, nullptr, 10);
    return kib * 1024 / page_size;
}

// Pass 1 for one process: appends its mappings to `out`.
Status collect(pid_t pid, std::uint32_t pid_index, unsigned class_mask, std::uint64_t page_size,
               std::uint64_t max_pages, std::vector<Mapping>& out, bool& over_limit) {
    auto regions = read_maps(pid);
    if (!regions) {
        int e = regions.error().err;
        std::string hint = e == ENOENT || e == ESRCH ? " (no such process)"
                           : e == EACCES || e == EPERM
                               ? " (another user's process needs root; a process of another user namespace may stay unreadable)"
                               : "";
        return Error{e, regions.error().message + hint};
    }
    std::string pm_path = proc_path(pid, "pagemap");
    Fd pm(::open(pm_path.c_str(), O_RDONLY | O_CLOEXEC));
    if (pm.fd < 0) return Error::sys(errno, "opening `" + pm_path + "`");

    std::vector<std::uint64_t> buf(kPagemapChunk);
    // Appended to `out` directly (no second copy); taken back on error.
    const std::size_t old_size = out.size();
    struct Rollback {
        std::vector<Mapping>& v;
        std::size_t size;
        bool keep = false;
        ~Rollback() {
            if (!keep) v.resize(size);
        }
    } rollback{out, old_size};
    const std::vector<BssRange> bss = object_bss(pid, *regions);
    for (const auto& c : classify(*regions, &bss)) {
        if (!(class_mask & (1u << static_cast<unsigned>(c.cls)))) continue;
        std::uint64_t first = c.region.start / page_size, last = c.region.end / page_size;
        if (last > Mapping::kMaxVpn) return Error::msg("address beyond the supported range in `" + pm_path + "`");
        for (std::uint64_t vpn = first; vpn < last;) {
            std::size_t n = static_cast<std::size_t>(std::min<std::uint64_t>(kPagemapChunk, last - vpn));
            ssize_t got = pread_full(pm.fd, buf.data(), n * 8, vpn * 8);
            if (got < 0) return Error::sys(errno, "reading `" + pm_path + "`");
            std::size_t entries = static_cast<std::size_t>(got) / 8;
            if (entries == 0) return Error::msg("reading `" + pm_path + "`: unexpected end of file (did the process exit?)");
            for (std::size_t i = 0; i < entries; ++i) {
                std::uint64_t e = buf[i];
                if (!(e & kPresent) || (e & kFileOrShared)) continue;
                std::uint64_t pfn = e & kPfnMask;
                if (pfn == 0)
                    return Error::msg("page frame numbers read as 0 from `" + pm_path +
                                      "`: the kernel shows them only to CAP_SYS_ADMIN; run `upm ideal` as root");
                out.push_back({pfn, Mapping::make_key(pid_index, vpn + i, c.cls)});
            }
            vpn += entries;
            if (out.size() > max_pages) {
                over_limit = true;
                return Error::msg("more than " + std::to_string(max_pages) +
                                  " present anonymous pages; raise --max-pages to scan that much");
            }
        }
    }
    rollback.keep = true;
    return Ok{};
}

// Pass 3: kernel page flags of every frame.
Status read_page_flags(int kpf, std::vector<Frame>& frames, const std::vector<Mapping>& mappings, Report& rep) {
    std::vector<std::uint64_t> buf(kFlagsWindow);
    for (std::size_t i = 0; i < frames.size();) {
        std::uint64_t base = frames[i].pfn;
        std::size_t j = i;
        while (j < frames.size() && frames[j].pfn - base < kFlagsWindow) ++j;
        std::size_t n = static_cast<std::size_t>(frames[j - 1].pfn - base + 1);
        ssize_t got = pread_full(kpf, buf.data(), n * 8, base * 8);
        if (got < 0) return Error::sys(errno, "reading `/proc/kpageflags`");
        std::size_t have = static_cast<std::size_t>(got) / 8;
        for (; i < j; ++i) {
            Frame& f = frames[i];
            std::uint64_t off = f.pfn - base;
            std::uint64_t fl = off < have ? buf[off] : (std::uint64_t{1} << kKpfNopage);
            std::uint64_t nmap = (i + 1 < frames.size() ? frames[i + 1].first : mappings.size()) - f.first;
            if (fl & (std::uint64_t{1} << kKpfZeroPage)) {
                f.flags |= Frame::excluded;
                rep.kernel_zero_page_mappings += nmap;
            } else if (!(fl & (std::uint64_t{1} << kKpfAnon)) || (fl & (std::uint64_t{1} << kKpfNopage))) {
                f.flags |= Frame::excluded;
                rep.non_anon_pages += 1;
            } else if (fl & (std::uint64_t{1} << kKpfKsm)) {
                f.flags |= Frame::ksm;
            }
        }
    }
    return Ok{};
}

void hash_page(Frame& f, const unsigned char* page, std::size_t page_size, const XXH128_hash_t& zero_hash,
               const unsigned char* zeros) {
    XXH128_hash_t h = XXH3_128bits(page, page_size);
    f.hash_lo = h.low64;
    f.hash_hi = h.high64;
    if (XXH128_isEqual(h, zero_hash) && std::memcmp(page, zeros, page_size) == 0) f.flags |= Frame::zero;
}

// Pass 4: the content of every counted frame.
void read_contents(std::vector<Frame>& frames, const std::vector<Mapping>& mappings,
                   const std::vector<pid_t>& pids, std::size_t page_size, Report& rep) {
    std::vector<std::uint32_t> order;
    order.reserve(frames.size());
    for (std::uint32_t i = 0; i < frames.size(); ++i)
        if (!(frames[i].flags & Frame::excluded)) order.push_back(i);
    auto key = [&](std::uint32_t i) { return mappings[frames[i].first].key; };
    std::sort(order.begin(), order.end(), [&](std::uint32_t a, std::uint32_t b) { return key(a) < key(b); });

    std::vector<unsigned char> buf(kReadRun * page_size), zeros(page_size, 0);
    XXH128_hash_t zero_hash = XXH3_128bits(zeros.data(), page_size);
    std::uint32_t open_index = UINT32_MAX;
    Fd mem(-1);
    for (std::size_t i = 0; i < order.size();) {
        const Mapping& m = mappings[frames[order[i]].first];
        std::uint32_t pidx = m.pid_index();
        // A run: consecutive pages of one process.
        std::size_t j = i + 1;
        while (j < order.size() && j - i < kReadRun) {
            const Mapping& n = mappings[frames[order[j]].first];
            if (n.pid_index() != pidx || n.vpn() != m.vpn() + (j - i)) break;
            ++j;
        }
        if (pidx != open_index) {
            open_index = pidx;
            std::string path = proc_path(pids[pidx], "mem");
            Fd f(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
            std::swap(mem.fd, f.fd);
        }
        std::size_t pages = j - i;
        ssize_t got = mem.fd < 0 ? -1 : pread_full(mem.fd, buf.data(), pages * page_size, m.vpn() * page_size);
        std::size_t whole = got > 0 ? static_cast<std::size_t>(got) / page_size : 0;
        rep.bytes_read += whole * page_size;
        for (std::size_t k = 0; k < pages; ++k) {
            Frame& f = frames[order[i + k]];
            if (k < whole) {
                hash_page(f, buf.data() + k * page_size, page_size, zero_hash, zeros.data());
                continue;
            }
            // The rest of the run failed: page by page.
            ssize_t one = mem.fd < 0 ? -1
                                     : pread_full(mem.fd, buf.data(), page_size, (m.vpn() + k) * page_size);
            if (one == static_cast<ssize_t>(page_size)) {
                rep.bytes_read += page_size;
                hash_page(f, buf.data(), page_size, zero_hash, zeros.data());
            } else {
                f.flags |= Frame::unreadable;
            }
        }
        i = j;
    }
}

void add(Counters& c, const Frame& f, std::uint64_t nmap) {
    c.anon_present_pages += 1;
    c.mappings += nmap;
    bool ksm = f.flags & Frame::ksm;
    c.ksm_pages_now += ksm;
    c.unmerged_pages += ksm ? nmap : 1;
    c.zero_pages += (f.flags & Frame::zero) && !(f.flags & Frame::unreadable);
    c.unreadable_pages += (f.flags & Frame::unreadable) ? 1 : 0;
}

}  // namespace

Tally tally(const std::vector<Mapping>& mappings, std::vector<Frame>& frames) {
    Tally t;
    for (std::size_t i = 0; i < frames.size(); ++i) {
        Frame& f = frames[i];
        if (f.flags & Frame::excluded) continue;
        std::size_t end = i + 1 < frames.size() ? frames[i + 1].first : mappings.size();
        std::array<std::uint32_t, kClasses> count{};
        std::uint8_t mask = 0;
        for (std::size_t j = f.first; j < end; ++j) {
            unsigned c = static_cast<unsigned>(mappings[j].cls());
            if (c >= kClasses) continue;
            ++count[c];
            mask |= static_cast<std::uint8_t>(1u << c);
        }
        f.classes = mask;
        add(t.total, f, end - f.first);
        for (int c = 0; c < kClasses; ++c) {
            if (!(mask & (1u << c))) continue;
            add(t.by_class[c], f, count[c]);
            t.class_seen[c] = true;
        }
    }
    // Distinct contents: the counted, readable frames sorted by hash.
    auto counted = [](const Frame& f) { return !(f.flags & (Frame::excluded | Frame::unreadable)); };
    auto last = std::partition(frames.begin(), frames.end(), counted);
    std::sort(frames.begin(), last, [](const Frame& a, const Frame& b) {
        return a.hash_hi != b.hash_hi ? a.hash_hi < b.hash_hi : a.hash_lo < b.hash_lo;
    });
    std::size_t n = static_cast<std::size_t>(last - frames.begin());
    for (std::size_t i = 0; i < n;) {
        std::size_t j = i;
        std::uint8_t mask = 0;
        while (j < n && frames[j].hash_hi == frames[i].hash_hi && frames[j].hash_lo == frames[i].hash_lo)
            mask |= frames[j++].classes;
        t.total.distinct_contents += 1;
        for (int c = 0; c < kClasses; ++c)
            if (mask & (1u << c)) t.by_class[c].distinct_contents += 1;
        i = j;
    }
    return t;
}

Result<Report> scan(const Options& opt) {
    auto t0 = std::chrono::steady_clock::now();
    Report rep;
    long ps = ::sysconf(_SC_PAGESIZE);
    rep.page_size = ps > 0 ? static_cast<std::uint64_t>(ps) : 4096;

    Fd kpf(::open("/proc/kpageflags", O_RDONLY | O_CLOEXEC));
    if (kpf.fd < 0) {
        int e = errno;
        std::string hint = (e == EACCES || e == EPERM) ? " (only root may read it; run `upm ideal` as root)"
                           : e == ENOENT ? " (the kernel was built without CONFIG_PROC_PAGE_MONITOR)"
                                         : "";
        return Error{e, "opening `/proc/kpageflags`: " + std::string(std::strerror(e)) + hint};
    }

    std::vector<pid_t> pids;
    {
        std::set<pid_t> seen;
        for (pid_t p : opt.pids)
            if (seen.insert(p).second) pids.push_back(p);
    }
    if (pids.size() > Mapping::kMaxPidIndex)
        return Error::msg("too many processes (" + std::to_string(pids.size()) + ", at most " +
                          std::to_string(Mapping::kMaxPidIndex) + ")");

    // Pass 1, into one array sized from the processes' RssAnon (a vector
    // that doubles would need up to 3x the memory while it grows).
    std::vector<Mapping> mappings;
    {
        std::uint64_t pages = 0;
        for (pid_t pid : pids) pages += rss_anon_pages(pid, rep.page_size);
        mappings.reserve(static_cast<std::size_t>(std::min<std::uint64_t>(pages + pages / 16 + 1024, opt.max_pages)));
    }
    std::uint64_t max_pages = std::min<std::uint64_t>(opt.max_pages, UINT32_MAX);  // Frame::first is 32 bits
    for (pid_t pid : pids) {
        auto idx = static_cast<std::uint32_t>(rep.pids.size());
        bool over_limit = false;
        auto st = collect(pid, idx, opt.class_mask, rep.page_size, max_pages, mappings, over_limit);
        if (!st) {
            if (over_limit) return st.error();
            rep.errors.push_back({pid, st.error().message});
            continue;
        }
        rep.pids.push_back(pid);
    }

    // Pass 2.
    std::sort(mappings.begin(), mappings.end(), [](const Mapping& a, const Mapping& b) { return a.pfn < b.pfn; });
    std::vector<Frame> frames;
    {
        std::size_t n = 0;
        for (std::size_t i = 0; i < mappings.size(); ++i) n += i == 0 || mappings[i].pfn != mappings[i - 1].pfn;
        frames.reserve(n);
    }
    for (std::size_t i = 0; i < mappings.size(); ++i) {
        if (i > 0 && mappings[i].pfn == mappings[i - 1].pfn) continue;
        Frame f;
        f.pfn = mappings[i].pfn;
        f.first = static_cast<std::uint32_t>(i);
        frames.push_back(f);
    }

    // Pass 3, 4 and the count.
    if (auto st = read_page_flags(kpf.fd, frames, mappings, rep); !st) return st.error();
    read_contents(frames, mappings, rep.pids, rep.page_size, rep);
    rep.tally = tally(mappings, frames);
    rep.elapsed_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    return rep;
}

Result<std::vector<pid_t>> cgroup_pids(const std::string& dir) {
    namespace fs = std::filesystem;
    constexpr std::size_t kMaxProcsFile = 16 * 1024 * 1024;
    constexpr std::size_t kMaxCgroups = 100000;
    std::error_code ec;
    if (!fs::is_regular_file(fs::path(dir) / "cgroup.procs", ec))
        return Error::msg("`" + dir + "` is not a cgroup directory (it has no cgroup.procs)");

    std::set<pid_t> out;
    auto read_procs = [&](const fs::path& file) -> Status {
        Fd fd(::open(file.c_str(), O_RDONLY | O_CLOEXEC));
        if (fd.fd < 0) return Error::sys(errno, "opening `" + file.string() + "`");
        std::string text;
        char buf[65536];
        for (;;) {
            ssize_t n = ::read(fd.fd, buf, sizeof buf);
            if (n < 0 && errno == EINTR) continue;
            if (n < 0) return Error::sys(errno, "reading `" + file.string() + "`");
            if (n == 0) break;
            text.append(buf, static_cast<std::size_t>(n));
            if (text.size() > kMaxProcsFile) return Error::msg("`" + file.string() + "` is larger than 16 MiB");
        }
        std::size_t pos = 0;
        while (pos < text.size()) {
            std::size_t nl = text.find('\n', pos);
            if (nl == std::string::npos) nl = text.size();
            std::string_view line(text.data() + pos, nl - pos);
            pos = nl + 1;
            if (line.empty()) continue;
            long v = 0;
            for (char ch : line) {
                if (ch < '0' || ch > '9' || v > 1'000'000'000) return Error::msg("`" + file.string() + "`: not a pid list");
                v = v * 10 + (ch - '0');
            }
            if (v > 0) out.insert(static_cast<pid_t>(v));
        }
        return Ok{};
    };
    if (auto st = read_procs(fs::path(dir) / "cgroup.procs"); !st) return st.error();
    std::size_t cgroups = 1;
    fs::recursive_directory_iterator it(dir, fs::directory_options::skip_permission_denied, ec), end;
    if (ec) return Error::sys(ec.value(), "listing `" + dir + "`");
    for (; it != end; it.increment(ec)) {
        if (ec) return Error::sys(ec.value(), "listing `" + dir + "`");
        if (!it->is_directory(ec) || it->is_symlink(ec)) continue;
        fs::path procs = it->path() / "cgroup.procs";
        if (!fs::is_regular_file(procs, ec)) continue;
        if (++cgroups > kMaxCgroups) return Error::msg("more than 100000 cgroups below `" + dir + "`");
        // A cgroup removed while we walk is not an error.
        if (auto st = read_procs(procs); !st && st.error().err != ENOENT && st.error().err != ENODEV)
            return st.error();
    }
    return std::vector<pid_t>(out.begin(), out.end());
}

Result<unsigned> parse_classes(const std::string& list) {
    unsigned mask = 0;
    std::size_t pos = 0;
    while (pos <= list.size()) {
        std::size_t comma = list.find(',', pos);
        if (comma == std::string::npos) comma = list.size();
        std::string name = list.substr(pos, comma - pos);
        pos = comma + 1;
        while (!name.empty() && name.front() == ' ') name.erase(name.begin());
        while (!name.empty() && name.back() == ' ') name.pop_back();
        if (name.empty()) continue;
        RegionClass c;
        if (name == "all") {
            mask |= Options{}.class_mask;
        } else if (name == "anon") {
            mask |= 1u << static_cast<unsigned>(RegionClass::anonymous);
        } else if (name == "text") {
            mask |= 1u << static_cast<unsigned>(RegionClass::text);
        } else if (parse_region_class(name, c)) {
            mask |= 1u << static_cast<unsigned>(c);
        } else {
            return Error::msg("unknown class `" + name +
                              "` (classes: heap, anonymous (or anon), libdata, rodata, stack, text, all)");
        }
        if (comma == list.size()) break;
    }
    if (mask == 0) return Error::msg("no class given (classes: heap, anonymous, libdata, rodata, stack, text, all)");
    return mask;
}

}  // namespace upm::ideal
