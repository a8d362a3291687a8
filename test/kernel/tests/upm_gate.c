// SPDX-License-Identifier: GPL-2.0
/*
 * upm_gate -- issue #15 defect 6a: MADV_UPM is a node opt-in.
 *
 * /sys/kernel/mm/upm/enabled is 0 at boot (/init records it in
 * UPM_ENABLED_AT_BOOT before it enables UPM for the suite).  With 0:
 * madvise(MADV_UPM) and process_madvise(MADV_UPM) fail with EPERM and do
 * nothing (no VM_MERGEABLE "mg" flag, nothing merged, calls not counted as
 * merges).  With 1: two processes with identical data merge >= 99%.
 */
#include "upmtest.h"
#include <sys/uio.h>

#ifndef __NR_pidfd_open
#define __NR_pidfd_open 434
#endif
#ifndef __NR_process_madvise
#define __NR_process_madvise 440
#endif

#define ENABLED UPM_DIR "/enabled"

int main(void)
{
	size_t n = 512;
	const char *boot = getenv("UPM_ENABLED_AT_BOOT");
	struct ut_sharer a, b;
	struct iovec iov;
	void *addr;
	long r, m;
	int pfd, err;

	ut_name = "upm_gate";
	ut_require_upm();
	if (access(ENABLED, W_OK))
		ut_fail("no writable " ENABLED);
	ksm_quiesce();

	ut_sharer_start(&a, n, 0x9a7e);
	ut_sharer_start(&b, n, 0x9a7e);
	addr = ut_sharer_addr(&a);
	ut_must_write(ENABLED, "0");
	err = ut_sharer_send(&a, SH_ADVISE);
	UT_CHECK(err == EPERM, "enabled=0: madvise(MADV_UPM) returned %s, want EPERM",
		 err ? strerror(err) : "0");
	err = ut_sharer_send(&b, SH_ADVISE);
	UT_CHECK(err == EPERM, "enabled=0: second madvise(MADV_UPM) returned %s, want EPERM",
		 err ? strerror(err) : "0");
	pfd = syscall(__NR_pidfd_open, a.pid, 0);
	UT_CHECK(pfd >= 0, "pidfd_open: %s", strerror(errno));
	iov.iov_base = addr;
	iov.iov_len = n * PG;
	r = syscall(__NR_process_madvise, pfd, &iov, 1, MADV_UPM, 0);
	UT_CHECK(r < 0 && errno == EPERM, "enabled=0: process_madvise(MADV_UPM) returned %ld (%s), want EPERM",
		 r, r < 0 ? strerror(errno) : "no error");
	UT_CHECK(!ut_vma_has_flag(a.pid, addr, "mg"),
		 "enabled=0: the refused advice still made the range VM_MERGEABLE (partial effect)");
	m = ut_sharer_send(&a, SH_MERGING) + ut_sharer_send(&b, SH_MERGING);
	UT_CHECK(m == 0, "enabled=0: %ld pages merged", m);
	UT_CHECK(ksm_get("pages_sharing") == 0, "enabled=0: pages_sharing %ld", ksm_get("pages_sharing"));
	ut_note("enabled=0: madvise and process_madvise -> EPERM, no mg flag, nothing merged");
	if (boot)
		UT_CHECK(!strcmp(boot, "0"), "enabled was '%s' at boot, not 0 (opt-in)", boot);
	else
		ut_note("UPM_ENABLED_AT_BOOT not set: boot default not checked");

	ut_must_write(ENABLED, "1");
	UT_CHECK(ut_sharer_send(&a, SH_ADVISE) == 0, "enabled=1: advise A failed");
	r = syscall(__NR_process_madvise, pfd, &iov, 1, MADV_UPM, 0);
	UT_CHECK(r == (long)(n * PG), "enabled=1: process_madvise returned %ld (%s)", r,
		 r < 0 ? strerror(errno) : "short");
	UT_CHECK(ut_sharer_send(&b, SH_ADVISE) == 0, "enabled=1: advise B failed");
	m = ut_sharer_send(&b, SH_MERGING);
	UT_CHECK(m * 100 >= (long)n * 99, "enabled=1: B merged only %ld of %zu", m, n);
	ut_note("enabled=1: B merged %ld of %zu pages", m, n);
	ut_sharer_verify(&a, "A");
	ut_sharer_verify(&b, "B");
	close(pfd);
	ut_sharer_stop(&a);
	ut_sharer_stop(&b);
	ksm_unmerge_all();
	ksm_set("run", 0);
	return UT_PASS;
}
