// SPDX-License-Identifier: GPL-2.0
/*
 * upm_inval -- argument checking (adversarial test 10).
 *
 *   unaligned start            -> EINVAL
 *   zero length                -> 0
 *   start + len wraps around   -> EINVAL
 *   fully unmapped range       -> ENOMEM
 *   range with a hole          -> ENOMEM, the mapped part is still merged
 *   kernel address             -> EINVAL or ENOMEM
 *   mlocked range              -> 0, data intact, still mlocked
 */
#include "upmtest.h"

static int adv(void *a, size_t l)
{
	return madvise(a, l, MADV_UPM) ? errno : 0;
}

int main(void)
{
	size_t n = 64;
	struct ut_sharer s;
	char *p, *q;
	int e;
	long m;

	ut_name = "upm_inval";
	ut_require_upm();
	ksm_quiesce();
	p = ut_map_anon(n * PG);
	region_fill(p, n, 0x1a);

	UT_CHECK((e = adv(p + 1, PG)) == EINVAL, "unaligned start: got %s, want EINVAL", strerror(e));
	UT_CHECK((e = adv(p, 0)) == 0, "zero length: got %s, want 0", strerror(e));
	UT_CHECK((e = adv(p, (size_t)0 - (uintptr_t)p + PG)) == EINVAL, "wrap-around: got %s, want EINVAL",
		 strerror(e));
	q = ut_map_anon(n * PG);
	munmap(q, n * PG);
	UT_CHECK((e = adv(q, n * PG)) == ENOMEM, "unmapped: got %s, want ENOMEM", strerror(e));
	e = adv((void *)0xffff888000000000UL, PG);
	UT_CHECK(e == EINVAL || e == ENOMEM, "kernel address: got %s, want EINVAL or ENOMEM", strerror(e));

	/* a hole: [p, p+n) mapped, [p+n, p+2n) not; a sharer holds the same data */
	ut_sharer_start(&s, n, 0x1a);
	UT_CHECK(ut_sharer_send(&s, SH_ADVISE) == 0, "sharer advise failed");
	q = mmap(NULL, 2 * n * PG, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	UT_CHECK(q != MAP_FAILED, "mmap: %s", strerror(errno));
	munmap(q + n * PG, n * PG);
	region_fill(q, n, 0x1a);
	e = adv(q, 2 * n * PG);
	m = ut_merging_pages(0);
	ut_note("range with a hole: rc %s, ksm_merging_pages=%ld of %zu", strerror(e), m, n);
	UT_CHECK(e == ENOMEM, "range with a hole: got %s, want ENOMEM", strerror(e));
	UT_CHECK(m * 100 >= (long)n * 99, "range with a hole: mapped part not merged (%ld of %zu)", m, n);
	UT_CHECK(region_bad(q, n, 0x1a) == 0, "hole range data changed");
	munmap(q, n * PG);

	/* mlocked */
	UT_CHECK(mlock(p, n * PG) == 0, "mlock: %s", strerror(errno));
	UT_CHECK((e = adv(p, n * PG)) == 0, "mlocked range: got %s, want 0", strerror(e));
	UT_CHECK(region_bad(p, n, 0x1a) == 0, "mlocked range data changed");
	ut_note("mlocked range: ksm_merging_pages=%ld", ut_merging_pages(0));
	{
		char line[128];
		long kb = -1;
		FILE *f = fopen("/proc/self/status", "r");

		while (f && fgets(line, sizeof(line), f))
			sscanf(line, "VmLck: %ld kB", &kb);
		if (f)
			fclose(f);
		UT_CHECK(kb >= (long)(n * PG / 1024), "VmLck=%ld kB after advise, want >= %zu", kb, n * PG / 1024);
	}
	munlock(p, n * PG);
	ut_sharer_stop(&s);
	ksm_unmerge_all();
	ksm_set("run", 0);
	return UT_PASS;
}
