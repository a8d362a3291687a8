// SPDX-License-Identifier: GPL-2.0
/*
 * upm_munmap_race -- munmap/mmap racing MADV_UPM (adversarial test 1).
 *
 * In the test process, thread 1 advises a 16 MiB region in a loop while
 * thread 2 munmaps random 2 MiB chunks, maps them again (MAP_FIXED) and
 * refills their pattern; a sharer with identical content advises too.
 * Every madvise must return 0 or ENOMEM (a hole), nothing may crash or
 * hang, and afterwards every page of both processes carries its pattern.
 * Usage: upm_munmap_race [SECONDS]   (default 5)
 */
#include "upmtest.h"
#include <pthread.h>

#define REGION (16 * MiB)
#define CHUNK (2 * MiB)

static char *base;
static volatile int stop;
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static const uint64_t seed = 0x3a7;
static long n_ok, n_nomem, n_other, last_err;

static void *advisor(void *arg)
{
	(void)arg;
	while (!stop) {
		int e = upm_advise(base, REGION);

		if (!e)
			n_ok++;
		else if (e == ENOMEM)
			n_nomem++;
		else
			n_other++, last_err = e;
	}
	return NULL;
}

static void *remapper(void *arg)
{
	unsigned int r = 1;

	(void)arg;
	while (!stop) {
		size_t c = (rand_r(&r) % (REGION / CHUNK)) * CHUNK;
		char *p = base + c;

		pthread_mutex_lock(&lock);
		if (munmap(p, CHUNK))
			ut_fail("munmap: %s", strerror(errno));
		usleep(rand_r(&r) % 2000);
		if (mmap(p, CHUNK, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0) != p)
			ut_fail("mmap MAP_FIXED: %s", strerror(errno));
		for (size_t i = 0; i < CHUNK / PG; i++)
			page_fill(p + i * PG, seed, c / PG + i);
		pthread_mutex_unlock(&lock);
		usleep(rand_r(&r) % 5000);
	}
	return NULL;
}

int main(int argc, char **argv)
{
	double secs = argc > 1 ? atof(argv[1]) : 5, t0;
	size_t n = REGION / PG, bad;
	struct ut_sharer b;
	pthread_t t1, t2;
	long b_ok = 0, b_err = 0;

	ut_name = "upm_munmap_race";
	ut_require_upm();
	ksm_quiesce();
	base = ut_map_anon(REGION);
	region_fill(base, n, seed);
	ut_sharer_start(&b, n, seed);
	pthread_create(&t1, NULL, advisor, NULL);
	pthread_create(&t2, NULL, remapper, NULL);
	t0 = ut_now();
	while (ut_now() - t0 < secs) {
		int e = ut_sharer_send(&b, SH_ADVISE);

		e ? b_err++ : b_ok++;
		usleep(10000);
	}
	stop = 1;
	pthread_join(t1, NULL);
	pthread_join(t2, NULL);
	ut_note("advise: %ld ok, %ld ENOMEM, %ld other (last %s); sharer %ld ok %ld err", n_ok, n_nomem,
		n_other, n_other ? strerror(last_err) : "-", b_ok, b_err);
	UT_CHECK(n_other == 0, "%ld madvise calls failed with something else than ENOMEM (last: %s)",
		 n_other, strerror(last_err));
	UT_CHECK(b_err == 0, "sharer's own advise failed %ld times", b_err);
	UT_CHECK(n_ok + n_nomem > 0, "advisor thread made no progress");
	bad = region_bad(base, n, seed);
	UT_CHECK(bad == 0, "%zu pages lost their content in the racing process", bad);
	ut_sharer_verify(&b, "sharer after race");
	/* one more quiet advise must succeed and merge (nearly) everything */
	UT_CHECK(upm_advise(base, REGION) == 0, "final advise failed: %s", strerror(errno));
	ut_note("final ksm_merging_pages=%ld of %zu", ut_merging_pages(0), n);
	UT_CHECK(region_bad(base, n, seed) == 0, "content lost after final advise");
	ut_sharer_stop(&b);
	ksm_unmerge_all();
	ksm_set("run", 0);
	return UT_PASS;
}
