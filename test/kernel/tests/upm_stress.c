// SPDX-License-Identifier: GPL-2.0
/*
 * upm_stress -- concurrent advise/write/fork/munmap/mremap/mprotect/exit
 * for SECONDS, every page checked against its expected per-page pattern.
 * Meant for the debug kernel (KASAN, lockdep, DEBUG_VM, page_table_check):
 * `run.sh --debug --stress 180`.
 *
 * Supervisor: keeps NPROC (default 4) worker processes alive, restarting
 * each when it retires (sharer exit), and toggles ksm run 0 <-> 1 (ksmd with
 * pages_to_scan=1000, sleep 0 racing UPM), with an occasional run=2.
 * Worker: an 8 MiB (2 MiB if UPM_TIME_SCALE > 1) private anonymous region where page i holds the pattern
 * (seed + ver[i], i) with ver[i] in 0..3, so the same pages recur across
 * workers and merge.  A writer thread rewrites random pages and checks each
 * write immediately, while the main thread advises (MADV_UPM; MADV_MERGEABLE
 * when the kernel has no MADV_UPM), verifies everything, forks children that
 * check/write/advise/exit, munmaps and remaps chunks, mprotects, mremaps,
 * unmerges ranges, and finally retires after 5-20 s.
 *
 * With UPM_FAULTS=1 in the environment (the debug-extra flavour's
 * upm_stress_faults, `run.sh --debug-extra`), the supervisor sets up the
 * kernel's fault injection (failslab and fail_page_alloc in debugfs,
 * task-filter on, sleeping and highmem allocations included, 1/100 resp.
 * 1/200 of the eligible allocations fail, a stack dump for the first
 * failures of every 5 s) and each worker marks itself
 * /proc/self/make-it-fail, so only the workers, their threads and children
 * see injected failures: ENOMEM/EAGAIN from fork, mmap, munmap,
 * mprotect and mremap are then counted and retried (the region must stay
 * whole), never failures.  The supervisor prints how many failures each
 * capability injected (its `times` counter) and switches injection off.
 * Usage: upm_stress [SECONDS [NPROC [MiB]]]
 */
#include "upmtest.h"
#include <pthread.h>

#define NVER 4
#define SEED 0x57e55

static size_t npg;
static char *base;
static unsigned char *ver;
static pthread_rwlock_t lk = PTHREAD_RWLOCK_INITIALIZER; /* write = structural change */
static volatile int stop;
static int use_upm, advice, faults;
static long nwrites, ninjected;

/*
 * Under fault injection a system call of a worker may fail with ENOMEM or
 * EAGAIN; count it and let the caller retry or skip.  Anything else, or
 * any error without fault injection, is a failure.
 */
static int injected(int e)
{
	if (faults && (e == ENOMEM || e == EAGAIN)) {
		ninjected++;
		usleep(1000);
		return 1;
	}
	return 0;
}

#define FI_DIR "/sys/kernel/debug/"
#define FI_TIMES 100000000L
static const char *const fi_caps[] = { "failslab", "fail_page_alloc" };

static void fi_set(const char *cap, const char *knob, const char *v)
{
	char p[128];

	snprintf(p, sizeof(p), FI_DIR "%s/%s", cap, knob);
	ut_must_write(p, v);
}

/* Fault injection for tasks with make-it-fail (the workers) only. */
static void fi_setup(void)
{
	char t[32];

	for (size_t i = 0; i < 2; i++) {
		char p[128];

		snprintf(p, sizeof(p), FI_DIR "%s/probability", fi_caps[i]);
		if (access(p, W_OK))
			ut_skip("UPM_FAULTS=1 but no %s: not a debug-extra kernel (build.sh --debug-extra)",
				p);
	}
	snprintf(t, sizeof(t), "%ld", FI_TIMES);
	for (size_t i = 0; i < 2; i++) {
		fi_set(fi_caps[i], "task-filter", "Y");
		fi_set(fi_caps[i], "ignore-gfp-wait", "N");
		fi_set(fi_caps[i], "times", t);
		fi_set(fi_caps[i], "space", "0");
		fi_set(fi_caps[i], "verbose", "2");
		fi_set(fi_caps[i], "probability", "10");
	}
	fi_set("failslab", "interval", "10");
	fi_set("fail_page_alloc", "interval", "20");
	fi_set("fail_page_alloc", "ignore-gfp-highmem", "N");
	fi_set("fail_page_alloc", "min-order", "0");
}

static void fi_report(void)
{
	char p[128];

	for (size_t i = 0; i < 2; i++) {
		long left;

		fi_set(fi_caps[i], "probability", "0");
		snprintf(p, sizeof(p), FI_DIR "%s/times", fi_caps[i]);
		left = ut_read_long(p);
		ut_note("fault injection: %s injected %ld failures", fi_caps[i],
			left >= 0 ? FI_TIMES - left : -1);
	}
}

static void die_page(const char *what, size_t i)
{
	const uint64_t *w = (const uint64_t *)(base + i * PG);

	ut_fail("worker %d: %s: page %zu expected ver %d (seed %#llx), found seed %#llx idx %llu", (int)getpid(),
		what, i, ver[i], (unsigned long long)(SEED + ver[i]), (unsigned long long)w[0],
		(unsigned long long)w[1]);
}

static void verify_all(const char *what)
{
	for (size_t i = 0; i < npg; i++)
		if (!page_check(base + i * PG, SEED + ver[i], i))
			die_page(what, i);
}

static void *writer(void *arg)
{
	unsigned int r = (unsigned int)(uintptr_t)arg;

	while (!stop) {
		pthread_rwlock_rdlock(&lk);
		for (int k = 0; k < 8 && !stop; k++) {
			size_t i = rand_r(&r) % npg;
			unsigned char v = rand_r(&r) % NVER;

			page_fill(base + i * PG, SEED + v, i);
			ver[i] = v;
			if (!page_check(base + i * PG, SEED + v, i))
				die_page("lost write", i);
			nwrites++;
		}
		pthread_rwlock_unlock(&lk);
		/* ~1-2k writes/s: enough to race every advise, not enough to starve it */
		usleep(2000 + rand_r(&r) % 3000);
	}
	return NULL;
}

static int adv(char *p, size_t len)
{
	int e = madvise(p, len, advice) ? errno : 0;

	if (e && e != ENOMEM && e != EAGAIN)
		ut_fail("worker %d: madvise(%s) of %zu bytes: %s", (int)getpid(), use_upm ? "MADV_UPM" : "MADV_MERGEABLE",
			len, strerror(e));
	return e;
}

/* mremap one page to @to; an injected failure is retried */
static void move_page(char *from, char *to)
{
	while (mremap(from, PG, PG, MREMAP_MAYMOVE | MREMAP_FIXED, to) == MAP_FAILED)
		if (!injected(errno))
			ut_fail("mremap page: %s", strerror(errno));
}

static void refill(size_t first, size_t count)
{
	for (size_t i = first; i < first + count; i++)
		page_fill(base + i * PG, SEED + ver[i], i);
}

static int worker(double until, unsigned int r)
{
	pthread_t t;
	long ops[8] = { 0 };
	pid_t kids[64];
	int nkids = 0;

	base = ut_map_anon(npg * PG);
	ver = calloc(npg, 1);
	if (!ver)
		ut_fail("calloc");
	for (size_t i = 0; i < npg; i++)
		ver[i] = rand_r(&r) % NVER;
	refill(0, npg);
	if (faults)
		ut_must_write("/proc/self/make-it-fail", "1");
	while ((errno = pthread_create(&t, NULL, writer, (void *)(uintptr_t)(r * 7 + 1))))
		if (!injected(errno))
			ut_fail("pthread_create: %s", strerror(errno));
	while (ut_now() < until) {
		int op = rand_r(&r) % 16;
		size_t c, cnt;

		if (op < 6) { /* advise everything */
			adv(base, npg * PG);
			ops[0]++;
		} else if (op < 8) { /* advise a sub-range */
			c = rand_r(&r) % npg;
			cnt = 1 + rand_r(&r) % (npg - c);
			adv(base + c * PG, cnt * PG);
			ops[1]++;
		} else if (op == 8) {
			pthread_rwlock_wrlock(&lk);
			verify_all("verify");
			pthread_rwlock_unlock(&lk);
			ops[2]++;
		} else if (op == 9 && nkids < 64) { /* fork */
			pid_t k;

			pthread_rwlock_wrlock(&lk);
			k = fork();
			if (k == 0) {
				unsigned int rr = r ^ getpid();

				verify_all("child after fork");
				for (int j = 0; j < 64; j++) {
					size_t i = rand_r(&rr) % npg;

					ver[i] = rand_r(&rr) % NVER;
					page_fill(base + i * PG, SEED + ver[i], i);
				}
				adv(base, npg * PG);
				verify_all("child after write+advise");
				_exit(0);
			}
			pthread_rwlock_unlock(&lk);
			if (k < 0 && injected(errno))
				continue;
			if (k < 0)
				ut_fail("fork: %s", strerror(errno));
			kids[nkids++] = k;
			ops[3]++;
		} else if (op == 10) { /* munmap + remap a 1 MiB chunk */
			size_t chunk = MiB / PG;

			c = (rand_r(&r) % (npg / chunk)) * chunk;
			pthread_rwlock_wrlock(&lk);
			while (munmap(base + c * PG, chunk * PG))
				if (!injected(errno))
					ut_fail("munmap chunk: %s", strerror(errno));
			while (mmap(base + c * PG, chunk * PG, PROT_READ | PROT_WRITE,
				    MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0) == MAP_FAILED)
				if (!injected(errno))
					ut_fail("mmap chunk: %s", strerror(errno));
			refill(c, chunk);
			pthread_rwlock_unlock(&lk);
			ops[4]++;
		} else if (op == 11) { /* read-only while advising */
			pthread_rwlock_wrlock(&lk);
			while (mprotect(base, npg * PG, PROT_READ))
				if (!injected(errno))
					ut_fail("mprotect RO: %s", strerror(errno));
			adv(base, npg * PG);
			verify_all("read-only after advise");
			while (mprotect(base, npg * PG, PROT_READ | PROT_WRITE))
				if (!injected(errno))
					ut_fail("mprotect RW: %s", strerror(errno));
			pthread_rwlock_unlock(&lk);
			ops[5]++;
		} else if (op == 12) { /* move the region (chunk by chunk: it may span VMAs) */
			size_t chunk = MiB / PG;
			char *n = mmap(NULL, npg * PG, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);

			if (n == MAP_FAILED && injected(errno))
				continue;
			if (n == MAP_FAILED)
				ut_fail("mmap for mremap: %s", strerror(errno));
			pthread_rwlock_wrlock(&lk);
			for (c = 0; c < npg; c += chunk) {
				if (mremap(base + c * PG, chunk * PG, chunk * PG, MREMAP_MAYMOVE | MREMAP_FIXED,
					   n + c * PG) != MAP_FAILED)
					continue;
				if (injected(errno)) {
					c -= chunk;	/* again */
					continue;
				}
				if (errno != EFAULT)
					ut_fail("mremap chunk: %s", strerror(errno));
				for (size_t i = c; i < c + chunk; i++) /* chunk spans VMAs: page by page */
					move_page(base + i * PG, n + i * PG);
			}
			base = n;
			verify_all("after mremap");
			pthread_rwlock_unlock(&lk);
			ops[6]++;
		} else if (op == 13) {
			c = rand_r(&r) % npg;
			madvise(base + c * PG, (npg - c) * PG, MADV_UNMERGEABLE);
			ops[7]++;
		} else {
			usleep(rand_r(&r) % 20000);
		}
		for (int j = 0; j < nkids; j++) {
			int st;
			pid_t w = waitpid(kids[j], &st, WNOHANG);

			if (w == kids[j]) {
				if (!WIFEXITED(st) || WEXITSTATUS(st))
					ut_fail("forked child of worker %d failed (status %#x)", (int)getpid(), st);
				kids[j--] = kids[--nkids];
			}
		}
	}
	stop = 1;
	pthread_join(t, NULL);
	while (nkids) {
		if (ut_reap(kids[--nkids]))
			ut_fail("forked child of worker %d failed", (int)getpid());
	}
	verify_all("final");
	printf("worker %d: advise %ld sub %ld verify %ld fork %ld remap %ld ro %ld mremap %ld unmerge %ld writes %ld merging %ld injected %ld\n",
	       (int)getpid(), ops[0], ops[1], ops[2], ops[3], ops[4], ops[5], ops[6], ops[7], nwrites,
	       ut_merging_pages(0), ninjected);
	fflush(stdout);
	return 0;
}

int main(int argc, char **argv)
{
	double secs = argc > 1 ? atof(argv[1]) : 60, end, next_toggle;
	/* 8 MiB regions; 2 MiB on slow (debug, UPM_TIME_SCALE > 1) kernels so
	 * that each worker gets through many operations, not a few advises */
	int nproc = argc > 2 ? atoi(argv[2]) : 4, mib = argc > 3 ? atoi(argv[3]) : ut_scale() > 1 ? 2 : 8;
	const char *why = NULL;
	pid_t pids[64];
	unsigned int r = 12345;
	long spawned = 0, toggles = 0, peak_sharing = 0;

	ut_name = "upm_stress";
	setvbuf(stdout, NULL, _IOLBF, 0);
	if (nproc < 1 || nproc > 64 || mib < 1)
		ut_fail("bad arguments");
	npg = (size_t)mib * MiB / PG;
	use_upm = upm_supported(&why);
	advice = use_upm ? MADV_UPM : MADV_MERGEABLE;
	faults = getenv("UPM_FAULTS") && atoi(getenv("UPM_FAULTS")) > 0;
	ksm_quiesce();
	if (faults)
		fi_setup();
	ksm_set("pages_to_scan", 1000);
	ksm_set("sleep_millisecs", 0);
	if (!use_upm) {
		ut_note("%s: stressing MADV_MERGEABLE + ksmd instead", why);
		ksm_set("run", 1);
	}
	ut_note("%.0fs, %d workers x %d MiB, advice %s", secs, nproc, mib, use_upm ? "MADV_UPM" : "MADV_MERGEABLE");
	end = ut_now() + secs;
	next_toggle = ut_now() + 2;
	for (int i = 0; i < nproc; i++)
		pids[i] = -1;
	while (ut_now() < end) {
		for (int i = 0; i < nproc; i++) {
			if (pids[i] > 0) {
				int st;
				pid_t w = waitpid(pids[i], &st, WNOHANG);

				if (w == 0)
					continue;
				if (!WIFEXITED(st) || WEXITSTATUS(st))
					ut_fail("worker %d failed (status %#x)", (int)pids[i], st);
			}
			if (ut_now() + 1 >= end) {
				pids[i] = -1;
				continue;
			}
			unsigned int seed = rand_r(&r);
			double until = ut_now() + 5 + rand_r(&r) % 16;

			if (until > end)
				until = end;
			pids[i] = ut_fork();
			if (pids[i] == 0)
				_exit(worker(until, seed));
			spawned++;
		}
		if (use_upm && ut_now() >= next_toggle) {
			int v = rand_r(&r) % 10 == 0 ? 2 : (int)(ksm_get("run") == 0);
			char s[2] = { (char)('0' + v), 0 };

			ut_write_str(KSM_DIR "run", s);
			if (v == 2)
				ut_write_str(KSM_DIR "run", "0");
			toggles++;
			next_toggle = ut_now() + 1 + rand_r(&r) % 3;
		}
		if (ksm_get("pages_sharing") > peak_sharing)
			peak_sharing = ksm_get("pages_sharing");
		usleep(100000);
	}
	for (int i = 0; i < nproc; i++)
		if (pids[i] > 0 && ut_reap(pids[i]))
			ut_fail("worker %d failed at the end", (int)pids[i]);
	ut_note("%ld workers run, %ld run toggles, peak pages_sharing %ld", spawned, toggles, peak_sharing);
	if (faults)
		fi_report();
	ksm_unmerge_all();
	ksm_set("run", 0);
	ksm_set("pages_to_scan", 100);
	ksm_set("sleep_millisecs", 20);
	UT_CHECK(peak_sharing > 0, "nothing was ever merged during the stress run");
	return UT_PASS;
}
