// Region classes and the classifier: which regions a policy may advise.
//
// Classes (see docs/policy.md):
//   heap       [heap] and private anonymous read-write mappings of allocators
//              and interpreters (not stacks, not .bss)
//   anonymous  every other private anonymous mapping that holds data
//              (read-only or executable anonymous, named anonymous)
//   libdata    data of loaded objects: private writable file mappings (.data),
//              their relocated read-only part (RELRO, the r--p mapping of the
//              same file right before it) and the anonymous .bss right after it
//   rodata     private read-only, non-executable file mappings (e.g. model files
//              mapped MAP_PRIVATE) that are not RELRO
//   stack      [stack] and thread stacks (anonymous rw mapping right above a
//              PROT_NONE guard)
// Never advised, whatever the policy says (class `never` with a reason):
// shared mappings, device files, [vdso]/[vvar]/[vsyscall]/[uprobes],
// executable file text, PROT_NONE reservations.
// The exact rules and their order (guard at most 64 KiB, [anon:NAME] is
// anonymous, RELRO = read-only mapping right below a writable mapping of the
// same file) are in src/classify.cpp and docs/policy.md.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "upm/maps.hpp"

namespace upm {

enum class RegionClass { heap, anonymous, libdata, rodata, stack, text, never };

std::string_view to_string(RegionClass c);
// Parses "heap", "anonymous", "libdata", "rodata", "stack"; false otherwise.
bool parse_region_class(std::string_view name, RegionClass& out);

struct Classified {
    Region region;
    RegionClass cls = RegionClass::never;
    std::string why;        // short reason for the class, e.g. "shared mapping"
};

// Where the loader mapped the anonymous zero-fill part (.bss) of a loaded
// object's writable segment: [start, end), page-aligned.
struct BssRange {
    std::uintptr_t start = 0;
    std::uintptr_t end = 0;
};

// Classifies every region; uses neighbours (guard pages, RELRO, .bss).
// `bss`, when given, is every .bss of the process (the preload's
// loaded_bss()): an anonymous region right above a library's .data is then
// libdata only as far as a .bss starts there and reaches; a region that is a
// .bss plus later memory merged into its VMA comes back as two entries.
// Without it (another process, read from outside) every such region is
// taken for a .bss whole.
std::vector<Classified> classify(const std::vector<Region>& regions, const std::vector<BssRange>* bss = nullptr);

}  // namespace upm
