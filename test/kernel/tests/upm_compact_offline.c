// SPDX-License-Identifier: GPL-2.0
/*
 * upm_compact_offline -- compaction and MADV_SOFT_OFFLINE of merged pages
 * with ksmd stopped (run=0).
 *
 * One process merges two identical 2 MiB regions R1/R2 with MADV_UPM (each
 * ksm page mapped twice).
 * 1. /proc/sys/vm/compact_memory: data intact; every ksm mapping (pagemap +
 *    kpageflags) counted in ksm_merging_pages, also after a reconciling
 *    MADV_UPM elsewhere; R1 and R2 still map the same pages.
 * 2. MADV_SOFT_OFFLINE of 16 merged pages of R1: each moves to a new page
 *    (both mappings follow it: rmap_walk_ksm found them), stays a ksm page,
 *    keeps its data, and the counters stay consistent.
 */
#include "upmtest.h"

#ifndef MADV_SOFT_OFFLINE
#define MADV_SOFT_OFFLINE 101
#endif

#define NPAGES 512
#define NOFF 16

static char *r1, *r2, *one;
static size_t n = NPAGES;

static void check(const char *what)
{
	size_t ksm = 0, apart = 0;
	long m;

	for (size_t i = 0; i < n; i++) {
		uint64_t p1 = ut_pfn(r1 + i * PG), p2 = ut_pfn(r2 + i * PG);

		ksm += p1 && ut_kpageflag(p1, KPF_KSM) == 1;
		ksm += p2 && ut_kpageflag(p2, KPF_KSM) == 1;
		apart += p1 != p2;
	}
	UT_CHECK(region_bad(r1, n, 0xc0) == 0 && region_bad(r2, n, 0xc0) == 0, "%s: data lost", what);
	m = ut_merging_pages(0);
	UT_CHECK(m == (long)ksm, "%s: %zu ksm mappings but ksm_merging_pages=%ld", what, ksm, m);
	UT_CHECK(upm_advise(one, PG) == 0, "%s: advise elsewhere failed", what);
	m = ut_merging_pages(0);
	UT_CHECK(m == (long)ksm, "%s: %zu ksm mappings but ksm_merging_pages=%ld after a reconcile", what,
		 ksm, m);
	UT_CHECK(ksm >= 2 * n * 99 / 100 && apart <= n / 100, "%s: %zu ksm mappings, %zu pages of R1/R2 apart",
		 what, ksm, apart);
}

int main(void)
{
	uint64_t before[NOFF];
	size_t moved = 0;
	int rc;

	ut_name = "upm_compact_offline";
	ut_require_upm();
	ksm_quiesce();
	if (ut_pfn(&n) == 0)
		ut_skip("pagemap shows no PFNs (not root?)");
	r1 = ut_map_anon(n * PG);
	r2 = ut_map_anon(n * PG);
	one = ut_map_anon(PG);
	region_fill(r1, n, 0xc0);
	region_fill(r2, n, 0xc0);
	page_fill(one, 0xc1, 0);
	UT_CHECK(upm_advise(r1, n * PG) == 0, "advise R1 failed");
	UT_CHECK(upm_advise(r2, n * PG) == 0, "advise R2 failed");
	check("after the merge");

	/* 1. compaction */
	if (access("/proc/sys/vm/compact_memory", W_OK) == 0) {
		uint64_t p0 = ut_pfn(r1);

		ut_must_write("/proc/sys/vm/compact_memory", "1");
		check("after compaction");
		ut_note("compaction: R1[0] pfn %#llx -> %#llx", (unsigned long long)p0,
			(unsigned long long)ut_pfn(r1));
	} else {
		ut_note("no /proc/sys/vm/compact_memory: compaction part skipped");
	}

	/* 2. soft offline */
	for (int i = 0; i < NOFF; i++)
		before[i] = ut_pfn(r1 + i * 8 * PG);
	for (int i = 0; i < NOFF; i++) {
		rc = madvise(r1 + i * 8 * PG, PG, MADV_SOFT_OFFLINE) ? errno : 0;
		if (rc == EINVAL && i == 0)
			ut_skip("MADV_SOFT_OFFLINE: EINVAL (no CONFIG_MEMORY_FAILURE?)");
		UT_CHECK(rc == 0, "MADV_SOFT_OFFLINE of merged page %d: %s", i, strerror(rc));
	}
	for (int i = 0; i < NOFF; i++) {
		uint64_t p1 = ut_pfn(r1 + i * 8 * PG), p2 = ut_pfn(r2 + i * 8 * PG);

		moved += p1 != before[i];
		UT_CHECK(p1 == p2 && ut_kpageflag(p1, KPF_KSM) == 1,
			 "soft-offlined merged page %d: R1 pfn %#llx, R2 pfn %#llx, ksm %d", i,
			 (unsigned long long)p1, (unsigned long long)p2, ut_kpageflag(p1, KPF_KSM));
	}
	ut_note("MADV_SOFT_OFFLINE: %zu of %d merged pages moved to a new page", moved, NOFF);
	UT_CHECK(moved == NOFF, "only %zu of %d soft-offlined merged pages moved", moved, NOFF);
	check("after soft offline");
	return UT_PASS;
}
