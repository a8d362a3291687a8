// SPDX-License-Identifier: GPL-2.0
/*
 * upm_drain -- issue #15 defect 5a: MADV_UPM does not drain the LRU
 * batches of every CPU (lru_add_drain_all()) on each call.
 *
 * A SCHED_FIFO process on CPU 1 faults 8 new pages (they sit in CPU 1's
 * LRU batch) and then spins for 2 s + 0.4 s x UPM_TIME_SCALE with RT
 * throttling off, so no kworker runs on CPU 1.  Meanwhile, on CPU 0, A and
 * B advise 64 identical pages each: B's call must return within 0.4 s x
 * UPM_TIME_SCALE and merge >= 99% (the pages are drained on the local
 * CPU).  An lru_add_drain_all() per call waits for CPU 1's kworker, i.e.
 * for the spinner.  C, advising the same data before the spinner starts,
 * gives the time of such a call without it (printed).
 */
#include "upmtest.h"

#define RT_RUNTIME "/proc/sys/kernel/sched_rt_runtime_us"

int main(void)
{
	size_t n = 64;
	struct ut_sharer a, b, c;
	double limit = 0.4 * ut_scale(), base;
	struct ut_chan ready;
	char old_rt[32];
	double t0, dt;
	pid_t spin;
	long m;
	int err;

	ut_name = "upm_drain";
	ut_require_upm();
	if (sysconf(_SC_NPROCESSORS_ONLN) < 2)
		ut_skip("needs 2 CPUs");
	UT_CHECK(ut_read_str(RT_RUNTIME, old_rt, sizeof(old_rt)) == 0, "read " RT_RUNTIME);
	ksm_quiesce();
	ut_pin_cpu(0);
	ut_sharer_start(&a, n, 0xd4a);
	ut_sharer_start(&b, n, 0xd4a);
	ut_sharer_start(&c, n, 0xd4a);
	UT_CHECK(ut_sharer_send(&a, SH_ADVISE) == 0, "advise A failed");
	t0 = ut_now();
	UT_CHECK(ut_sharer_send(&c, SH_ADVISE) == 0, "advise C failed");
	base = ut_now() - t0;

	ut_chan_init(&ready);
	ut_must_write(RT_RUNTIME, "-1");
	spin = ut_fork();
	if (!spin) {
		struct sched_param sp = { .sched_priority = 50 };
		char *p;
		double end;

		ut_pin_cpu(1);
		if (sched_setscheduler(0, SCHED_FIFO, &sp))
			_exit(2);
		p = ut_map_anon(8 * PG);
		for (int i = 0; i < 8; i++)
			p[i * PG] = 1;	/* new pages in CPU 1's LRU add batch */
		ut_post(&ready, 1);
		end = ut_now() + 2.0 + limit;
		while (ut_now() < end)
			;
		_exit(0);
	}
	ut_wait(&ready);
	usleep(50000);
	t0 = ut_now();
	err = ut_sharer_send(&b, SH_ADVISE);
	dt = ut_now() - t0;
	ut_reap(spin);
	ut_must_write(RT_RUNTIME, old_rt);
	UT_CHECK(err == 0, "advise B failed: %s", strerror(err));
	m = ut_sharer_send(&b, SH_MERGING);
	ut_note("MADV_UPM of %zu pages while CPU 1 runs a SCHED_FIFO spinner: %.3f s (%.3f s without it), "
		"%ld merged", n, dt, base, m);
	UT_CHECK(dt < limit, "MADV_UPM took %.2f s (limit %.2f s, %.3f s without the spinner): it waited for "
		 "the other CPU (lru_add_drain_all per call)", dt, limit, base);
	UT_CHECK(m * 100 >= (long)n * 99, "B merged only %ld of %zu", m, n);
	ut_sharer_verify(&a, "A");
	ut_sharer_verify(&b, "B");
	ut_sharer_stop(&a);
	ut_sharer_stop(&b);
	ut_sharer_stop(&c);
	ksm_unmerge_all();
	ksm_set("run", 0);
	return UT_PASS;
}
