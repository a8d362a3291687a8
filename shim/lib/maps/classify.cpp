// Region classifier: turns the regions of one maps file into classes.
//
// The rules, in the order they are applied (docs/policy.md repeats them):
//   1. shared (`s`) mappings                          -> never
//   2. kernel-provided pseudo mappings [vdso], [vvar], [vvar_*],
//      [vsyscall], [uprobes]                          -> never
//   3. [heap] -> heap, [stack] and [stack:TID] -> stack, [anon:NAME] is
//      treated as anonymous memory, any other [...]   -> never
//   4. PROT_NONE (---p): guards and reservations       -> never
//   5. device files (path under /dev/) and other special files
//      (anon_inode:..., paths not starting with '/')  -> never
//   6. anonymous (inode 0):
//      a. rw, not x, right above (adjacent) a private anonymous PROT_NONE
//         guard of at most 64 KiB                     -> stack (thread stack)
//      b. rw, right above a private writable mapping of a file -> libdata
//         (the .bss, which the loader maps anonymous after .data).  When
//         the caller knows where the loader put each object's .bss (the
//         preload does, from dl_iterate_phdr), only that much is libdata:
//         the kernel merges a later anonymous mapping placed right above
//         the .bss into its VMA, and a mapping that merely lands above a
//         library's .data (no .bss there) is not the library's; such a
//         region is split, or falls through to c/d.
//      c. named ([anon:NAME]), read-only or executable -> anonymous
//      d. rw, not x                                   -> heap
//   7. file-backed, private:
//      a. executable                                  -> text (never advised)
//      b. writable                                    -> libdata (.data)
//      c. read-only, right below (adjacent) a writable mapping of the same
//         file                                        -> libdata (RELRO)
//      d. read-only                                   -> rodata
// Malloc arenas are rw mappings *below* their PROT_NONE reserve, and the
// reserve of a neighbouring arena is much larger than 64 KiB, so rule 6a
// does not take them for stacks; executable JIT code with a guard below
// (V8) stays anonymous.
#include "upm/classify.hpp"

#include <algorithm>
#include <array>

namespace upm {

namespace {

constexpr std::uint64_t kMaxGuard = 64 * 1024;

struct Named {
    RegionClass cls;
    std::string_view name;
};
constexpr std::array<Named, 7> kNames{{{RegionClass::heap, "heap"},
                                       {RegionClass::anonymous, "anonymous"},
                                       {RegionClass::libdata, "libdata"},
                                       {RegionClass::rodata, "rodata"},
                                       {RegionClass::stack, "stack"},
                                       {RegionClass::text, "text"},
                                       {RegionClass::never, "never"}}};

bool adjacent(const Region& below, const Region& above) { return below.end == above.start; }

std::string base_name(const std::string& path) {
    auto slash = path.rfind('/');
    return slash == std::string::npos ? path : path.substr(slash + 1);
}

bool kernel_pseudo(std::string_view p) {
    return p == "[vdso]" || p == "[vsyscall]" || p == "[uprobes]" || p == "[vvar]" || p.starts_with("[vvar_");
}

Classified make(const Region& r, RegionClass c, std::string why) {
    return Classified{r, c, std::move(why)};
}

// Rule 6b: the end of the .bss that starts at r.start, if r is one: r.end
// without hints, the hint's end (possibly before r.end) with them, 0 if r is
// not a .bss.
std::uintptr_t bss_end(const Region& r, const Region* prev, const std::vector<BssRange>* bss) {
    if (!(r.write && prev && adjacent(*prev, r) && prev->inode != 0 && prev->write && !prev->shared)) return 0;
    if (!bss) return r.end;
    for (const BssRange& b : *bss)
        if (b.start == r.start && b.end > b.start) return std::min(b.end, r.end);
    return 0;
}

Classified classify_one(const Region& r, const Region* prev, const Region* next, const std::vector<BssRange>* bss) {
    bool named_anon = r.path.starts_with("[anon:");

    if (r.shared) return make(r, RegionClass::never, "shared mapping");
    if (r.pseudo() && !named_anon) {
        if (kernel_pseudo(r.path)) return make(r, RegionClass::never, "kernel-provided " + r.path + " mapping");
        if (r.path == "[heap]") return make(r, RegionClass::heap, "brk heap");
        if (r.path == "[stack]" || r.path.starts_with("[stack:")) return make(r, RegionClass::stack, "main stack");
        return make(r, RegionClass::never, "special mapping " + r.path);
    }
    if (r.prot_none()) return make(r, RegionClass::never, "PROT_NONE (guard or reserved address space)");
    if (r.path.starts_with("/dev/")) return make(r, RegionClass::never, "device mapping");
    if (!r.path.empty() && r.path.front() != '/' && !named_anon)
        return make(r, RegionClass::never, "special file mapping");

    if (r.inode == 0 && (r.path.empty() || named_anon)) {
        bool rw_data = r.read && r.write && !r.exec;
        if (rw_data && prev && adjacent(*prev, r) && prev->anonymous() && !prev->shared && prev->prot_none() &&
            prev->size() <= kMaxGuard)
            return make(r, RegionClass::stack, "thread stack (above a PROT_NONE guard)");
        if (bss_end(r, prev, bss) != 0)
            return make(r, RegionClass::libdata, ".bss of `" + base_name(prev->path) + "`");
        if (named_anon) return make(r, RegionClass::anonymous, "named anonymous mapping");
        if (rw_data) return make(r, RegionClass::heap, "anonymous read-write (allocator or interpreter heap)");
        if (r.exec) return make(r, RegionClass::anonymous, "anonymous executable (JIT code)");
        return make(r, RegionClass::anonymous, "anonymous read-only");
    }

    // A file (path starting with '/', possibly deleted, or a memfd).
    std::string file = "`" + base_name(r.path) + "`";
    if (r.exec) return make(r, RegionClass::text, "code of " + file);
    if (r.write) return make(r, RegionClass::libdata, "writable private mapping of " + file + " (.data)");
    if (next && adjacent(r, *next) && r.same_file(*next) && next->write && !next->shared)
        return make(r, RegionClass::libdata, "relocated read-only data (RELRO) of " + file);
    return make(r, RegionClass::rodata, "private read-only mapping of " + file);
}

}  // namespace

std::string_view to_string(RegionClass c) {
    for (const auto& n : kNames)
        if (n.cls == c) return n.name;
    return "never";
}

bool parse_region_class(std::string_view name, RegionClass& out) {
    for (const auto& n : kNames) {
        if (n.cls == RegionClass::text || n.cls == RegionClass::never) continue;
        if (n.name == name) {
            out = n.cls;
            return true;
        }
    }
    return false;
}

std::vector<Classified> classify(const std::vector<Region>& regions, const std::vector<BssRange>* bss) {
    std::vector<Classified> out;
    try {
        out.reserve(regions.size());
        for (std::size_t i = 0; i < regions.size(); ++i) {
            const Region* prev = i > 0 ? &regions[i - 1] : nullptr;
            const Region* next = i + 1 < regions.size() ? &regions[i + 1] : nullptr;
            Classified c = classify_one(regions[i], prev, next, bss);
            std::uintptr_t end = c.cls == RegionClass::libdata && regions[i].inode == 0
                                     ? bss_end(regions[i], prev, bss)
                                     : 0;
            if (end == 0 || end >= regions[i].end) {
                out.push_back(std::move(c));
                continue;
            }
            // The .bss and, merged into its VMA, memory mapped later.
            Region tail = regions[i];
            tail.start = end;
            c.region.end = end;
            out.push_back(std::move(c));
            Classified rest = classify_one(tail, &out.back().region, next, bss);
            rest.why += " (merged into the VMA of the .bss below it)";
            out.push_back(std::move(rest));
        }
    } catch (...) {
        // Out of memory: classify what we could; unclassified regions are
        // simply not advised.
    }
    return out;
}

}  // namespace upm
