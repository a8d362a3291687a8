// SPDX-License-Identifier: GPL-2.0
/*
 * upm_numa -- MADV_UPM and merge_across_nodes (issue #15).
 *
 * The guest has two NUMA nodes.  Three regions of one process hold the same
 * NPAGES pages: A and C bound to node 0, B to node 1 (mbind MPOL_BIND
 * before the first touch).
 *
 * merge_across_nodes=0: ksm keeps one stable tree per node and never
 *   merges pages of different nodes.  After MADV_UPM of A, B and C, A and C
 *   are merged with each other (>= 99%), B's pages are not ksm pages, and
 *   every merged page of A and C is still on node 0 (move_pages() query).
 * merge_across_nodes=1 (the default): the same three regions all merge:
 *   ksm_merging_pages ~ 3 x NPAGES.
 * Data are checked after both, and after a write that breaks COW.
 */
#include "upmtest.h"

#define NPAGES 128
#define MPOL_BIND 2

static char *map_on_node(size_t len, int node)
{
	unsigned long mask = 1UL << node;
	char *p = ut_map_anon(len);

	if (syscall(SYS_mbind, p, len, MPOL_BIND, &mask, sizeof(mask) * 8 + 1, 0))
		ut_fail("mbind to node %d: %s", node, strerror(errno));
	return p;
}

/* How many of the n pages at p are on @node (move_pages() without nodes). */
static size_t pages_on_node(char *p, size_t n, int node)
{
	void *pages[NPAGES];
	int status[NPAGES];
	size_t on = 0;

	for (size_t i = 0; i < n; i++)
		pages[i] = p + i * PG;
	if (syscall(SYS_move_pages, 0, n, pages, NULL, status, 0))
		ut_fail("move_pages (query): %s", strerror(errno));
	for (size_t i = 0; i < n; i++)
		on += status[i] == node;
	return on;
}

static void restore_across(void)
{
	ksm_unmerge_all();
	ksm_set("run", 0);
	ut_write_str(KSM_DIR "merge_across_nodes", "1");
}

/* One round: fill A, B, C, advise all three; returns ksm_merging_pages. */
static long round_trip(int across, char **a, char **b, char **c)
{
	size_t n = NPAGES;
	long m;

	*a = map_on_node(n * PG, 0);
	*b = map_on_node(n * PG, 1);
	*c = map_on_node(n * PG, 0);
	region_fill(*a, n, 0x4e1);
	region_fill(*b, n, 0x4e1);
	region_fill(*c, n, 0x4e1);
	UT_CHECK(pages_on_node(*a, n, 0) == n && pages_on_node(*c, n, 0) == n &&
		 pages_on_node(*b, n, 1) == n, "mbind did not place A, C on node 0 and B on node 1");
	UT_CHECK(upm_advise(*a, n * PG) == 0, "advise A: %s", strerror(errno));
	UT_CHECK(upm_advise(*b, n * PG) == 0, "advise B: %s", strerror(errno));
	UT_CHECK(upm_advise(*c, n * PG) == 0, "advise C: %s", strerror(errno));
	m = ut_merging_pages(0);
	ut_note("merge_across_nodes=%d: ksm_merging_pages=%ld; ksm pages A %zu, B %zu, C %zu of %zu; "
		"pages_shared=%ld", across, m, ut_ksm_pages(*a, n), ut_ksm_pages(*b, n),
		ut_ksm_pages(*c, n), n, ksm_get("pages_shared"));
	return m;
}

static void check_and_unmap(char *a, char *b, char *c, const char *what)
{
	size_t n = NPAGES, bad;

	bad = region_bad(a, n, 0x4e1) + region_bad(b, n, 0x4e1) + region_bad(c, n, 0x4e1);
	UT_CHECK(bad == 0, "%s: %zu pages lost their content", what, bad);
	a[5 * PG] ^= 1;	/* COW one merged page of A */
	UT_CHECK(region_bad(a, n, 0x4e1) == 1 && region_bad(c, n, 0x4e1) == 0 &&
		 region_bad(b, n, 0x4e1) == 0, "%s: a write to A changed more than its page", what);
	munmap(a, n * PG);
	munmap(b, n * PG);
	munmap(c, n * PG);
}

int main(void)
{
	size_t n = NPAGES;
	char *a, *b, *c;
	long m;

	ut_name = "upm_numa";
	ut_require_upm();
	if (access("/sys/devices/system/node/node1", F_OK))
		ut_skip("one NUMA node only (run.sh boots two: -numa node,nodeid=1)");
	if (ut_pfn(&n) == 0)
		ut_skip("pagemap shows no PFNs (not root?)");
	ksm_quiesce();
	atexit(restore_across);

	/* merge_across_nodes=0: only A and C merge, on node 0 */
	ut_must_write(KSM_DIR "merge_across_nodes", "0");
	m = round_trip(0, &a, &b, &c);
	UT_CHECK(ut_ksm_pages(b, n) == 0, "merge_across_nodes=0: %zu pages of B (node 1) are ksm pages, "
		 "merged across nodes", ut_ksm_pages(b, n));
	UT_CHECK(ut_ksm_pages(a, n) * 100 >= n * 99 && ut_ksm_pages(c, n) * 100 >= n * 99,
		 "merge_across_nodes=0: A and C (both node 0) did not merge: %zu and %zu of %zu",
		 ut_ksm_pages(a, n), ut_ksm_pages(c, n), n);
	UT_CHECK(m == (long)(ut_ksm_pages(a, n) + ut_ksm_pages(c, n)),
		 "merge_across_nodes=0: ksm_merging_pages=%ld, but A and C have %zu ksm pages", m,
		 ut_ksm_pages(a, n) + ut_ksm_pages(c, n));
	UT_CHECK(pages_on_node(a, n, 0) == n && pages_on_node(c, n, 0) == n,
		 "merge_across_nodes=0: merged pages of A/C left node 0 (%zu, %zu of %zu on it)",
		 pages_on_node(a, n, 0), pages_on_node(c, n, 0), n);
	check_and_unmap(a, b, c, "merge_across_nodes=0");
	ksm_unmerge_all();
	ksm_set("run", 0);

	/* merge_across_nodes=1: all three merge */
	ut_must_write(KSM_DIR "merge_across_nodes", "1");
	m = round_trip(1, &a, &b, &c);
	UT_CHECK(m * 100 >= (long)(3 * n) * 99, "merge_across_nodes=1: ksm_merging_pages=%ld, want ~%zu",
		 m, 3 * n);
	check_and_unmap(a, b, c, "merge_across_nodes=1");
	return UT_PASS;
}
