// SPDX-License-Identifier: GPL-2.0
/*
 * upm_exit -- a sharer exits; with ksmd stopped (run=0) its state is reaped.
 *
 * A and B merge 8 MiB; B exits.  A keeps its data and pages_sharing must
 * drop by >= 99% of B's pages within 10 s.  Then 20 small advised processes
 * exit together with A: pages_shared and pages_sharing must return to 0
 * within 10 s (exits under run=0 are reaped, nothing leaks in the counters).
 */
#include "upmtest.h"

#define NSMALL 20

static void wait_counters(long max_sharing, long max_shared, const char *what)
{
	double t0 = ut_now();

	while ((ksm_get("pages_sharing") > max_sharing || ksm_get("pages_shared") > max_shared) &&
	       ut_now() - t0 < 10 * ut_scale())
		usleep(50000);
	UT_CHECK(ksm_get("pages_sharing") <= max_sharing && ksm_get("pages_shared") <= max_shared,
		 "%s: pages_sharing=%ld (want <= %ld) pages_shared=%ld (want <= %ld) after the wait", what,
		 ksm_get("pages_sharing"), max_sharing, ksm_get("pages_shared"), max_shared);
}

int main(void)
{
	size_t n = 8 * MiB / PG;
	struct ut_sharer a, b, s[NSMALL];
	long sharing0, m;
	int i;

	ut_name = "upm_exit";
	ut_require_upm();
	ksm_quiesce();
	ut_sharer_start(&a, n, 0xe1);
	ut_sharer_start(&b, n, 0xe1);
	UT_CHECK(ut_sharer_send(&a, SH_ADVISE) == 0, "advise A failed");
	UT_CHECK(ut_sharer_send(&b, SH_ADVISE) == 0, "advise B failed");
	m = ut_sharer_send(&b, SH_MERGING);
	UT_CHECK(m * 100 >= (long)n * 99, "merge: B ksm_merging_pages=%ld of %zu", m, n);
	sharing0 = ksm_get("pages_sharing");
	UT_CHECK(ut_sharer_stop(&b) == 0, "B did not exit cleanly");
	ut_sharer_verify(&a, "A after B exited");
	wait_counters(sharing0 - (long)n * 99 / 100, (long)n, "after B exited");
	ut_note("pages_sharing %ld -> %ld after B exited", sharing0, ksm_get("pages_sharing"));

	for (i = 0; i < NSMALL; i++) {
		ut_sharer_start(&s[i], 64, 0xe2);
		UT_CHECK(ut_sharer_send(&s[i], SH_ADVISE) == 0, "advise small %d failed", i);
	}
	m = ut_sharer_send(&s[NSMALL - 1], SH_MERGING);
	UT_CHECK(m >= 63, "small sharer: ksm_merging_pages=%ld of 64", m);
	for (i = 0; i < NSMALL; i++)
		UT_CHECK(ut_sharer_stop(&s[i]) == 0, "small sharer %d did not exit cleanly", i);
	ut_sharer_verify(&a, "A at end");
	UT_CHECK(ut_sharer_stop(&a) == 0, "A did not exit cleanly");
	wait_counters(0, 0, "after every sharer exited (run=0)");
	return UT_PASS;
}
