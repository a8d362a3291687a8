// SPDX-License-Identifier: GPL-2.0
/*
 * upm_pin_gup -- FOLL_PIN | FOLL_LONGTERM pins (CONFIG_GUP_TEST) and
 * MADV_UPM.
 *
 * 6.1's /sys/kernel/debug/gup_test cannot hold a pin across system calls
 * (PIN_LONGTERM_TEST_START came in 6.2): PIN_LONGTERM_BENCHMARK pins a
 * range with pin_user_pages(FOLL_LONGTERM [| FOLL_WRITE]) and unpins it
 * before it returns, holding the mmap_lock for read.  So this test checks
 * what a pin does to merged pages, and races pins against advises; the
 * pins held across calls are upm_pin_vmsplice's (page references),
 * upm_pin_odirect's and upm_pin_iouring's.
 *  1. A (this process) and sharer B merge 1024 identical pages.  A pins
 *     its first half with FOLL_WRITE and its second half read-only: a pin
 *     on a page that is not exclusive to A must unshare it (6.1's
 *     gup_must_unshare: a KSM page is never PageAnonExclusive), so every
 *     page of A must be a private page afterwards (no KSM flag, new PFN)
 *     while B keeps its KSM pages -- a KSM page marked exclusive by the
 *     engine would be pinned shared, and a device writing it would write
 *     into B.  Data intact; A's advise then merges >= 99% again.
 *  2. For SECONDS (default 3, x UPM_TIME_SCALE; at least 4 pin calls and 4
 *     advises, at most 60 s x UPM_TIME_SCALE) a thread pins A's range
 *     (all 1024 pages per call; write and read-only pins alternating), a
 *     second thread advises it, a third rewrites random pages with their
 *     own data (COW of merged pages): every madvise returns 0 or EAGAIN,
 *     every pin call pins the whole range, and A and B keep their data;
 *     then A merges >= 99%.  The longest advise and pin call are reported.
 * Usage: upm_pin_gup [SECONDS]
 */
#include "upmtest.h"
#include <pthread.h>
#include <sys/ioctl.h>

/* mm/gup_test.h of 6.1 (not a UAPI header) */
struct gup_test {
	uint64_t get_delta_usec;
	uint64_t put_delta_usec;
	uint64_t addr;
	uint64_t size;
	uint32_t nr_pages_per_call;
	uint32_t gup_flags;
	uint32_t test_flags;
	uint32_t which_pages[8];
};

#define PIN_LONGTERM_BENCHMARK _IOWR('g', 3, struct gup_test)
#define GUP_FOLL_WRITE 0x01

#define NPAGES 1024
#define GUP_TEST "/sys/kernel/debug/gup_test"

static const uint64_t seed = 0x9b1;
static int gfd;
static char *a;
static int stop;
static long n_pin, n_adv, n_cow;
static double max_pin, max_adv;
static int pin_err, adv_err;

/* Pin and unpin @n pages at @p; returns the number pinned or -errno. */
static long pin(char *p, size_t n, unsigned int flags)
{
	struct gup_test g = {
		.addr = (uintptr_t)p,
		.size = n * PG,
		.nr_pages_per_call = n,
		.gup_flags = flags,
	};

	if (ioctl(gfd, PIN_LONGTERM_BENCHMARK, &g))
		return -errno;
	return g.size / PG;
}

static size_t count_ksm(const char *p, size_t from, size_t to)
{
	size_t k = 0;

	for (size_t i = from; i < to; i++)
		k += ut_kpageflag(ut_pfn(p + i * PG), KPF_KSM) == 1;
	return k;
}

static void *pinner(void *arg)
{
	(void)arg;
	while (!__atomic_load_n(&stop, __ATOMIC_RELAXED)) {
		double t0 = ut_now();
		long r = pin(a, NPAGES, (n_pin & 1) ? 0 : GUP_FOLL_WRITE);

		if (ut_now() - t0 > max_pin)
			max_pin = ut_now() - t0;
		if (r != NPAGES) {
			pin_err = r < 0 ? (int)-r : -1;
			break;
		}
		n_pin++;
		usleep(2000);	/* let the advisor's mmap_lock in */
	}
	return NULL;
}

static void *advisor(void *arg)
{
	(void)arg;
	while (!__atomic_load_n(&stop, __ATOMIC_RELAXED)) {
		double t0 = ut_now();
		int e = upm_advise(a, NPAGES * PG);

		if (ut_now() - t0 > max_adv)
			max_adv = ut_now() - t0;
		if (e && e != EAGAIN) {
			adv_err = e;
			break;
		}
		n_adv++;
	}
	return NULL;
}

static void *cow(void *arg)
{
	unsigned int r = 7;

	(void)arg;
	while (!__atomic_load_n(&stop, __ATOMIC_RELAXED)) {
		size_t i = rand_r(&r) % NPAGES;

		page_fill(a + i * PG, seed, i);
		n_cow++;
		if (!(n_cow & 63))
			usleep(1000);
	}
	return NULL;
}

int main(int argc, char **argv)
{
	double secs = (argc > 1 ? atof(argv[1]) : 3) * ut_scale(), t0;
	static uint64_t pfn[NPAGES];
	struct ut_sharer b;
	pthread_t th[3];
	size_t k, moved = 0;
	long m, r;

	ut_name = "upm_pin_gup";
	ut_require_upm();
	gfd = open(GUP_TEST, O_RDWR);
	if (gfd < 0)
		ut_skip("open %s: %s (kernel without CONFIG_GUP_TEST, or debugfs not mounted)",
			GUP_TEST, strerror(errno));
	ksm_quiesce();
	/* B first: A's pages must not be fork-shared with it */
	ut_sharer_start(&b, NPAGES, seed);
	a = ut_map_anon(NPAGES * PG);
	region_fill(a, NPAGES, seed);

	/* 1. a pin unshares merged pages */
	UT_CHECK(ut_sharer_send(&b, SH_ADVISE) == 0, "advise B failed");
	UT_CHECK(upm_advise(a, NPAGES * PG) == 0, "advise A: %s", strerror(errno));
	k = count_ksm(a, 0, NPAGES);
	UT_CHECK(k * 100 >= NPAGES * 99,
		 "A: only %zu of %d pages are KSM pages after the advise",
		 k, NPAGES);
	for (size_t i = 0; i < NPAGES; i++)
		pfn[i] = ut_pfn(a + i * PG);
	r = pin(a, NPAGES / 2, GUP_FOLL_WRITE);
	UT_CHECK(r == NPAGES / 2, "write pin of %d merged pages pinned %ld (%s)", NPAGES / 2, r,
		 r < 0 ? strerror(-r) : "short");
	r = pin(a + NPAGES / 2 * PG, NPAGES / 2, 0);
	UT_CHECK(r == NPAGES / 2, "read-only pin of %d merged pages pinned %ld (%s)", NPAGES / 2, r,
		 r < 0 ? strerror(-r) : "short");
	for (size_t i = 0; i < NPAGES; i++)
		moved += ut_pfn(a + i * PG) != pfn[i];
	k = count_ksm(a, 0, NPAGES / 2);
	UT_CHECK(k == 0, "%zu of A's %d merged pages stayed KSM pages under a FOLL_WRITE pin", k,
		 NPAGES / 2);
	k = count_ksm(a, NPAGES / 2, NPAGES);
	UT_CHECK(k == 0,
		 "%zu of A's %d merged pages stayed KSM pages under a read-only FOLL_LONGTERM pin (not unshared)",
		 k, NPAGES / 2);
	UT_CHECK(moved == NPAGES, "only %zu of A's %d merged pages got a new page from the pins",
		 moved, NPAGES);
	UT_CHECK(region_bad(a, NPAGES, seed) == 0, "A's data changed by the pins");
	ut_sharer_verify(&b, "B after A's pins");
	m = ut_sharer_send(&b, SH_MERGING);
	ut_note("step 1: pins unshared all %d of A's merged pages; B ksm_merging_pages=%ld", NPAGES,
		m);
	UT_CHECK(upm_advise(a, NPAGES * PG) == 0, "re-advise A: %s", strerror(errno));
	k = count_ksm(a, 0, NPAGES);
	UT_CHECK(k * 100 >= NPAGES * 99, "A: only %zu of %d pages merged again after the pins", k,
		 NPAGES);

	/* 2. pins racing advises and COW */
	if (pthread_create(&th[0], NULL, pinner, NULL) ||
	    pthread_create(&th[1], NULL, advisor, NULL) ||
	    pthread_create(&th[2], NULL, cow, NULL))
		ut_fail("pthread_create failed");
	t0 = ut_now();
	while (ut_now() - t0 < secs || __atomic_load_n(&n_pin, __ATOMIC_RELAXED) < 4 ||
	       __atomic_load_n(&n_adv, __ATOMIC_RELAXED) < 4) {
		if (ut_now() - t0 > 60 * ut_scale() || pin_err || adv_err)
			break;
		usleep(10000);
	}
	secs = ut_now() - t0;
	__atomic_store_n(&stop, 1, __ATOMIC_RELAXED);
	for (int i = 0; i < 3; i++)
		pthread_join(th[i], NULL);
	ut_note("step 2: %.1fs: %ld pin calls of %d pages, %ld advises, %ld page rewrites", secs,
		n_pin, NPAGES, n_adv, n_cow);
	ut_note("step 2: longest pin call %.2fs, longest advise %.2fs", max_pin, max_adv);
	UT_CHECK(!pin_err, "a pin call failed: %s", pin_err > 0 ? strerror(pin_err) : "short pin");
	UT_CHECK(!adv_err, "an advise failed: %s", strerror(adv_err));
	UT_CHECK(n_pin > 0 && n_adv > 0, "no pin (%ld) or no advise (%ld) completed", n_pin, n_adv);
	UT_CHECK(region_bad(a, NPAGES, seed) == 0, "A's data changed during the race");
	ut_sharer_verify(&b, "B after the race");
	UT_CHECK(upm_advise(a, NPAGES * PG) == 0, "final advise A: %s", strerror(errno));
	k = count_ksm(a, 0, NPAGES);
	UT_CHECK(k * 100 >= NPAGES * 99,
		 "A: only %zu of %d pages merged after the race",
		 k, NPAGES);
	UT_CHECK(region_bad(a, NPAGES, seed) == 0, "A's data changed at the end");
	ut_sharer_verify(&b, "B at the end");
	ut_sharer_stop(&b);
	ksm_unmerge_all();
	ksm_set("run", 0);
	return UT_PASS;
}
