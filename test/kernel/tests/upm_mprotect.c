// SPDX-License-Identifier: GPL-2.0
/*
 * upm_mprotect -- MADV_UPM on read-only and PROT_NONE ranges, and mprotect
 * toggles racing advise (adversarial test 4).
 *
 * 1. A read-only range merges (>= 99%) with a sharer's identical data; made
 *    writable again, writes COW and both sides keep their data.
 * 2. A PROT_NONE range: advise returns 0, nothing breaks, data intact after
 *    it is made accessible again.
 * 3. A thread toggles RW/RO/NONE on 1 MiB chunks while the main thread
 *    advises for 3 s: rc is 0 or ENOMEM, data intact afterwards.
 */
#include "upmtest.h"
#include <pthread.h>

static char *q;
static size_t qn;
static volatile int stop;

static void *toggler(void *arg)
{
	static const int prots[] = { PROT_READ, PROT_NONE, PROT_READ | PROT_WRITE };
	unsigned int r = 7;

	(void)arg;
	while (!stop) {
		size_t c = (rand_r(&r) % (qn / 256)) * 256 * PG;

		if (mprotect(q + c, 256 * PG, prots[rand_r(&r) % 3]))
			ut_fail("mprotect: %s", strerror(errno));
	}
	return NULL;
}

int main(void)
{
	size_t n = 8 * MiB / PG, i;
	const uint64_t seed = 0x9207;
	struct ut_sharer a;
	pthread_t t;
	double t0;
	char *p;
	long m, ok = 0, nomem = 0;

	ut_name = "upm_mprotect";
	ut_require_upm();
	ksm_quiesce();
	ut_sharer_start(&a, n, seed);
	UT_CHECK(ut_sharer_send(&a, SH_ADVISE) == 0, "advise A failed");

	/* 1: read-only range merges; RW after merge COWs */
	p = ut_map_anon(n * PG);
	region_fill(p, n, seed);
	UT_CHECK(!mprotect(p, n * PG, PROT_READ), "mprotect RO: %s", strerror(errno));
	UT_CHECK(upm_advise(p, n * PG) == 0, "advise RO range: %s", strerror(errno));
	m = ut_merging_pages(0);
	UT_CHECK(m * 100 >= (long)n * 99, "RO range: ksm_merging_pages=%ld of %zu", m, n);
	UT_CHECK(region_bad(p, n, seed) == 0, "RO range content changed");
	UT_CHECK(!mprotect(p, n * PG, PROT_READ | PROT_WRITE), "mprotect RW: %s", strerror(errno));
	for (i = 0; i < n; i += 2)
		page_fill(p + i * PG, seed + 1, i);
	for (i = 0; i < n; i++)
		UT_CHECK(page_check(p + i * PG, i & 1 ? seed : seed + 1, i), "page %zu wrong after COW", i);
	ut_sharer_verify(&a, "A after our writes");
	munmap(p, n * PG);

	/* 2: PROT_NONE range */
	p = ut_map_anon(n * PG);
	region_fill(p, n, seed);
	UT_CHECK(!mprotect(p, n * PG, PROT_NONE), "mprotect NONE: %s", strerror(errno));
	UT_CHECK(upm_advise(p, n * PG) == 0, "advise PROT_NONE range: %s", strerror(errno));
	UT_CHECK(!mprotect(p, n * PG, PROT_READ | PROT_WRITE), "mprotect RW: %s", strerror(errno));
	UT_CHECK(region_bad(p, n, seed) == 0, "PROT_NONE range content changed");
	munmap(p, n * PG);

	/* 3: toggles racing advise */
	qn = n;
	q = ut_map_anon(n * PG);
	region_fill(q, n, seed);
	pthread_create(&t, NULL, toggler, NULL);
	t0 = ut_now();
	while (ut_now() - t0 < 3) {
		int e = upm_advise(q, n * PG);

		if (e == 0)
			ok++;
		else if (e == ENOMEM)
			nomem++;
		else
			ut_fail("advise during mprotect toggles: %s", strerror(e));
	}
	stop = 1;
	pthread_join(t, NULL);
	UT_CHECK(!mprotect(q, n * PG, PROT_READ | PROT_WRITE), "mprotect RW: %s", strerror(errno));
	ut_note("toggle race: %ld ok, %ld ENOMEM", ok, nomem);
	UT_CHECK(region_bad(q, n, seed) == 0, "content changed during mprotect toggles");
	ut_sharer_verify(&a, "A at end");
	ut_sharer_stop(&a);
	ksm_unmerge_all();
	ksm_set("run", 0);
	return UT_PASS;
}
