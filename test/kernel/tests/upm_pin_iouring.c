// SPDX-License-Identifier: GPL-2.0
/*
 * upm_pin_iouring -- io_uring fixed buffers (FOLL_LONGTERM pins held
 * across system calls) and MADV_UPM.
 *
 * IORING_REGISTER_BUFFERS pins the buffer's pages with
 * pin_user_pages(FOLL_WRITE | FOLL_LONGTERM) until they are unregistered;
 * IORING_OP_READ_FIXED then writes into those pages through the kernel's
 * own reference, whatever the process maps at that address by then.  A
 * pinned page must never be merged: write_protect_page() refuses it (its
 * page_count is above mapcount + 1, and page_try_share_anon_rmap() fails
 * on a maybe-DMA-pinned exclusive page).
 *  1. A (this process) registers 256 pages of pattern C as a fixed buffer;
 *     sharer B holds C.  A advises (A's pages become candidates), B advises
 *     (B meets them), A advises again: none of A's pages may become a KSM
 *     page or change PFN.
 *  2. READ_FIXED of a tmpfs file (pattern D) into the buffer: A must see D,
 *     B still C.  A writes C back; WRITE_FIXED to the file: the file gets C.
 *  3. Unregistered, A and B advise again: A merges with B (>= 99%; B's
 *     pages met A's pinned candidates in step 1 and were not indexed, as
 *     ksmd does not insert a page whose merge with the tree's page
 *     failed); registering again pins with
 *     FOLL_WRITE, which must unshare every merged page (no KSM page left,
 *     new PFNs); READ_FIXED D: A sees D, B C.
 *  4. Unregistered, A rewrites C and merges >= 99%.
 * Kernels without CONFIG_IO_URING (the normal and debug test kernels:
 * tinyconfig leaves it off) SKIP with that reason; the debug-extra flavour
 * (build.sh --debug-extra) has it.
 */
#include "upmtest.h"
#include <linux/io_uring.h>
#include <sys/uio.h>

#define NPAGES 256
#define DATA "/tmp/upm_pin_iouring.dat"

static const uint64_t seed_c = 0x10c, seed_d = 0x10d;

struct ring {
	int fd;
	unsigned int *sq_tail, *sq_mask, *sq_array, *cq_head, *cq_tail, *cq_mask;
	struct io_uring_sqe *sqes;
	struct io_uring_cqe *cqes;
};

static void ring_init(struct ring *r)
{
	struct io_uring_params p;
	size_t sq_len, cq_len;
	char *sq, *cq;

	memset(&p, 0, sizeof(p));
	r->fd = syscall(__NR_io_uring_setup, 4, &p);
	if (r->fd < 0 && errno == ENOSYS)
		ut_skip("no CONFIG_IO_URING (io_uring_setup: ENOSYS); debug-extra kernels have it");
	if (r->fd < 0)
		ut_fail("io_uring_setup: %s", strerror(errno));
	sq_len = p.sq_off.array + p.sq_entries * sizeof(unsigned int);
	cq_len = p.cq_off.cqes + p.cq_entries * sizeof(struct io_uring_cqe);
	if (p.features & IORING_FEAT_SINGLE_MMAP) {
		sq_len = sq_len > cq_len ? sq_len : cq_len;
		cq_len = sq_len;
	}
	sq = mmap(NULL, sq_len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, r->fd,
		  IORING_OFF_SQ_RING);
	if (sq == MAP_FAILED)
		ut_fail("mmap SQ ring: %s", strerror(errno));
	cq = sq;
	if (!(p.features & IORING_FEAT_SINGLE_MMAP)) {
		cq = mmap(NULL, cq_len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, r->fd,
			  IORING_OFF_CQ_RING);
		if (cq == MAP_FAILED)
			ut_fail("mmap CQ ring: %s", strerror(errno));
	}
	r->sqes = mmap(NULL, p.sq_entries * sizeof(struct io_uring_sqe), PROT_READ | PROT_WRITE,
		       MAP_SHARED | MAP_POPULATE, r->fd, IORING_OFF_SQES);
	if (r->sqes == MAP_FAILED)
		ut_fail("mmap SQEs: %s", strerror(errno));
	r->sq_tail = (unsigned int *)(sq + p.sq_off.tail);
	r->sq_mask = (unsigned int *)(sq + p.sq_off.ring_mask);
	r->sq_array = (unsigned int *)(sq + p.sq_off.array);
	r->cq_head = (unsigned int *)(cq + p.cq_off.head);
	r->cq_tail = (unsigned int *)(cq + p.cq_off.tail);
	r->cq_mask = (unsigned int *)(cq + p.cq_off.ring_mask);
	r->cqes = (struct io_uring_cqe *)(cq + p.cq_off.cqes);
}

/* One fixed-buffer read or write of @len bytes at @off; returns cqe->res. */
static int ring_rw(struct ring *r, int op, int fd, void *buf, size_t len, off_t off)
{
	unsigned int tail = *r->sq_tail, idx = tail & *r->sq_mask, head;
	struct io_uring_sqe *sqe = &r->sqes[idx];
	int res;

	memset(sqe, 0, sizeof(*sqe));
	sqe->opcode = op;
	sqe->fd = fd;
	sqe->addr = (uintptr_t)buf;
	sqe->len = len;
	sqe->off = off;
	sqe->buf_index = 0;
	r->sq_array[idx] = idx;
	__atomic_store_n(r->sq_tail, tail + 1, __ATOMIC_RELEASE);
	if (syscall(__NR_io_uring_enter, r->fd, 1, 1, IORING_ENTER_GETEVENTS, NULL, 0) < 0)
		ut_fail("io_uring_enter: %s", strerror(errno));
	head = *r->cq_head;
	if (head == __atomic_load_n(r->cq_tail, __ATOMIC_ACQUIRE))
		ut_fail("io_uring_enter returned without a completion");
	res = r->cqes[head & *r->cq_mask].res;
	__atomic_store_n(r->cq_head, head + 1, __ATOMIC_RELEASE);
	return res;
}

static void reg(struct ring *r, void *buf, size_t len)
{
	struct iovec iov = { buf, len };

	if (syscall(__NR_io_uring_register, r->fd, IORING_REGISTER_BUFFERS, &iov, 1))
		ut_fail("IORING_REGISTER_BUFFERS of %zu bytes: %s", len, strerror(errno));
}

static void unreg(struct ring *r)
{
	if (syscall(__NR_io_uring_register, r->fd, IORING_UNREGISTER_BUFFERS, NULL, 0))
		ut_fail("IORING_UNREGISTER_BUFFERS: %s", strerror(errno));
}

static size_t count_ksm(const char *p)
{
	size_t k = 0;

	for (size_t i = 0; i < NPAGES; i++)
		k += ut_kpageflag(ut_pfn(p + i * PG), KPF_KSM) == 1;
	return k;
}

static size_t count_moved(const char *p, const uint64_t *pfn)
{
	size_t k = 0;

	for (size_t i = 0; i < NPAGES; i++)
		k += ut_pfn(p + i * PG) != pfn[i];
	return k;
}

int main(void)
{
	size_t len = NPAGES * PG, k, moved;
	static uint64_t pfn[NPAGES];
	struct ut_sharer b;
	char *a, *scratch;
	struct ring r;
	int dfd, res;
	long m;

	ut_name = "upm_pin_iouring";
	ut_require_upm();
	ring_init(&r);
	ksm_quiesce();
	/* B first: A's pages must not be fork-shared with it */
	ut_sharer_start(&b, NPAGES, seed_c);
	a = ut_map_anon(len);
	scratch = ut_map_anon(len);
	dfd = open(DATA, O_RDWR | O_CREAT | O_TRUNC, 0600);
	if (dfd < 0)
		ut_fail("open %s: %s", DATA, strerror(errno));
	unlink(DATA);
	region_fill(scratch, NPAGES, seed_d);
	UT_CHECK(pwrite(dfd, scratch, len, 0) == (ssize_t)len, "write %s: %s", DATA,
		 strerror(errno));
	region_fill(a, NPAGES, seed_c);

	/* 1. registered (pinned) pages must not merge */
	reg(&r, a, len);
	for (size_t i = 0; i < NPAGES; i++)
		pfn[i] = ut_pfn(a + i * PG);
	UT_CHECK(upm_advise(a, len) == 0, "advise A: %s", strerror(errno));
	UT_CHECK(ut_sharer_send(&b, SH_ADVISE) == 0, "advise B failed");
	UT_CHECK(upm_advise(a, len) == 0, "re-advise A: %s", strerror(errno));
	k = count_ksm(a);
	moved = count_moved(a, pfn);
	UT_CHECK(k == 0 && moved == 0,
		 "%zu of A's %d pages pinned as a fixed buffer became KSM pages, %zu moved",
		 k, NPAGES, moved);
	m = ut_merging_pages(0);
	UT_CHECK(m == 0, "A's ksm_merging_pages=%ld while all its pages are pinned", m);

	/* 2. fixed-buffer I/O lands in A only */
	res = ring_rw(&r, IORING_OP_READ_FIXED, dfd, a, len, 0);
	UT_CHECK(res == (int)len, "READ_FIXED: %d (%s)", res, res < 0 ? strerror(-res) : "short");
	k = region_bad(a, NPAGES, seed_d);
	UT_CHECK(k == 0, "%zu of A's %d pages lack the data READ_FIXED put in its pinned buffer", k,
		 NPAGES);
	ut_sharer_verify(&b, "B after A's READ_FIXED");
	region_fill(a, NPAGES, seed_c);
	res = ring_rw(&r, IORING_OP_WRITE_FIXED, dfd, a, len, len);
	UT_CHECK(res == (int)len, "WRITE_FIXED: %d (%s)", res, res < 0 ? strerror(-res) : "short");
	UT_CHECK(pread(dfd, scratch, len, len) == (ssize_t)len, "pread: %s", strerror(errno));
	k = region_bad(scratch, NPAGES, seed_c);
	UT_CHECK(k == 0, "WRITE_FIXED wrote %zu of %d pages wrong", k, NPAGES);
	ut_note("steps 1-2: pinned pages not merged (PFNs unchanged), fixed-buffer I/O correct");

	/* 3. registering merged pages unshares them */
	unreg(&r);
	UT_CHECK(upm_advise(a, len) == 0, "advise A: %s", strerror(errno));
	UT_CHECK(ut_sharer_send(&b, SH_ADVISE) == 0, "advise B failed");
	k = count_ksm(a);
	UT_CHECK(k * 100 >= NPAGES * 99, "unpinned, only %zu of A's %d pages merged", k, NPAGES);
	for (size_t i = 0; i < NPAGES; i++)
		pfn[i] = ut_pfn(a + i * PG);
	reg(&r, a, len);
	k = count_ksm(a);
	moved = count_moved(a, pfn);
	UT_CHECK(k == 0 && moved == NPAGES,
		 "registering merged pages as a fixed buffer left %zu KSM pages, moved %zu of %d",
		 k, moved, NPAGES);
	res = ring_rw(&r, IORING_OP_READ_FIXED, dfd, a, len, 0);
	UT_CHECK(res == (int)len, "READ_FIXED: %d (%s)", res, res < 0 ? strerror(-res) : "short");
	k = region_bad(a, NPAGES, seed_d);
	UT_CHECK(k == 0, "%zu of A's pages lack READ_FIXED's data (merged before the pin)", k);
	ut_sharer_verify(&b, "B after A's READ_FIXED into once-merged pages");
	ut_note("step 3: pinning merged pages unshared all %d, READ_FIXED landed in A", NPAGES);

	/* 4. unpinned again: A merges */
	unreg(&r);
	region_fill(a, NPAGES, seed_c);
	UT_CHECK(upm_advise(a, len) == 0, "advise A: %s", strerror(errno));
	k = count_ksm(a);
	UT_CHECK(k * 100 >= NPAGES * 99, "after unregistering, only %zu of %d pages merged", k,
		 NPAGES);
	UT_CHECK(region_bad(a, NPAGES, seed_c) == 0, "A's data changed at the end");
	ut_sharer_verify(&b, "B at the end");
	ut_sharer_stop(&b);
	close(dfd);
	close(r.fd);
	ksm_unmerge_all();
	ksm_set("run", 0);
	return UT_PASS;
}
