// SPDX-License-Identifier: GPL-2.0
/*
 * upm_pin_vmsplice -- pages a pipe references (vmsplice) are never merged.
 *
 * vmsplice(2) to a pipe takes a reference on every page it puts there
 * (get_user_pages_fast, FOLL_GET) and leaves the page mapped writable:
 * until the pipe is read, a write by the process lands in the page the pipe
 * delivers.  KSM's write_protect_page() refuses a page whose page_count is
 * above mapcount + 1 (+ swap cache) for exactly this reason; MADV_UPM must
 * keep that.  Once per flag (0, then SPLICE_F_GIFT):
 *  1. A (this process) fills 256 pages with pattern S and vmsplices them
 *     into a pipe; sharers B and C hold the same data.  Flag 0: B and C
 *     advise (they merge >= 99%), then A (A's pages meet KSM pages).
 *     GIFT: A advises first (its pages are the candidates B and C meet),
 *     then B, C and A again.  None of A's pages may become a KSM page or
 *     change its PFN (pagemap + kpageflags), A's ksm_merging_pages stays 0,
 *     merge_failed (/sys/kernel/mm/upm) grows.  How many pages B and C
 *     merge with A's referenced candidates in the way is only reported: a
 *     candidate that cannot be write-protected blocks its content for the
 *     domain, as an unstable-tree page does for ksmd (cmp_and_merge_page()
 *     does not insert a page whose merge with the tree's page failed).
 *  2. COW writes: A rewrites its even pages (S+1; in place, they are not
 *     merged), B its odd pages (S+1; a COW of a KSM page).  The pipe must
 *     deliver A's pages as they are now -- even S+1, odd S -- and never B's
 *     data; A, B and C each see their own writes only.
 *  3. With the pipe drained, A and C advise again: A's odd pages merge with
 *     C's (>= 99% of them KSM pages).
 *  4. A vmsplices all its pages again (the odd ones are KSM pages now, the
 *     even ones private), then A rewrites every page (S+2) and C its odd
 *     pages (S+1): the pipe must deliver what vmsplice saw where COW kept
 *     it (odd pages: S) and A's write where the page was A's own (even:
 *     S+2); A, B, C intact.
 * A kernel that merged a referenced page fails step 1 (KSM flag/PFN) and
 * step 2 (the pipe would deliver S for A's even pages, or B's data).
 */
#include "upmtest.h"

#define NPAGES 256

static const uint64_t seed = 0x5b1ce;

/* Put @n pages at @p into the pipe @fd with vmsplice(2) @flags. */
static void splice_all(int fd, char *p, size_t n, unsigned int flags)
{
	size_t done = 0;

	while (done < n * PG) {
		struct iovec iov = { p + done, n * PG - done };
		ssize_t r = vmsplice(fd, &iov, 1, flags);

		if (r <= 0)
			ut_fail("vmsplice of %zu bytes (flags %#x): %s", n * PG - done, flags,
				r ? strerror(errno) : "returned 0");
		done += r;
	}
}

/* Read @n pages from the pipe @fd into @buf. */
static void drain(int fd, char *buf, size_t n)
{
	size_t done = 0;

	while (done < n * PG) {
		ssize_t r = read(fd, buf + done, n * PG - done);

		if (r <= 0)
			ut_fail("read from the pipe after %zu of %zu bytes: %s", done, n * PG,
				r ? strerror(errno) : "EOF");
		done += r;
	}
}

/* Number of A's pages that are KSM pages or moved away from @pfn. */
static size_t count_touched(char *a, const uint64_t *pfn, size_t n, size_t *first)
{
	size_t bad = 0;

	for (size_t i = 0; i < n; i++) {
		uint64_t now = ut_pfn(a + i * PG);

		if (now != pfn[i] || ut_kpageflag(now, KPF_KSM) == 1) {
			if (!bad)
				*first = i;
			bad++;
		}
	}
	return bad;
}

static size_t count_ksm(char *a, size_t n, size_t from, size_t step)
{
	size_t k = 0;

	for (size_t i = from; i < n; i += step)
		k += ut_kpageflag(ut_pfn(a + i * PG), KPF_KSM) == 1;
	return k;
}

/* Check the pipe's copy @buf: even pages carry @seed_even, odd @seed_odd. */
static void check_pipe(const char *buf, size_t n, uint64_t seed_even, uint64_t seed_odd,
		       const char *what)
{
	size_t bad = 0, first = 0;

	for (size_t i = 0; i < n; i++) {
		if (!page_check(buf + i * PG, (i & 1) ? seed_odd : seed_even, i)) {
			if (!bad)
				first = i;
			bad++;
		}
	}
	if (!bad)
		return;
	/* name what the first bad page holds instead */
	for (uint64_t s = seed; s < seed + 4; s++)
		if (page_check(buf + first * PG, s, first))
			ut_fail("%s: %zu of %zu pages from the pipe are wrong; page %zu holds S+%u",
				what, bad, n, first, (unsigned int)(s - seed));
	ut_fail("%s: %zu of %zu pages from the pipe are wrong; page %zu holds no known pattern",
		what, bad, n, first);
}

static void check_a(const char *a, size_t n, uint64_t seed_even, uint64_t seed_odd,
		    const char *what)
{
	size_t bad = 0;

	for (size_t i = 0; i < n; i++)
		bad += !page_check(a + i * PG, (i & 1) ? seed_odd : seed_even, i);
	UT_CHECK(bad == 0, "%s: %zu of A's %zu pages do not carry A's data", what, bad, n);
}

static void run(unsigned int flags)
{
	const char *fl = flags ? "SPLICE_F_GIFT" : "flags 0";
	size_t n = NPAGES, bad, first = 0, k;
	static uint64_t pfn[NPAGES];
	struct ut_sharer b, c;
	long failed0, failed1, m;
	char *a, *buf;
	int pfd[2];

	ut_note("--- vmsplice with %s ---", fl);
	if (pipe(pfd))
		ut_fail("pipe: %s", strerror(errno));
	if (fcntl(pfd[1], F_SETPIPE_SZ, (int)(n * PG)) < (long)(n * PG))
		ut_fail("F_SETPIPE_SZ %zu: %s", n * PG, strerror(errno));
	/* the sharers first: A's pages must not be fork-shared with them */
	ut_sharer_start(&b, n, seed);
	ut_sharer_start(&c, n, seed);
	a = ut_map_anon(n * PG);
	buf = ut_map_anon(n * PG);
	region_fill(a, n, seed);
	for (size_t i = 0; i < n; i++) {
		pfn[i] = ut_pfn(a + i * PG);
		UT_CHECK(pfn[i], "A's page %zu has no PFN (pagemap needs root)", i);
	}

	/* 1. referenced pages must not merge */
	splice_all(pfd[1], a, n, flags);
	failed0 = upm_get("merge_failed");
	if (flags)
		UT_CHECK(upm_advise(a, n * PG) == 0, "advise A (first): %s", strerror(errno));
	UT_CHECK(ut_sharer_send(&b, SH_ADVISE) == 0, "advise B failed");
	UT_CHECK(ut_sharer_send(&c, SH_ADVISE) == 0, "advise C failed");
	UT_CHECK(upm_advise(a, n * PG) == 0, "advise A: %s", strerror(errno));
	failed1 = upm_get("merge_failed");
	bad = count_touched(a, pfn, n, &first);
	UT_CHECK(bad == 0,
		 "%s: %zu of A's %zu pages held by the pipe were merged (KSM page or new PFN; first: page %zu)",
		 fl, bad, n, first);
	m = ut_merging_pages(0);
	UT_CHECK(m == 0, "%s: A's ksm_merging_pages=%ld while the pipe holds all its pages", fl, m);
	m = ut_sharer_send(&c, SH_MERGING);
	if (!flags)
		UT_CHECK(m * 100 >= (long)n * 99,
			 "%s: C merged only %ld of %zu pages with B",
			 fl, m, n);
	ut_note("step 1: A 0 of %zu merged (PFNs unchanged), C %ld merged%s, merge_failed +%ld",
		n, m, flags ? " (A's referenced candidates came first)" : "",
		failed0 >= 0 ? failed1 - failed0 : -1);
	if (failed0 >= 0)
		UT_CHECK(failed1 > failed0,
			 "merge_failed did not grow although A's %zu pages were refused",
			 n);

	/* 2. COW writes on both sides, then the pipe */
	for (size_t i = 0; i < n; i += 2)
		page_fill(a + i * PG, seed + 1, i);
	ut_sharer_send(&b, SH_WRITE_ODD);
	bad = count_touched(a, pfn, n, &first);
	UT_CHECK(bad == 0,
		 "%s: A's page %zu moved on an in-place write (%zu pages)",
		 fl, first, bad);
	drain(pfd[0], buf, n);
	check_pipe(buf, n, seed + 1, seed, "step 2");
	check_a(a, n, seed + 1, seed, "step 2");
	ut_sharer_verify(&b, "B after the writes (step 2)");
	ut_sharer_verify(&c, "C after the writes (step 2)");

	/* 3. drained: A's odd pages merge with C's */
	UT_CHECK(upm_advise(a, n * PG) == 0, "re-advise A: %s", strerror(errno));
	UT_CHECK(ut_sharer_send(&c, SH_ADVISE) == 0, "re-advise C failed");
	k = count_ksm(a, n, 1, 2);
	ut_note("step 3: %zu of A's %zu odd pages merged after the pipe was drained", k, n / 2);
	UT_CHECK(k * 100 >= (n / 2) * 99,
		 "%s: only %zu of A's %zu odd pages merged once the pipe was drained",
		 fl, k, n / 2);
	check_a(a, n, seed + 1, seed, "step 3");

	/* 4. vmsplice of merged pages, then COW on every side */
	splice_all(pfd[1], a, n, flags);
	region_fill(a, n, seed + 2);
	ut_sharer_send(&c, SH_WRITE_ODD);
	drain(pfd[0], buf, n);
	check_pipe(buf, n, seed + 2, seed, "step 4");
	check_a(a, n, seed + 2, seed + 2, "step 4");
	ut_sharer_verify(&b, "B (step 4)");
	ut_sharer_verify(&c, "C after its writes (step 4)");

	ut_sharer_stop(&b);
	ut_sharer_stop(&c);
	munmap(a, n * PG);
	munmap(buf, n * PG);
	close(pfd[0]);
	close(pfd[1]);
	ksm_unmerge_all();
	ksm_set("run", 0);
}

int main(void)
{
	ut_name = "upm_pin_vmsplice";
	ut_require_upm();
	ksm_quiesce();
	run(0);
	run(SPLICE_F_GIFT);
	return UT_PASS;
}
