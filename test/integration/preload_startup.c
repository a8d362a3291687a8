/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * preload_startup: start-up cost of libupm-preload.so.
 *
 *   preload_startup RUNS PRELOAD PROGRAM [ARGS...]
 *
 * Runs PROGRAM RUNS times without and RUNS times with LD_PRELOAD=PRELOAD,
 * alternating (so both see the same machine state), each time fork + execv
 * + waitpid, timed with CLOCK_MONOTONIC from before fork() to after
 * waitpid().  Prints one line per mode, "without median_us=... min_us=...
 * p90_us=..." and "with ...", then "delta_median_us=...".  Any other
 * environment is inherited (UPM_POLICY, UPM_LOG...), LD_PRELOAD is set or
 * removed.  Exit status 0, or 1 if a run failed.
 */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

extern char **environ;

static double now_us(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1e6 + ts.tv_nsec / 1e3;
}

static int cmp(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;
	return x < y ? -1 : x > y;
}

/* environ without LD_PRELOAD, plus `extra` if not NULL */
static char **make_env(const char *extra)
{
	size_t n = 0;
	while (environ[n])
		n++;
	char **env = calloc(n + 2, sizeof *env);
	size_t j = 0;
	for (size_t i = 0; i < n; i++)
		if (strncmp(environ[i], "LD_PRELOAD=", 11) != 0)
			env[j++] = environ[i];
	if (extra)
		env[j++] = (char *)extra;
	env[j] = NULL;
	return env;
}

static double run_once(char **argv, char **env, double *cpu)
{
	double t0 = now_us();
	pid_t pid = fork();
	if (pid < 0) {
		perror("fork");
		exit(1);
	}
	if (pid == 0) {
		execve(argv[0], argv, env);
		_exit(127);
	}
	int status;
	struct rusage ru;
	if (wait4(pid, &status, 0, &ru) < 0 || !WIFEXITED(status) || WEXITSTATUS(status) != 0) {
		fprintf(stderr, "preload_startup: `%s` failed (status %d)\n", argv[0], status);
		exit(1);
	}
	double wall = now_us() - t0;
	if (cpu)
		*cpu = ru.ru_utime.tv_sec * 1e6 + ru.ru_utime.tv_usec + ru.ru_stime.tv_sec * 1e6 + ru.ru_stime.tv_usec;
	return wall;
}

static void report(const char *name, double *v, int n)
{
	qsort(v, n, sizeof *v, cmp);
	printf("%s median_us=%.1f min_us=%.1f p90_us=%.1f\n", name, v[n / 2], v[0], v[(n * 9) / 10]);
}

int main(int argc, char **argv)
{
	if (argc < 4) {
		fprintf(stderr, "usage: %s RUNS PRELOAD PROGRAM [ARGS...]\n", argv[0]);
		return 2;
	}
	int runs = atoi(argv[1]);
	if (runs < 1 || runs > 100000)
		return 2;
	char *pre = malloc(strlen(argv[2]) + 16);
	sprintf(pre, "LD_PRELOAD=%s", argv[2]);
	char **env_without = make_env(NULL), **env_with = make_env(pre);
	double *without = calloc(runs, sizeof(double)), *with = calloc(runs, sizeof(double));
	double *cwithout = calloc(runs, sizeof(double)), *cwith = calloc(runs, sizeof(double));

	/* warm the page cache and the dynamic loader's files */
	run_once(argv + 3, env_without, NULL);
	run_once(argv + 3, env_with, NULL);
	for (int i = 0; i < runs; i++) {
		without[i] = run_once(argv + 3, env_without, &cwithout[i]);
		with[i] = run_once(argv + 3, env_with, &cwith[i]);
	}
	report("without wall", without, runs);
	report("with wall", with, runs);
	report("without cpu", cwithout, runs);
	report("with cpu", cwith, runs);
	printf("delta_median_us=%.1f\n", with[runs / 2] - without[runs / 2]);
	printf("delta_cpu_median_us=%.1f\n", cwith[runs / 2] - cwithout[runs / 2]);
	return 0;
}
