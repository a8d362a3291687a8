/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * preload_forker: fork, vfork, posix_spawn, exec and threads under
 * libupm-preload.so, for test_preload.py.  Nothing may hang or crash.
 *
 *   preload_forker ROUNDS [LIBRARY]
 *
 Phase 1: four threads each do ROUNDS iterations of, in turn: fork() with a
 * child that starts a thread which forks again, then _exit(); fork() + exec
 * of /bin/true; vfork() + exec; posix_spawn().  A fifth thread calls
 * upm_advise_all() (when the library is loaded) and dlopen()/dlclose() of
 * LIBRARY in a loop meanwhile.  Phase 2 (no dlopen()/dlclose() running: a
 * child forked while another thread is inside dlclose() may not call exit(),
 * glibc's exit-handler lock could be held): the same, but the fork children
 * return through exit(), so the exit handlers run while a worker may be
 * running.  Then the program re-executes itself three
 * times ("exec" mode) to check exec with a running worker.  Every child must
 * exit with status 0.  Prints "ok" and exits 0 on success, 1 otherwise.
 * The caller enforces the timeout.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <pthread.h>
#include <spawn.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

extern char **environ;

static int rounds;
static const char *library;
static atomic_int failures;
static atomic_int done;
static atomic_int use_exit;

static void check_child(pid_t pid, const char *what)
{
	int status;
	if (pid < 0) {
		perror(what);
		failures++;
		return;
	}
	if (waitpid(pid, &status, 0) != pid || !WIFEXITED(status) || WEXITSTATUS(status) != 0) {
		fprintf(stderr, "preload_forker: %s child failed, status %#x\n", what, status);
		failures++;
	}
}

static void *grandchild_forker(void *arg)
{
	(void)arg;
	pid_t pid = fork();
	if (pid == 0)
		_exit(0);
	check_child(pid, "grandchild");
	return NULL;
}

static void *worker(void *arg)
{
	long id = (long)arg;
	for (int i = 0; i < rounds; i++) {
		char *const argv[] = {"/bin/true", NULL};
		pid_t pid;
		switch ((i + id) % 4) {
		case 0:
			pid = fork();
			if (pid == 0) {
				pthread_t t;
				void *p = malloc(1 << 20);
				memset(p, 1, 1 << 20);
				if (pthread_create(&t, NULL, grandchild_forker, NULL) == 0)
					pthread_join(t, NULL);
				free(p);
				if (use_exit)
					exit(failures ? 1 : 0);
				_exit(failures ? 1 : 0);
			}
			check_child(pid, "fork");
			break;
		case 1:
			pid = fork();
			if (pid == 0) {
				execve(argv[0], argv, environ);
				_exit(127);
			}
			check_child(pid, "fork+exec");
			break;
		case 2:
			pid = vfork();
			if (pid == 0) {
				execve(argv[0], argv, environ);
				_exit(127);
			}
			check_child(pid, "vfork+exec");
			break;
		case 3:
			if (posix_spawn(&pid, argv[0], NULL, NULL, argv, environ) != 0)
				pid = -1;
			check_child(pid, "posix_spawn");
			break;
		}
	}
	return NULL;
}

static void *advisor(void *arg)
{
	(void)arg;
	int (*advise_all)(void) = (int (*)(void))dlsym(RTLD_DEFAULT, "upm_advise_all");
	while (!done) {
		if (advise_all) {
			int rc = advise_all();
			if (rc != 0 && rc != 38 /* ENOSYS */) {
				fprintf(stderr, "preload_forker: upm_advise_all = %d\n", rc);
				failures++;
			}
		}
		if (library) {
			void *h = dlopen(library, RTLD_NOW);
			if (!h) {
				fprintf(stderr, "preload_forker: dlopen: %s\n", dlerror());
				failures++;
			} else {
				dlclose(h);
			}
		}
		usleep(2000);
	}
	return NULL;
}

int main(int argc, char **argv)
{
	if (argc >= 3 && strcmp(argv[1], "exec") == 0) {
		int depth = atoi(argv[2]);
		if (depth <= 0)
			return 0;
		usleep(20000);	/* let the worker start and run */
		char next[16];
		snprintf(next, sizeof next, "%d", depth - 1);
		execl("/proc/self/exe", argv[0], "exec", next, (char *)NULL);
		perror("exec");
		return 1;
	}
	if (argc < 2) {
		fprintf(stderr, "usage: preload_forker ROUNDS [LIBRARY]\n");
		return 2;
	}
	rounds = atoi(argv[1]);
	library = argc > 2 ? argv[2] : NULL;

	pthread_t threads[4], adv;
	pthread_create(&adv, NULL, advisor, NULL);
	for (long i = 0; i < 4; i++)
		pthread_create(&threads[i], NULL, worker, (void *)i);
	for (int i = 0; i < 4; i++)
		pthread_join(threads[i], NULL);
	done = 1;
	pthread_join(adv, NULL);

	use_exit = 1;
	for (long i = 0; i < 4; i++)
		pthread_create(&threads[i], NULL, worker, (void *)i);
	for (int i = 0; i < 4; i++)
		pthread_join(threads[i], NULL);

	pid_t pid = fork();
	if (pid == 0) {
		execl("/proc/self/exe", argv[0], "exec", "3", (char *)NULL);
		_exit(127);
	}
	check_child(pid, "exec chain");
	if (failures) {
		fprintf(stderr, "preload_forker: %d failures\n", (int)failures);
		return 1;
	}
	printf("ok\n");
	return 0;
}
