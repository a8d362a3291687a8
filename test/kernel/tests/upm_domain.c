// SPDX-License-Identifier: GPL-2.0
/*
 * upm_domain -- sharing domains (adversarial test 12).
 *
 * Needs /sys/kernel/mm/upm/domain_mode (skips otherwise) and cgroup v2 at
 * /sys/fs/cgroup.  With domain_mode=memcg: A in cgroup upmA and B in
 * cgroup upmB hold identical data and advise -- B merges nothing; C, also
 * in upmA, advises the same data and merges >= 99% (with A).
 */
#include "upmtest.h"

#define CG "/sys/fs/cgroup"
#define MODE UPM_DIR "/domain_mode"

static void move_to(const char *cg, pid_t pid)
{
	char path[128], v[32];

	snprintf(path, sizeof(path), CG "/%s/cgroup.procs", cg);
	snprintf(v, sizeof(v), "%d", (int)pid);
	ut_must_write(path, v);
}

int main(void)
{
	size_t n = 4 * MiB / PG;
	char old[64];
	struct ut_sharer a, b, c;
	long m;

	ut_name = "upm_domain";
	ut_require_upm();
	if (access(MODE, W_OK))
		ut_skip("no writable " MODE);
	if (access(CG "/cgroup.procs", W_OK))
		ut_skip("cgroup v2 not mounted at " CG);
	ksm_quiesce();
	UT_CHECK(ut_read_str(MODE, old, sizeof(old)) == 0, "read " MODE);
	ut_write_str(CG "/cgroup.subtree_control", "+memory");
	mkdir(CG "/upmA", 0755);
	mkdir(CG "/upmB", 0755);
	ut_must_write(MODE, "memcg");

	ut_sharer_start(&a, n, 0xd0);
	ut_sharer_start(&b, n, 0xd0);
	ut_sharer_start(&c, n, 0xd0);
	move_to("upmA", a.pid);
	move_to("upmB", b.pid);
	move_to("upmA", c.pid);
	UT_CHECK(ut_sharer_send(&a, SH_ADVISE) == 0, "advise A failed");
	UT_CHECK(ut_sharer_send(&b, SH_ADVISE) == 0, "advise B failed");
	m = ut_sharer_send(&b, SH_MERGING);
	UT_CHECK(m * 100 <= (long)n, "B in another memcg merged %ld of %zu pages with A", m, n);
	UT_CHECK(ut_sharer_send(&c, SH_ADVISE) == 0, "advise C failed");
	m = ut_sharer_send(&c, SH_MERGING);
	UT_CHECK(m * 100 >= (long)n * 99, "C in A's memcg merged only %ld of %zu", m, n);
	ut_sharer_verify(&a, "A");
	ut_sharer_verify(&b, "B");
	ut_sharer_verify(&c, "C");
	ut_sharer_stop(&a);
	ut_sharer_stop(&b);
	ut_sharer_stop(&c);
	ut_write_str(MODE, old);
	ksm_unmerge_all();
	ksm_set("run", 0);
	usleep(100000);
	rmdir(CG "/upmA");
	rmdir(CG "/upmB");
	return UT_PASS;
}
