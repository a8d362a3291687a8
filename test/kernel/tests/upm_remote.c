// SPDX-License-Identifier: GPL-2.0
/*
 * upm_remote -- remote advice through process_madvise(pidfd, iov, n,
 * MADV_UPM, 0) (adversarial test 11).
 *
 * As root: advising sharer A's and then sharer B's range remotely returns
 * the byte count and merges >= 99% of B.  An iovec whose second entry is
 * unmapped returns the length of the first (partial progress).
 * Without privilege: a process running as uid 65534 without CAP_SYS_NICE
 * advising its own child (same uid) gets EPERM; advising root's sharer
 * gets EPERM (or EACCES from the ptrace check); the same with CAP_SYS_NICE
 * kept but a different uid (no PTRACE_MODE_ATTACH) gets EPERM or EACCES.
 */
#include "upmtest.h"
#include <grp.h>
#include <sys/uio.h>
#include <linux/capability.h>

#ifndef __NR_pidfd_open
#define __NR_pidfd_open 434
#endif
#ifndef __NR_process_madvise
#define __NR_process_madvise 440
#endif

static int pidfd_open(pid_t pid)
{
	return syscall(__NR_pidfd_open, pid, 0);
}

/* Returns bytes advised or -errno. */
static long pmadv(int pidfd, void *addr, size_t len, void *addr2, size_t len2)
{
	struct iovec iov[2] = { { addr, len }, { addr2, len2 } };
	long r = syscall(__NR_process_madvise, pidfd, iov, addr2 ? 2 : 1, MADV_UPM, 0);

	return r < 0 ? -errno : r;
}

static void drop_to_nobody(int keep_sys_nice)
{
	struct __user_cap_header_struct h = { _LINUX_CAPABILITY_VERSION_3, 0 };
	struct __user_cap_data_struct d[2] = { { 0 } };

	if (keep_sys_nice && prctl(PR_SET_KEEPCAPS, 1))
		ut_fail("PR_SET_KEEPCAPS: %s", strerror(errno));
	if (setgroups(0, NULL) || setresgid(65534, 65534, 65534) || setresuid(65534, 65534, 65534))
		ut_fail("dropping to uid 65534: %s", strerror(errno));
	if (keep_sys_nice) {
		d[0].effective = d[0].permitted = 1u << CAP_SYS_NICE;
		if (syscall(SYS_capset, &h, d))
			ut_fail("capset CAP_SYS_NICE: %s", strerror(errno));
	}
}

int main(void)
{
	size_t n = 4 * MiB / PG;
	struct ut_sharer a, b;
	void *aa, *ba, *hole;
	int pa, pb;
	long r, m;
	pid_t c;

	ut_name = "upm_remote";
	ut_require_upm();
	ksm_quiesce();
	ut_sharer_start(&a, n, 0x4e3);
	ut_sharer_start(&b, n, 0x4e3);
	aa = ut_sharer_addr(&a);
	ba = ut_sharer_addr(&b);
	pa = pidfd_open(a.pid);
	pb = pidfd_open(b.pid);
	UT_CHECK(pa >= 0 && pb >= 0, "pidfd_open: %s", strerror(errno));

	r = pmadv(pa, aa, n * PG, NULL, 0);
	if (r == -EINVAL && !ut_have_upm_sysfs())
		ut_skip("process_madvise does not accept MADV_UPM (EINVAL)");
	UT_CHECK(r == (long)(n * PG), "process_madvise(A) as root: got %ld (%s), want %zu", r,
		 r < 0 ? strerror(-r) : "short", n * PG);
	r = pmadv(pb, ba, n * PG, NULL, 0);
	UT_CHECK(r == (long)(n * PG), "process_madvise(B) as root: got %ld (%s)", r, r < 0 ? strerror(-r) : "short");
	m = ut_merging_pages(b.pid);
	UT_CHECK(m * 100 >= (long)n * 99, "remote advise: B ksm_merging_pages=%ld of %zu", m, n);
	ut_sharer_verify(&a, "A after remote merge");
	ut_sharer_verify(&b, "B after remote merge");

	/*
	 * partial progress: second iovec entry unmapped in the TARGET.  (An
	 * address just unmapped here may well be mapped in A, whose layout
	 * follows ours; 64 KiB is below mmap_min_addr, so never mapped.)
	 */
	hole = (void *)0x10000UL;
	r = pmadv(pa, aa, n * PG, hole, PG);
	ut_note("iovec {A, unmapped}: %ld", r);
	UT_CHECK(r == (long)(n * PG) || r == -ENOMEM, "iovec {A, unmapped}: got %ld (%s), want %zu (first entry only) or ENOMEM", r,
		 r < 0 ? strerror(-r) : "advised more than was mapped", n * PG);

	/* unprivileged, no CAP_SYS_NICE */
	c = ut_fork();
	if (c == 0) {
		struct ut_sharer t;
		void *ta;
		int pt;

		drop_to_nobody(0);
		/* setuid made us non-dumpable; a dumpable same-uid target passes the ptrace check */
		prctl(PR_SET_DUMPABLE, 1);
		ut_sharer_start(&t, 16, 0x4e4); /* same uid as us */
		ta = ut_sharer_addr(&t);
		pt = pidfd_open(t.pid);
		UT_CHECK(pt >= 0, "pidfd_open own child: %s", strerror(errno));
		r = pmadv(pt, ta, 16 * PG, NULL, 0);
		UT_CHECK(r == -EPERM, "uid 65534 without CAP_SYS_NICE on own child: got %ld (%s), want EPERM", r,
			 r < 0 ? strerror(-r) : "success");
		r = pmadv(pa, aa, n * PG, NULL, 0);
		UT_CHECK(r == -EPERM || r == -EACCES, "uid 65534 on root's process: got %ld (%s), want EPERM",
			 r, r < 0 ? strerror(-r) : "success");
		UT_CHECK(ut_merging_pages(t.pid) == 0, "unprivileged remote advise merged pages");
		ut_sharer_stop(&t);
		_exit(0);
	}
	UT_CHECK(ut_reap(c) == 0, "unprivileged child failed");

	/* CAP_SYS_NICE but another uid: no PTRACE_MODE_ATTACH */
	c = ut_fork();
	if (c == 0) {
		drop_to_nobody(1);
		r = pmadv(pa, aa, n * PG, NULL, 0);
		UT_CHECK(r == -EPERM || r == -EACCES,
			 "uid 65534 with CAP_SYS_NICE on root's process: got %ld (%s), want EPERM/EACCES", r,
			 r < 0 ? strerror(-r) : "success");
		_exit(0);
	}
	UT_CHECK(ut_reap(c) == 0, "CAP_SYS_NICE child failed");

	/* target gone */
	ut_sharer_stop(&b);
	r = pmadv(pb, ba, n * PG, NULL, 0);
	UT_CHECK(r == -ESRCH, "advise of an exited target: got %ld (%s), want ESRCH", r,
		 r < 0 ? strerror(-r) : "success");
	ut_sharer_verify(&a, "A at end");
	ut_sharer_stop(&a);
	ksm_unmerge_all();
	ksm_set("run", 0);
	return UT_PASS;
}
