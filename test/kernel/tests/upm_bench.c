// SPDX-License-Identifier: GPL-2.0
/*
 * upm_bench -- MADV_UPM against ksmd (default and aggressive settings) on
 * one data set, in one boot.
 *
 * Data set: NPROC processes x MiB each; in every process page i holds the
 * same content as in the others unless i % 10 == 9 (then it is unique), so
 * ~90% of the pages are identical across processes and page-distinct within
 * one.  Best possible: pages_sharing = common_pages * (NPROC - 1).
 * Methods (fresh processes and a clean KSM state each):
 *   upm              every process madvise(MADV_UPM)s its region at once,
 *                    ksmd stopped (they contend for ksm_thread_mutex)
 *   upm-serial       the same, one process after the other (as a node
 *                    agent advising containers in turn would)
 *   ksmd-aggressive  MADV_MERGEABLE, ksmd pages_to_scan=10000 sleep_millisecs=0
 *   ksmd-default     MADV_MERGEABLE, ksmd pages_to_scan=100 sleep_millisecs=20
 * Measured: time until pages_sharing >= 90% of the best (polled), CPU
 * seconds (the advising processes' own, getrusage around madvise, plus
 * ksmd's utime+stime from /proc/PID/stat up to that point) per GiB saved
 * (pages_sharing * 4 KiB at that point), and ratios to upm.  Prints a table
 * and a JSON document between UPM-BENCH-JSON-BEGIN/END markers.  Without
 * MADV_UPM only the ksmd rows are reported (ratios are then to aggressive).
 * Usage: upm_bench [NPROC [MiB [LIMIT_SECONDS]]]   (default 8 64 300)
 */
#include "upmtest.h"
#include <sys/resource.h>

#define COMMON_SEED 0xbe7c4ULL

struct result {
	const char *method;
	int ran, reached;
	double t90, cpu, saved_gib, frac;
	long sharing;
};

static int nproc, mib, limit_s;
static size_t npg;

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

/* Worker: fill, wait for the go byte, advise, report CPU seconds, wait for the end. */
static pid_t start_worker(int idx, int advice, int go_fd, int rep_fd, int ready_fd)
{
	pid_t c = ut_fork();

	if (c == 0) {
		char *p = ut_map_anon(npg * PG), b;
		struct rusage r0, r1;
		double cpu;

		for (size_t i = 0; i < npg; i++)
			page_fill(p + i * PG, i % 10 == 9 ? COMMON_SEED + 1 + idx : COMMON_SEED, i);
		b = 1;
		if (write(ready_fd, &b, 1) != 1 || read(go_fd, &b, 1) != 1)
			_exit(1);
		getrusage(RUSAGE_SELF, &r0);
		if (madvise(p, npg * PG, advice))
			ut_fail("worker %d: madvise: %s", idx, strerror(errno));
		getrusage(RUSAGE_SELF, &r1);
		cpu = (r1.ru_utime.tv_sec - r0.ru_utime.tv_sec) + (r1.ru_stime.tv_sec - r0.ru_stime.tv_sec) +
		      ((r1.ru_utime.tv_usec - r0.ru_utime.tv_usec) + (r1.ru_stime.tv_usec - r0.ru_stime.tv_usec)) / 1e6;
		if (write(rep_fd, &cpu, sizeof(cpu)) != sizeof(cpu))
			_exit(1);
		pause(); /* keep the memory until killed */
		_exit(0);
	}
	return c;
}

static void run_method(struct result *res, int upm, int serial, int pages_to_scan, int sleep_ms)
{
	int go[2], rep[2], ready[2];
	pid_t pids[64], kp = ksmd_pid();
	long best = (long)(npg - npg / 10) * (nproc - 1), target = best * 9 / 10, s;
	double t0, cpu0, adv_cpu = 0, c, tnow;
	int done = 0, sent = 0;
	char b;

	ksm_unmerge_all();
	ksm_set("run", 0);
	ksm_set("pages_to_scan", pages_to_scan);
	ksm_set("sleep_millisecs", sleep_ms);
	if (pipe(go) || pipe(rep) || pipe(ready))
		ut_fail("pipe");
	for (int i = 0; i < nproc; i++)
		pids[i] = start_worker(i, upm ? MADV_UPM : MADV_MERGEABLE, go[0], rep[1], ready[1]);
	for (int i = 0; i < nproc; i++)
		if (read(ready[0], &b, 1) != 1)
			ut_fail("worker died while filling");
	ut_note("%s: %d x %d MiB filled; best pages_sharing %ld, 90%% = %ld", res->method, nproc, mib, best, target);

	cpu0 = proc_cpu(kp);
	t0 = ut_now();
	b = 1;
	for (; sent < (serial ? 1 : nproc); sent++) /* serial: one process after the other */
		if (write(go[1], &b, 1) != 1)
			ut_fail("go");
	if (!upm) { /* wait for the (cheap) MADV_MERGEABLE calls, then start ksmd */
		for (; done < nproc; done++) {
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
			while (done < nproc && select(rep[0] + 1, &fds, NULL, NULL, &tv) > 0) {
				if (read(rep[0], &c, sizeof(c)) != sizeof(c))
					ut_fail("worker died");
				adv_cpu += c;
				done++;
				tv.tv_usec = 0;
				if (sent < nproc) {
					if (write(go[1], &b, 1) != 1)
						ut_fail("go");
					sent++;
				}
			}
			if (done == nproc && res->reached)
				break;
			if (done == nproc) { /* all returned but below 90%: final state */
				s = ksm_get("pages_sharing");
				if (s < target) {
					res->t90 = ut_now() - t0;
					res->sharing = s;
					break;
				}
				continue;
			}
		} else {
			if (res->reached)
				break;
			usleep(20000);
		}
		if (tnow > limit_s) {
			res->t90 = tnow;
			res->sharing = s;
			res->cpu = proc_cpu(kp) - cpu0;
			break;
		}
	}
	res->cpu += adv_cpu;
	res->saved_gib = res->sharing * (double)PG / GiB;
	res->frac = (double)res->sharing / best;
	res->ran = 1;
	ut_note("%s: %s 90%% in %.2fs, cpu %.2fs (advising %.2fs), pages_sharing %ld (%.1f%% of best)", res->method,
		res->reached ? "reached" : "did NOT reach", res->t90, res->cpu, adv_cpu, res->sharing,
		100 * res->frac);
	ksm_set("run", 0);
	for (int i = 0; i < nproc; i++)
		kill(pids[i], SIGKILL);
	for (int i = 0; i < nproc; i++)
		ut_reap(pids[i]);
	close(go[0]), close(go[1]), close(rep[0]), close(rep[1]), close(ready[0]), close(ready[1]);
	ksm_unmerge_all();
}

int main(int argc, char **argv)
{
	struct result r[4] = { { .method = "upm" }, { .method = "upm-serial" }, { .method = "ksmd-aggressive" },
			       { .method = "ksmd-default" } };
	const char *why = "";
	int have_upm, ref;

	ut_name = "upm_bench";
	setvbuf(stdout, NULL, _IOLBF, 0);
	nproc = argc > 1 && *argv[1] ? atoi(argv[1]) : 8;
	mib = argc > 2 ? atoi(argv[2]) : 64;
	limit_s = argc > 3 ? atoi(argv[3]) : 300;
	if (nproc < 2 || nproc > 64 || mib < 1)
		ut_fail("usage: upm_bench [NPROC(2-64) [MiB [LIMIT_SECONDS]]]");
	npg = (size_t)mib * MiB / PG;
	have_upm = upm_supported(&why);
	ksm_quiesce();
	if (have_upm) {
		run_method(&r[0], 1, 0, 100, 20);
		run_method(&r[1], 1, 1, 100, 20);
	} else {
		ut_note("%s: upm rows skipped", why);
	}
	run_method(&r[2], 0, 0, 10000, 0);
	run_method(&r[3], 0, 0, 100, 20);
	ksm_set("pages_to_scan", 100);
	ksm_set("sleep_millisecs", 20);
	ksm_set("run", 0);

	ref = have_upm ? 0 : 2;
	printf("UPM-BENCH-TABLE-BEGIN\n");
	printf("%d processes x %d MiB, 90%% identical; ratios are to %s\n", nproc, mib, r[ref].method);
	printf("%-16s %8s %9s %10s %12s %9s %12s\n", "method", "t90_s", "cpu_s", "saved_MiB", "cpu_s/GiB",
	       "t90_ratio", "cpu/GiB_ratio");
	for (int i = 0; i < 4; i++) {
		double cpg, rcpg;

		if (!r[i].ran)
			continue;
		cpg = r[i].saved_gib > 0 ? r[i].cpu / r[i].saved_gib : 0;
		rcpg = r[ref].saved_gib > 0 ? r[ref].cpu / r[ref].saved_gib : 0;
		printf("%-16s %7.2f%s %9.2f %10.1f %12.2f %9.1f %12.1f\n", r[i].method, r[i].t90,
		       r[i].reached ? " " : ">", r[i].cpu, r[i].saved_gib * 1024, cpg,
		       r[ref].t90 > 0 ? r[i].t90 / r[ref].t90 : 0, rcpg > 0 ? cpg / rcpg : 0);
	}
	printf("UPM-BENCH-TABLE-END\n");
	printf("UPM-BENCH-JSON-BEGIN\n{\n  \"workload\": {\"processes\": %d, \"mib_per_process\": %d, "
	       "\"identical_fraction\": 0.9, \"best_pages_sharing\": %ld, \"limit_seconds\": %d},\n",
	       nproc, mib, (long)(npg - npg / 10) * (nproc - 1), limit_s);
	printf("  \"upm_available\": %s,\n  \"reference\": \"%s\",\n  \"results\": [", have_upm ? "true" : "false",
	       r[ref].method);
	for (int i = 0, first = 1; i < 4; i++) {
		double cpg, rcpg;

		if (!r[i].ran)
			continue;
		cpg = r[i].saved_gib > 0 ? r[i].cpu / r[i].saved_gib : 0;
		rcpg = r[ref].saved_gib > 0 ? r[ref].cpu / r[ref].saved_gib : 0;
		printf("%s\n    {\"method\": \"%s\", \"reached_90pct\": %s, \"time_to_90pct_s\": %.3f, "
		       "\"cpu_s\": %.3f, \"saved_gib\": %.4f, \"fraction_of_best\": %.4f, \"cpu_s_per_gib\": %.3f, "
		       "\"time_ratio\": %.3f, \"cpu_per_gib_ratio\": %.3f}",
		       first ? "" : ",", r[i].method, r[i].reached ? "true" : "false", r[i].t90, r[i].cpu,
		       r[i].saved_gib, r[i].frac, cpg, r[ref].t90 > 0 ? r[i].t90 / r[ref].t90 : 0,
		       rcpg > 0 ? cpg / rcpg : 0);
		first = 0;
	}
	printf("\n  ]\n}\nUPM-BENCH-JSON-END\n");
	return UT_PASS;
}
