// SPDX-License-Identifier: GPL-2.0
/*
 * upm_pin_odirect -- O_DIRECT I/O racing MADV_UPM on the I/O buffer.
 *
 * A direct read takes a reference on each page of the user buffer
 * (bio_iov_iter_get_pages), lets the device write the pages and drops the
 * references when the bio completes.  A page merged in that window would
 * lose the read (A's mapping moved to the KSM page) or, worse, the device
 * would write into a page that another process now maps.  KSM's
 * write_protect_page() refuses pages with such extra references; MADV_UPM
 * must keep that.
 *
 * First, deterministically (userfaultfd holds the read): a direct preadv
 * into A's first 64 pages (pattern C) plus one userfaultfd-registered
 * missing page blocks in GUP on that page while the bio already holds
 * references on the 64 pages.  With the read blocked A advises them, then
 * B rewrites and advises its pages (the same 64 contents): none of A's 64
 * pages may become a KSM page or change PFN.  The fault is then resolved:
 * A must read D in all 65 pages, B keep C.
 *
 * Device: a zram device of its own (hot_add through
 * /sys/class/zram-control, removed at the end; upm_swap keeps zram0),
 * opened O_DIRECT, 4 KiB blocks; blocks 0..N-1 hold pattern D.
 * A (this process) has an N-page buffer (N = 1024, 4 MiB) with pattern C,
 * sharer B holds pattern C too.  For SECONDS (default 4, x UPM_TIME_SCALE),
 * in rounds: A rewrites C into its buffer, then one O_DIRECT pread of
 * blocks 0..N-1 into the buffer starts together with a MADV_UPM that meets
 * A's buffer, in three modes:
 *   0: B's pages are unmerged candidates, a thread of A advises A's buffer
 *      (a merge would make A's page the KSM page and map it into B);
 *   1: A's pages are candidates, B rewrites its pages and advises them
 *      (a merge would move A's mapping to B's page);
 *   2: B's pages are merged KSM pages, a thread of A advises A's buffer
 *      (a merge would move A's mapping to the KSM page).
 *   After each round every page of A must hold D (the read landed in A)
 *   and every page of B its own data (the read landed nowhere else).
 * Then O_DIRECT writes: A's buffer (C) is written to blocks N..2N-1 while
 * A and B advise; the blocks read back (into an unadvised buffer) must be
 * C.  Last, with no I/O in flight, A's advise merges >= 99% with B.
 * The rounds and /sys/kernel/mm/upm/merge_failed (merges refused, e.g. for
 * a reference held by the I/O) are reported.
 * Usage: upm_pin_odirect [SECONDS]
 */
#include "upmtest.h"
#include <linux/userfaultfd.h>
#include <poll.h>
#include <pthread.h>
#include <sys/ioctl.h>
#include <sys/uio.h>

#define NPAGES 1024
#define ZCTL "/sys/class/zram-control/"

static const uint64_t seed_c = 0xd1c, seed_d = 0xd1d, seed_x = 0xd1e;
static char *a;
static pthread_barrier_t go, done;
static int stop;	/* read after a barrier */
static int adv_err;
static int zram_id = -1, zfd = -1;

static void zram_remove(void)
{
	char v[16];

	if (zfd >= 0)
		close(zfd);
	if (zram_id < 0)
		return;
	snprintf(v, sizeof(v), "%d", zram_id);
	if (ut_write_str(ZCTL "hot_remove", v))
		ut_note("zram%d: hot_remove failed", zram_id);
}

/* A zram device of our own; returns its O_DIRECT fd. */
static int zram_open(size_t bytes)
{
	char path[64], v[32];

	if (access(ZCTL "hot_add", R_OK))
		ut_skip("no " ZCTL "hot_add (kernel without CONFIG_ZRAM)");
	if (ut_read_str(ZCTL "hot_add", v, sizeof(v)))
		ut_fail("read " ZCTL "hot_add: %s", strerror(errno));
	zram_id = atoi(v);
	atexit(zram_remove);
	snprintf(path, sizeof(path), "/sys/block/zram%d/disksize", zram_id);
	snprintf(v, sizeof(v), "%zu", bytes);
	ut_must_write(path, v);
	snprintf(path, sizeof(path), "/dev/zram%d", zram_id);
	for (int i = 0; i < 100 && access(path, F_OK); i++)
		usleep(10000);
	zfd = open(path, O_RDWR | O_DIRECT);
	if (zfd < 0)
		ut_fail("open %s O_DIRECT: %s", path, strerror(errno));
	ut_note("zram%d: %zu bytes, O_DIRECT", zram_id, bytes);
	return zfd;
}

static void dio(int write, void *buf, size_t len, off_t off)
{
	ssize_t r = write ? pwrite(zfd, buf, len, off) : pread(zfd, buf, len, off);

	if (r != (ssize_t)len)
		ut_fail("O_DIRECT %s of %zu bytes at %lld: %s", write ? "pwrite" : "pread", len,
			(long long)off, r < 0 ? strerror(errno) : "short");
}

/* A's advising thread: one MADV_UPM of A's buffer per round. */
static void *advisor(void *arg)
{
	(void)arg;
	for (;;) {
		int e;

		pthread_barrier_wait(&go);
		if (stop)
			return NULL;
		e = upm_advise(a, NPAGES * PG);
		if (e && e != EAGAIN)
			adv_err = e;
		pthread_barrier_wait(&done);
	}
}

/*
 * Sharer B: commands on a pipe, one int answer each.
 * 'v': pages not carrying B's current pattern; 'x': rewrite with pattern X
 * (no longer C: B's pages leave the index); 'r': rewrite C and advise (rc);
 * 'a': advise (rc); 'm': ksm_merging_pages.
 */
static void b_main(int cmd, int ack)
{
	char *p = ut_map_anon(NPAGES * PG);
	uint64_t cur = seed_c;
	char c;
	int v;

	region_fill(p, NPAGES, seed_c);
	while (read(cmd, &c, 1) == 1) {
		switch (c) {
		case 'v':
			v = (int)region_bad(p, NPAGES, cur);
			break;
		case 'x':
			cur = seed_x;
			region_fill(p, NPAGES, cur);
			v = 0;
			break;
		case 'r':
			cur = seed_c;
			region_fill(p, NPAGES, cur);
			v = upm_advise(p, NPAGES * PG);
			break;
		case 'a':
			v = upm_advise(p, NPAGES * PG);
			break;
		case 'm':
			v = (int)ut_merging_pages(0);
			break;
		default:
			v = -1;
		}
		if (write(ack, &v, sizeof(v)) != sizeof(v))
			_exit(1);
	}
	_exit(0);
}

static int b_cmd_w, b_ack_r;

static void b_send(char c)
{
	if (write(b_cmd_w, &c, 1) != 1)
		ut_fail("B: command write failed");
}

static int b_answer(void)
{
	int v;

	if (read(b_ack_r, &v, sizeof(v)) != sizeof(v))
		ut_fail("sharer B died");
	return v;
}

/* Pages of @p not carrying (seed, i); first bad index in *first. */
static size_t bad_pages(const char *p, uint64_t seed, size_t *first)
{
	size_t bad = 0;

	for (size_t i = 0; i < NPAGES; i++) {
		if (!page_check(p + i * PG, seed, i)) {
			if (!bad)
				*first = i;
			bad++;
		}
	}
	return bad;
}

#define HELD 64

static char *held;	/* HELD pages of A + 1 userfaultfd page */

static void *held_reader(void *arg)
{
	struct iovec iov[2] = {
		{ held, HELD * PG },
		{ held + HELD * PG, PG },
	};
	ssize_t r = preadv(zfd, iov, 2, 0);

	return (void *)(intptr_t)(r == (HELD + 1) * (ssize_t)PG ? 0 : r < 0 ? errno : -1);
}

/*
 * A direct read held in GUP by a userfaultfd page: its references on the
 * HELD pages before that page must keep them from being merged.
 */
static void held_read(void)
{
	struct uffdio_api api = { .api = UFFD_API };
	struct uffdio_register reg;
	struct uffdio_copy cp;
	struct uffd_msg msg;
	struct pollfd pfd;
	static uint64_t pfn[HELD];
	size_t moved = 0, first = 0;
	char *src;
	pthread_t th;
	void *ret;
	int uffd, e;

	uffd = syscall(__NR_userfaultfd, O_CLOEXEC | O_NONBLOCK);
	if (uffd < 0) {
		ut_note("held read: userfaultfd: %s: part skipped", strerror(errno));
		return;
	}
	if (ioctl(uffd, UFFDIO_API, &api))
		ut_fail("UFFDIO_API: %s", strerror(errno));
	held = ut_map_anon((HELD + 1) * PG);
	src = ut_map_anon(PG);
	for (size_t i = 0; i < HELD; i++)
		page_fill(held + i * PG, seed_c, i);
	memset(&reg, 0, sizeof(reg));
	reg.range.start = (uintptr_t)(held + HELD * PG);
	reg.range.len = PG;
	reg.mode = UFFDIO_REGISTER_MODE_MISSING;
	if (ioctl(uffd, UFFDIO_REGISTER, &reg))
		ut_fail("UFFDIO_REGISTER: %s", strerror(errno));
	for (size_t i = 0; i < HELD; i++)
		pfn[i] = ut_pfn(held + i * PG);
	if (pthread_create(&th, NULL, held_reader, NULL))
		ut_fail("pthread_create failed");
	pfd.fd = uffd;
	pfd.events = POLLIN;
	if (poll(&pfd, 1, (int)(30000 * ut_scale())) != 1)
		ut_fail("held read: the read never faulted on the userfaultfd page (%.0fs)",
			30 * ut_scale());
	if (read(uffd, &msg, sizeof(msg)) != sizeof(msg) || msg.event != UFFD_EVENT_PAGEFAULT)
		ut_fail("held read: no page-fault message from userfaultfd");

	/* the bio holds references on the HELD pages now */
	e = upm_advise(held, HELD * PG);
	UT_CHECK(!e, "held read: advise A: %s", strerror(e));
	b_send('r');
	e = b_answer();
	UT_CHECK(!e, "held read: advise B: %s", strerror(e));
	e = upm_advise(held, HELD * PG);
	UT_CHECK(!e, "held read: advise A again: %s", strerror(e));
	for (size_t i = 0; i < HELD; i++) {
		uint64_t now = ut_pfn(held + i * PG);

		if (now != pfn[i] || ut_kpageflag(now, KPF_KSM) == 1) {
			if (!moved)
				first = i;
			moved++;
		}
	}

	/* let the read finish */
	page_fill(src, 0x5ca1ab1e, 0);
	memset(&cp, 0, sizeof(cp));
	cp.dst = (uintptr_t)(held + HELD * PG);
	cp.src = (uintptr_t)src;
	cp.len = PG;
	if (ioctl(uffd, UFFDIO_COPY, &cp))
		ut_fail("UFFDIO_COPY: %s", strerror(errno));
	pthread_join(th, &ret);
	UT_CHECK(!ret, "held read: preadv failed (%ld)", (long)(intptr_t)ret);
	UT_CHECK(moved == 0,
		 "held read: %zu of the %d pages an in-flight O_DIRECT read referenced were merged (first: page %zu)",
		 moved, HELD, first);
	for (size_t i = 0; i <= HELD; i++)
		UT_CHECK(page_check(held + i * PG, seed_d, i),
			 "held read: page %zu of A lacks the read's data (holds %s)", i,
			 page_check(held + i * PG, seed_c, i) ? "C" : "something else");
	b_send('v');
	e = b_answer();
	UT_CHECK(e == 0, "held read: %d pages of B changed: A's O_DIRECT read landed in B", e);
	ut_note("held read: %d pages referenced by a blocked O_DIRECT read stayed unmerged",
		HELD);
	munmap(held, (HELD + 1) * PG);
	munmap(src, PG);
	close(uffd);
}

static const char *which(const char *p, size_t i)
{
	if (page_check(p + i * PG, seed_c, i))
		return "C (the data before the read)";
	if (page_check(p + i * PG, seed_d, i))
		return "D (the device's data)";
	return "neither C nor D";
}

int main(int argc, char **argv)
{
	double secs = (argc > 1 ? atof(argv[1]) : 4) * ut_scale(), t0;
	long rounds = 0, failed0, failed1, m;
	int cmd[2], ack[2], e;
	size_t bad, first = 0;
	pthread_t th;
	char *scratch;
	pid_t bpid;

	ut_name = "upm_pin_odirect";
	ut_require_upm();
	ksm_quiesce();
	/* B first: A's pages must not be fork-shared with it */
	if (pipe(cmd) || pipe(ack))
		ut_fail("pipe: %s", strerror(errno));
	bpid = ut_fork();
	if (bpid == 0) {
		close(cmd[1]);
		close(ack[0]);
		b_main(cmd[0], ack[1]);
	}
	close(cmd[0]);
	close(ack[1]);
	b_cmd_w = cmd[1];
	b_ack_r = ack[0];
	zram_open(4 * NPAGES * PG);
	a = ut_map_anon(NPAGES * PG);
	scratch = ut_map_anon(NPAGES * PG);
	region_fill(scratch, NPAGES, seed_d);
	dio(1, scratch, NPAGES * PG, 0);
	b_send('a');
	UT_CHECK(b_answer() == 0, "advise B failed");

	held_read();

	pthread_barrier_init(&go, NULL, 2);
	pthread_barrier_init(&done, NULL, 2);
	if (pthread_create(&th, NULL, advisor, NULL))
		ut_fail("pthread_create failed");

	/* direct reads racing MADV_UPM */
	failed0 = upm_get("merge_failed");
	t0 = ut_now();
	while (ut_now() - t0 < secs || rounds < 9) {
		int mode = rounds % 3;
		double t1 = ut_now(), t2;

		switch (mode) {
		case 0:	/* B: candidates (nothing of A matches them now) */
			b_send('x');
			b_answer();
			b_send('r');
			UT_CHECK(b_answer() == 0, "advise B failed");
			region_fill(a, NPAGES, seed_c);
			break;
		case 1:	/* A: candidates (B's pages are X now) */
			b_send('x');
			b_answer();
			region_fill(a, NPAGES, seed_c);
			e = upm_advise(a, NPAGES * PG);
			UT_CHECK(!e || e == EAGAIN, "advise A: %s", strerror(e));
			break;
		case 2:	/* B: KSM pages (merged with A's, which A then rewrites) */
			b_send('r');
			UT_CHECK(b_answer() == 0, "advise B failed");
			region_fill(a, NPAGES, seed_c);
			e = upm_advise(a, NPAGES * PG);
			UT_CHECK(!e || e == EAGAIN, "advise A: %s", strerror(e));
			region_fill(a, NPAGES, seed_c);
			break;
		}
		t2 = ut_now();
		if (mode == 1)
			b_send('r');
		else
			pthread_barrier_wait(&go);
		dio(0, a, NPAGES * PG, 0);
		if (mode == 1) {
			e = b_answer();
			UT_CHECK(!e || e == EAGAIN,
				 "advise B (round %ld): %s",
				 rounds, strerror(e));
		} else {
			pthread_barrier_wait(&done);
		}
		UT_CHECK(!adv_err, "advise A (round %ld): %s", rounds, strerror(adv_err));
		if (rounds < 3)
			ut_note("round %ld: set-up %.3fs, read and advise %.3fs", rounds, t2 - t1,
				ut_now() - t2);
		rounds++;
		bad = bad_pages(a, seed_d, &first);
		UT_CHECK(bad == 0,
			 "round %ld (mode %d): %zu of %zu pages of A lack the data of A's O_DIRECT read; page %zu holds %s",
			 rounds, mode, bad, (size_t)NPAGES, first, which(a, first));
		b_send('v');
		e = b_answer();
		UT_CHECK(e == 0,
			 "round %ld (mode %d): %d pages of B changed: A's O_DIRECT read landed in B",
			 rounds, mode, e);
	}
	failed1 = upm_get("merge_failed");
	ut_note("%ld O_DIRECT reads of 4 MiB raced MADV_UPM in %.1fs, each landed in A only",
		rounds, ut_now() - t0);
	ut_note("merge_failed +%ld (merges refused, e.g. for the reads' page references)",
		failed0 >= 0 ? failed1 - failed0 : -1);

	/* direct writes racing MADV_UPM: the device gets C */
	for (int i = 0; i < 4; i++) {
		region_fill(a, NPAGES, seed_c);
		b_send('r');
		pthread_barrier_wait(&go);
		dio(1, a, NPAGES * PG, NPAGES * PG);
		pthread_barrier_wait(&done);
		e = b_answer();
		UT_CHECK(!e || e == EAGAIN, "advise B: %s", strerror(e));
		UT_CHECK(!adv_err, "advise A: %s", strerror(adv_err));
		memset(scratch, 0, NPAGES * PG);
		dio(0, scratch, NPAGES * PG, NPAGES * PG);
		bad = bad_pages(scratch, seed_c, &first);
		UT_CHECK(bad == 0,
			 "O_DIRECT write %d: %zu of %zu blocks read back wrong (block %zu: %s)",
			 i, bad, (size_t)NPAGES, first, which(scratch, first));
		bad = bad_pages(a, seed_c, &first);
		UT_CHECK(bad == 0,
			 "O_DIRECT write %d: %zu pages of A changed (page %zu: %s)",
			 i, bad,
			 first, which(a, first));
	}
	ut_note("4 O_DIRECT writes of A's buffer racing MADV_UPM: device and A intact");

	stop = 1;
	pthread_barrier_wait(&go);
	pthread_join(th, NULL);

	/* no I/O in flight: A merges with B */
	region_fill(a, NPAGES, seed_c);
	b_send('r');
	UT_CHECK(b_answer() == 0, "advise B failed");
	UT_CHECK(upm_advise(a, NPAGES * PG) == 0, "advise A: %s", strerror(errno));
	m = ut_merging_pages(0);
	ut_note("without I/O A merges %ld of %d pages", m, NPAGES);
	UT_CHECK(m * 100 >= NPAGES * 99L, "without I/O in flight A merged only %ld of %d pages", m,
		 NPAGES);
	b_send('v');
	UT_CHECK(b_answer() == 0, "B's data changed at the end");
	bad = bad_pages(a, seed_c, &first);
	UT_CHECK(bad == 0, "A's data changed at the end (%zu pages)", bad);
	close(b_cmd_w);
	ut_reap(bpid);
	ksm_unmerge_all();
	ksm_set("run", 0);
	return UT_PASS;
}
