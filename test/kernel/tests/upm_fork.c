// SPDX-License-Identifier: GPL-2.0
/*
 * upm_fork -- fork() of a process with UPM-merged pages.
 *
 * The test process P merges 8 MiB with a sharer A.  A forked child C must
 * see P's data, its writes must stay private (COW), and after C advises,
 * its unwritten (still merged) pages must count in its ksm_merging_pages.
 * Then P writes while a second child D is alive: D must keep the old data.
 * Finally P's and A's data are checked.
 */
#include "upmtest.h"

int main(void)
{
	size_t n = 8 * MiB / PG, i;
	const uint64_t seed = 0xf0c;
	struct ut_chan go, done;
	struct ut_sharer a;
	char *p;
	pid_t c;
	long m;

	ut_name = "upm_fork";
	ut_require_upm();
	ksm_quiesce();
	ut_sharer_start(&a, n, seed);
	UT_CHECK(ut_sharer_send(&a, SH_ADVISE) == 0, "advise A failed");
	p = ut_map_anon(n * PG);
	region_fill(p, n, seed);
	UT_CHECK(upm_advise(p, n * PG) == 0, "advise P failed: %s", strerror(errno));
	m = ut_merging_pages(0);
	UT_CHECK(m * 100 >= (long)n * 99, "P ksm_merging_pages=%ld of %zu", m, n);

	/* child C: reads, writes odd pages, advises */
	c = ut_fork();
	if (c == 0) {
		size_t bad = region_bad(p, n, seed);

		UT_CHECK(bad == 0, "child sees %zu corrupt pages after fork", bad);
		for (i = 1; i < n; i += 2)
			page_fill(p + i * PG, seed + 7, i);
		for (i = 0; i < n; i++)
			UT_CHECK(page_check(p + i * PG, i & 1 ? seed + 7 : seed, i),
				 "child page %zu wrong after its own writes", i);
		UT_CHECK(upm_advise(p, n * PG) == 0, "advise in child failed: %s", strerror(errno));
		m = ut_merging_pages(0);
		ut_note("child ksm_merging_pages after advise: %ld (even pages %zu)", m, n / 2);
		UT_CHECK(m * 100 >= (long)(n / 2) * 99, "child ksm_merging_pages=%ld, want >= 99%% of %zu",
			 m, n / 2);
		_exit(0);
	}
	UT_CHECK(ut_reap(c) == 0, "child C failed");
	UT_CHECK(region_bad(p, n, seed) == 0, "parent data changed by child's writes");
	ut_sharer_verify(&a, "A after child C");

	/* child D keeps the old data while P writes */
	ut_chan_init(&go);
	ut_chan_init(&done);
	c = ut_fork();
	if (c == 0) {
		ut_wait(&go);
		UT_CHECK(region_bad(p, n, seed) == 0, "child D sees parent's post-fork writes");
		_exit(0);
	}
	for (i = 0; i < n; i += 2)
		page_fill(p + i * PG, seed + 9, i);
	ut_post(&go, 1);
	UT_CHECK(ut_reap(c) == 0, "child D failed");
	for (i = 0; i < n; i++)
		UT_CHECK(page_check(p + i * PG, i & 1 ? seed : seed + 9, i), "parent page %zu wrong", i);
	ut_sharer_verify(&a, "A at end");
	ut_sharer_stop(&a);
	munmap(p, n * PG);
	ksm_unmerge_all();
	ksm_set("run", 0);
	return UT_PASS;
}
