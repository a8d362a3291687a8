// SPDX-License-Identifier: GPL-2.0
/*
 * upm_index_limits -- issue #15 defect 5c (and 7c): one domain cannot fill
 * the candidate index for all, and the hash table's size is shown.
 *
 * With /sys/kernel/mm/upm/max_candidates_per_domain = 256: A, in cgroup
 * upmL1, advises 1024 distinct pages: at most 256 become candidates, the
 * rest count in index_full.  B, in upmL2, then advises 256 distinct pages:
 * all 256 are remembered (the global limit is far), and C in upmL2 with
 * B's data merges >= 99%.  hash_table_bytes is > 0 and <= index_bytes.
 */
#include "upmtest.h"

int main(void)
{
	struct ut_sharer a, b, c;
	long c0, f0, c1, f1, c2, m, h;
	char old[32], oldmode[32] = "";

	ut_name = "upm_index_limits";
	ut_require_upm();
	if (access(UT_CG "/cgroup.procs", W_OK))
		ut_skip("cgroup v2 not mounted at " UT_CG);
	UT_CHECK(ut_read_str(UPM_DIR "/max_candidates_per_domain", old, sizeof(old)) == 0,
		 "no " UPM_DIR "/max_candidates_per_domain: one domain can fill the index for all");
	if (ut_read_str(UPM_DIR "/domain_mode", oldmode, sizeof(oldmode)) == 0)
		upm_set("domain_mode", "memcg");
	ksm_quiesce();
	UT_CHECK(upm_set("max_candidates_per_domain", "256") == 0, "set max_candidates_per_domain");
	UT_CHECK(upm_get("max_candidates") > 2048, "max_candidates too low for this test");

	ut_sharer_start(&a, 1024, 0x1d1);
	ut_cg_move("upmL1", a.pid);
	c0 = upm_get("candidates");
	f0 = upm_get("index_full");
	UT_CHECK(ut_sharer_send(&a, SH_ADVISE) == 0, "advise A failed");
	c1 = upm_get("candidates");
	f1 = upm_get("index_full");
	ut_note("A (1024 distinct pages): candidates +%ld, index_full +%ld", c1 - c0, f1 - f0);
	UT_CHECK(c1 - c0 <= 256, "A alone holds %ld candidates, above max_candidates_per_domain 256", c1 - c0);
	UT_CHECK(f1 - f0 >= 768, "index_full grew by %ld only, want >= 768", f1 - f0);

	ut_sharer_start(&b, 256, 0x1d2);
	ut_sharer_start(&c, 256, 0x1d2);
	ut_cg_move("upmL2", b.pid);
	ut_cg_move("upmL2", c.pid);
	UT_CHECK(ut_sharer_send(&b, SH_ADVISE) == 0, "advise B failed");
	c2 = upm_get("candidates");
	UT_CHECK(c2 - c1 == 256, "B in another domain got %ld of 256 candidates", c2 - c1);
	UT_CHECK(ut_sharer_send(&c, SH_ADVISE) == 0, "advise C failed");
	m = ut_sharer_send(&c, SH_MERGING);
	UT_CHECK(m * 100 >= 256 * 99, "C merged only %ld of 256 with B", m);
	ut_note("B (other domain): 256 candidates; C merged %ld", m);

	h = upm_get("hash_table_bytes");
	UT_CHECK(h > 0, "no hash_table_bytes statistic (%ld)", h);
	UT_CHECK(h <= upm_get("index_bytes"), "hash_table_bytes %ld > index_bytes %ld", h, upm_get("index_bytes"));
	ut_note("hash_table_bytes %ld, index_bytes %ld", h, upm_get("index_bytes"));

	ut_sharer_stop(&a);
	ut_sharer_stop(&b);
	ut_sharer_stop(&c);
	upm_set("max_candidates_per_domain", old);
	if (oldmode[0])
		upm_set("domain_mode", oldmode);
	ksm_unmerge_all();
	ksm_set("run", 0);
	usleep(100000);
	rmdir(UT_CG "/upmL1");
	rmdir(UT_CG "/upmL2");
	return UT_PASS;
}
