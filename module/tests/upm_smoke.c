// SPDX-License-Identifier: GPL-2.0
/*
 * upm_smoke - quick functional check of MADV_UPM (static, runs as root in
 * a QEMU guest).  Two processes each advise N MiB of identical,
 * page-distinct data with ksmd stopped; the second must find >= 99% of its
 * pages merged when its madvise() returns.  Then COW writes, checksums,
 * MADV_UNMERGEABLE, exit reaping, process_madvise and domains are checked.
 *
 * Build: gcc -static -O2 -o upm_smoke THIS_FILE
 * Usage: upm_smoke [MiB]
 * Exit: 0 pass, 1 fail, 77 skip (no MADV_UPM).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdint.h>
#include <linux/types.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "../include/uapi/linux/upm.h"

#ifndef MADV_MERGEABLE
#define MADV_MERGEABLE 12
#define MADV_UNMERGEABLE 13
#endif

static long pagesz;
static int failures;

#define CHECK(cond, ...) do {						\
	if (!(cond)) {							\
		printf("FAIL %s:%d: ", __func__, __LINE__);		\
		printf(__VA_ARGS__);					\
		printf("\n");						\
		failures++;						\
	}								\
} while (0)

static long read_long(const char *path)
{
	char buf[64] = "";
	long v = -1;
	int fd = open(path, O_RDONLY);

	if (fd < 0)
		return -1;
	if (read(fd, buf, sizeof(buf) - 1) > 0)
		v = strtol(buf, NULL, 10);
	close(fd);
	return v;
}

static int write_str(const char *path, const char *s)
{
	int fd = open(path, O_WRONLY);
	int ret;

	if (fd < 0)
		return -1;
	ret = write(fd, s, strlen(s)) == (ssize_t)strlen(s) ? 0 : -1;
	close(fd);
	return ret;
}

static long self_merging(void)
{
	return read_long("/proc/self/ksm_merging_pages");
}

static long sysfs_mm(const char *dir, const char *name)
{
	char p[128];

	snprintf(p, sizeof(p), "/sys/kernel/mm/%s/%s", dir, name);
	return read_long(p);
}

#define ksm(name) sysfs_mm("ksm", name)
#define upm(name) sysfs_mm("upm", name)

static double now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

/*
 * Page i holds words derived from (seed, i): identical across processes
 * with the same seed, distinct across pages.
 */
static void fill(char *buf, size_t npages, unsigned int seed)
{
	for (size_t i = 0; i < npages; i++) {
		__u64 *w = (__u64 *)(buf + i * pagesz);

		for (size_t j = 0; j < pagesz / 8; j++)
			w[j] = ((__u64)seed << 48) ^ (i << 20) ^ j ^
			       0x9e3779b97f4a7c15ULL * (j + 1);
	}
}

static int verify(char *buf, size_t npages, unsigned int seed,
		  size_t skip_from, size_t skip_to)
{
	int bad = 0;

	for (size_t i = 0; i < npages; i++) {
		__u64 *w = (__u64 *)(buf + i * pagesz);

		if (i >= skip_from && i < skip_to)
			continue;
		for (size_t j = 0; j < pagesz / 8; j++)
			if (w[j] != (((__u64)seed << 48) ^ (i << 20) ^ j ^
				     0x9e3779b97f4a7c15ULL * (j + 1))) {
				bad++;
				break;
			}
	}
	return bad;
}

static char *map_fill(size_t npages, unsigned int seed)
{
	char *buf = mmap(NULL, npages * pagesz, PROT_READ | PROT_WRITE,
			 MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);

	if (buf == MAP_FAILED) {
		perror("mmap");
		exit(1);
	}
	/* Keep THP out of the basic test; tested separately */
	madvise(buf, npages * pagesz, MADV_NOHUGEPAGE);
	fill(buf, npages, seed);
	return buf;
}

/* Child: map, fill, advise, report through pipe, wait for a byte, exit */
static char *holder_addr;

static pid_t holder(size_t npages, unsigned int seed, int advice,
		    int *ctl_w, const char *cgroup)
{
	int up[2], down[2];
	pid_t pid;
	char c;

	if (pipe(up) || pipe(down))
		exit(1);
	pid = fork();
	if (pid == 0) {
		char *buf;
		int r = 0;

		if (cgroup) {
			char p[256], s[32];

			snprintf(p, sizeof(p), "%s/cgroup.procs", cgroup);
			snprintf(s, sizeof(s), "%d", getpid());
			if (write_str(p, s))
				perror("cgroup.procs");
		}
		buf = map_fill(npages, seed);
		if (advice && madvise(buf, npages * pagesz, advice))
			r = errno;
		c = r ? 'E' : 'K';
		if (write(up[1], &c, 1) != 1 ||
		    write(up[1], &buf, sizeof(buf)) != sizeof(buf))
			exit(1);
		if (read(down[0], &c, 1) != 1)
			exit(1);
		exit(verify(buf, npages, seed, 0, 0) ? 2 : 0);
	}
	close(up[1]);
	close(down[0]);
	if (read(up[0], &c, 1) != 1 || c != 'K' ||
	    read(up[0], &holder_addr, sizeof(holder_addr)) !=
	    sizeof(holder_addr)) {
		printf("advise in child failed\n");
		failures++;
	}
	close(up[0]);
	*ctl_w = down[1];
	return pid;
}

static void release(pid_t pid, int ctl_w)
{
	int st;

	if (write(ctl_w, "x", 1) != 1)
		perror("write");
	close(ctl_w);
	waitpid(pid, &st, 0);
	CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0,
	      "holder %d data corrupted (status %x)", pid, st);
}

static void wait_counters_zero(void)
{
	for (int i = 0; i < 50; i++) {
		if (ksm("pages_shared") == 0 && ksm("pages_sharing") == 0)
			return;
		usleep(100000);
	}
	CHECK(0, "counters not back to 0: shared %ld sharing %ld",
	      ksm("pages_shared"), ksm("pages_sharing"));
}

static void test_basic(size_t npages)
{
	int ctl;
	pid_t a = holder(npages, 1, MADV_UPM, &ctl, NULL);
	char *buf = map_fill(npages, 1);
	double t0 = now(), t;
	long merged;
	int r = madvise(buf, npages * pagesz, MADV_UPM);

	t = now() - t0;
	merged = self_merging();
	printf("basic: madvise=%d %.3fs merged %ld/%zu shared %ld sharing %ld\n",
	       r, t, merged, npages, ksm("pages_shared"), ksm("pages_sharing"));
	CHECK(r == 0, "madvise: %s", strerror(errno));
	CHECK(merged * 100 >= (long)npages * 99, "merged %ld < 99%%", merged);

	/* COW: write every 7th page, then verify the rest */
	for (size_t i = 0; i < npages; i += 7)
		buf[i * pagesz + 5] ^= 0x5a;
	for (size_t i = 0; i < npages; i += 7)
		buf[i * pagesz + 5] ^= 0x5a;
	CHECK(verify(buf, npages, 1, 0, 0) == 0, "data corrupted after COW");

	/* re-advise: reconciles the COW-broken pages and merges them again */
	r = madvise(buf, npages * pagesz, MADV_UPM);
	merged = self_merging();
	printf("basic: re-advise=%d merged %ld\n", r, merged);
	CHECK(merged * 100 >= (long)npages * 99, "re-advise merged %ld", merged);

	r = madvise(buf, npages * pagesz, MADV_UNMERGEABLE);
	merged = self_merging();
	printf("basic: unmergeable=%d merged %ld\n", r, merged);
	CHECK(r == 0 && merged == 0, "after UNMERGEABLE merged %ld", merged);
	CHECK(verify(buf, npages, 1, 0, 0) == 0, "data corrupted after unmerge");

	release(a, ctl);
	munmap(buf, npages * pagesz);
	wait_counters_zero();
}

static void test_three_way(size_t npages)
{
	int c1, c2;
	pid_t a = holder(npages, 2, MADV_UPM, &c1, NULL);
	pid_t b = holder(npages, 2, MADV_UPM, &c2, NULL);
	char *buf = map_fill(npages, 2);
	int r = madvise(buf, npages * pagesz, MADV_UPM);
	long merged = self_merging();

	printf("three: madvise=%d merged %ld shared %ld sharing %ld\n", r,
	       merged, ksm("pages_shared"), ksm("pages_sharing"));
	CHECK(merged * 100 >= (long)npages * 99, "third merged %ld", merged);
	CHECK(ksm("pages_sharing") >= (long)npages * 2 * 99 / 100,
	      "pages_sharing %ld", ksm("pages_sharing"));
	release(a, c1);
	release(b, c2);
	munmap(buf, npages * pagesz);
	wait_counters_zero();
}

static void test_remote(size_t npages)
{
	int c1, c2;
	pid_t a = holder(npages, 3, MADV_UPM, &c1, NULL);
	pid_t b = holder(npages, 3, 0, &c2, NULL);
	int pidfd = syscall(SYS_pidfd_open, b, 0);
	struct iovec iov = {
		.iov_base = holder_addr,
		.iov_len = npages * pagesz,
	};
	long r;
	char path[64];

	r = syscall(SYS_process_madvise, pidfd, &iov, 1, MADV_UPM, 0);
	snprintf(path, sizeof(path), "/proc/%d/ksm_merging_pages", b);
	printf("remote: process_madvise=%ld merged %ld\n", r,
	       read_long(path));
	CHECK(r == (long)(npages * pagesz), "process_madvise: %s",
	      strerror(errno));
	CHECK(read_long(path) * 100 >= (long)npages * 99, "remote merged %ld",
	      read_long(path));
	close(pidfd);
	release(a, c1);
	release(b, c2);
	wait_counters_zero();
}

int main(int argc, char **argv)
{
	size_t mib = argc > 1 ? strtoul(argv[1], NULL, 0) : 32;
	size_t npages;
	char *probe;

	pagesz = sysconf(_SC_PAGESIZE);
	npages = mib * 1024 * 1024 / pagesz;
	probe = map_fill(1, 9);
	if (madvise(probe, pagesz, MADV_UPM) && errno == EINVAL) {
		printf("SKIP: no MADV_UPM\n");
		return 77;
	}
	munmap(probe, pagesz);
	write_str("/sys/kernel/mm/ksm/run", "0");

	test_basic(npages);
	test_three_way(npages / 4);
	test_remote(npages / 4);

	printf("upm: calls %ld examined %ld merged_existing %ld pairs %ld ",
	       upm("calls"), upm("pages_examined"),
	       upm("pages_merged_existing"), upm("pairs_merged"));
	printf("candidates %ld stale %ld failed %ld reconciled %ld ",
	       upm("candidates"), upm("stale_dropped"), upm("merge_failed"),
	       upm("reconciled"));
	printf("time_ns %ld index_bytes %ld\n", upm("time_ns"),
	       upm("index_bytes"));
	printf("%s (%d failures)\n", failures ? "FAIL" : "PASS", failures);
	return failures ? 1 : 0;
}
