// SPDX-License-Identifier: GPL-2.0
/*
 * upm_migrate -- migration of merged pages with ksmd stopped (run=0).
 *
 * One process merges two identical 4 MiB regions R1/R2 with MADV_UPM (each
 * ksm page is mapped twice).
 * 1. move_pages(MPOL_MF_MOVE_ALL) moves every merged page to the other node
 *    and back: all pages reach the target node, stay ksm pages, data intact,
 *    ksm_merging_pages unchanged (also after a reconciling MADV_UPM).
 * 2. migration during an advise: in each of 40 cycles a thread migrates
 *    all pages of R1 back and forth between the nodes while the main thread
 *    advises R1 in a loop for 0.3 s (the passes walk PTEs that are migration
 *    entries).  After each cycle, with nothing running: every page that pagemap+kpageflags show as
 *    a ksm page must be counted in ksm_merging_pages, and move_pages of all
 *    pages to one node and then to the other must move every one of them.
 *    A merged page whose rmap_item the pass took out of the stable tree is
 *    invisible to rmap_walk_ksm(): migration cannot unmap it, so it stays
 *    where it is.
 */
#include "upmtest.h"
#include <pthread.h>

#ifndef MPOL_MF_MOVE_ALL
#define MPOL_MF_MOVE_ALL (1 << 2)
#endif

#define NPAGES 1024
#define CYCLES 40

static char *r1, *r2;
static size_t n = NPAGES;
static void **pages;
static int *nodes, *status;

/* move_pages of all pages of R1 to @node; returns the pages not there. */
static size_t move_all(int node)
{
	size_t off = 0;
	long rc;

	for (size_t i = 0; i < n; i++)
		nodes[i] = node;
	rc = syscall(SYS_move_pages, 0, n, pages, nodes, status, MPOL_MF_MOVE_ALL);
	if (rc < 0)
		ut_fail("move_pages: %s", strerror(errno));
	for (size_t i = 0; i < n; i++)
		off += status[i] != node;
	return off;
}

/* Pages of R1 not on @node after up to 3 attempts (transient -EAGAIN). */
static size_t move_all_retry(int node)
{
	size_t off = 0;

	for (int t = 0; t < 3; t++) {
		off = move_all(node);
		if (!off)
			break;
		usleep(50000);
	}
	return off;
}

static void check_consistent(const char *what)
{
	size_t ksm = ut_ksm_pages(r1, n) + ut_ksm_pages(r2, n);
	long m = ut_merging_pages(0);

	UT_CHECK(m == (long)ksm,
		 "%s: %zu mappings of ksm pages in R1+R2 but ksm_merging_pages=%ld: rmap_items left the "
		 "stable tree during migration", what, ksm, m);
	UT_CHECK(ksm >= 2 * n * 99 / 100, "%s: only %zu of %zu mappings are merged", what, ksm, 2 * n);
}

static volatile int stop, rounds;

/* Migrate R1 back and forth between the nodes until told to stop. */
static void *migrator(void *arg)
{
	int node = 1;

	while (!stop) {
		move_all(node);
		node = !node;
		rounds++;
	}
	return NULL;
}

int main(void)
{
	int nnodes = 0;
	long rec0, passes = 0;
	size_t ksm;
	size_t off;
	long m;

	ut_name = "upm_migrate";
	ut_require_upm();
	ksm_quiesce();
	while (nnodes < 8) {
		char p[64];

		snprintf(p, sizeof(p), "/sys/devices/system/node/node%d", nnodes);
		if (access(p, F_OK))
			break;
		nnodes++;
	}
	if (nnodes < 2)
		ut_skip("needs 2 NUMA nodes, have %d", nnodes);
	if (ut_pfn(&n) == 0)
		ut_skip("pagemap shows no PFNs (not root?)");

	pages = calloc(n, sizeof(*pages));
	nodes = calloc(n, sizeof(*nodes));
	status = calloc(n, sizeof(*status));
	r1 = ut_map_anon(n * PG);
	r2 = ut_map_anon(n * PG);
	region_fill(r1, n, 0x319);
	region_fill(r2, n, 0x319);
	for (size_t i = 0; i < n; i++)
		pages[i] = r1 + i * PG;
	UT_CHECK(move_all_retry(0) == 0, "could not place R1 on node 0");
	UT_CHECK(upm_advise(r1, n * PG) == 0, "advise R1 failed");
	UT_CHECK(upm_advise(r2, n * PG) == 0, "advise R2 failed");
	m = ut_merging_pages(0);
	UT_CHECK(m >= (long)(2 * n * 99 / 100), "merge: ksm_merging_pages=%ld, want ~%zu", m, 2 * n);
	check_consistent("after the merge");

	/* 1. plain migration of merged pages */
	off = move_all_retry(1);
	UT_CHECK(off == 0, "move_pages to node 1: %zu of %zu merged pages did not move", off, n);
	UT_CHECK(region_bad(r1, n, 0x319) == 0 && region_bad(r2, n, 0x319) == 0, "data lost by migration");
	check_consistent("after migration to node 1");
	UT_CHECK(upm_advise(r1, n * PG) == 0, "re-advise R1 failed");
	check_consistent("after migration and a re-advise");
	off = move_all_retry(0);
	UT_CHECK(off == 0, "move_pages back to node 0: %zu of %zu merged pages did not move", off, n);
	check_consistent("after migration back to node 0");

	/* 2. migrations racing advise passes; then, quiet, check and move all */
	rec0 = ut_read_long(UPM_DIR "/reconciled");
	for (int c = 0; c < CYCLES; c++) {
		pthread_t t;

		double t0 = ut_now();

		stop = 0;
		rounds = 0;
		pthread_create(&t, NULL, migrator, NULL);
		/* advise for 0.3 s, and while the migrator does 2 rounds */
		while (rounds < 2 || ut_now() - t0 < 0.3) {
			UT_CHECK(upm_advise(r1, n * PG) == 0, "advise during migration failed");
			passes++;
		}
		stop = 1;
		pthread_join(t, NULL);
		ksm = ut_ksm_pages(r1, n) + ut_ksm_pages(r2, n);
		m = ut_merging_pages(0);
		/* to both nodes: a page already on the first is moved by the second */
		off = move_all_retry(c & 1);
		off += move_all_retry(!(c & 1));
		UT_CHECK(off == 0 && m == (long)ksm,
			 "cycle %d (%ld passes): %zu mappings of ksm pages but ksm_merging_pages=%ld, and %zu of "
			 "%zu merged pages were not moved (move_pages stops at the first page it cannot migrate): rmap_items left the stable tree while their "
			 "pages were under migration, rmap_walk_ksm() cannot find them", c, passes, ksm, m, off, n);
		check_consistent("after advises racing migrations");
	}
	ut_note("%d cycles, %ld advise passes racing migrations: upm reconciled +%ld", CYCLES, passes,
		ut_read_long(UPM_DIR "/reconciled") - rec0);
	UT_CHECK(region_bad(r1, n, 0x319) == 0 && region_bad(r2, n, 0x319) == 0, "data lost at end");
	ut_note("%d cycles of advise racing migration: all merged pages stayed migratable", CYCLES);
	return UT_PASS;
}
