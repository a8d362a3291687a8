// SPDX-License-Identifier: GPL-2.0
/*
 * upm_domain0 -- issue #15 defect 6b: domain 0 never mixes UPM advisers
 * with plain MADV_MERGEABLE users (the content oracle).
 *
 * In the root memory cgroup, in domain_mode memcg and then global: A and B
 * advise identical data with MADV_UPM (B merges >= 99% at once); P, a plain
 * MADV_MERGEABLE process with the same data, is scanned by ksmd for 3 full
 * scans: P's /proc/PID/ksm_merging_pages must stay 0 (its pages are all
 * different from each other), and A, B stay merged.  With share_with_ksm=1
 * (the opt-in to mix, when present) such a P merges with a UPM adviser.
 */
#include "upmtest.h"

static void round_(const char *mode, uint64_t seed)
{
	size_t n = 512;
	struct ut_sharer a, b, p;
	long m;

	ksm_quiesce();
	if (mode)
		UT_CHECK(upm_set("domain_mode", mode) == 0, "cannot set domain_mode=%s", mode);
	ut_sharer_start(&a, n, seed);
	ut_sharer_start(&b, n, seed);
	ut_sharer_start(&p, n, seed);
	UT_CHECK(ut_sharer_send(&a, SH_ADVISE) == 0, "advise A failed");
	UT_CHECK(ut_sharer_send(&b, SH_ADVISE) == 0, "advise B failed");
	m = ut_sharer_send(&b, SH_MERGING);
	UT_CHECK(m * 100 >= (long)n * 99, "%s: two UPM advisers in the root cgroup merged only %ld of %zu",
		 mode ? mode : "default", m, n);
	UT_CHECK(ut_sharer_send(&p, SH_MERGEABLE) == 0, "MADV_MERGEABLE P failed");
	ksm_set("pages_to_scan", 2000);
	ksm_set("sleep_millisecs", 10);
	ksm_set("run", 1);
	ut_wait_full_scans(3, 120);
	m = ut_sharer_send(&p, SH_MERGING);
	UT_CHECK(m == 0, "%s: plain MADV_MERGEABLE process P merged %ld of %zu pages with the UPM advisers "
		 "(domain 0 mixes them: a content oracle on every KSM user)", mode ? mode : "default", m, n);
	m = ut_sharer_send(&a, SH_MERGING);
	UT_CHECK(m * 100 >= (long)n * 99, "A has only %ld of %zu merged after ksmd ran", m, n);
	ut_note("%s: A/B merged, plain P merged 0 after 3 full scans", mode ? mode : "memcg");
	ut_sharer_verify(&a, "A");
	ut_sharer_verify(&b, "B");
	ut_sharer_verify(&p, "P");
	ut_sharer_stop(&a);
	ut_sharer_stop(&b);
	ut_sharer_stop(&p);
	ksm_set("run", 0);
}

int main(void)
{
	char old[32] = "";
	struct ut_sharer a, p;
	size_t n = 256;
	long m;

	ut_name = "upm_domain0";
	/*
	 * No probing MADV_UPM here: the domain of an adviser is inherited by
	 * fork, and this process and its plain children must stay plain KSM
	 * users (domain 0).
	 */
	if (!ut_have_upm_sysfs())
		ut_skip("kernel has no " UPM_DIR);
	ut_cg_move("", getpid());
	if (ut_read_str(UPM_DIR "/domain_mode", old, sizeof(old)))
		old[0] = 0;
	round_(old[0] ? "memcg" : NULL, 0xd00);
	if (old[0])
		round_("global", 0xd01);
	if (upm_get("share_with_ksm") >= 0) {
		ksm_quiesce();
		UT_CHECK(upm_set("share_with_ksm", "1") == 0, "cannot set share_with_ksm=1");
		ut_sharer_start(&a, n, 0xd02);
		ut_sharer_start(&p, n, 0xd02);
		UT_CHECK(ut_sharer_send(&a, SH_ADVISE) == 0, "advise A failed");
		UT_CHECK(ut_sharer_send(&p, SH_MERGEABLE) == 0, "MADV_MERGEABLE P failed");
		ksm_set("pages_to_scan", 2000);
		ksm_set("sleep_millisecs", 10);
		ksm_set("run", 1);
		ut_wait_full_scans(3, 120);
		m = ut_sharer_send(&p, SH_MERGING);
		upm_set("share_with_ksm", "0");
		UT_CHECK(m * 100 >= (long)n * 99, "share_with_ksm=1: plain P merged only %ld of %zu", m, n);
		ut_note("share_with_ksm=1: plain P merged %ld of %zu with the UPM adviser", m, n);
		ut_sharer_stop(&a);
		ut_sharer_stop(&p);
	}
	if (old[0])
		upm_set("domain_mode", old);
	ksm_unmerge_all();
	ksm_set("run", 0);
	return UT_PASS;
}
