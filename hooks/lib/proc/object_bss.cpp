// The .bss of another process's objects from their ELF program headers
// (see upm/object_bss.hpp).
#include "upm/object_bss.hpp"

#include <elf.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <map>
#include <optional>
#include <string>
#include <utility>

#include "upm/io.hpp"

namespace upm {

namespace {

constexpr std::uint64_t kPage = 4096;     // x86_64, the only architecture upm builds for
constexpr int kMaxPhdrs = 64;

std::uint64_t page_down(std::uint64_t a) { return a & ~(kPage - 1); }
std::uint64_t page_up(std::uint64_t a) { return (a + kPage - 1) & ~(kPage - 1); }

// The PT_LOAD segments of the file mapped at `r` in process `pid`, in file
// order; nullopt if it cannot be read as a 64-bit ELF.
std::optional<std::vector<Elf64_Phdr>> loads_of(pid_t pid, const Region& r) {
    char link[96];
    std::snprintf(link, sizeof link, "/proc/%d/map_files/%lx-%lx", static_cast<int>(pid),
                  static_cast<unsigned long>(r.start), static_cast<unsigned long>(r.end));
    detail::Fd path(::open(link, O_PATH | O_CLOEXEC));
    struct stat st {};
    if (path.fd < 0 || ::fstat(path.fd, &st) != 0 || !S_ISREG(st.st_mode)) return std::nullopt;
    char again[64];
    std::snprintf(again, sizeof again, "/proc/self/fd/%d", path.fd);
    detail::Fd f(::open(again, O_RDONLY | O_NONBLOCK | O_CLOEXEC | O_NOCTTY));
    Elf64_Ehdr eh{};
    if (f.fd < 0 || ::pread(f.fd, &eh, sizeof eh, 0) != static_cast<ssize_t>(sizeof eh)) return std::nullopt;
    if (std::memcmp(eh.e_ident, ELFMAG, SELFMAG) != 0 || eh.e_ident[EI_CLASS] != ELFCLASS64 ||
        eh.e_phentsize != sizeof(Elf64_Phdr) || eh.e_phnum == 0 || eh.e_phnum > kMaxPhdrs)
        return std::nullopt;
    std::vector<Elf64_Phdr> ph(eh.e_phnum);
    const auto bytes = static_cast<ssize_t>(ph.size() * sizeof(Elf64_Phdr));
    if (::pread(f.fd, ph.data(), bytes, static_cast<off_t>(eh.e_phoff)) != bytes) return std::nullopt;
    std::vector<Elf64_Phdr> out;
    for (const auto& p : ph)
        if (p.p_type == PT_LOAD) out.push_back(p);
    if (out.empty()) return std::nullopt;
    return out;
}

// The load bias of the object: where its first PT_LOAD is mapped.  Only
// the first segment's first file page is mapped once (later segments may
// map the same file page twice, at the end of one and the start of the
// next), so the lowest mapping of the file at that offset is the one.
std::optional<std::uint64_t> load_bias(const std::vector<Region>& regions, const Region& obj,
                                       const Elf64_Phdr& first) {
    const std::uint64_t file_page = page_down(first.p_offset);
    std::optional<std::uint64_t> bias;
    for (const Region& m : regions)
        if (m.same_file(obj) && !m.shared && m.offset == file_page) {
            const std::uint64_t b = m.start - page_down(first.p_vaddr);
            if (!bias || b < *bias) bias = b;
        }
    return bias;
}

// Rule 6b's question for regions[i]: a writable anonymous region right
// above a private writable file mapping.
bool bss_candidate(const std::vector<Region>& regions, std::size_t i) {
    if (i == 0) return false;
    const Region& r = regions[i];
    const Region& prev = regions[i - 1];
    return r.anonymous() && r.write && prev.end == r.start && prev.inode != 0 && prev.write && !prev.shared;
}

}  // namespace

std::vector<BssRange> object_bss(pid_t pid, const std::vector<Region>& regions) {
    std::vector<BssRange> out;
    std::map<std::pair<std::uint64_t, std::uint64_t>, bool> done;  // (dev, inode) read already
    for (std::size_t i = 0; i < regions.size(); ++i) {
        if (!bss_candidate(regions, i)) continue;
        const Region& obj = regions[i - 1];
        const auto key = std::make_pair((std::uint64_t{obj.dev_major} << 32) | obj.dev_minor, obj.inode);
        if (done.contains(key)) continue;
        auto loads = loads_of(pid, obj);
        auto bias = loads ? load_bias(regions, obj, loads->front()) : std::nullopt;
        if (!bias) {
            out.push_back({regions[i].start, regions[i].end});     // unreadable: the old rule
            continue;
        }
        done[key] = true;
        for (const auto& p : *loads) {
            if (!(p.p_flags & PF_W) || p.p_memsz <= p.p_filesz) continue;
            BssRange b{page_up(*bias + p.p_vaddr + p.p_filesz), page_up(*bias + p.p_vaddr + p.p_memsz)};
            if (b.end > b.start) out.push_back(b);
        }
    }
    return out;
}

}  // namespace upm
