// SPDX-License-Identifier: GPL-2.0
/*
 * upm_swap -- swap round trips of merged pages with ksmd stopped (run=0),
 * on zram swap.
 *
 * One process merges two identical 2 MiB regions R1/R2 with MADV_UPM and
 * unmaps R2, so each ksm page of R1 is mapped once (MADV_PAGEOUT only
 * reclaims pages mapped once).
 *
 * 1. swap-cache round trip: zram's mem_limit is set to one page, so reclaim
 *    unmaps the pages (swap entries in the PTEs) but their write fails and
 *    they stay in the swap cache, still ksm pages.  A MADV_UPM of another
 *    range reconciles the mm while the PTEs are swap entries; then R1 is
 *    read (swap-in from the swap cache maps the ksm pages again).  Every
 *    page that pagemap+kpageflags show as a ksm page must be counted in
 *    /proc/self/ksm_merging_pages, and a second MADV_PAGEOUT (zram working
 *    again) must swap every one of them out: a merged page whose rmap_item
 *    left the stable tree is invisible to rmap_walk_ksm(), so reclaim (and
 *    migration, offlining) cannot unmap it.
 * 2. full round trip: that second MADV_PAGEOUT really writes the pages; the
 *    re-read gets them back with their data, and after a reconcile the
 *    counter matches the ksm pages again (0: sharing is lost on swap-out).
 * Data are checked page by page after every step.
 *
 * The test runs on CPU 0 only.  Reclaim isolates a page from the LRU, and a
 * page sitting in a per-CPU LRU batch is not on it: the pages whose write
 * failed in step 1 go back through folio_putback_lru() -> folio_add_lru(),
 * 15 to a batch, and MADV_PAGEOUT drains only the batches of its own CPU.
 * Unpinned, a process that moved to the other CPU after step 1 left the
 * last 512 mod 15 = 2 pages in the first CPU's batch, which looked like an
 * rmap failure.  A page left mapped is
 * reported with its LRU flag, so the two causes are told apart.
 */
#include "upmtest.h"

#ifndef MADV_PAGEOUT
#define MADV_PAGEOUT 21
#endif

#define ZRAM "/sys/block/zram0/"
#define NPAGES 512

static int swap_is_on(void)
{
	char buf[4096];

	return ut_read_str("/proc/swaps", buf, sizeof(buf)) == 0 && strstr(buf, "/dev/zram0");
}

static void zram_swap_on(void)
{
	if (access(ZRAM "disksize", W_OK))
		ut_skip("no " ZRAM " (CONFIG_ZRAM)");
	if (swap_is_on())
		return;
	ut_write_str(ZRAM "reset", "1");
	ut_must_write(ZRAM "disksize", "64M");
	UT_CHECK(system("mkswap /dev/zram0 >/dev/null 2>&1") == 0, "mkswap /dev/zram0 failed");
	UT_CHECK(syscall(SYS_swapon, "/dev/zram0", 0) == 0, "swapon /dev/zram0: %s", strerror(errno));
}

static void zram_swap_off(void)
{
	ut_write_str(ZRAM "mem_limit", "0");
	if (syscall(SYS_swapoff, "/dev/zram0"))
		ut_note("swapoff /dev/zram0: %s", strerror(errno));
	ut_write_str(ZRAM "reset", "1");
}

/* Pages of [p, p+n) present; *ksm gets those that are ksm pages. */
static size_t count_present(const char *p, size_t n, size_t *ksm)
{
	size_t present = 0;

	*ksm = 0;
	for (size_t i = 0; i < n; i++) {
		uint64_t pfn = ut_pfn(p + i * PG);

		if (!pfn)
			continue;
		present++;
		*ksm += ut_kpageflag(pfn, KPF_KSM) == 1;
	}
	return present;
}

#define KPF_LRU 5
#define KPF_ACTIVE 6

/*
 * Why did the ksm pages still mapped in [p, p+n) escape reclaim?  Prints
 * the first few.  Return: how many are off the LRU (in an LRU batch or
 * isolated), which reclaim never sees.
 */
static size_t report_left(const char *p, size_t n)
{
	int fd = open("/proc/kpagecount", O_RDONLY);
	size_t shown = 0, off_lru = 0;

	for (size_t i = 0; i < n; i++) {
		uint64_t pfn = ut_pfn(p + i * PG), cnt = 0;

		if (!pfn || ut_kpageflag(pfn, KPF_KSM) != 1)
			continue;
		off_lru += ut_kpageflag(pfn, KPF_LRU) == 0;
		if (shown++ >= 8)
			continue;
		if (fd >= 0 && pread(fd, &cnt, 8, pfn * 8) != 8)
			cnt = 0;
		ut_note("left mapped: page %zu pfn %#llx lru=%d active=%d mapcount=%llu", i,
			(unsigned long long)pfn, ut_kpageflag(pfn, KPF_LRU),
			ut_kpageflag(pfn, KPF_ACTIVE), (unsigned long long)cnt);
	}
	if (fd >= 0)
		close(fd);
	return off_lru;
}

/* Read every page (swap-in), fail unless each still has its pattern. */
static void touch_verify(const char *p, size_t n, uint64_t seed, const char *what)
{
	size_t bad = region_bad(p, n, seed);

	UT_CHECK(bad == 0, "%s: %zu of %zu pages lost their content", what, bad, n);
}

int main(void)
{
	size_t n = NPAGES, present, ksm, ksm1, off_lru = 0;
	char *r1, *r2, *r3;
	long m, m1;

	ut_name = "upm_swap";
	ut_require_upm();
	ut_pin_cpu(0);
	ksm_quiesce();
	if (ut_pfn(&n) == 0)
		ut_skip("pagemap shows no PFNs (not root?)");
	zram_swap_on();
	atexit(zram_swap_off);

	r1 = ut_map_anon(n * PG);
	r2 = ut_map_anon(n * PG);
	r3 = ut_map_anon(PG);
	region_fill(r1, n, 0x5a1);
	region_fill(r2, n, 0x5a1);
	page_fill(r3, 0x5a2, 0);
	UT_CHECK(upm_advise(r1, n * PG) == 0, "advise R1 failed");
	UT_CHECK(upm_advise(r2, n * PG) == 0, "advise R2 failed");
	m = ut_merging_pages(0);
	UT_CHECK(m >= (long)(2 * n * 99 / 100), "merge: ksm_merging_pages=%ld, want ~%zu", m, 2 * n);
	munmap(r2, n * PG);
	/* reconciles R2's items away: each ksm page of R1 is mapped once now */
	UT_CHECK(upm_advise(r3, PG) == 0, "advise R3 failed");
	present = count_present(r1, n, &ksm);
	m = ut_merging_pages(0);
	ut_note("merged: %zu of %zu pages of R1 are ksm pages, ksm_merging_pages=%ld", ksm, n, m);
	UT_CHECK(ksm >= n * 99 / 100 && m == (long)ksm,
		 "after munmap of R2: %zu ksm pages in R1 but ksm_merging_pages=%ld", ksm, m);

	/* 1. swap-cache round trip: writes fail, pages stay in the swap cache */
	ut_must_write(ZRAM "mem_limit", "4096");
	UT_CHECK(ksm_advise(r1, n * PG, MADV_PAGEOUT) == 0, "MADV_PAGEOUT: %s", strerror(errno));
	present = count_present(r1, n, &ksm);
	ut_note("after MADV_PAGEOUT with zram full: %zu of %zu pages still mapped", present, n);
	UT_CHECK(present < n / 2, "MADV_PAGEOUT unmapped only %zu of %zu merged pages", n - present, n);
	/* reconcile the mm while the PTEs are swap entries */
	UT_CHECK(upm_advise(r3, PG) == 0, "advise R3 failed");
	m = ut_merging_pages(0);
	ut_note("while swapped: ksm_merging_pages=%ld", m);
	ut_must_write(ZRAM "mem_limit", "0");
	touch_verify(r1, n, 0x5a1, "after the swap-cache round trip");
	present = count_present(r1, n, &ksm);
	m = ut_merging_pages(0);
	ut_note("back from the swap cache: %zu present, %zu ksm pages, ksm_merging_pages=%ld", present,
		ksm, m);
	UT_CHECK(ksm >= n / 2, "only %zu of %zu pages came back from the swap cache as ksm pages: the test "
		 "could not keep them in the swap cache", ksm, n);
	ksm1 = ksm;
	m1 = m;

	/* 2. the merged pages must still be reachable by rmap: reclaim them */
	for (int i = 0; i < 3; i++) {
		UT_CHECK(ksm_advise(r1, n * PG, MADV_PAGEOUT) == 0, "MADV_PAGEOUT: %s", strerror(errno));
		present = count_present(r1, n, &ksm);
		if (!ksm)
			break;
		usleep(100000);
	}
	ut_note("second MADV_PAGEOUT: %zu pages still mapped, %zu of them ksm pages", present, ksm);
	if (ksm)
		off_lru = report_left(r1, n);
	UT_CHECK(off_lru == 0, "%zu of the %zu merged pages left mapped were not on the LRU (a per-CPU LRU "
		 "batch of another CPU, or isolated): reclaim could not try them", off_lru, ksm);
	UT_CHECK(ksm == 0 && m1 == (long)ksm1,
		 "after the swap-cache round trip %zu pages were ksm pages but ksm_merging_pages=%ld, and %zu "
		 "merged pages could not be swapped out again: their rmap_items left the stable tree while "
		 "swapped out, rmap_walk_ksm() cannot find them", ksm1, m1, ksm);
	touch_verify(r1, n, 0x5a1, "after the full swap round trip");
	UT_CHECK(upm_advise(r3, PG) == 0, "advise R3 failed");
	present = count_present(r1, n, &ksm);
	m = ut_merging_pages(0);
	ut_note("after the full round trip: %zu ksm pages, ksm_merging_pages=%ld", ksm, m);
	UT_CHECK(m == (long)ksm, "%zu ksm pages in R1 but ksm_merging_pages=%ld after a reconcile", ksm, m);
	/* re-advise merges again (the R2 copy is gone: R1 pages are unique) */
	touch_verify(r1, n, 0x5a1, "at end");
	return UT_PASS;
}
