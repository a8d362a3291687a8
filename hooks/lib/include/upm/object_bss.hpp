// The .bss of the objects mapped in another process, read from outside.
//
// The preload asks its own loader where each .bss is (dl_iterate_phdr);
// from outside (`upm maps PID`, the ideal scan, remote advice) the same
// answer comes from each object's ELF program headers and where maps shows
// its first segment (the load bias: the lowest mapping of the file at the
// first PT_LOAD's offset): for every writable PT_LOAD whose memory size
// exceeds its file size, the anonymous zero-fill the loader mapped is
// [page_up(bias + p_vaddr + p_filesz), page_up(bias + p_vaddr + p_memsz)).
//
// Only objects that rule 6b of the classifier would consult are read (a
// private writable file mapping with an anonymous writable region right
// above it).  Each is opened through /proc/PID/map_files (the very file
// mapped, whatever mount namespace the process is in; needs root), first
// O_PATH and reopened only if it is a regular file, and at most 64 program
// headers are read.  An object that cannot be read keeps the old rule: the
// whole anonymous region above it counts as its .bss.
#pragma once

#include <sys/types.h>

#include <vector>

#include "upm/classify.hpp"
#include "upm/maps.hpp"

namespace upm {

// Hints for classify(regions, &hints) of process `pid` (not 0: this is for
// other processes; the preload has loaded_bss()).
std::vector<BssRange> object_bss(pid_t pid, const std::vector<Region>& regions);

}  // namespace upm
