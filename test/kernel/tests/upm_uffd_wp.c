// SPDX-License-Identifier: GPL-2.0
/*
 * upm_uffd_wp -- userfaultfd write-protected ranges and MADV_UPM (#15).
 *
 * A monitor that write-protects a range with userfaultfd (UFFDIO_WRITEPROTECT)
 * must see every later write to it as a fault (live migration, snapshots).
 * The uffd-wp marker is a bit of the PTE.  Merging replaces the PTE with one
 * of the ksm page: if the new PTE lacks the bit, a write COWs the ksm page
 * silently and the monitor never learns that the page changed.
 *
 * A (registered with UFFDIO_REGISTER_MODE_WP and write-protected) and B hold
 * the same NPAGES pages; both are advised.  Then a thread writes one merged
 * page of A: the write must arrive at the userfaultfd as a WP fault, and
 * complete only after the monitor unprotects the page.  Data of A and B
 * checked after.
 */
#include "upmtest.h"
#include <linux/userfaultfd.h>
#include <poll.h>
#include <pthread.h>
#include <sys/ioctl.h>

#define NPAGES 64
#define VICTIM 3

static char *a;
static int written;

/* The flag is set only after the write (a release store orders them). */
static void *writer(void *arg)
{
	volatile char *v = a + VICTIM * PG;

	(void)arg;
	*v ^= 0x5a;
	__atomic_store_n(&written, 1, __ATOMIC_RELEASE);
	return NULL;
}

static int was_written(void)
{
	return __atomic_load_n(&written, __ATOMIC_ACQUIRE);
}

static void wp_range(int uffd, char *p, size_t len, int on)
{
	struct uffdio_writeprotect wp = {
		.range = { .start = (uintptr_t)p, .len = len },
		.mode = on ? UFFDIO_WRITEPROTECT_MODE_WP : 0,
	};

	if (ioctl(uffd, UFFDIO_WRITEPROTECT, &wp))
		ut_fail("UFFDIO_WRITEPROTECT(%d): %s", on, strerror(errno));
}

static int uffd_wp_open(char *p, size_t len)
{
	struct uffdio_api api = { .api = UFFD_API };
	struct uffdio_register reg = {
		.range = { .start = (uintptr_t)p, .len = len },
		.mode = UFFDIO_REGISTER_MODE_WP,
	};
	int uffd = syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK);

	if (uffd < 0)
		ut_skip("userfaultfd: %s (CONFIG_USERFAULTFD?)", strerror(errno));
	if (ioctl(uffd, UFFDIO_API, &api))
		ut_fail("UFFDIO_API: %s", strerror(errno));
	if (ioctl(uffd, UFFDIO_REGISTER, &reg)) {
		if (errno == EINVAL)
			ut_skip("UFFDIO_REGISTER_MODE_WP on anonymous memory: EINVAL (no uffd-wp)");
		ut_fail("UFFDIO_REGISTER(WP): %s", strerror(errno));
	}
	return uffd;
}

int main(void)
{
	size_t n = NPAGES, bad;
	struct uffd_msg msg;
	struct pollfd pfd;
	pthread_t t;
	char *b;
	int uffd, got;

	ut_name = "upm_uffd_wp";
	ut_require_upm();
	if (ut_pfn(&n) == 0)
		ut_skip("pagemap shows no PFNs (not root?)");
	ksm_quiesce();
	a = ut_map_anon(n * PG);
	b = ut_map_anon(n * PG);
	region_fill(a, n, 0x7f1);
	region_fill(b, n, 0x7f1);
	uffd = uffd_wp_open(a, n * PG);
	wp_range(uffd, a, n * PG, 1);

	UT_CHECK(upm_advise(a, n * PG) == 0, "advise A: %s", strerror(errno));
	UT_CHECK(upm_advise(b, n * PG) == 0, "advise B: %s", strerror(errno));
	ut_note("after advice: %zu of %zu pages of A are ksm pages, ksm_merging_pages=%ld",
		ut_ksm_pages(a, n), n, ut_merging_pages(0));
	UT_CHECK(ut_ksm_pages(a, n) > VICTIM, "A did not merge: the test checks nothing");
	{
		uint64_t pfn = ut_pfn(a + VICTIM * PG);

		UT_CHECK(pfn && ut_kpageflag(pfn, KPF_KSM) == 1, "page %d of A is not a ksm page", VICTIM);
	}

	UT_CHECK(pthread_create(&t, NULL, writer, NULL) == 0, "pthread_create failed");
	pfd = (struct pollfd){ .fd = uffd, .events = POLLIN };
	got = poll(&pfd, 1, (int)(5000 * ut_scale()));
	if (got == 1 && read(uffd, &msg, sizeof(msg)) == (ssize_t)sizeof(msg)) {
		ut_note("uffd event %#x at %#llx flags %#llx (page %lld of A), written before=%d", msg.event,
			(unsigned long long)msg.arg.pagefault.address,
			(unsigned long long)msg.arg.pagefault.flags,
			(long long)(((uintptr_t)msg.arg.pagefault.address - (uintptr_t)a) / PG), was_written());
		UT_CHECK(msg.event == UFFD_EVENT_PAGEFAULT &&
			 (msg.arg.pagefault.flags & UFFD_PAGEFAULT_FLAG_WP) &&
			 msg.arg.pagefault.address / PG == (uintptr_t)(a + VICTIM * PG) / PG,
			 "the write to merged page %d of A did not arrive as its WP fault", VICTIM);
		UT_CHECK(!was_written(), "the write completed before the monitor unprotected the page");
		wp_range(uffd, a + VICTIM * PG, PG, 0);
	} else {
		UT_CHECK(0, "a write to a merged, uffd write-protected page of A was not reported to the "
			 "userfaultfd (poll %d, written %d): the merge dropped the PTE's uffd-wp bit", got, was_written());
	}
	pthread_join(t, NULL);
	UT_CHECK(was_written(), "the writer did not finish");
	bad = region_bad(a, n, 0x7f1);
	UT_CHECK(bad == 1 && region_bad(b, n, 0x7f1) == 0,
		 "after the write: %zu pages of A (want 1) and %zu of B (want 0) differ from their pattern", bad,
		 region_bad(b, n, 0x7f1));
	close(uffd);
	return UT_PASS;
}
