// SPDX-License-Identifier: GPL-2.0
/*
 * upm_run_toggle -- ksm "run" toggled 0/1/2 while processes advise
 * (adversarial test 13).
 *
 * Two processes advise identical 8 MiB regions in a loop while the test
 * switches run between 0, 1 (ksmd with pages_to_scan=1000, sleep 0) and 2
 * every 20-100 ms for SECONDS (default 5).  Every madvise must return 0 or
 * EAGAIN; nothing hangs (per-test timeout).  Then with run=2 settled an
 * advise returns EAGAIN or 0; counters are 0 after the unmerge; data intact.
 * Usage: upm_run_toggle [SECONDS]
 */
#include "upmtest.h"

static pid_t advisor(size_t n, double secs, struct ut_chan *ready)
{
	pid_t c = ut_fork();

	if (c == 0) {
		char *p = ut_map_anon(n * PG);
		long ok = 0, again = 0;
		double t0;

		region_fill(p, n, 0x7091);
		ut_post(ready, 1);
		t0 = ut_now();
		while (ut_now() - t0 < secs) {
			int e = upm_advise(p, n * PG);

			if (e == 0)
				ok++;
			else if (e == EAGAIN)
				again++;
			else
				ut_fail("advise during run toggles: %s", strerror(e));
		}
		UT_CHECK(region_bad(p, n, 0x7091) == 0, "data changed during run toggles");
		ut_note("advisor %d: %ld ok, %ld EAGAIN", (int)getpid(), ok, again);
		_exit(0);
	}
	return c;
}

int main(int argc, char **argv)
{
	double secs = argc > 1 ? atof(argv[1]) : 5, t0;
	size_t n = 8 * MiB / PG;
	struct ut_chan ready;
	unsigned int r = 3;
	long toggles = 0, werr = 0;
	pid_t a, b;
	char *p;
	int e;

	ut_name = "upm_run_toggle";
	ut_require_upm();
	ksm_quiesce();
	ksm_set("pages_to_scan", 1000);
	ksm_set("sleep_millisecs", 0);
	ut_chan_init(&ready);
	a = advisor(n, secs, &ready);
	b = advisor(n, secs, &ready);
	ut_wait(&ready);
	ut_wait(&ready);
	t0 = ut_now();
	while (ut_now() - t0 < secs) {
		char v[2] = { (char)('0' + rand_r(&r) % 3), 0 };

		if (ut_write_str(KSM_DIR "run", v))
			werr++;
		toggles++;
		usleep(20000 + rand_r(&r) % 80000);
	}
	UT_CHECK(ut_reap(a) == 0, "advisor A failed");
	UT_CHECK(ut_reap(b) == 0, "advisor B failed");
	ut_note("%ld run toggles (%ld writes refused)", toggles, werr);

	ksm_unmerge_all(); /* run=2, counters 0 */
	p = ut_map_anon(n * PG);
	region_fill(p, n, 0x7091);
	e = upm_advise(p, n * PG);
	ut_note("advise with run=2: %s", e ? strerror(e) : "0");
	UT_CHECK(e == 0 || e == EAGAIN, "advise with run=2: %s, want EAGAIN or 0", strerror(e));
	UT_CHECK(region_bad(p, n, 0x7091) == 0, "data changed by advise with run=2");
	ksm_set("run", 0);
	ksm_set("pages_to_scan", 100);
	ksm_set("sleep_millisecs", 20);
	return UT_PASS;
}
