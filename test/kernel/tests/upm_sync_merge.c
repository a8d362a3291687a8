// SPDX-License-Identifier: GPL-2.0
/*
 * upm_sync_merge -- ACCEPTANCE TEST: MADV_UPM merges synchronously.
 *
 * With ksmd stopped (run=0), process A and process B each hold N MiB
 * (default 32) of page-distinct data, identical across A and B.  A advises
 * its range, then B advises.  The moment B's madvise returns, B's
 * /proc/self/ksm_merging_pages must be >= 99% of its pages, A's too, data
 * must be intact on both sides, and pages_shared + pages_sharing must equal
 * the sum of the two processes' ksm_merging_pages.
 * Usage: upm_sync_merge [MiB]
 */
#include "upmtest.h"

int main(int argc, char **argv)
{
	size_t mib = argc > 1 ? strtoul(argv[1], NULL, 0) : 32, n = mib * MiB / PG;
	struct ut_sharer a, b;
	long ma, mb, shared, sharing;
	double t0, t1, t2;
	int rc;

	ut_name = "upm_sync_merge";
	ut_require_upm();
	ksm_quiesce();
	UT_CHECK(ksm_get("run") == 0, "could not stop ksmd");

	ut_sharer_start(&a, n, 0xa11ce);
	ut_sharer_start(&b, n, 0xa11ce);

	t0 = ut_now();
	rc = ut_sharer_send(&a, SH_ADVISE);
	t1 = ut_now();
	UT_CHECK(rc == 0, "madvise(MADV_UPM) in A: %s", strerror(rc));
	ma = ut_sharer_send(&a, SH_MERGING);
	UT_CHECK(ma <= (long)n / 100, "A alone merged %ld pages of page-distinct data", ma);

	rc = ut_sharer_send(&b, SH_ADVISE);
	mb = ut_sharer_send(&b, SH_MERGING); /* read by B right after madvise returned */
	t2 = ut_now();
	UT_CHECK(rc == 0, "madvise(MADV_UPM) in B: %s", strerror(rc));
	ut_note("%zu pages/process; A advise %.3fs, B advise+read %.3fs; B ksm_merging_pages=%ld (%.1f%%)",
		n, t1 - t0, t2 - t1, mb, ut_pct(mb, n));
	UT_CHECK(mb * 100 >= (long)n * 99,
		 "B's ksm_merging_pages=%ld right after MADV_UPM returned, want >= 99%% of %zu", mb, n);
	ma = ut_sharer_send(&a, SH_MERGING);
	UT_CHECK(ma * 100 >= (long)n * 99, "A's ksm_merging_pages=%ld, want >= 99%% of %zu", ma, n);
	UT_CHECK(ksm_get("run") == 0, "ksmd was started behind our back");

	shared = ksm_get("pages_shared");
	sharing = ksm_get("pages_sharing");
	ut_note("pages_shared=%ld pages_sharing=%ld A=%ld B=%ld", shared, sharing, ma, mb);
	UT_CHECK(shared + sharing == ma + mb,
		 "pages_shared+pages_sharing=%ld != sum of ksm_merging_pages %ld", shared + sharing, ma + mb);

	ut_sharer_verify(&a, "after merge");
	ut_sharer_verify(&b, "after merge");
	ut_sharer_stop(&a);
	ut_sharer_stop(&b);
	ksm_unmerge_all();
	ksm_set("run", 0);
	return UT_PASS;
}
