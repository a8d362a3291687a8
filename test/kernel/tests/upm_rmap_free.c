// SPDX-License-Identifier: GPL-2.0
/*
 * upm_rmap_free -- with ksmd stopped (run=0), the rmap_items (64 B per
 * advised page) of ranges that are no longer advised are freed, not kept
 * until exit or run=2.  Counted with /proc/self/ksm_stat ksm_rmap_items.
 *
 * 1. advise R (unique pages: candidates), MADV_UNMERGEABLE R: 0 items.
 * 2. advise R1 and an identical R2 (merged), munmap R2, advise one page
 *    elsewhere (reconciles the mm): only R1's items and that page's remain.
 * 3. advise R3, munmap its first half, advise R3's whole range again
 *    (ENOMEM for the hole, the pass walks past the hole's items): only the
 *    second half's items remain.
 * 4. a candidate-only range (nothing merged) is munmapped, and another
 *    process advises the same data: its lookups find the candidates gone,
 *    and the reaper frees them within 10 s.
 * Counters and data are checked along the way.
 */
#include "upmtest.h"

#define N 1024

static long rmap_items(pid_t pid)
{
	char path[64], buf[256], *s;

	if (pid)
		snprintf(path, sizeof(path), "/proc/%d/ksm_stat", (int)pid);
	else
		snprintf(path, sizeof(path), "/proc/self/ksm_stat");
	if (ut_read_str(path, buf, sizeof(buf)))
		return -1;
	s = strstr(buf, "ksm_rmap_items ");
	return s ? atol(s + strlen("ksm_rmap_items ")) : -1;
}

int main(void)
{
	char *r, *r1, *r2, *r3, *one;
	struct ut_sharer s;
	long items, m;
	double t0;
	int rc;

	ut_name = "upm_rmap_free";
	ut_require_upm();
	ksm_quiesce();
	if (rmap_items(0) < 0)
		ut_skip("no ksm_rmap_items in /proc/self/ksm_stat");
	one = ut_map_anon(PG);
	page_fill(one, 0xf00, 0);
	UT_CHECK(upm_advise(one, PG) == 0, "advise one page failed");
	ut_note("start: %ld rmap_items", rmap_items(0));

	/* 1. MADV_UNMERGEABLE frees the range's items */
	r = ut_map_anon(N * PG);
	region_fill(r, N, 0xf01);
	UT_CHECK(upm_advise(r, N * PG) == 0, "advise R failed");
	items = rmap_items(0);
	UT_CHECK(items >= N, "after advising R: %ld rmap_items, want >= %d", items, N);
	UT_CHECK(ksm_advise(r, N * PG, MADV_UNMERGEABLE) == 0, "MADV_UNMERGEABLE R failed");
	items = rmap_items(0);
	ut_note("1. advise + MADV_UNMERGEABLE of %d pages: %ld rmap_items left", N, items);
	UT_CHECK(items <= 1, "MADV_UNMERGEABLE left %ld rmap_items of %d (leak of 64 B per page)", items, N);
	UT_CHECK(region_bad(r, N, 0xf01) == 0, "R lost data");
	munmap(r, N * PG);

	/* 2. munmap of a merged range, then any advise of the process */
	r1 = ut_map_anon(N * PG);
	r2 = ut_map_anon(N * PG);
	region_fill(r1, N, 0xf02);
	region_fill(r2, N, 0xf02);
	UT_CHECK(upm_advise(r1, N * PG) == 0, "advise R1 failed");
	UT_CHECK(upm_advise(r2, N * PG) == 0, "advise R2 failed");
	m = ut_merging_pages(0);
	UT_CHECK(m >= 2 * N * 99 / 100, "R1/R2 merge: ksm_merging_pages=%ld", m);
	munmap(r2, N * PG);
	UT_CHECK(upm_advise(one, PG) == 0, "advise one page failed");
	items = rmap_items(0);
	m = ut_merging_pages(0);
	ut_note("2. merged R1+R2, munmap R2, advise elsewhere: %ld rmap_items, ksm_merging_pages=%ld",
		items, m);
	UT_CHECK(m == N, "ksm_merging_pages=%ld after munmap of R2, want %d", m, N);
	UT_CHECK(items <= N + 1, "%ld rmap_items after munmap of R2, want <= %d (R2's items leaked)", items,
		 N + 1);
	UT_CHECK(region_bad(r1, N, 0xf02) == 0, "R1 lost data");
	munmap(r1, N * PG);
	UT_CHECK(upm_advise(one, PG) == 0, "advise one page failed");
	UT_CHECK(rmap_items(0) <= 1, "%ld rmap_items after munmap of R1 too", rmap_items(0));

	/* 3. a hole in an advised range, advised again */
	r3 = ut_map_anon(N * PG);
	region_fill(r3, N, 0xf03);
	UT_CHECK(upm_advise(r3, N * PG) == 0, "advise R3 failed");
	munmap(r3, N / 2 * PG);
	rc = upm_advise(r3, N * PG);
	UT_CHECK(rc == ENOMEM, "advise of R3 with a hole: %s, want ENOMEM", strerror(rc));
	items = rmap_items(0);
	ut_note("3. advise R3, munmap half, advise again: %ld rmap_items", items);
	UT_CHECK(items <= N / 2 + 1, "%ld rmap_items, want <= %d (the hole's items leaked)", items, N / 2 + 1);
	for (size_t i = N / 2; i < N; i++)
		UT_CHECK(page_check(r3 + i * PG, 0xf03, i), "R3 page %zu lost data", i);
	munmap(r3 + N / 2 * PG, N / 2 * PG);

	/* 4. candidates munmapped, found gone by another process's lookups */
	r = ut_map_anon(N * PG);
	region_fill(r, N, 0xf04);
	UT_CHECK(upm_advise(r, N * PG) == 0, "advise R failed");
	munmap(r, N * PG);
	ut_sharer_start(&s, N, 0xf04);
	UT_CHECK(ut_sharer_send(&s, SH_ADVISE) == 0, "sharer advise failed");
	t0 = ut_now();
	while (rmap_items(0) > 1 && ut_now() - t0 < 10 * ut_scale())
		usleep(100000);
	items = rmap_items(0);
	ut_note("4. %d candidates munmapped, looked up by another process: %ld rmap_items after %.1fs", N,
		items, ut_now() - t0);
	UT_CHECK(items <= 1, "%ld rmap_items of a munmapped candidate range still allocated after %.0fs",
		 items, 10 * ut_scale());
	ut_sharer_verify(&s, "sharer");
	UT_CHECK(ut_sharer_stop(&s) == 0, "sharer did not exit cleanly");
	UT_CHECK(page_check(one, 0xf00, 0), "one page lost data");
	return UT_PASS;
}
