/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * preload_probe: a test program for libupm-preload.so (test_preload.py).
 *
 * It maps a region of identical pages and watches the region's VmFlags in
 * /proc/self/smaps for "mg" (mergeable), which is what any upm backend sets.
 *
 *   preload_probe api MIB
 *       call the C API (upm.h) directly; built linked with the library
 *       (-DLINKED) or not (the functions are then weak and must come from
 *       LD_PRELOAD).  Checks upm_advise() on the region (-> "mg"), EINVAL for
 *       an unaligned address, upm_advise_all(), upm_backend(), upm_version().
 *   preload_probe wait MIB TIMEOUT_MS
 *       map, check that the region is not mergeable yet, print
 *       "ready 0xADDR", then wait for "mg" (e.g. after the test sends the
 *       policy's signal).
 *   preload_probe dlopen MIB TIMEOUT_MS LIBRARY
 *       map, check "not mg", dlopen(LIBRARY), wait for "mg".
 *   preload_probe threads MIB NTHREADS
 *       NTHREADS threads each map MIB MiB and call upm_advise() on it and
 *       upm_advise_all() 20 times, concurrently; every call must return 0
 *       and every region must end up mergeable.
 *   preload_probe runpath LIBRARY
 *       dlopen(LIBRARY) (absolute path) and call its mid_load(), which
 *       dlopen()s a neighbour through its own RUNPATH; prints "leaf=N".
 *
 * Exit status: 0 success, 2 usage, 3 a check failed, 4 timeout, 5 the
 * region was mergeable too early, 6 dlopen failed.  Messages on stdout.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include "upm.h"

#ifndef LINKED
#pragma weak upm_advise
#pragma weak upm_advise_all
#pragma weak upm_backend
#pragma weak upm_version
#endif

/* 1 if the VMA containing addr has VmFlags "mg", 0 if not, -1 if not found */
static int mergeable(void *addr)
{
	FILE *f = fopen("/proc/self/smaps", "re");
	if (!f)
		return -1;
	char line[1024];
	int inside = 0, result = -1;
	uintptr_t a = (uintptr_t)addr;
	while (fgets(line, sizeof line, f)) {
		unsigned long start, end;
		if (sscanf(line, "%lx-%lx ", &start, &end) == 2 && strchr(line, ' ') &&
		    line[strcspn(line, " ")] == ' ' && strchr(line, '-') < strchr(line, ' ')) {
			inside = a >= start && a < end;
			continue;
		}
		if (inside && strncmp(line, "VmFlags:", 8) == 0) {
			result = strstr(line, " mg") != NULL;
			break;
		}
	}
	fclose(f);
	return result;
}

static void *map_region(size_t len)
{
	void *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (p == MAP_FAILED) {
		perror("mmap");
		exit(3);
	}
	memset(p, 0x5a, len);
	return p;
}

static void sleep_ms(long ms)
{
	struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
	nanosleep(&ts, NULL);
}

static int wait_mg(void *p, long timeout_ms)
{
	for (long waited = 0; waited <= timeout_ms; waited += 10) {
		if (mergeable(p) == 1) {
			printf("mg after %ld ms\n", waited);
			return 0;
		}
		sleep_ms(10);
	}
	printf("timeout: region %p not mergeable after %ld ms\n", p, timeout_ms);
	return 4;
}

static int not_mg_yet(void *p)
{
	sleep_ms(200);	/* give a wrongly armed trigger the chance to fire */
	if (mergeable(p) != 0) {
		printf("early: region %p mergeable before the trigger\n", p);
		return 0;
	}
	return 1;
}

static int mode_api(size_t len)
{
#ifndef LINKED
	if (!upm_advise) {
		printf("no upm_advise: library not loaded\n");
		return 3;
	}
#endif
	char *p = map_region(len);
	printf("backend=%s version=%s\n", upm_backend(), upm_version());
	if (mergeable(p) != 0) {
		printf("early: region mergeable before upm_advise\n");
		return 5;
	}
	int rc = upm_advise(p + 1, 4096);
	if (rc != EINVAL) {
		printf("upm_advise(unaligned) = %d, expected EINVAL\n", rc);
		return 3;
	}
	errno = 1234;
	rc = upm_advise(p, len);
	if (errno != 1234) {
		printf("upm_advise changed errno\n");
		return 3;
	}
	if (rc != 0) {
		printf("upm_advise = %d (%s)\n", rc, strerror(rc));
		return 3;
	}
	if (mergeable(p) != 1) {
		printf("region not mergeable after upm_advise\n");
		return 3;
	}
	rc = upm_advise_all();
	if (rc != 0) {
		printf("upm_advise_all = %d (%s)\n", rc, strerror(rc));
		return 3;
	}
	printf("ok\n");
	return 0;
}

static size_t thread_len;

static void *advise_thread(void *arg)
{
	(void)arg;
	char *p = map_region(thread_len);
	for (int i = 0; i < 20; i++) {
		int rc = upm_advise(p, thread_len);
		int rc_all = upm_advise_all();
		if (rc != 0 || rc_all != 0) {
			printf("thread: upm_advise = %d, upm_advise_all = %d\n", rc, rc_all);
			return (void *)1;
		}
	}
	return mergeable(p) == 1 ? NULL : (void *)1;
}

static int mode_threads(size_t len, int n)
{
#ifndef LINKED
	if (!upm_advise) {
		printf("no upm_advise: library not loaded\n");
		return 3;
	}
#endif
	pthread_t t[64];
	thread_len = len;
	if (n < 1 || n > 64)
		return 2;
	for (int i = 0; i < n; i++)
		pthread_create(&t[i], NULL, advise_thread, NULL);
	int failed = 0;
	for (int i = 0; i < n; i++) {
		void *r;
		pthread_join(t[i], &r);
		failed += r != NULL;
	}
	printf("%s\n", failed ? "failed" : "ok");
	return failed ? 3 : 0;
}

int main(int argc, char **argv)
{
	setvbuf(stdout, NULL, _IOLBF, 0);
	if (argc < 3)
		goto usage;
	if (strcmp(argv[1], "runpath") == 0) {
		void *h = dlopen(argv[2], RTLD_NOW);
		if (!h) {
			printf("dlopen: %s\n", dlerror());
			return 6;
		}
		int (*mid_load)(void) = (int (*)(void))dlsym(h, "mid_load");
		printf("leaf=%d\n", mid_load ? mid_load() : -2);
		return 0;
	}
	size_t len = (size_t)atol(argv[2]) << 20;
	if (len == 0)
		goto usage;
	if (strcmp(argv[1], "api") == 0)
		return mode_api(len);
	if (strcmp(argv[1], "threads") == 0 && argc >= 4)
		return mode_threads(len, atoi(argv[3]));
	if (argc < 4)
		goto usage;
	long timeout = atol(argv[3]);
	if (strcmp(argv[1], "wait") == 0) {
		void *p = map_region(len);
		if (!not_mg_yet(p))
			return 5;
		printf("ready %p\n", p);
		return wait_mg(p, timeout);
	}
	if (strcmp(argv[1], "dlopen") == 0 && argc >= 5) {
		void *p = map_region(len);
		if (!not_mg_yet(p))
			return 5;
		if (!dlopen(argv[4], RTLD_NOW)) {
			printf("dlopen: %s\n", dlerror());
			return 6;
		}
		return wait_mg(p, timeout);
	}
usage:
	fprintf(stderr, "usage: preload_probe api MIB | threads MIB N | wait MIB TIMEOUT_MS | "
			"dlopen MIB TIMEOUT_MS LIB | runpath LIB\n");
	return 2;
}
