// SPDX-License-Identifier: GPL-2.0
/*
 * upm_scan_wrap -- the UPM reaper moves ksmd's cursor past the end of the
 * mm list: the interrupted scan must end (seqnr++), or ksmd resets its
 * unstable trees while their items still carry the current age and later
 * rb_erase()s them from the new trees (unstable-tree corruption).
 *
 * A (NA distinct pages) and B (NB distinct pages, the first K not touched
 * yet) are MADV_MERGEABLE, in that order on ksmd's list.  ksmd runs full
 * scans (pages_to_scan >= NA+NB: each batch ends at the end of the list)
 * until all pages are in the unstable tree; run=0.  B touches its first K
 * pages, then one batch of NA+NB/2 pages (sleep_millisecs=60000, so one
 * only) stops ksmd in the middle of B, the last mm: B's rmap_items growing
 * by K (/proc/B/ksm_stat) shows that the batch got there.  B is killed: with run=0 the UPM reaper frees B's mm_slot, and B
 * was ksmd's cursor, so the cursor moves to the list head.  That is the end
 * of the scan: full_scans must have grown by one.  Then ksmd runs again
 * (on a DEBUG_VM kernel a reset of trees with current-age items warns), a
 * process C with A's data must merge all of it with A through the unstable
 * tree, data stay intact, and the kernel must not have warned (taint W).
 */
#include "upmtest.h"

#define NA 512
#define NB 256
#define K 16

struct child {
	pid_t pid;
	struct ut_chan go, ready;
};

/*
 * A child: maps np pages, fills pages [skip, np), MADV_MERGEABLE; on 'f'
 * fills [0, skip), on 'v' verifies all, on anything else exits.
 */
static void child_start(struct child *c, size_t np, size_t skip, uint64_t seed)
{
	ut_chan_init(&c->go);
	ut_chan_init(&c->ready);
	c->pid = ut_fork();
	if (c->pid == 0) {
		char *p = ut_map_anon(np * PG);
		char cmd;

		for (size_t i = skip; i < np; i++)
			page_fill(p + i * PG, seed, i);
		if (madvise(p, np * PG, MADV_MERGEABLE))
			_exit(2);
		ut_post(&c->ready, 'r');
		for (;;) {
			cmd = ut_wait(&c->go);
			if (cmd == 'f') {
				for (size_t i = 0; i < skip; i++)
					page_fill(p + i * PG, seed, i);
				ut_post(&c->ready, 'k');
			} else if (cmd == 'v') {
				ut_post(&c->ready, region_bad(p, np, seed) ? 'b' : 'k');
			} else {
				_exit(0);
			}
		}
	}
	UT_CHECK(ut_wait(&c->ready) == 'r', "child %d: MADV_MERGEABLE failed", (int)c->pid);
}

static void child_cmd(struct child *c, char cmd, const char *what)
{
	ut_post(&c->go, cmd);
	UT_CHECK(ut_wait(&c->ready) == 'k', "%s: process %d lost data", what, (int)c->pid);
}

static long rmap_items(pid_t pid)
{
	char path[64], buf[256], *s;

	snprintf(path, sizeof(path), "/proc/%d/ksm_stat", (int)pid);
	if (ut_read_str(path, buf, sizeof(buf)))
		return -1;
	s = strstr(buf, "ksm_rmap_items ");
	return s ? atol(s + strlen("ksm_rmap_items ")) : -1;
}

static long saved_pages, saved_sleep;

static void restore(void)
{
	ksm_set("run", 0);
	ksm_set("pages_to_scan", saved_pages);
	ksm_set("sleep_millisecs", saved_sleep);
}

static void wait_full_scans(long target, const char *what)
{
	double t0 = ut_now();

	while (ksm_get("full_scans") < target) {
		if (ut_now() - t0 > 60 * ut_scale())
			ut_fail("%s: full_scans=%ld, want %ld within %.0fs", what, ksm_get("full_scans"), target,
				60 * ut_scale());
		usleep(20000);
	}
}

static long tainted(void)
{
	return ut_read_long("/proc/sys/kernel/tainted");
}

int main(void)
{
	struct child a, b, c;
	long f, taint0, items;
	double t0;

	ut_name = "upm_scan_wrap";
	ut_require_upm();
	ksm_quiesce();
	taint0 = tainted();
	saved_pages = ksm_get("pages_to_scan");
	saved_sleep = ksm_get("sleep_millisecs");
	atexit(restore);

	/* A then B on the (empty) list: B is the last mm */
	child_start(&a, NA, 0, 0xa11);
	child_start(&b, NB, K, 0xb22);

	/* full scans until A's and B's pages sit in the unstable tree */
	ksm_set("pages_to_scan", 10000);
	ksm_set("sleep_millisecs", 20);
	f = ksm_get("full_scans");
	ksm_set("run", 1);
	wait_full_scans(f + 3, "warm-up");
	ksm_set("run", 0);
	f = ksm_get("full_scans");
	items = rmap_items(b.pid);
	ut_note("warm-up: full_scans=%ld pages_unshared=%ld, B has %ld rmap_items", f,
		ksm_get("pages_unshared"), items);
	UT_CHECK(ksm_get("pages_unshared") == NA + NB - K && items == NB - K,
		 "warm-up: want pages_unshared=%d and %d rmap_items in B, got %ld and %ld", NA + NB - K,
		 NB - K, ksm_get("pages_unshared"), items);

	/* one batch that stops in the middle of B */
	child_cmd(&b, 'f', "B touching its first pages");
	ksm_set("sleep_millisecs", 60000);
	ksm_set("pages_to_scan", NA + NB / 2);
	ksm_set("run", 1);
	usleep(1500000 * ut_scale());
	ksm_set("run", 0);
	ut_note("ksmd stopped: full_scans=%ld, B has %ld rmap_items", ksm_get("full_scans"), rmap_items(b.pid));
	UT_CHECK(ksm_get("full_scans") == f, "the batch ended the scan (full_scans %ld -> %ld)", f,
		 ksm_get("full_scans"));
	UT_CHECK(rmap_items(b.pid) == NB, "the batch did not reach B (%ld rmap_items, want %d)",
		 rmap_items(b.pid), NB);

	/* B exits; the reaper (run=0) frees its slot and moves the cursor */
	kill(b.pid, SIGKILL);
	ut_reap(b.pid);
	t0 = ut_now();
	while (ksm_get("pages_unshared") > NA && ut_now() - t0 < 15 * ut_scale())
		usleep(50000);
	ut_note("after B's exit was reaped: full_scans=%ld pages_unshared=%ld", ksm_get("full_scans"),
		ksm_get("pages_unshared"));
	UT_CHECK(ksm_get("pages_unshared") <= NA, "B's rmap_items were not reaped within %.0fs",
		 15 * ut_scale());
	UT_CHECK(ksm_get("full_scans") == f + 1,
		 "ksmd's cursor was moved past the last mm without ending the scan (full_scans %ld, want "
		 "%ld): ksmd would reset its unstable tree under items of the current age",
		 ksm_get("full_scans"), f + 1);

	/* ksmd resumes: C must merge with every page of A via the unstable tree */
	ksm_set("pages_to_scan", 10000);
	ksm_set("sleep_millisecs", 20);
	ksm_set("run", 1);
	wait_full_scans(f + 3, "after the reap");
	child_start(&c, NA, 0, 0xa11);
	t0 = ut_now();
	while (ksm_get("pages_sharing") < NA && ut_now() - t0 < 60 * ut_scale())
		usleep(50000);
	ksm_set("run", 0);
	ut_note("C merged: pages_shared=%ld pages_sharing=%ld", ksm_get("pages_shared"),
		ksm_get("pages_sharing"));
	UT_CHECK(ksm_get("pages_sharing") >= NA, "C merged only %ld of %d pages with A",
		 ksm_get("pages_sharing"), NA);
	child_cmd(&a, 'v', "A at end");
	child_cmd(&c, 'v', "C at end");
	UT_CHECK(!(tainted() & 512) || (taint0 & 512), "the kernel warned during the test (tainted=%ld)",
		 tainted());
	ut_post(&a.go, 'x');
	ut_post(&c.go, 'x');
	ut_reap(a.pid);
	ut_reap(c.pid);
	return UT_PASS;
}
