// SPDX-License-Identifier: GPL-2.0
/*
 * upm_thp -- MADV_UPM on transparent huge pages (adversarial test 7, basic).
 *
 * A. Two processes each hold an 8 MiB MADV_HUGEPAGE region (2 MiB aligned)
 *    with page-distinct content identical across them; after both advise,
 *    the second has >= 99% merged (THPs are split as needed), data intact.
 * B. One process holds a 4 MiB MADV_HUGEPAGE region whose 4 KiB subpages
 *    are all identical: advising it merges >= 99% (pairs inside one THP),
 *    then one write COWs that page only.
 * The number of THPs actually obtained is reported (AnonHugePages).
 */
#include "upmtest.h"

#define HP (2 * MiB)

static char *map_thp(size_t len)
{
	char *raw = ut_map_anon(len + HP);
	char *p = (char *)(((uintptr_t)raw + HP - 1) & ~(HP - 1));

	if (madvise(p, len, MADV_HUGEPAGE))
		ut_fail("MADV_HUGEPAGE: %s", strerror(errno));
	return p;
}

static long anon_huge_kb(void)
{
	char line[256];
	long kb = 0, v;
	FILE *f = fopen("/proc/self/smaps_rollup", "r");

	if (!f)
		return -1;
	while (fgets(line, sizeof(line), f))
		if (sscanf(line, "AnonHugePages: %ld kB", &v) == 1)
			kb = v;
	fclose(f);
	return kb;
}

int main(void)
{
	size_t n = 8 * MiB / PG, nb = 4 * MiB / PG, i;
	const uint64_t seed = 0x7e9;
	struct ut_chan ready, go;
	char *p;
	pid_t c;
	long m, thp;

	ut_name = "upm_thp";
	if (access("/sys/kernel/mm/transparent_hugepage/enabled", R_OK))
		ut_skip("no /sys/kernel/mm/transparent_hugepage (CONFIG_TRANSPARENT_HUGEPAGE?)");
	ut_require_upm();
	ksm_quiesce();

	/* A */
	ut_chan_init(&ready);
	ut_chan_init(&go);
	c = ut_fork();
	if (c == 0) {
		p = map_thp(n * PG);
		region_fill(p, n, seed);
		ut_note("peer: AnonHugePages %ld kB before advise", anon_huge_kb());
		UT_CHECK(upm_advise(p, n * PG) == 0, "peer advise: %s", strerror(errno));
		ut_post(&ready, 1);
		ut_wait(&go);
		UT_CHECK(region_bad(p, n, seed) == 0, "peer data changed");
		_exit(0);
	}
	ut_wait(&ready);
	p = map_thp(n * PG);
	region_fill(p, n, seed);
	thp = anon_huge_kb();
	UT_CHECK(upm_advise(p, n * PG) == 0, "advise: %s", strerror(errno));
	m = ut_merging_pages(0);
	ut_note("A: AnonHugePages %ld kB before advise, %ld kB after; ksm_merging_pages=%ld of %zu", thp,
		anon_huge_kb(), m, n);
	UT_CHECK(m * 100 >= (long)n * 99, "A: ksm_merging_pages=%ld of %zu", m, n);
	UT_CHECK(region_bad(p, n, seed) == 0, "A: data changed");
	ut_post(&go, 1);
	UT_CHECK(ut_reap(c) == 0, "peer failed");
	munmap(p, n * PG);
	ksm_unmerge_all();
	ksm_set("run", 0);

	/* B: all subpages identical */
	p = map_thp(nb * PG);
	for (i = 0; i < nb; i++)
		page_fill(p + i * PG, seed, 0);
	thp = anon_huge_kb();
	UT_CHECK(upm_advise(p, nb * PG) == 0, "B advise: %s", strerror(errno));
	m = ut_merging_pages(0);
	ut_note("B: AnonHugePages %ld kB before; ksm_merging_pages=%ld of %zu", thp, m, nb);
	UT_CHECK(m * 100 >= (long)nb * 99, "B: ksm_merging_pages=%ld of %zu identical subpages", m, nb);
	page_fill(p + 5 * PG, seed + 1, 5);
	for (i = 0; i < nb; i++)
		UT_CHECK(page_check(p + i * PG, i == 5 ? seed + 1 : seed, i == 5 ? 5 : 0), "B: page %zu wrong", i);
	munmap(p, nb * PG);
	ksm_unmerge_all();
	ksm_set("run", 0);
	return UT_PASS;
}
