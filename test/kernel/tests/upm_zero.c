// SPDX-License-Identifier: GPL-2.0
/*
 * upm_zero -- zero-filled pages (adversarial test 8).
 *
 * use_zero_pages=0: 8 MiB of written zero pages in one process merge into
 *   KSM pages (>= 99% counted; chains of max_page_sharing), stay zero, and a
 *   write COWs one page only.
 * use_zero_pages=1: 8 MiB of written zero pages are replaced by the shared
 *   zero page (checked through pagemap: >= 99% map the zero PFN), stay zero,
 *   and writes work.
 * Untouched and read-faulted (zero-page) ranges: advise returns 0 and
 *   merges nothing.
 */
#include "upmtest.h"

static int all_zero(const char *p, size_t n, size_t except, uint64_t val)
{
	for (size_t i = 0; i < n; i++) {
		const uint64_t *w = (const uint64_t *)(p + i * PG);

		for (size_t j = 0; j < PG / 8; j++)
			if (w[j] != (i == except && j == 0 ? val : 0))
				return 0;
	}
	return 1;
}

int main(void)
{
	size_t n = 8 * MiB / PG, i, onzero = 0;
	uint64_t zpfn;
	volatile char sink;
	char *p;
	long m;

	ut_name = "upm_zero";
	ut_require_upm();
	ksm_quiesce();

	/* use_zero_pages=0 */
	p = ut_map_anon(n * PG);
	for (i = 0; i < n; i++)
		memset(p + i * PG, 0, PG); /* real, written zero pages */
	UT_CHECK(upm_advise(p, n * PG) == 0, "advise (use_zero_pages=0): %s", strerror(errno));
	m = ut_merging_pages(0);
	ut_note("use_zero_pages=0: ksm_merging_pages=%ld of %zu, pages_shared=%ld (max_page_sharing=%ld)", m,
		n, ksm_get("pages_shared"), ksm_get("max_page_sharing"));
	UT_CHECK(m * 100 >= (long)n * 99, "use_zero_pages=0: ksm_merging_pages=%ld of %zu", m, n);
	UT_CHECK(all_zero(p, n, -1, 0), "use_zero_pages=0: data not zero after merge");
	*(uint64_t *)(p + 3 * PG) = 42;
	UT_CHECK(all_zero(p, n, 3, 42), "use_zero_pages=0: write did not COW one page only");
	munmap(p, n * PG);
	ksm_unmerge_all();

	/* use_zero_pages=1 */
	ksm_set("run", 0);
	ksm_set("use_zero_pages", 1);
	p = ut_map_anon((n + 1) * PG);
	sink = p[n * PG]; /* read fault: maps the shared zero page */
	(void)sink;
	zpfn = ut_pfn(p + n * PG);
	for (i = 0; i < n; i++)
		memset(p + i * PG, 0, PG);
	UT_CHECK(upm_advise(p, n * PG) == 0, "advise (use_zero_pages=1): %s", strerror(errno));
	for (i = 0; i < n; i++)
		onzero += zpfn && ut_pfn(p + i * PG) == zpfn;
	ut_note("use_zero_pages=1: %zu of %zu pages map the zero page (pfn %#llx)", onzero, n,
		(unsigned long long)zpfn);
	UT_CHECK(zpfn != 0, "cannot read the zero page's PFN from pagemap");
	UT_CHECK(onzero * 100 >= n * 99, "use_zero_pages=1: only %zu of %zu pages became the zero page",
		 onzero, n);
	UT_CHECK(all_zero(p, n, -1, 0), "use_zero_pages=1: data not zero");
	*(uint64_t *)(p + 7 * PG) = 43;
	UT_CHECK(all_zero(p, n, 7, 43), "use_zero_pages=1: write after zero-page merge wrong");
	munmap(p, (n + 1) * PG);
	ksm_unmerge_all(); /* start the last part with clean counters */
	ksm_set("run", 0);
	ksm_set("use_zero_pages", 0);

	/* untouched and read-faulted ranges */
	p = ut_map_anon(n * PG);
	UT_CHECK(upm_advise(p, n / 2 * PG) == 0, "advise untouched: %s", strerror(errno));
	for (i = n / 2; i < n; i++)
		sink = p[i * PG];
	UT_CHECK(upm_advise(p, n * PG) == 0, "advise read-faulted: %s", strerror(errno));
	m = ut_merging_pages(0);
	UT_CHECK(m == 0, "untouched/zero-page range: ksm_merging_pages=%ld, want 0", m);
	UT_CHECK(all_zero(p, n, -1, 0), "untouched range not zero");
	munmap(p, n * PG);
	ksm_unmerge_all();
	ksm_set("run", 0);
	return UT_PASS;
}
