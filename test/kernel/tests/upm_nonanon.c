// SPDX-License-Identifier: GPL-2.0
/*
 * upm_nonanon -- shared and file-backed memory is never merged
 * (adversarial test 6).
 *
 * For each kind -- MAP_SHARED anonymous, memfd MAP_SHARED, memfd
 * MAP_PRIVATE only read (page-cache pages), tmpfs file MAP_PRIVATE only
 * read -- two processes map identical page-distinct content and both
 * advise it with MADV_UPM.  The call must return 0 or ENOMEM, neither
 * process may have merged pages, the global counters stay 0, shared
 * VMAs get no "mg" VmFlag, and the data is intact.
 */
#include "upmtest.h"

enum kind { K_SHARED_ANON, K_MEMFD_SHARED, K_MEMFD_PRIVATE_RO, K_TMPFS_PRIVATE_RO, K_NR };
static const char *const kname[] = { "MAP_SHARED anon", "memfd MAP_SHARED", "memfd MAP_PRIVATE read-only",
				     "tmpfs file MAP_PRIVATE read-only" };
#define NPG 512

static int make_file(enum kind k, int idx)
{
	char path[64], page[PG];
	int fd;

	if (k == K_TMPFS_PRIVATE_RO) {
		snprintf(path, sizeof(path), "/tmp/upm_nonanon.%d.%d", (int)getpid(), idx);
		fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0600);
		unlink(path);
	} else {
		fd = memfd_create("upm_nonanon", 0);
	}
	if (fd < 0)
		ut_fail("create file for %s: %s", kname[k], strerror(errno));
	for (size_t i = 0; i < NPG; i++) {
		page_fill(page, 0x5fa, i);
		if (write(fd, page, PG) != (ssize_t)PG)
			ut_fail("write: %s", strerror(errno));
	}
	return fd;
}

static char *map_kind(enum kind k, int idx)
{
	char *p;
	int fd;

	if (k == K_SHARED_ANON) {
		p = mmap(NULL, NPG * PG, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
		UT_CHECK(p != MAP_FAILED, "mmap shared anon: %s", strerror(errno));
		region_fill(p, NPG, 0x5fa);
		return p;
	}
	fd = make_file(k, idx);
	p = mmap(NULL, NPG * PG, k == K_MEMFD_SHARED ? PROT_READ | PROT_WRITE : PROT_READ,
		 k == K_MEMFD_SHARED ? MAP_SHARED : MAP_PRIVATE, fd, 0);
	UT_CHECK(p != MAP_FAILED, "mmap %s: %s", kname[k], strerror(errno));
	close(fd);
	/* fault every page in (reads only for the private kinds) */
	UT_CHECK(region_bad(p, NPG, 0x5fa) == 0, "%s: content wrong before advise", kname[k]);
	return p;
}

static int has_mg_flag(pid_t pid, void *addr)
{
	char path[64], line[512];
	int in = 0, mg = 0;
	FILE *f;

	snprintf(path, sizeof(path), "/proc/%d/smaps", (int)pid);
	f = fopen(path, "r");
	if (!f)
		return -1;
	while (fgets(line, sizeof(line), f)) {
		unsigned long s, e;

		if (sscanf(line, "%lx-%lx ", &s, &e) == 2) /* a VMA header line */
			in = (uintptr_t)addr >= s && (uintptr_t)addr < e;
		else if (in && !strncmp(line, "VmFlags:", 8))
			mg = strstr(line, " mg") != NULL;
	}
	fclose(f);
	return mg;
}

int main(void)
{
	ut_name = "upm_nonanon";
	ut_require_upm();
	ksm_quiesce();
	for (int k = 0; k < K_NR; k++) {
		struct ut_chan ready, go;
		char *p;
		pid_t c;
		int e;
		long m;

		ut_chan_init(&ready);
		ut_chan_init(&go);
		c = ut_fork();
		if (c == 0) {
			p = map_kind(k, 1);
			e = upm_advise(p, NPG * PG);
			UT_CHECK(e == 0 || e == ENOMEM, "%s: child advise: %s", kname[k], strerror(e));
			ut_post(&ready, 1);
			ut_wait(&go);
			UT_CHECK(region_bad(p, NPG, 0x5fa) == 0, "%s: child data changed", kname[k]);
			_exit(0);
		}
		ut_wait(&ready);
		p = map_kind(k, 2);
		e = upm_advise(p, NPG * PG);
		UT_CHECK(e == 0 || e == ENOMEM, "%s: advise returned %s", kname[k], strerror(e));
		m = ut_merging_pages(0);
		UT_CHECK(m == 0, "%s: %ld pages merged in this process", kname[k], m);
		m = ut_merging_pages(c);
		UT_CHECK(m == 0, "%s: %ld pages merged in the other process", kname[k], m);
		UT_CHECK(ksm_get("pages_sharing") == 0 && ksm_get("pages_shared") == 0,
			 "%s: global counters moved: shared=%ld sharing=%ld", kname[k], ksm_get("pages_shared"),
			 ksm_get("pages_sharing"));
		if (k == K_SHARED_ANON || k == K_MEMFD_SHARED)
			UT_CHECK(has_mg_flag(getpid(), p) == 0, "%s: VMA got the mergeable (mg) flag", kname[k]);
		UT_CHECK(region_bad(p, NPG, 0x5fa) == 0, "%s: data changed", kname[k]);
		ut_post(&go, 1);
		UT_CHECK(ut_reap(c) == 0, "%s: child failed", kname[k]);
		munmap(p, NPG * PG);
		ut_note("%s: rc %s, nothing merged", kname[k], e ? strerror(e) : "0");
	}
	return UT_PASS;
}
