/* SPDX-License-Identifier: GPL-2.0 */
/*
 * upmtest.h -- shared helpers for the upm in-guest kernel tests.
 *
 * Every test is a small static program run by the initramfs /init.  Exit
 * codes: 0 pass, 1 fail, 77 skip.  A failing or skipping test prints one
 * line "FAIL: reason" / "SKIP: reason" (the last such line is what /init
 * reports).  Helpers here cover:
 *   - reporting (ut_fail, ut_skip, ut_note, UT_CHECK);
 *   - page patterns: page_fill/page_check write and verify a deterministic
 *     per-page pattern derived from (seed, index), so every page of a region
 *     is distinct within the region but equal across processes using the
 *     same seed;
 *   - KSM/UPM state: sysfs reads/writes, /proc/PID/ksm_merging_pages,
 *     pagemap PFNs, the MADV_UPM probe (ut_require_upm);
 *   - process plumbing: forked helpers that die with the parent and a tiny
 *     pipe-based rendezvous.
 * Everything is static inline so each test is one translation unit.
 */
#ifndef UPMTEST_H
#define UPMTEST_H

#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <linux/upm.h>		/* MADV_UPM, from module/include/uapi */

#ifndef MADV_MERGEABLE
#define MADV_MERGEABLE 12
#define MADV_UNMERGEABLE 13
#endif
#ifndef MADV_HUGEPAGE
#define MADV_HUGEPAGE 14
#endif

#define UT_PASS 0
#define UT_FAIL 1
#define UT_SKIP 77

#define PG 4096UL
#define MiB (1UL << 20)
#define GiB (1UL << 30)

#define KSM_DIR "/sys/kernel/mm/ksm/"
#define UPM_DIR "/sys/kernel/mm/upm"

static const char *ut_name = "test";

/* ---- reporting ---------------------------------------------------------- */

/*
 * Time limits inside tests are multiplied by $UPM_TIME_SCALE (set by /init
 * from upm.scale=, e.g. 4 on the KASAN/lockdep kernel under TCG).
 */
static inline double ut_scale(void)
{
	const char *s = getenv("UPM_TIME_SCALE");
	double v = s ? atof(s) : 1;

	return v >= 1 ? v : 1;
}

static inline double ut_now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

static inline void ut_note(const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	printf("%s: ", ut_name);
	vprintf(fmt, ap);
	printf("\n");
	va_end(ap);
	fflush(stdout);
}

__attribute__((noreturn)) static inline void ut_exit_msg(int code, const char *tag,
							const char *fmt, va_list ap)
{
	char buf[512];

	vsnprintf(buf, sizeof(buf), fmt, ap);
	printf("%s: %s\n", tag, buf);
	fflush(stdout);
	_exit(code);
}

__attribute__((noreturn, format(printf, 1, 2))) static inline void ut_fail(const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	ut_exit_msg(UT_FAIL, "FAIL", fmt, ap);
}

__attribute__((noreturn, format(printf, 1, 2))) static inline void ut_skip(const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	ut_exit_msg(UT_SKIP, "SKIP", fmt, ap);
}

#define UT_CHECK(cond, ...)                                                  \
	do {                                                                 \
		if (!(cond))                                                 \
			ut_fail(__VA_ARGS__);                                \
	} while (0)

/* ---- sysfs / procfs ------------------------------------------------------ */

static inline int ut_read_str(const char *path, char *buf, size_t len)
{
	int fd = open(path, O_RDONLY);
	ssize_t n;

	if (fd < 0)
		return -errno;
	n = read(fd, buf, len - 1);
	close(fd);
	if (n < 0)
		return -errno;
	buf[n] = 0;
	while (n > 0 && (buf[n - 1] == '\n' || buf[n - 1] == ' '))
		buf[--n] = 0;
	return 0;
}

/* Returns -1 if the file cannot be read. */
static inline long ut_read_long(const char *path)
{
	char buf[64];

	if (ut_read_str(path, buf, sizeof(buf)))
		return -1;
	return strtol(buf, NULL, 0);
}

static inline int ut_write_str(const char *path, const char *val)
{
	int fd = open(path, O_WRONLY);
	ssize_t n;

	if (fd < 0)
		return -errno;
	n = write(fd, val, strlen(val));
	close(fd);
	return n < 0 ? -errno : 0;
}

static inline void ut_must_write(const char *path, const char *val)
{
	int rc = ut_write_str(path, val);

	if (rc)
		ut_fail("write '%s' to %s: %s", val, path, strerror(-rc));
}

static inline long ksm_get(const char *knob)
{
	char p[128];

	snprintf(p, sizeof(p), KSM_DIR "%s", knob);
	return ut_read_long(p);
}

static inline void ksm_set(const char *knob, long v)
{
	char p[128], s[32];

	snprintf(p, sizeof(p), KSM_DIR "%s", knob);
	snprintf(s, sizeof(s), "%ld", v);
	ut_must_write(p, s);
}

/* ksm run=2 unmerges everything; wait until the global counters are 0. */
static inline void ksm_unmerge_all(void)
{
	double t0 = ut_now();

	ksm_set("run", 2);
	while (ksm_get("pages_shared") > 0 || ksm_get("pages_sharing") > 0) {
		if (ut_now() - t0 > 60 * ut_scale())
			ut_fail("run=2 did not bring pages_shared/pages_sharing to 0 in %.0fs", 60 * ut_scale());
		usleep(10000);
	}
}

/* Stop ksmd; start from a clean state with the defaults most tests expect. */
static inline void ksm_quiesce(void)
{
	if (access(KSM_DIR "run", W_OK))
		ut_skip("no writable " KSM_DIR "run (CONFIG_KSM?)");
	ksm_unmerge_all();
	ksm_set("run", 0);
	ksm_set("use_zero_pages", 0);
}

static inline long ut_merging_pages(pid_t pid)
{
	char p[64];

	if (pid)
		snprintf(p, sizeof(p), "/proc/%d/ksm_merging_pages", (int)pid);
	else
		snprintf(p, sizeof(p), "/proc/self/ksm_merging_pages");
	return ut_read_long(p);
}

static inline int ut_have_upm_sysfs(void)
{
	struct stat st;

	return stat(UPM_DIR, &st) == 0 && S_ISDIR(st.st_mode);
}

/* ---- MADV_UPM ------------------------------------------------------------ */

/* Returns 0 or errno. */
static inline int upm_advise(void *addr, size_t len)
{
	return madvise(addr, len, MADV_UPM) ? errno : 0;
}

static inline int ksm_advise(void *addr, size_t len, int advice)
{
	return madvise(addr, len, advice) ? errno : 0;
}

/*
 * 1 if MADV_UPM is implemented.  0 (with *why set) if the kernel has no
 * MADV_UPM: EINVAL and no /sys/kernel/mm/upm.  EINVAL with the sysfs dir
 * present is a failure.
 */
static inline int upm_supported(const char **why)
{
	void *p = mmap(NULL, PG, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	int err;

	if (p == MAP_FAILED)
		ut_fail("mmap: %s", strerror(errno));
	memset(p, 0x5a, PG);
	err = upm_advise(p, PG);
	madvise(p, PG, MADV_UNMERGEABLE);
	munmap(p, PG);
	if (!err)
		return 1;
	if (err == EINVAL && !ut_have_upm_sysfs()) {
		*why = "kernel has no MADV_UPM (EINVAL)";
		return 0;
	}
	ut_fail("probe madvise(MADV_UPM) on one private anon page: %s%s", strerror(err),
		ut_have_upm_sysfs() ? " although " UPM_DIR " exists" : "");
}

static inline void ut_require_upm(void)
{
	const char *why = NULL;

	if (!upm_supported(&why))
		ut_skip("%s", why);
}

/* ---- page patterns ------------------------------------------------------- */

static inline uint64_t ut_mix(uint64_t x)
{
	x ^= x >> 33;
	x *= 0xff51afd7ed558ccdULL;
	x ^= x >> 33;
	x *= 0xc4ceb9fe1a85ec53ULL;
	x ^= x >> 33;
	return x;
}

/* Fill one page with the pattern for (seed, idx). */
static inline void page_fill(void *page, uint64_t seed, uint64_t idx)
{
	uint64_t *w = page, x = ut_mix(seed * 0x9e3779b97f4a7c15ULL ^ idx);
	size_t i;

	w[0] = seed;
	w[1] = idx;
	for (i = 2; i < PG / 8; i++) {
		x ^= x << 13;
		x ^= x >> 7;
		x ^= x << 17;
		w[i] = x;
	}
}

static inline int page_check(const void *page, uint64_t seed, uint64_t idx)
{
	uint64_t buf[PG / 8];

	page_fill(buf, seed, idx);
	return memcmp(buf, page, PG) == 0;
}

static inline void region_fill(void *base, size_t npages, uint64_t seed)
{
	for (size_t i = 0; i < npages; i++)
		page_fill((char *)base + i * PG, seed, i);
}

/* Returns the number of pages that do not carry their pattern. */
static inline size_t region_bad(const void *base, size_t npages, uint64_t seed)
{
	size_t bad = 0;

	for (size_t i = 0; i < npages; i++)
		bad += !page_check((const char *)base + i * PG, seed, i);
	return bad;
}

static inline void *ut_map_anon(size_t len)
{
	void *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);

	if (p == MAP_FAILED)
		ut_fail("mmap %zu bytes: %s", len, strerror(errno));
	return p;
}

/* ---- pagemap -------------------------------------------------------------- */

/* PFN of the page mapped at addr, 0 if not present (needs root). */
static inline uint64_t ut_pfn(const void *addr)
{
	static int fd = -1;
	uint64_t e;

	if (fd < 0)
		fd = open("/proc/self/pagemap", O_RDONLY);
	if (fd < 0 || pread(fd, &e, 8, ((uintptr_t)addr / PG) * 8) != 8)
		return 0;
	return (e >> 63) & 1 ? e & ((1ULL << 55) - 1) : 0;
}

#define KPF_KSM 21
#define KPF_THP 22
static inline int ut_kpageflag(uint64_t pfn, int bit)
{
	static int fd = -1;
	uint64_t f;

	if (fd < 0)
		fd = open("/proc/kpageflags", O_RDONLY);
	if (fd < 0 || pread(fd, &f, 8, pfn * 8) != 8)
		return -1;
	return (f >> bit) & 1;
}

/* How many of the np pages at p are mapped ksm pages (pagemap + kpageflags). */
static inline size_t ut_ksm_pages(const char *p, size_t np)
{
	size_t ksm = 0;

	for (size_t i = 0; i < np; i++) {
		uint64_t pfn = ut_pfn(p + i * PG);

		ksm += pfn && ut_kpageflag(pfn, KPF_KSM) == 1;
	}
	return ksm;
}

/* ---- processes ------------------------------------------------------------ */

/* Run the calling thread on @cpu only. */
static inline void ut_pin_cpu(int cpu)
{
	cpu_set_t s;

	CPU_ZERO(&s);
	CPU_SET(cpu, &s);
	if (sched_setaffinity(0, sizeof(s), &s))
		ut_fail("sched_setaffinity(%d): %s", cpu, strerror(errno));
}

/*
 * A rendezvous channel: ut_pipe_wait() blocks until the peer called
 * ut_pipe_post().  Use one struct per direction.
 */
struct ut_chan {
	int fd[2];
};

static inline void ut_chan_init(struct ut_chan *c)
{
	if (pipe(c->fd))
		ut_fail("pipe: %s", strerror(errno));
}

static inline void ut_post(struct ut_chan *c, char v)
{
	if (write(c->fd[1], &v, 1) != 1)
		ut_fail("chan write: %s", strerror(errno));
}

static inline char ut_wait(struct ut_chan *c)
{
	char v;

	if (read(c->fd[0], &v, 1) != 1)
		ut_fail("peer process died (chan read EOF)");
	return v;
}

/* fork() a helper that gets SIGKILL when the test process dies. */
static inline pid_t ut_fork(void)
{
	pid_t parent = getpid(), pid;

	fflush(stdout);
	pid = fork();
	if (pid < 0)
		ut_fail("fork: %s", strerror(errno));
	if (pid == 0) {
		prctl(PR_SET_PDEATHSIG, SIGKILL);
		if (getppid() != parent)
			_exit(UT_FAIL);
	}
	return pid;
}

/* Wait for a child; return its exit code (128+sig if killed). */
static inline int ut_reap(pid_t pid)
{
	int st;

	if (waitpid(pid, &st, 0) < 0)
		ut_fail("waitpid %d: %s", (int)pid, strerror(errno));
	if (WIFEXITED(st))
		return WEXITSTATUS(st);
	return 128 + WTERMSIG(st);
}


/* ---- sharer: a helper process holding a patterned region ------------------ */

/*
 * A sharer is a child that maps npages of private anonymous memory, fills
 * them with the pattern for seed, and then obeys one-int commands from the
 * test (each answered with one int):
 *   SH_ADVISE     madvise(MADV_UPM) the region      -> 0 or errno
 *   SH_MERGEABLE  madvise(MADV_MERGEABLE)            -> 0 or errno
 *   SH_UNMERGE    madvise(MADV_UNMERGEABLE)          -> 0 or errno
 *   SH_VERIFY     count pages not carrying pattern   -> count
 *   SH_MERGING    its /proc/self/ksm_merging_pages   -> value
 *   SH_WRITE_ODD  rewrite odd pages with seed+1      -> 0
 *   SH_ADDR_LO/HI low/high 32 bits of the region address
 *   SH_EXIT       exit(0)
 * The region is never touched by the parent, so nothing is fork-shared.
 */
enum { SH_ADVISE = 1, SH_MERGEABLE, SH_UNMERGE, SH_VERIFY, SH_MERGING, SH_WRITE_ODD, SH_ADDR_LO,
       SH_ADDR_HI, SH_EXIT };

struct ut_sharer {
	pid_t pid;
	int cmd_w, ack_r;
};

static inline int ut_sharer_send(struct ut_sharer *s, int cmd)
{
	int v;

	if (write(s->cmd_w, &cmd, sizeof(cmd)) != sizeof(cmd))
		ut_fail("sharer %d: command write failed", (int)s->pid);
	if (cmd == SH_EXIT)
		return 0;
	if (read(s->ack_r, &v, sizeof(v)) != sizeof(v))
		ut_fail("sharer %d died during command %d", (int)s->pid, cmd);
	return v;
}

static inline void ut_sharer_start(struct ut_sharer *s, size_t npages, uint64_t seed)
{
	int cmd[2], ack[2];

	if (pipe(cmd) || pipe(ack))
		ut_fail("pipe: %s", strerror(errno));
	s->pid = ut_fork();
	if (s->pid == 0) {
		char *p = ut_map_anon(npages * PG);
		uint64_t odd_seed = seed;	/* odd pages carry seed+1 after SH_WRITE_ODD */
		int c, v;

		close(cmd[1]);
		close(ack[0]);
		region_fill(p, npages, seed);
		for (;;) {
			if (read(cmd[0], &c, sizeof(c)) != sizeof(c))
				_exit(0);
			switch (c) {
			case SH_ADVISE: v = upm_advise(p, npages * PG); break;
			case SH_MERGEABLE: v = ksm_advise(p, npages * PG, MADV_MERGEABLE); break;
			case SH_UNMERGE: v = ksm_advise(p, npages * PG, MADV_UNMERGEABLE); break;
			case SH_VERIFY:
				v = 0;
				for (size_t i = 0; i < npages; i++)
					v += !page_check(p + i * PG, (i & 1) ? odd_seed : seed, i);
				break;
			case SH_MERGING: v = (int)ut_merging_pages(0); break;
			case SH_WRITE_ODD:
				for (size_t i = 1; i < npages; i += 2)
					page_fill(p + i * PG, seed + 1, i);
				odd_seed = seed + 1;
				v = 0;
				break;
			case SH_ADDR_LO: v = (int)(uint32_t)(uintptr_t)p; break;
			case SH_ADDR_HI: v = (int)(uint32_t)((uintptr_t)p >> 32); break;
			case SH_EXIT: _exit(0);
			default: v = -1;
			}
			if (write(ack[1], &v, sizeof(v)) != sizeof(v))
				_exit(1);
		}
	}
	close(cmd[0]);
	close(ack[1]);
	s->cmd_w = cmd[1];
	s->ack_r = ack[0];
}

static inline void *ut_sharer_addr(struct ut_sharer *s)
{
	uint64_t lo = (uint32_t)ut_sharer_send(s, SH_ADDR_LO);
	uint64_t hi = (uint32_t)ut_sharer_send(s, SH_ADDR_HI);

	return (void *)(uintptr_t)(lo | hi << 32);
}

/* Fail unless a sharer's region is intact. */
static inline void ut_sharer_verify(struct ut_sharer *s, const char *what)
{
	int bad = ut_sharer_send(s, SH_VERIFY);

	UT_CHECK(bad == 0, "%s: %d page(s) of process %d lost their content", what, bad, (int)s->pid);
}

static inline int ut_sharer_stop(struct ut_sharer *s)
{
	ut_sharer_send(s, SH_EXIT);
	close(s->cmd_w);
	close(s->ack_r);
	return ut_reap(s->pid);
}

/* Percentage helper for messages. */
static inline double ut_pct(long a, long b)
{
	return b ? 100.0 * a / b : 0;
}

/* ---- cgroups, /sys/kernel/mm/upm knobs, ksmd scans ------------------------ */

#define UT_CG "/sys/fs/cgroup"

/* Move @pid into cgroup @cg ("" = the root cgroup), memory controller on. */
static inline void ut_cg_move(const char *cg, pid_t pid)
{
	char path[160], v[32];

	ut_write_str(UT_CG "/cgroup.subtree_control", "+memory");
	if (cg[0]) {
		snprintf(path, sizeof(path), UT_CG "/%s", cg);
		mkdir(path, 0755);
		snprintf(path, sizeof(path), UT_CG "/%s/cgroup.procs", cg);
	} else {
		snprintf(path, sizeof(path), UT_CG "/cgroup.procs");
	}
	snprintf(v, sizeof(v), "%d", (int)pid);
	ut_must_write(path, v);
}

static inline long upm_get(const char *knob)
{
	char p[128];

	snprintf(p, sizeof(p), UPM_DIR "/%s", knob);
	return ut_read_long(p);
}

/* 0 or -errno */
static inline int upm_set(const char *knob, const char *val)
{
	char p[128];

	snprintf(p, sizeof(p), UPM_DIR "/%s", knob);
	return ut_write_str(p, val);
}

/* Wait until ksmd has completed @n more full scans; fail after @limit s. */
static inline void ut_wait_full_scans(long n, double limit)
{
	long end = ksm_get("full_scans") + n;
	double t0 = ut_now();

	while (ksm_get("full_scans") < end) {
		if (ut_now() - t0 > limit * ut_scale())
			ut_fail("ksmd did not complete %ld full scans in %.0fs", n, limit * ut_scale());
		usleep(20000);
	}
}

/* 1 if the vma of @pid containing @addr has VmFlag @flag in smaps. */
static inline int ut_vma_has_flag(pid_t pid, const void *addr, const char *flag)
{
	char path[64], line[512];
	unsigned long a = (unsigned long)addr, lo, hi;
	int in = 0, found = 0;
	FILE *f;

	snprintf(path, sizeof(path), "/proc/%d/smaps", (int)pid);
	f = fopen(path, "r");
	if (!f)
		ut_fail("open %s: %s", path, strerror(errno));
	while (fgets(line, sizeof(line), f)) {
		if (sscanf(line, "%lx-%lx ", &lo, &hi) == 2 && strchr(line, '-') < strchr(line, ' ')) {
			in = a >= lo && a < hi;
			continue;
		}
		if (in && !strncmp(line, "VmFlags:", 8)) {
			char *t = strtok(line + 8, " \n");

			for (; t; t = strtok(NULL, " \n"))
				found |= !strcmp(t, flag);
			break;
		}
	}
	fclose(f);
	return found;
}

#endif /* UPMTEST_H */
