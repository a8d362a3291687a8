// SPDX-License-Identifier: GPL-2.0
/*
 * upm_mremap -- mremap of a UPM-merged range (adversarial test 5, basic).
 *
 * P merges 8 MiB with sharer A, then moves the range (MREMAP_MAYMOVE|FIXED):
 * data must be intact at the new address, and advising the new address
 * merges >= 99% again with ksm_merging_pages not exceeding the pages mapped.
 * Then MREMAP_DONTUNMAP: the new range keeps the data, the old one reads 0.
 */
#include "upmtest.h"

#ifndef MREMAP_DONTUNMAP
#define MREMAP_DONTUNMAP 4
#endif

int main(void)
{
	size_t n = 8 * MiB / PG, len = 8 * MiB, i;
	const uint64_t seed = 0x3e3;
	struct ut_sharer a;
	char *p, *dst, *q;
	long m;

	ut_name = "upm_mremap";
	ut_require_upm();
	ksm_quiesce();
	ut_sharer_start(&a, n, seed);
	UT_CHECK(ut_sharer_send(&a, SH_ADVISE) == 0, "advise A failed");
	p = ut_map_anon(len);
	region_fill(p, n, seed);
	UT_CHECK(upm_advise(p, len) == 0, "advise: %s", strerror(errno));
	m = ut_merging_pages(0);
	UT_CHECK(m * 100 >= (long)n * 99, "merge: ksm_merging_pages=%ld of %zu", m, n);

	dst = mmap(NULL, len, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	UT_CHECK(dst != MAP_FAILED, "reserve: %s", strerror(errno));
	q = mremap(p, len, len, MREMAP_MAYMOVE | MREMAP_FIXED, dst);
	UT_CHECK(q == dst, "mremap move: %s", strerror(errno));
	UT_CHECK(region_bad(q, n, seed) == 0, "content changed by mremap");
	ut_note("after move: ksm_merging_pages=%ld", ut_merging_pages(0));
	UT_CHECK(upm_advise(q, len) == 0, "advise at new address: %s", strerror(errno));
	m = ut_merging_pages(0);
	for (double t0 = ut_now(); m > (long)n && ut_now() - t0 < 5 * ut_scale(); m = ut_merging_pages(0))
		usleep(50000); /* allow deferred reconciliation */
	ut_note("after re-advise at new address: ksm_merging_pages=%ld of %zu", m, n);
	UT_CHECK(m * 100 >= (long)n * 99, "re-advise after move: ksm_merging_pages=%ld of %zu", m, n);
	UT_CHECK(m <= (long)n, "ksm_merging_pages=%ld exceeds the %zu pages mapped 5s after re-advise (rmap_items of the old range still counted)", m, n);
	UT_CHECK(region_bad(q, n, seed) == 0, "content changed by re-advise");

	/* DONTUNMAP: new range gets the pages, the old one stays mapped, empty */
	dst = mremap(q, len, len, MREMAP_MAYMOVE | MREMAP_DONTUNMAP);
	if (dst == MAP_FAILED) {
		ut_note("MREMAP_DONTUNMAP: %s (not checked)", strerror(errno));
	} else {
		UT_CHECK(region_bad(dst, n, seed) == 0, "content lost by MREMAP_DONTUNMAP");
		for (i = 0; i < n; i++)
			UT_CHECK(((uint64_t *)(q + i * PG))[2] == 0, "old range page %zu not empty", i);
		UT_CHECK(upm_advise(dst, len) == 0, "advise after DONTUNMAP: %s", strerror(errno));
		UT_CHECK(region_bad(dst, n, seed) == 0, "content changed after DONTUNMAP+advise");
	}
	ut_sharer_verify(&a, "A at end");
	ut_sharer_stop(&a);
	ksm_unmerge_all();
	ksm_set("run", 0);
	return UT_PASS;
}
