// SPDX-License-Identifier: GPL-2.0
/*
 * upm_cow -- copy-on-write integrity of UPM-merged pages.
 *
 * A and B merge 8 MiB.  A rewrites its odd pages: A must see the new data,
 * B the old.  B then rewrites its odd pages with the same new data; both are
 * checked again, then both re-advise: B must be >= 99% merged again (the odd
 * pages now merge with A's new odd pages) and the data must still be intact.
 */
#include "upmtest.h"

int main(void)
{
	size_t n = 8 * MiB / PG;
	struct ut_sharer a, b;
	long m;

	ut_name = "upm_cow";
	ut_require_upm();
	ksm_quiesce();
	ut_sharer_start(&a, n, 0xc0e);
	ut_sharer_start(&b, n, 0xc0e);
	UT_CHECK(ut_sharer_send(&a, SH_ADVISE) == 0, "advise A failed");
	UT_CHECK(ut_sharer_send(&b, SH_ADVISE) == 0, "advise B failed");
	m = ut_sharer_send(&b, SH_MERGING);
	UT_CHECK(m * 100 >= (long)n * 99, "initial merge: B ksm_merging_pages=%ld of %zu", m, n);

	ut_sharer_send(&a, SH_WRITE_ODD);	/* A: odd pages -> seed+1 (COW) */
	ut_sharer_verify(&a, "A after A's writes");
	ut_sharer_verify(&b, "B after A's writes");
	ut_sharer_send(&b, SH_WRITE_ODD);
	ut_sharer_verify(&a, "A after B's writes");
	ut_sharer_verify(&b, "B after B's writes");

	UT_CHECK(ut_sharer_send(&a, SH_ADVISE) == 0, "re-advise A failed");
	UT_CHECK(ut_sharer_send(&b, SH_ADVISE) == 0, "re-advise B failed");
	m = ut_sharer_send(&b, SH_MERGING);
	ut_note("after COW and re-advise: B ksm_merging_pages=%ld of %zu", m, n);
	UT_CHECK(m * 100 >= (long)n * 99, "re-merge after COW: B ksm_merging_pages=%ld of %zu", m, n);
	UT_CHECK(m <= (long)n, "B ksm_merging_pages=%ld exceeds its %zu pages (stale counter)", m, n);
	ut_sharer_verify(&a, "A after re-merge");
	ut_sharer_verify(&b, "B after re-merge");
	ut_sharer_stop(&a);
	ut_sharer_stop(&b);
	ksm_unmerge_all();
	ksm_set("run", 0);
	return UT_PASS;
}
