// Backend probes and selection on the running kernel.  The expectations
// follow what the probes find, so the test passes on a stock kernel (KSM
// only), on the upm kernel, and on a kernel without KSM.
#include <sys/mman.h>
#include <sys/prctl.h>
#include <unistd.h>

#include <catch2/catch.hpp>

#include "upm/backend.hpp"
#include "upm/maps.hpp"

#ifndef PR_GET_MEMORY_MERGE
#define PR_GET_MEMORY_MERGE 68
#endif

using namespace upm;

TEST_CASE("backend: names", "[backend]") {
    CHECK(to_string(BackendKind::upm) == "upm");
    CHECK(to_string(BackendKind::ksm) == "ksm");
    CHECK(to_string(BackendKind::ksm_process) == "ksm-process");
    CHECK(to_string(BackendKind::none) == "none");
}

TEST_CASE("backend: selection follows the probes", "[backend]") {
    bool upm = kernel_has_madv_upm(), ksm = kernel_has_ksm();
    INFO("MADV_UPM " << upm << ", KSM " << ksm << ", prctl " << kernel_has_memory_merge_prctl());
    auto a = select_backend(BackendChoice::automatic, false);
    CHECK(!a.reason.empty());
    if (upm)
        CHECK(a.kind == BackendKind::upm);
    else if (ksm)
        CHECK(a.kind == BackendKind::ksm);
    else
        CHECK_THAT(a.reason, Catch::Contains("no KSM (CONFIG_KSM) and no MADV_UPM"));

    auto u = select_backend(BackendChoice::upm, false);
    if (upm) {
        CHECK(u.kind == BackendKind::upm);
    } else {
        CHECK(u.kind == BackendKind::none);
        CHECK_THAT(u.reason, Catch::Contains("policy asks for backend `upm` but the kernel has no MADV_UPM"));
    }
    auto k = select_backend(BackendChoice::ksm, true);
    if (ksm)
        CHECK(k.kind == (kernel_has_memory_merge_prctl() && no_new_privs() ? BackendKind::ksm_process
                                                                           : BackendKind::ksm));
    else
        CHECK(k.kind == BackendKind::none);
    // The probes leave nothing mergeable behind.
    auto flags = read_smaps_vmflags(0);
    REQUIRE(flags.ok());
    std::size_t mg = 0;
    for (const auto& [start, f] : *flags) mg += std::count(f.begin(), f.end(), "mg");
    CHECK(mg == 0);
}

TEST_CASE("backend: the whole-process merge only with no_new_privs", "[backend]") {
    // Security finding #4: PR_SET_MEMORY_MERGE survives exec, set-user-ID
    // execs included, so it needs no_new_privs.  (The test binary does not
    // set no_new_privs on itself: that could not be undone.)
    if (!kernel_has_ksm() || !kernel_has_memory_merge_prctl()) {
        WARN("kernel has no KSM or no PR_SET_MEMORY_MERGE; skipping");
        return;
    }
    if (no_new_privs()) {
        WARN("the test runs with no_new_privs already; the refusal cannot be checked");
        return;
    }
    auto k = select_backend(BackendChoice::ksm, true);
    CHECK(k.kind == BackendKind::ksm);
    CHECK_THAT(k.reason, Catch::Contains("does not have no_new_privs"));
    CHECK(enable_process_merge() == EPERM);
    CHECK(::prctl(PR_GET_MEMORY_MERGE, 0, 0, 0, 0) == 0);
}

TEST_CASE("backend: advise_range marks the VMA mergeable", "[backend]") {
    CHECK(advise_range(BackendKind::none, nullptr, 4096) == ENOSYS);
    if (!kernel_has_ksm()) {
        WARN("kernel has no KSM; skipping");
        return;
    }
    const std::size_t len = 16 * 4096;
    void* p = ::mmap(nullptr, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    REQUIRE(p != MAP_FAILED);
    auto start = reinterpret_cast<std::uintptr_t>(p);
    REQUIRE(advise_range(BackendKind::ksm, p, len) == 0);
    auto regions = read_maps(0);
    auto flags = read_smaps_vmflags(0);
    REQUIRE(regions.ok());
    REQUIRE(flags.ok());
    auto vma = std::find_if(regions->begin(), regions->end(), [&](const Region& r) { return r.start <= start && start < r.end; });
    REQUIRE(vma != regions->end());
    CHECK(has_vmflag(*flags, vma->start, "mg"));
    CHECK(::madvise(p, len, 13 /* MADV_UNMERGEABLE */) == 0);
    ::munmap(p, len);
    // an unaligned address is rejected with the errno value
    CHECK(advise_range(BackendKind::ksm, reinterpret_cast<void*>(start + 1), 4096) == EINVAL);
}
