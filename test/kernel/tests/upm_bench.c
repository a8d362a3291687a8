// SPDX-License-Identifier: GPL-2.0
/*
 * upm_bench -- MADV_UPM against ksmd at its fastest setting on the same
 * data, in one boot (issue #16).
 *
 * Data set: SLICES slices of MiB each (default 8 x 128 MiB = 1 GiB).  In
 * every slice, page i holds the same content as in the other slices when
 * i % 10 < DUP / 10, else content unique to the slice; pages of one slice
 * are distinct.  Best possible: pages_sharing = dup_pages * (SLICES - 1).
 * For each duplicate fraction DUP (default 90%, 50%, 10%) the methods are
 * (fresh processes and a clean KSM state each, ksmd stopped for upm-*):
 *   upm-1            one process holds all slices and madvise(MADV_UPM)s
 *                    all of it in one call: one adviser doing all the work
 *   upm-N            N = SLICES processes, one slice each, all advise at
 *                    once (several containers starting together)
 *   upm-1-2m         one process holding all slices advises in 2 MiB calls
 *                    (as an agent or the preload advising piecewise)
 *   ksmd-aggressive  N processes MADV_MERGEABLE, ksmd pages_to_scan=10000
 *                    sleep_millisecs=0: the reference of the ratios
 *   ksmd-default     (90% only) pages_to_scan=100 sleep_millisecs=20
 * Measured: time until pages_sharing >= 90% of the best (t90, polled) and
 * until every adviser returned (all_s), CPU seconds (advisers' getrusage
 * around their madvise calls, plus ksmd's utime+stime up to t90) per GiB
 * saved (pages_sharing * 4 KiB), and ksm_thread_mutex hold times (p50,
 * p99, max, per holder) from debugfs upm/mutex_hold, which the engine
 * keeps (histogram with 25% buckets), with upm/pass_ns: where MADV_UPM
 * passes spend their time under the mutex.  x_faster/x_cheaper are the
 * ratios ksmd-aggressive / method of t90 and of CPU-s per GiB at the same
 * DUP (> 1: better than ksmd).  Prints a table and a JSON document between
 * UPM-BENCH-JSON-BEGIN/END.  Without MADV_UPM only the ksmd rows.
 * Rounds: the guest's clock runs on while QEMU waits for the host's CPU,
 * so host load inflates whichever method runs while it lasts (one method
 * measured 58 s in one boot and 90 s in another).  Every round runs all
 * methods again, in an order rotated by one per round, and each ratio is
 * taken against the ksmd-aggressive row of its own round; the summary gives
 * the median and the range of each ratio over the rounds (ksmd-default
 * runs in round 1 only).
 * Usage: upm_bench [SLICES [MiB [LIMIT_SECONDS [DUPS [ROUNDS]]]]]
 *   (default 8 128 300 90,50,10 2; DUPS: comma-separated multiples of 10;
 *   ROUNDS 1-5)
 */
#include "upmtest.h"
#include <sys/resource.h>

#define COMMON_SEED 0xbe7c4ULL
#define HOLD_PATH "/sys/kernel/debug/upm/mutex_hold"
#define PHASE_PATH "/sys/kernel/debug/upm/pass_ns"
#define MAX_DUPS 9
#define MAX_ROUNDS 5
#define NMETHODS 4	/* rotated per round: upm-1, upm-N, upm-1-2m, ksmd-aggressive */
#define NPHASES 16

struct hold {
	long holds;
	double p50_us, p99_us, max_us;
};

struct result {
	const char *method;
	int dup, round, procs, chunk_mib, ran, reached;
	double t90, tall, cpu, saved_gib, frac;
	long sharing;
	struct hold hold[2]; /* upm, ksmd */
	int nphases;
	char phase[NPHASES][16];
	double phase_ms[NPHASES];
};

static int nslices, mib, limit_s;
static size_t spg; /* pages per slice */

static pid_t ksmd_pid(void)
{
	char path[64], comm[32];

	for (int pid = 2; pid < 4096; pid++) {
		snprintf(path, sizeof(path), "/proc/%d/comm", pid);
		if (!ut_read_str(path, comm, sizeof(comm)) && !strcmp(comm, "ksmd"))
			return pid;
	}
	return 0;
}

static double proc_cpu(pid_t pid)
{
	char path[64], buf[1024], *p;
	unsigned long ut, st;

	snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
	if (!pid || ut_read_str(path, buf, sizeof(buf)))
		return 0;
	p = strrchr(buf, ')');
	if (!p || sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %lu %lu", &ut, &st) != 2)
		return 0;
	return (double)(ut + st) / sysconf(_SC_CLK_TCK);
}

static double rusage_s(void)
{
	struct rusage r;

	getrusage(RUSAGE_SELF, &r);
	return r.ru_utime.tv_sec + r.ru_stime.tv_sec + (r.ru_utime.tv_usec + r.ru_stime.tv_usec) / 1e6;
}

/* Reset the engine's hold and phase statistics (absent: old kernel). */
static void stats_reset(void)
{
	int fd = open(HOLD_PATH, O_WRONLY);

	if (fd >= 0) {
		if (write(fd, "0\n", 2) != 2)
			ut_note("reset %s: %s", HOLD_PATH, strerror(errno));
		close(fd);
	}
}

static void stats_read(struct result *res)
{
	char line[256], name[32];
	long n;
	unsigned long long p50, p99, max, tot;
	FILE *f = fopen(HOLD_PATH, "r");

	for (int i = 0; i < 2; i++)
		res->hold[i].holds = -1;
	if (f) {
		while (fgets(line, sizeof(line), f)) {
			int i;

			if (sscanf(line, "%31s %ld %llu %llu %llu %llu", name, &n, &p50, &p99, &max, &tot) != 6)
				continue;
			i = !strcmp(name, "upm") ? 0 : !strcmp(name, "ksmd") ? 1 : -1;
			if (i < 0)
				continue;
			res->hold[i] = (struct hold){ n, p50 / 1e3, p99 / 1e3, max / 1e3 };
		}
		fclose(f);
	}
	f = fopen(PHASE_PATH, "r");
	res->nphases = 0;
	if (f) {
		unsigned long long ns;
		unsigned long calls;

		while (fgets(line, sizeof(line), f) && res->nphases < NPHASES) {
			if (sscanf(line, "%15s %lu %llu", res->phase[res->nphases], &calls, &ns) != 3)
				continue;
			res->phase_ms[res->nphases++] = ns / 1e6;
		}
		fclose(f);
	}
}

/*
 * Worker holding slices [first, first + n): fill, wait for the go byte,
 * advise (in chunk-byte calls if chunk), report CPU seconds, wait for the
 * end.
 */
static pid_t start_worker(int first, int n, int dup, int advice, size_t chunk, int go_fd, int rep_fd, int ready_fd)
{
	pid_t c = ut_fork();

	if (c == 0) {
		size_t len = n * spg * PG;
		char *p = ut_map_anon(len), b;
		double cpu;

		for (int s = 0; s < n; s++)
			for (size_t i = 0; i < spg; i++)
				page_fill(p + (s * spg + i) * PG,
					  (int)(i % 10) < dup / 10 ? COMMON_SEED : COMMON_SEED + 1 + first + s, i);
		b = 1;
		if (write(ready_fd, &b, 1) != 1 || read(go_fd, &b, 1) != 1)
			_exit(1);
		cpu = rusage_s();
		for (size_t off = 0; off < len; off += chunk ? chunk : len)
			if (madvise(p + off, chunk && len - off > chunk ? chunk : len - off, advice))
				ut_fail("worker %d: madvise: %s", first, strerror(errno));
		cpu = rusage_s() - cpu;
		if (write(rep_fd, &cpu, sizeof(cpu)) != sizeof(cpu))
			_exit(1);
		pause(); /* keep the memory until killed */
		_exit(0);
	}
	return c;
}

static void run_method(struct result *res, int upm, int procs, size_t chunk, int pages_to_scan, int sleep_ms)
{
	int go[2], rep[2], ready[2];
	pid_t pids[64], kp = ksmd_pid();
	long best = 0, target, s;
	double t0, cpu0, adv_cpu = 0, c, tnow;
	int done = 0;
	char b;

	/* duplicate pages per slice, times the slices that can merge */
	for (size_t i = 0; i < spg; i++)
		best += (int)(i % 10) < res->dup / 10;
	best *= nslices - 1;
	target = best * 9 / 10;
	res->procs = procs;
	res->chunk_mib = (int)(chunk / MiB);
	ksm_unmerge_all();
	ksm_set("run", 0);
	ksm_set("pages_to_scan", pages_to_scan);
	ksm_set("sleep_millisecs", sleep_ms);
	if (pipe(go) || pipe(rep) || pipe(ready))
		ut_fail("pipe");
	for (int i = 0; i < procs; i++)
		pids[i] = start_worker(i * nslices / procs, nslices / procs, res->dup, upm ? MADV_UPM : MADV_MERGEABLE,
				       chunk, go[0], rep[1], ready[1]);
	for (int i = 0; i < procs; i++)
		if (read(ready[0], &b, 1) != 1)
			ut_fail("worker died while filling");
	ut_note("%s dup %d%%: %d process(es), %d x %d MiB filled; best pages_sharing %ld, 90%% = %ld", res->method,
		res->dup, procs, nslices, mib, best, target);

	stats_reset();
	cpu0 = proc_cpu(kp);
	t0 = ut_now();
	b = 1;
	for (int i = 0; i < procs; i++)
		if (write(go[1], &b, 1) != 1)
			ut_fail("go");
	if (!upm) { /* wait for the (cheap) MADV_MERGEABLE calls, then start ksmd */
		for (; done < procs; done++) {
			if (read(rep[0], &c, sizeof(c)) != sizeof(c))
				ut_fail("worker died");
			adv_cpu += c;
		}
		ksm_set("run", 1);
	}
	for (;;) {
		s = ksm_get("pages_sharing");
		tnow = ut_now() - t0;
		if (s >= target && !res->reached) {
			res->reached = 1;
			res->t90 = tnow;
			res->sharing = s;
			res->cpu = proc_cpu(kp) - cpu0;
		}
		if (upm) { /* collect the advising processes' CPU as they finish */
			struct timeval tv = { 0, 5000 };
			fd_set fds;

			FD_ZERO(&fds);
			FD_SET(rep[0], &fds);
			while (done < procs && select(rep[0] + 1, &fds, NULL, NULL, &tv) > 0) {
				if (read(rep[0], &c, sizeof(c)) != sizeof(c))
					ut_fail("worker died");
				adv_cpu += c;
				tv.tv_usec = 0;
				if (++done == procs)
					res->tall = ut_now() - t0;
			}
			if (done == procs && res->reached)
				break;
			if (done == procs) { /* all returned but below 90%: final state */
				s = ksm_get("pages_sharing");
				if (s < target) {
					res->t90 = ut_now() - t0;
					res->sharing = s;
					break;
				}
				continue;
			}
		} else {
			if (res->reached) {
				res->tall = res->t90;
				break;
			}
			usleep(20000);
		}
		if (tnow > limit_s) {
			res->t90 = res->tall = tnow;
			res->sharing = s;
			res->cpu = proc_cpu(kp) - cpu0;
			break;
		}
	}
	ksm_set("run", 0);
	stats_read(res);
	res->cpu += adv_cpu;
	res->saved_gib = res->sharing * (double)PG / GiB;
	res->frac = (double)res->sharing / best;
	res->ran = 1;
	ut_note("%s dup %d%%: %s 90%% in %.2fs (all returned %.2fs), cpu %.2fs (advising %.2fs), pages_sharing %ld "
		"(%.1f%% of best), upm holds %ld p99 %.0fus max %.0fus, ksmd holds %ld p99 %.0fus max %.0fus",
		res->method, res->dup, res->reached ? "reached" : "did NOT reach", res->t90, res->tall, res->cpu,
		adv_cpu, res->sharing, 100 * res->frac, res->hold[0].holds, res->hold[0].p99_us, res->hold[0].max_us,
		res->hold[1].holds, res->hold[1].p99_us, res->hold[1].max_us);
	for (int i = 0; upm && i < res->nphases; i++)
		ut_note("%s dup %d%%: pass phase %-6s %9.1f ms", res->method, res->dup, res->phase[i],
			res->phase_ms[i]);
	for (int i = 0; i < procs; i++)
		kill(pids[i], SIGKILL);
	for (int i = 0; i < procs; i++)
		ut_reap(pids[i]);
	close(go[0]), close(go[1]), close(rep[0]), close(rep[1]), close(ready[0]), close(ready[1]);
	ksm_unmerge_all();
}

static double cpg(const struct result *r)
{
	return r->saved_gib > 0 ? r->cpu / r->saved_gib : 0;
}

/* The ksmd-aggressive row of r's duplicate fraction. */
static const struct result *ref_of(const struct result *all, int n, const struct result *r)
{
	for (int i = 0; i < n; i++)
		if (all[i].ran && all[i].dup == r->dup && all[i].round == r->round &&
		    !strcmp(all[i].method, "ksmd-aggressive"))
			return &all[i];
	return NULL;
}

static double x_faster(const struct result *ref, const struct result *r)
{
	return ref && r->t90 > 0 ? ref->t90 / r->t90 : 0;
}

static double x_cheaper(const struct result *ref, const struct result *r)
{
	return ref && cpg(r) > 0 ? cpg(ref) / cpg(r) : 0;
}

static void print_hold_json(const char *name, const struct hold *h, int last)
{
	if (h->holds < 0)
		printf("\"%s\": null%s", name, last ? "" : ", ");
	else
		printf("\"%s\": {\"holds\": %ld, \"p50_us\": %.1f, \"p99_us\": %.1f, \"max_us\": %.1f}%s", name,
		       h->holds, h->p50_us, h->p99_us, h->max_us, last ? "" : ", ");
}

static int cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;

	return x < y ? -1 : x > y;
}

/* Median, min and max of a ratio over the rounds of (method, dup). */
struct spread {
	int n;
	double med, min, max;
};

static struct spread spread_of(const struct result *r, int n, const char *method, int dup,
			       double (*f)(const struct result *, const struct result *))
{
	double v[MAX_ROUNDS];
	struct spread sp = { 0 };

	for (int i = 0; i < n && sp.n < MAX_ROUNDS; i++)
		if (r[i].ran && r[i].dup == dup && !strcmp(r[i].method, method))
			v[sp.n++] = f(ref_of(r, n, &r[i]), &r[i]);
	if (!sp.n)
		return sp;
	qsort(v, sp.n, sizeof(v[0]), cmp_double);
	sp.med = sp.n % 2 ? v[sp.n / 2] : (v[sp.n / 2 - 1] + v[sp.n / 2]) / 2;
	sp.min = v[0];
	sp.max = v[sp.n - 1];
	return sp;
}

static const char *const methods[NMETHODS] = { "upm-1", "upm-N", "upm-1-2m", "ksmd-aggressive" };

/* One round of one duplicate fraction, the methods from rotation @round. */
static int run_round(struct result *r, int dup, int round, int have_upm, size_t chunk)
{
	int n = 0;

	for (int k = 0; k < NMETHODS; k++) {
		const char *m = methods[(k + round) % NMETHODS];

		if (!strncmp(m, "upm", 3) && !have_upm)
			continue;
		r[n] = (struct result){ .method = m, .dup = dup, .round = round };
		if (!strcmp(m, "upm-1"))
			run_method(&r[n++], 1, 1, 0, 100, 20);
		else if (!strcmp(m, "upm-N"))
			run_method(&r[n++], 1, nslices, 0, 100, 20);
		else if (!strcmp(m, "upm-1-2m"))
			run_method(&r[n++], 1, 1, chunk, 100, 20);
		else
			run_method(&r[n++], 0, nslices, 0, 10000, 0);
	}
	if (dup == 90 && round == 0) {
		r[n] = (struct result){ .method = "ksmd-default", .dup = dup, .round = round };
		run_method(&r[n++], 0, nslices, 0, 100, 20);
	}
	return n;
}

static void print_table(const struct result *r, int n, int rounds)
{
	printf("UPM-BENCH-TABLE-BEGIN\n");
	printf("%d x %d MiB (%d MiB), upm-N = %d processes at once, upm-1-2m = 2 MiB calls, %d round(s);\n"
	       "x_faster, x_cheaper = ksmd-aggressive / method (t90, cpu_s/GiB) at the same dup and round;\n"
	       "hold = ksm_thread_mutex hold of the method's merger (upm passes, or ksmd), p50/p99/max\n",
	       nslices, mib, nslices * mib, nslices, rounds);
	printf("%-4s %-3s %-16s %7s %7s %7s %9s %9s %8s %9s %8s %8s %8s\n", "dup", "rnd", "method", "t90_s",
	       "all_s", "cpu_s", "saved_MiB", "cpu_s/GiB", "x_faster", "x_cheaper", "p50_us", "p99_us", "max_us");
	for (int i = 0; i < n; i++) {
		const struct result *ref = ref_of(r, n, &r[i]);
		const struct hold *h = &r[i].hold[strncmp(r[i].method, "upm", 3) ? 1 : 0];

		printf("%3d%% %3d %-16s %6.2f%s %7.2f %7.2f %9.1f %9.2f %8.2f %9.2f %8.0f %8.0f %8.0f\n",
		       r[i].dup, r[i].round + 1, r[i].method, r[i].t90, r[i].reached ? " " : ">", r[i].tall,
		       r[i].cpu, r[i].saved_gib * 1024, cpg(&r[i]), x_faster(ref, &r[i]), x_cheaper(ref, &r[i]),
		       h->p50_us, h->p99_us, h->max_us);
	}
}

/* Per dup and upm method: the ratios' median [min-max] over the rounds. */
static void print_summary(const struct result *r, int n, const int *dups, int ndup, int have_upm)
{
	if (!have_upm)
		return;
	printf("summary over the rounds: median [min-max] of x_cheaper and x_faster\n");
	for (int d = 0; d < ndup; d++) {
		for (int k = 0; k < 3; k++) {
			struct spread c = spread_of(r, n, methods[k], dups[d], x_cheaper);
			struct spread f = spread_of(r, n, methods[k], dups[d], x_faster);

			if (c.n)
				printf("%3d%% %-16s x_cheaper %5.2f [%5.2f-%5.2f]  x_faster %5.2f [%5.2f-%5.2f]\n",
				       dups[d], methods[k], c.med, c.min, c.max, f.med, f.min, f.max);
		}
		for (int i = 0; i < n; i++)
			for (int j = 0; j < n; j++)
				if (r[i].dup == dups[d] && r[j].dup == dups[d] && r[i].round == r[j].round &&
				    !strcmp(r[i].method, "upm-1") && !strcmp(r[j].method, "upm-N") && r[i].tall > 0)
					printf("dup %d%% round %d: %d concurrent advisers took %.2fx the time of one "
					       "doing all the work\n", dups[d], r[i].round + 1, nslices,
					       r[j].tall / r[i].tall);
	}
}

static void print_json(const struct result *r, int n, const int *dups, int ndup, int rounds, int have_upm,
		       size_t chunk)
{
	printf("UPM-BENCH-JSON-BEGIN\n{\n  \"workload\": {\"slices\": %d, \"mib_per_slice\": %d, \"total_mib\": %d, "
	       "\"chunk_mib\": %d, \"limit_seconds\": %d, \"rounds\": %d, \"dups_pct\": [",
	       nslices, mib, nslices * mib, (int)(chunk / MiB), limit_s, rounds);
	for (int d = 0; d < ndup; d++)
		printf("%s%d", d ? ", " : "", dups[d]);
	printf("]},\n  \"upm_available\": %s,\n  \"reference\": \"ksmd-aggressive\",\n  \"summary\": [",
	       have_upm ? "true" : "false");
	for (int d = 0, first = 1; d < ndup && have_upm; d++)
		for (int k = 0; k < 3; k++) {
			struct spread c = spread_of(r, n, methods[k], dups[d], x_cheaper);
			struct spread f = spread_of(r, n, methods[k], dups[d], x_faster);

			if (!c.n)
				continue;
			printf("%s\n    {\"method\": \"%s\", \"dup_pct\": %d, \"rounds\": %d, "
			       "\"x_cheaper\": {\"median\": %.3f, \"min\": %.3f, \"max\": %.3f}, "
			       "\"x_faster\": {\"median\": %.3f, \"min\": %.3f, \"max\": %.3f}}",
			       first ? "" : ",", methods[k], dups[d], c.n, c.med, c.min, c.max, f.med, f.min, f.max);
			first = 0;
		}
	printf("\n  ],\n  \"results\": [");
	for (int i = 0; i < n; i++) {
		const struct result *ref = ref_of(r, n, &r[i]);

		printf("%s\n    {\"method\": \"%s\", \"dup_pct\": %d, \"round\": %d, \"processes\": %d, \"chunk_mib\": %d, "
		       "\"reached_90pct\": %s, \"time_to_90pct_s\": %.3f, \"time_all_returned_s\": %.3f, "
		       "\"cpu_s\": %.3f, \"saved_gib\": %.4f, \"fraction_of_best\": %.4f, \"cpu_s_per_gib\": %.3f, "
		       "\"x_faster\": %.3f, \"x_cheaper\": %.3f, \"mutex_hold\": {",
		       i ? "," : "", r[i].method, r[i].dup, r[i].round + 1, r[i].procs, r[i].chunk_mib,
		       r[i].reached ? "true" : "false", r[i].t90, r[i].tall, r[i].cpu, r[i].saved_gib, r[i].frac,
		       cpg(&r[i]), x_faster(ref, &r[i]), x_cheaper(ref, &r[i]));
		print_hold_json("upm", &r[i].hold[0], 0);
		print_hold_json("ksmd", &r[i].hold[1], 1);
		printf("}, \"pass_ms\": {");
		for (int k = 0; k < r[i].nphases; k++)
			printf("%s\"%s\": %.1f", k ? ", " : "", r[i].phase[k], r[i].phase_ms[k]);
		printf("}}");
	}
	printf("\n  ]\n}\nUPM-BENCH-JSON-END\n");
}

int main(int argc, char **argv)
{
	static struct result r[MAX_DUPS * (NMETHODS + 1) * MAX_ROUNDS];
	int dups[MAX_DUPS], ndup = 0, n = 0, have_upm, rounds;
	const char *why = "";
	char dupstr[64] = "90,50,10", *tok, *save;
	size_t chunk = 2 * MiB;

	ut_name = "upm_bench";
	setvbuf(stdout, NULL, _IOLBF, 0);
	nslices = argc > 1 && *argv[1] ? atoi(argv[1]) : 8;
	mib = argc > 2 ? atoi(argv[2]) : 128;
	limit_s = argc > 3 ? atoi(argv[3]) : 300;
	if (argc > 4)
		snprintf(dupstr, sizeof(dupstr), "%s", argv[4]);
	rounds = argc > 5 ? atoi(argv[5]) : 2;
	for (tok = strtok_r(dupstr, ",", &save); tok && ndup < MAX_DUPS; tok = strtok_r(NULL, ",", &save))
		dups[ndup++] = atoi(tok);
	if (nslices < 2 || nslices > 64 || mib < 2 || !ndup || rounds < 1 || rounds > MAX_ROUNDS)
		ut_fail("usage: upm_bench [SLICES(2-64) [MiB(>=2) [LIMIT_SECONDS [DUPS [ROUNDS(1-%d)]]]]]",
			MAX_ROUNDS);
	for (int d = 0; d < ndup; d++)
		if (dups[d] < 10 || dups[d] > 100 || dups[d] % 10)
			ut_fail("DUPS: multiples of 10 from 10 to 100, got %d", dups[d]);
	spg = (size_t)mib * MiB / PG;
	have_upm = upm_supported(&why);
	if (!have_upm)
		ut_note("%s: upm rows skipped", why);
	ksm_quiesce();
	for (int k = 0; k < rounds; k++)
		for (int d = 0; d < ndup; d++)
			n += run_round(&r[n], dups[d], k, have_upm, chunk);
	ksm_set("pages_to_scan", 100);
	ksm_set("sleep_millisecs", 20);
	ksm_set("run", 0);

	print_table(r, n, rounds);
	print_summary(r, n, dups, ndup, have_upm);
	printf("UPM-BENCH-TABLE-END\n");
	print_json(r, n, dups, ndup, rounds, have_upm, chunk);
	return UT_PASS;
}
