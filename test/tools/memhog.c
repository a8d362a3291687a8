/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * upm-memhog -- holds memory with known, page-distinct content.
 *
 * The integration tests and the demo run several of these at once and ask
 * the kernel how much of their memory it merged.  The content of every page
 * is a pure function of (seed, page index, generation): pages of one process
 * differ from each other (so merging inside one process cannot hide a bug),
 * and processes started with the same seed hold identical pages (so the
 * ideal saving is known exactly: (N - 1) / N of the region).
 *
 * Page content (documented so tests can check it from outside, by reading
 * /proc/PID/mem):
 *
 *   key  = mix64(seed) ^ mix64(index * GOLDEN + generation)
 *   word = mix64(key + (j + 1) * GOLDEN)          for word j of the page
 *
 * stored as native (little-endian on x86) 64-bit words; mix64 is the
 * splitmix64 finaliser and GOLDEN is 0x9e3779b97f4a7c15.  With
 * --pattern same every page has index 0's content; with --pattern zero the
 * pages are zero-filled (but present).  --unique-per-process mixes the pid
 * into the seed.  Generation 0 is the initial fill; --write-after rewrites
 * every --write-stride'th page (page index % stride == 0) with generation 1.
 * --readonly mprotects the filled region read-only and --exec maps it
 * read-write-executable (anonymous mappings that are not a heap, for the
 * region-class tests; with --readonly the region is read-write while it is
 * filled, so an advice taken at that moment sees a heap).  Nothing is
 * executed from the region.
 *
 * The checksum is FNV-1a-64 over the region's 64-bit words (word-wise, not
 * byte-wise, to stay fast on gigabytes).  Before printing it, every page is
 * compared with the content it should have; a mismatch is reported on stderr
 * and makes the exit status 2.
 *
 * Output on stdout, one line each, flushed at once:
 *   started pid=PID                     (with --delay, before the wait)
 *   ready 0xADDR LEN pid=PID pages=N pagesize=P seed=S
 *   wrote N pages generation=1
 *   checksum HEX16 pages=N bad=K        (on SIGUSR1, and at exit with --checksum)
 *
 * Exit status: 0 on success, 1 on usage or system errors, 2 on corruption.
 * The death of the parent ends the hold like SIGTERM (PR_SET_PDEATHSIG), so
 * that a test runner killed with SIGKILL leaves no memory behind; pass
 * --orphan-ok to keep running.
 *
 * Plain C11 + POSIX, no dependencies, so that it links statically (the
 * upm-memhog-static target) for use inside containers.  Signals are blocked
 * and taken synchronously with sigtimedwait(), so no handler runs at an
 * arbitrary point of the fill or the verification.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <inttypes.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <time.h>
#include <unistd.h>

#define GOLDEN 0x9e3779b97f4a7c15ULL
#define FNV_OFFSET 0xcbf29ce484222325ULL
#define FNV_PRIME 0x100000001b3ULL
#define MAX_MIB (1024 * 1024) /* 1 TiB: a sanity bound, not a target */
#define MAX_REPORTED_BAD 8

enum alloc_mode { ALLOC_MMAP, ALLOC_MALLOC };
enum pattern { PATTERN_DISTINCT, PATTERN_SAME, PATTERN_ZERO };

/**
 * struct options - the command line
 * @mib: region size in MiB
 * @seed: content seed
 * @unique: mix the pid into the seed
 * @alloc: mmap() or aligned_alloc()
 * @pattern: distinct, same or zero pages
 * @hold_s: seconds to hold after ready; negative = until a signal
 * @write_after_s: seconds after ready to rewrite pages; negative = never
 * @write_stride: rewrite pages whose index is a multiple of this
 * @checksum: print the checksum at exit
 * @readonly: mprotect the region read-only after filling it
 * @exec: map the region read-write-executable (like a JIT code cache)
 * @orphan_ok: keep running when the parent dies (default: SIGTERM then)
 * @ready_file: where to write the ready line, or NULL
 * @delay_s: seconds to wait after start before allocating (a function that
 *           loads its model a while after it started)
 */
struct options {
	double delay_s;
	uint64_t mib;
	uint64_t seed;
	bool unique;
	enum alloc_mode alloc;
	enum pattern pattern;
	double hold_s;
	double write_after_s;
	uint64_t write_stride;
	bool checksum;
	bool readonly;
	bool exec;
	bool orphan_ok;
	const char *ready_file;
};

/**
 * struct region - the memory being held
 * @base: first byte (page aligned)
 * @len: length in bytes (whole pages)
 * @page_size: bytes per page
 * @pages: len / page_size
 * @seed: effective seed (after --unique-per-process)
 * @pattern: how pages are filled
 * @write_stride: pages rewritten by the write step (0 = none yet)
 */
struct region {
	unsigned char *base;
	size_t len;
	size_t page_size;
	size_t pages;
	uint64_t seed;
	enum pattern pattern;
	uint64_t write_stride;
};

static const char *prog = "upm-memhog";

static void die(int status, const char *fmt, ...)
{
	va_list ap;

	fprintf(stderr, "%s: ", prog);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
	exit(status);
}

static void usage(FILE *out)
{
	fprintf(out,
		"usage: %s --mib N [--seed S] [--unique-per-process] [--malloc|--mmap]\n"
		"       [--pattern distinct|same|zero] [--hold SECONDS|--hold-until-signal]\n"
		"       [--write-after SECONDS [--write-stride K]] [--readonly|--exec] [--checksum]\n"
		"       [--ready-file PATH] [--orphan-ok] [--delay SECONDS]\n"
		"\n"
		"With --delay, prints \"started pid=PID\" and waits that long first (a\n"
		"signal ends the program during the wait).  Allocates N MiB whose pages have content derived from (seed, page index),\n"
		"prints \"ready 0xADDR LEN ...\", holds, optionally rewrites every K-th page\n"
		"(default K=2) after a delay, and prints a verified checksum on SIGUSR1 and\n"
		"at exit (--checksum).  --readonly makes the region read-only once filled;\n"
		"--exec maps it read-write-executable from the start (either way an\n"
		"anonymous mapping that is not a heap).  SIGTERM/SIGINT/SIGHUP end the\n"
		"hold, and so does the death of the parent unless --orphan-ok is given.\n"
		"Exit status 2 means a page did not hold the content it should.\n",
		prog);
}

static uint64_t mix64(uint64_t z)
{
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
	return z ^ (z >> 31);
}

static uint64_t parse_u64(const char *opt, const char *s, uint64_t max)
{
	char *end;
	unsigned long long v;

	errno = 0;
	v = strtoull(s, &end, 0);
	if (errno || end == s || *end || s[0] == '-' || v > max)
		die(1, "invalid value `%s` for %s (want an integer <= %" PRIu64 ")", s, opt, max);
	return v;
}

static double parse_seconds(const char *opt, const char *s)
{
	char *end;
	double v;

	errno = 0;
	v = strtod(s, &end);
	if (errno || end == s || *end || !(v >= 0) || v > 1e7)
		die(1, "invalid value `%s` for %s (want seconds >= 0)", s, opt);
	return v;
}

static const char *need_arg(int argc, char **argv, int *i)
{
	if (*i + 1 >= argc)
		die(1, "option `%s` needs a value", argv[*i]);
	return argv[++*i];
}

static void parse_options(int argc, char **argv, struct options *o)
{
	bool have_mib = false;

	*o = (struct options){ .seed = 1, .alloc = ALLOC_MMAP, .pattern = PATTERN_DISTINCT,
			       .hold_s = -1, .write_after_s = -1, .write_stride = 2 };
	for (int i = 1; i < argc; i++) {
		const char *a = argv[i];

		if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
			usage(stdout);
			exit(0);
		} else if (!strcmp(a, "--mib")) {
			o->mib = parse_u64(a, need_arg(argc, argv, &i), MAX_MIB);
			have_mib = true;
		} else if (!strcmp(a, "--seed")) {
			o->seed = parse_u64(a, need_arg(argc, argv, &i), UINT64_MAX);
		} else if (!strcmp(a, "--unique-per-process")) {
			o->unique = true;
		} else if (!strcmp(a, "--malloc")) {
			o->alloc = ALLOC_MALLOC;
		} else if (!strcmp(a, "--mmap")) {
			o->alloc = ALLOC_MMAP;
		} else if (!strcmp(a, "--pattern")) {
			const char *p = need_arg(argc, argv, &i);

			if (!strcmp(p, "distinct"))
				o->pattern = PATTERN_DISTINCT;
			else if (!strcmp(p, "same"))
				o->pattern = PATTERN_SAME;
			else if (!strcmp(p, "zero"))
				o->pattern = PATTERN_ZERO;
			else
				die(1, "invalid pattern `%s` (want distinct, same or zero)", p);
		} else if (!strcmp(a, "--hold")) {
			o->hold_s = parse_seconds(a, need_arg(argc, argv, &i));
		} else if (!strcmp(a, "--delay")) {
			o->delay_s = parse_seconds(a, need_arg(argc, argv, &i));
		} else if (!strcmp(a, "--hold-until-signal")) {
			o->hold_s = -1;
		} else if (!strcmp(a, "--write-after")) {
			o->write_after_s = parse_seconds(a, need_arg(argc, argv, &i));
		} else if (!strcmp(a, "--write-stride")) {
			o->write_stride = parse_u64(a, need_arg(argc, argv, &i), UINT64_MAX);
			if (o->write_stride == 0)
				die(1, "--write-stride must be at least 1");
		} else if (!strcmp(a, "--readonly")) {
			o->readonly = true;
		} else if (!strcmp(a, "--exec")) {
			o->exec = true;
		} else if (!strcmp(a, "--orphan-ok")) {
			o->orphan_ok = true;
		} else if (!strcmp(a, "--checksum")) {
			o->checksum = true;
		} else if (!strcmp(a, "--ready-file")) {
			o->ready_file = need_arg(argc, argv, &i);
		} else {
			usage(stderr);
			die(1, "unknown argument `%s`", a);
		}
	}
	if (!have_mib || o->mib == 0)
		die(1, "--mib N (N >= 1) is required; see --help");
	if (o->readonly && (o->write_after_s >= 0 || o->alloc != ALLOC_MMAP))
		die(1, "--readonly works only with --mmap and without --write-after");
	if (o->exec && (o->readonly || o->alloc != ALLOC_MMAP))
		die(1, "--exec works only with --mmap and without --readonly");
}

/* The word j of page `index` at `generation`; see the file comment. */
static uint64_t page_key(const struct region *r, size_t index, uint64_t generation)
{
	if (r->pattern == PATTERN_SAME)
		index = 0;
	return mix64(r->seed) ^ mix64((uint64_t)index * GOLDEN + generation);
}

static uint64_t page_generation(const struct region *r, size_t index)
{
	return r->write_stride && index % r->write_stride == 0 ? 1 : 0;
}

static void fill_page(const struct region *r, size_t index, uint64_t generation)
{
	uint64_t *w = (uint64_t *)(r->base + index * r->page_size);
	size_t words = r->page_size / sizeof(uint64_t);
	uint64_t key;

	if (r->pattern == PATTERN_ZERO && generation == 0) {
		memset(w, 0, r->page_size);
		return;
	}
	key = page_key(r, index, generation);
	for (size_t j = 0; j < words; j++)
		w[j] = mix64(key + (j + 1) * GOLDEN);
}

static bool page_ok(const struct region *r, size_t index)
{
	const uint64_t *w = (const uint64_t *)(r->base + index * r->page_size);
	size_t words = r->page_size / sizeof(uint64_t);
	uint64_t generation = page_generation(r, index);
	uint64_t key;

	if (r->pattern == PATTERN_ZERO && generation == 0) {
		for (size_t j = 0; j < words; j++)
			if (w[j])
				return false;
		return true;
	}
	key = page_key(r, index, generation);
	for (size_t j = 0; j < words; j++)
		if (w[j] != mix64(key + (j + 1) * GOLDEN))
			return false;
	return true;
}

static void allocate(struct region *r, const struct options *o)
{
	long ps = sysconf(_SC_PAGESIZE);

	if (ps <= 0 || ps % 8)
		die(1, "unusable page size %ld", ps);
	r->page_size = (size_t)ps;
	r->len = (size_t)o->mib << 20;
	r->pages = r->len / r->page_size;
	r->seed = o->unique ? o->seed ^ mix64((uint64_t)getpid() + 1) : o->seed;
	r->pattern = o->pattern;
	if (o->alloc == ALLOC_MMAP) {
		int prot = PROT_READ | PROT_WRITE | (o->exec ? PROT_EXEC : 0);
		void *p = mmap(NULL, r->len, prot, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);

		if (p == MAP_FAILED)
			die(1, "mmap %zu bytes: %s", r->len, strerror(errno));
		r->base = p;
	} else {
		r->base = aligned_alloc(r->page_size, r->len);
		if (!r->base)
			die(1, "aligned_alloc %zu bytes: %s", r->len, strerror(errno));
	}
	for (size_t i = 0; i < r->pages; i++)
		fill_page(r, i, 0);
	if (o->readonly && mprotect(r->base, r->len, PROT_READ) != 0)
		die(1, "mprotect read-only: %s", strerror(errno));
}

static void write_pages(struct region *r, uint64_t stride)
{
	size_t n = 0;

	for (size_t i = 0; i < r->pages; i += stride, n++)
		fill_page(r, i, 1);
	r->write_stride = stride;
	printf("wrote %zu pages generation=1\n", n);
	fflush(stdout);
}

/* Checksums and verifies the region; returns the number of bad pages. */
static size_t checksum_and_verify(const struct region *r)
{
	const uint64_t *w = (const uint64_t *)r->base;
	size_t words = r->len / sizeof(uint64_t);
	uint64_t h = FNV_OFFSET;
	size_t bad = 0;

	for (size_t j = 0; j < words; j++)
		h = (h ^ w[j]) * FNV_PRIME;
	for (size_t i = 0; i < r->pages; i++) {
		if (page_ok(r, i))
			continue;
		if (bad < MAX_REPORTED_BAD)
			fprintf(stderr, "%s: corrupt page %zu at %p\n", prog, i,
				(void *)(r->base + i * r->page_size));
		bad++;
	}
	printf("checksum %016" PRIx64 " pages=%zu bad=%zu\n", h, r->pages, bad);
	fflush(stdout);
	if (bad)
		fprintf(stderr, "%s: %zu of %zu pages corrupt\n", prog, bad, r->pages);
	return bad;
}

static void announce_ready(const struct region *r, const struct options *o)
{
	char line[256];
	int n = snprintf(line, sizeof(line), "ready %p %zu pid=%ld pages=%zu pagesize=%zu seed=%" PRIu64 "\n",
			 (void *)r->base, r->len, (long)getpid(), r->pages, r->page_size, r->seed);

	fputs(line, stdout);
	fflush(stdout);
	if (o->ready_file) {
		char tmp[4096];
		FILE *f;

		if (snprintf(tmp, sizeof(tmp), "%s.tmp.%ld", o->ready_file, (long)getpid()) >= (int)sizeof(tmp))
			die(1, "ready file path too long");
		f = fopen(tmp, "w");
		if (!f || fwrite(line, 1, (size_t)n, f) != (size_t)n || fclose(f) != 0)
			die(1, "writing `%s`: %s", tmp, strerror(errno));
		if (rename(tmp, o->ready_file) != 0)
			die(1, "rename `%s` to `%s`: %s", tmp, o->ready_file, strerror(errno));
	}
}

static double now_s(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

/*
 * Holds until the hold time is over or a terminating signal arrives,
 * rewriting pages at the write time and checksumming on SIGUSR1.  Returns
 * the number of corrupt pages seen by any SIGUSR1 checksum.
 */
static size_t hold(struct region *r, const struct options *o, const sigset_t *set)
{
	double start = now_s();
	bool written = o->write_after_s < 0;
	size_t bad = 0;

	for (;;) {
		double now = now_s() - start;
		double until = o->hold_s < 0 ? 3600 : o->hold_s - now;
		struct timespec ts;
		int sig;

		if (!written && o->write_after_s <= now) {
			write_pages(r, o->write_stride);
			written = true;
			continue;
		}
		if (o->hold_s >= 0 && until <= 0)
			return bad;
		if (!written && o->write_after_s - now < until)
			until = o->write_after_s - now;
		if (until < 0)
			until = 0;
		ts.tv_sec = (time_t)until;
		ts.tv_nsec = (long)((until - (double)ts.tv_sec) * 1e9);
		sig = sigtimedwait(set, NULL, &ts);
		if (sig < 0) {
			if (errno == EAGAIN || errno == EINTR)
				continue;
			die(1, "sigtimedwait: %s", strerror(errno));
		}
		if (sig == SIGUSR1)
			bad += checksum_and_verify(r);
		else
			return bad;
	}
}

int main(int argc, char **argv)
{
	struct options o;
	struct region r = { 0 };
	sigset_t set;
	size_t bad;

	parse_options(argc, argv, &o);
	sigemptyset(&set);
	sigaddset(&set, SIGUSR1);
	sigaddset(&set, SIGTERM);
	sigaddset(&set, SIGINT);
	sigaddset(&set, SIGHUP);
	if (sigprocmask(SIG_BLOCK, &set, NULL) != 0)
		die(1, "sigprocmask: %s", strerror(errno));
	if (!o.orphan_ok) {
		/* A test runner killed with SIGKILL must not leave us holding
		 * memory: its death ends the hold like SIGTERM. */
		pid_t parent = getppid();

		if (prctl(PR_SET_PDEATHSIG, SIGTERM) != 0)
			die(1, "prctl(PR_SET_PDEATHSIG): %s", strerror(errno));
		if (getppid() != parent)
			die(1, "the parent exited before we started");
	}

	if (o.delay_s > 0) {
		printf("started pid=%d\n", (int)getpid());
		fflush(stdout);
		struct timespec ts = { .tv_sec = (time_t)o.delay_s,
				       .tv_nsec = (long)((o.delay_s - (double)(time_t)o.delay_s) * 1e9) };
		int sig;

		while ((sig = sigtimedwait(&set, NULL, &ts)) < 0 && errno == EINTR)
			;
		if (sig > 0 && sig != SIGUSR1)
			return 0;
	}
	allocate(&r, &o);
	announce_ready(&r, &o);
	bad = hold(&r, &o, &set);
	if (o.checksum)
		bad += checksum_and_verify(&r);
	else {
		for (size_t i = 0; i < r.pages; i++)
			if (!page_ok(&r, i))
				bad++;
		if (bad)
			fprintf(stderr, "%s: %zu of %zu pages corrupt\n", prog, bad, r.pages);
	}
	return bad ? 2 : 0;
}
