// SPDX-License-Identifier: GPL-2.0
/*
 * upm_mmap_contend -- issue #15 defect 5b: a pass never waits for an
 * mmap_lock while it holds ksm_thread_mutex.
 *
 * Process P: thread T1 holds P's mmap_lock for read for long stretches
 * (madvise(MADV_POPULATE_WRITE) of 256 MiB, then MADV_DONTNEED, in a loop)
 * while thread T2 queues for it in write mode (mprotect of one page, in a
 * loop), so that every new reader of P's mmap_lock waits behind T2 for the
 * whole populate.  P's main thread advises a 16 MiB range of distinct
 * pages with MADV_UPM, over and over, for 3 s.  Process Q advises 16
 * distinct pages every 0.2 s in the meantime: each of Q's calls must
 * return within 0.2 s.  A pass that waits for P's mmap_lock with the
 * global mutex held makes Q wait for P's waits.
 */
#include "upmtest.h"
#include <pthread.h>

#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23
#endif

static char *big;
static size_t big_len = 256 * MiB;
static double stop_at;	/* T1 and T2 stop then, whatever P's pass does */

static void *reader(void *arg)
{
	while (ut_now() < stop_at) {
		madvise(big, big_len, MADV_POPULATE_WRITE);
		madvise(big, big_len, MADV_DONTNEED);
	}
	return NULL;
}

static void *writer(void *arg)
{
	char *one = arg;
	int prot = PROT_READ;

	while (ut_now() < stop_at) {
		mprotect(one, PG, prot);
		prot = prot == PROT_READ ? PROT_READ | PROT_WRITE : PROT_READ;
	}
	return NULL;
}

int main(void)
{
	size_t n = 16 * MiB / PG, qn = 16;
	struct ut_chan go, done;
	double worst = 0, end;
	int calls = 0;
	pid_t p;
	char *q;

	ut_name = "upm_mmap_contend";
	ut_require_upm();
	ksm_quiesce();
	ut_chan_init(&go);
	ut_chan_init(&done);
	p = ut_fork();
	if (!p) {
		pthread_t t1, t2;
		char *r = ut_map_anon(n * PG);

		region_fill(r, n, 0x5b0);
		big = ut_map_anon(big_len);
		stop_at = ut_now() + 3.0;
		pthread_create(&t1, NULL, reader, NULL);
		pthread_create(&t2, NULL, writer, ut_map_anon(PG));
		ut_post(&go, 1);
		while (ut_now() < stop_at)
			upm_advise(r, n * PG);
		pthread_join(t1, NULL);
		pthread_join(t2, NULL);
		ut_post(&done, 1);
		_exit(0);
	}
	ut_wait(&go);
	usleep(300000);
	q = ut_map_anon(qn * PG);
	end = ut_now() + 2.5;
	for (uint64_t k = 0; ut_now() < end; k++) {
		double t0, dt;
		int err;

		region_fill(q, qn, 0x5b100 + k);
		t0 = ut_now();
		err = upm_advise(q, qn * PG);
		dt = ut_now() - t0;
		UT_CHECK(err == 0, "Q: advise failed: %s", strerror(err));
		if (dt > worst)
			worst = dt;
		calls++;
		usleep(200000);
	}
	ut_wait(&done);
	ut_reap(p);
	ut_note("Q: %d calls of %zu pages while P's mmap_lock was write-contended, worst %.3f s", calls, qn,
		worst);
	UT_CHECK(worst < 0.2, "Q's MADV_UPM took %.2f s: P's pass waited for P's mmap_lock holding ksm_thread_mutex",
		 worst);
	munmap(q, qn * PG);
	return UT_PASS;
}
