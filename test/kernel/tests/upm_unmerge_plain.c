// SPDX-License-Identifier: GPL-2.0
/*
 * upm_unmerge_plain -- issue #15 defect 4: MADV_UNMERGEABLE of a process
 * that never used MADV_UPM does not take ksm_thread_mutex.
 *
 * ksmd scans 16384 distinct mergeable pages in batches of 100000 pages
 * without sleeping, so it holds ksm_thread_mutex almost all the time.  A
 * plain KSM process (MADV_MERGEABLE only) then makes one page mergeable
 * and unmergeable again, 5 times: each MADV_UNMERGEABLE must return within
 * 0.2 s (upstream KSM takes no global lock there).
 */
#include "upmtest.h"

int main(void)
{
	struct ut_sharer big;
	double worst = 0;
	char *p;

	ut_name = "upm_unmerge_plain";
	/*
	 * No probing MADV_UPM here: the domain of an adviser is inherited by
	 * fork, and this process and its plain children must stay plain KSM
	 * users (domain 0).
	 */
	if (!ut_have_upm_sysfs())
		ut_skip("kernel has no " UPM_DIR);
	ksm_quiesce();
	ut_sharer_start(&big, 16384, 0x4e0);
	UT_CHECK(ut_sharer_send(&big, SH_MERGEABLE) == 0, "MADV_MERGEABLE of the big region failed");
	ksm_set("pages_to_scan", 100000);
	ksm_set("sleep_millisecs", 0);
	ksm_set("run", 1);
	ut_wait_full_scans(1, 120);
	p = ut_map_anon(PG);
	for (int i = 0; i < 5; i++) {
		double t0, dt;

		memset(p, i + 1, PG);
		UT_CHECK(ksm_advise(p, PG, MADV_MERGEABLE) == 0, "MADV_MERGEABLE failed");
		usleep(100000);
		t0 = ut_now();
		UT_CHECK(ksm_advise(p, PG, MADV_UNMERGEABLE) == 0, "MADV_UNMERGEABLE failed");
		dt = ut_now() - t0;
		if (dt > worst)
			worst = dt;
	}
	ksm_set("run", 0);
	ut_note("MADV_UNMERGEABLE of a plain KSM process while ksmd scans: worst %.3f s", worst);
	UT_CHECK(worst < 0.2, "MADV_UNMERGEABLE of a process that never used MADV_UPM took %.2f s "
		 "(it waited for ksm_thread_mutex)", worst);
	ut_sharer_stop(&big);
	ksm_set("sleep_millisecs", 20);
	ksm_set("pages_to_scan", 100);
	return UT_PASS;
}
