// SPDX-License-Identifier: GPL-2.0
/*
 * upm_unmerge -- MADV_UNMERGEABLE undoes a UPM merge.
 *
 * A and B merge 8 MiB (ksmd stopped).  B's MADV_UNMERGEABLE must succeed,
 * B's ksm_merging_pages must drop to 0 (within 5 s, allowing deferred
 * reconciliation) and both sides keep their data.  After A unmerges too,
 * pages_shared and pages_sharing must return to 0.
 */
#include "upmtest.h"

static long wait_merging(struct ut_sharer *s, long want_max)
{
	double t0 = ut_now();
	long m;

	while ((m = ut_sharer_send(s, SH_MERGING)) > want_max && ut_now() - t0 < 5 * ut_scale())
		usleep(20000);
	return m;
}

int main(void)
{
	size_t n = 8 * MiB / PG;
	struct ut_sharer a, b;
	double t0;
	long m;

	ut_name = "upm_unmerge";
	ut_require_upm();
	ksm_quiesce();
	ut_sharer_start(&a, n, 0x0de);
	ut_sharer_start(&b, n, 0x0de);
	UT_CHECK(ut_sharer_send(&a, SH_ADVISE) == 0, "advise A failed");
	UT_CHECK(ut_sharer_send(&b, SH_ADVISE) == 0, "advise B failed");
	m = ut_sharer_send(&b, SH_MERGING);
	UT_CHECK(m * 100 >= (long)n * 99, "merge: B ksm_merging_pages=%ld of %zu", m, n);

	UT_CHECK(ut_sharer_send(&b, SH_UNMERGE) == 0, "MADV_UNMERGEABLE in B failed");
	m = wait_merging(&b, 0);
	UT_CHECK(m == 0, "B ksm_merging_pages=%ld after MADV_UNMERGEABLE, want 0", m);
	ut_sharer_verify(&a, "A after B unmerged");
	ut_sharer_verify(&b, "B after unmerge");

	UT_CHECK(ut_sharer_send(&a, SH_UNMERGE) == 0, "MADV_UNMERGEABLE in A failed");
	m = wait_merging(&a, 0);
	UT_CHECK(m == 0, "A ksm_merging_pages=%ld after MADV_UNMERGEABLE, want 0", m);
	t0 = ut_now();
	while ((ksm_get("pages_shared") || ksm_get("pages_sharing")) && ut_now() - t0 < 5 * ut_scale())
		usleep(20000);
	UT_CHECK(!ksm_get("pages_shared") && !ksm_get("pages_sharing"),
		 "pages_shared=%ld pages_sharing=%ld after both unmerged, want 0", ksm_get("pages_shared"),
		 ksm_get("pages_sharing"));
	ut_sharer_verify(&a, "A after unmerge");
	ut_sharer_stop(&a);
	ut_sharer_stop(&b);
	return UT_PASS;
}
