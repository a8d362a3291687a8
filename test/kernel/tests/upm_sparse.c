// SPDX-License-Identifier: GPL-2.0
/*
 * upm_sparse -- huge and sparse ranges (adversarial test 9).
 *
 * 1. A 64 GiB PROT_NONE MAP_NORESERVE mapping is advised: returns 0 within
 *    30 s (holes must be skipped, not walked page by page).
 * 2. A 64 GiB read-write NORESERVE mapping with one touched page per GiB
 *    (identical content) is advised: 0 within 30 s (x UPM_TIME_SCALE), the 64 touched pages
 *    merge (>= 63 counted), content intact.
 * 3. A child advising such a range in a loop is SIGKILLed: it must be gone
 *    within 10 s.
 * Timings are printed; the per-test timeout catches a hang.
 */
#include "upmtest.h"

#define BIG (64 * GiB)

static char *map_big(int prot)
{
	char *p = mmap(NULL, BIG, prot, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);

	if (p == MAP_FAILED)
		ut_fail("mmap 64 GiB NORESERVE: %s", strerror(errno));
	return p;
}

int main(void)
{
	double t0, dt;
	char *p;
	pid_t c;
	int e, st;
	long m;

	ut_name = "upm_sparse";
	ut_require_upm();
	ksm_quiesce();

	p = map_big(PROT_NONE);
	t0 = ut_now();
	e = upm_advise(p, BIG);
	dt = ut_now() - t0;
	ut_note("64 GiB PROT_NONE: rc %s in %.3fs", e ? strerror(e) : "0", dt);
	UT_CHECK(e == 0, "advise 64 GiB PROT_NONE: %s", strerror(e));
	UT_CHECK(dt < 30 * ut_scale(), "advise 64 GiB PROT_NONE took %.1fs (holes walked page by page?)", dt);
	munmap(p, BIG);

	p = map_big(PROT_READ | PROT_WRITE);
	for (size_t g = 0; g < 64; g++)
		page_fill(p + g * GiB + 12345 * PG, 0x5a5, 0);
	t0 = ut_now();
	e = upm_advise(p, BIG);
	dt = ut_now() - t0;
	m = ut_merging_pages(0);
	ut_note("64 GiB sparse RW: rc %s in %.3fs, ksm_merging_pages=%ld of 64", e ? strerror(e) : "0", dt, m);
	UT_CHECK(e == 0, "advise 64 GiB sparse: %s", strerror(e));
	UT_CHECK(dt < 30 * ut_scale(), "advise 64 GiB sparse took %.1fs", dt);
	UT_CHECK(m >= 63, "64 identical sparse pages: ksm_merging_pages=%ld, want >= 63", m);
	for (size_t g = 0; g < 64; g++)
		UT_CHECK(page_check(p + g * GiB + 12345 * PG, 0x5a5, 0), "sparse page %zu changed", g);
	munmap(p, BIG);

	c = ut_fork();
	if (c == 0) {
		p = map_big(PROT_READ | PROT_WRITE);
		for (size_t g = 0; g < BIG; g += 16 * MiB)
			page_fill(p + g, 0x5a6, g & 7);
		for (;;)
			upm_advise(p, BIG);
	}
	usleep(1500 * 1000);
	t0 = ut_now();
	kill(c, SIGKILL);
	while (waitpid(c, &st, WNOHANG) == 0) {
		if (ut_now() - t0 > 10 * ut_scale())
			ut_fail("process advising 64 GiB still alive %.0fs after SIGKILL", 10 * ut_scale());
		usleep(10000);
	}
	ut_note("SIGKILL during advise: reaped after %.3fs", ut_now() - t0);
	ksm_unmerge_all();
	ksm_set("run", 0);
	return UT_PASS;
}
