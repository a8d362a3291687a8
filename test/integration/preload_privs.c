/* Helper of test_preload_privs.py: what a (possibly set-user-ID) program
 * sees of the preload's effect on its privileges.
 *
 *   preload_privs stack            prints "stack=N euid=E preload=P": glibc's
 *                                  default thread stack size
 *                                  (pthread_getattr_default_np); P is 1 when
 *                                  libupm-preload.so is mapped
 *   preload_privs merge            prints "merge=N euid=E": prctl(PR_GET_MEMORY_MERGE)
 *   preload_privs advised [PROG ARG...]
 *                                  maps 1 MiB of anonymous memory, waits (at
 *                                  most 10 s) until it is mergeable (its "mg"
 *                                  VmFlag: the preload's start run is done),
 *                                  prints "merge=N nnp=B mg=M" (M: 1 when it
 *                                  became mergeable), then execs PROG if given
 *   preload_privs drop UID GID PROG ARG...
 *                                  su-exec/gosu style: setgroups(0), setgid,
 *                                  setuid (each one broadcast to every thread
 *                                  by glibc), then execs PROG
 *   preload_privs keepcaps UID GID PROG ARG...
 *                                  a daemon that keeps one capability across
 *                                  the uid change: PR_SET_KEEPCAPS, setresuid,
 *                                  capset (CAP_SETGID back in the effective
 *                                  set), setresgid, setgroups(0), then execs
 *                                  PROG (what setpriv --reuid --regid does)
 *   preload_privs capdrop          stays root but clears its capabilities
 *                                  with glibc's capset() (libcap-ng's
 *                                  capng_apply), waits 200 ms, then prints
 *                                  "NAME CAPEFF" for every thread
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <grp.h>
#include <linux/capability.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#ifndef PR_GET_MEMORY_MERGE
#define PR_GET_MEMORY_MERGE 68
#endif

/* 1 when the mapping starting at `addr` has the "mg" VmFlag, else 0. */
static int mergeable(const void *addr)
{
	FILE *f = fopen("/proc/self/smaps", "re");
	if (!f)
		return 0;
	char line[1024];
	int in = 0, mg = 0;
	while (fgets(line, sizeof line, f)) {
		unsigned long start, end;
		if (sscanf(line, "%lx-%lx ", &start, &end) == 2)
			in = start == (unsigned long)addr;
		else if (in && strncmp(line, "VmFlags:", 8) == 0)
			mg = strstr(line, " mg") != NULL;
	}
	fclose(f);
	return mg;
}

static int preload_mapped(void)
{
	FILE *f = fopen("/proc/self/maps", "re");
	if (!f)
		return 0;
	char line[4096];
	int found = 0;
	while (fgets(line, sizeof line, f))
		if (strstr(line, "/libupm-preload.so"))
			found = 1;
	fclose(f);
	return found;
}

static int caps(int set_effective_setgid)
{
	struct __user_cap_header_struct h = {_LINUX_CAPABILITY_VERSION_3, 0};
	struct __user_cap_data_struct d[2];
	memset(d, 0, sizeof d);
	if (syscall(SYS_capget, &h, d) != 0)
		return -1;
	if (set_effective_setgid)
		d[0].effective |= 1u << CAP_SETGID;
	return (int)syscall(SYS_capset, &h, d);
}

/* glibc exports capset() without declaring it (libcap's header does). */
extern int capset(cap_user_header_t header, const cap_user_data_t data);

static int capdrop(void)
{
	struct __user_cap_header_struct h = {_LINUX_CAPABILITY_VERSION_3, 0};
	struct __user_cap_data_struct d[2];
	memset(d, 0, sizeof d);
	if (capset(&h, d) != 0) {
		perror("capset");
		return 5;
	}
	struct timespec ts = {0, 200 * 1000 * 1000};
	nanosleep(&ts, NULL);
	DIR *dir = opendir("/proc/self/task");
	if (!dir)
		return 6;
	struct dirent *e;
	while ((e = readdir(dir))) {
		if (e->d_name[0] == '.')
			continue;
		char path[320], line[256], name[64] = "?", eff[64] = "?";
		snprintf(path, sizeof path, "/proc/self/task/%s/status", e->d_name);
		FILE *f = fopen(path, "re");
		if (!f)
			continue;
		while (fgets(line, sizeof line, f)) {
			sscanf(line, "Name: %63s", name);
			sscanf(line, "CapEff: %63s", eff);
		}
		fclose(f);
		printf("%s %s\n", name, eff);
	}
	closedir(dir);
	return 0;
}

int main(int argc, char **argv)
{
	if (argc < 2)
		return 2;
	const char *mode = argv[1];
	if (strcmp(mode, "stack") == 0) {
		pthread_attr_t a;
		size_t size = 0;
		if (pthread_getattr_default_np(&a) != 0 || pthread_attr_getstacksize(&a, &size) != 0)
			return 3;
		printf("stack=%zu euid=%d preload=%d\n", size, (int)geteuid(), preload_mapped());
		return 0;
	}
	if (strcmp(mode, "merge") == 0) {
		printf("merge=%d euid=%d\n", prctl(PR_GET_MEMORY_MERGE, 0, 0, 0, 0), (int)geteuid());
		return 0;
	}
	if (strcmp(mode, "advised") == 0) {
		size_t len = 1 << 20;
		char *mem = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
		if (mem == MAP_FAILED)
			return 3;
		memset(mem, 0x5a, len);
		int mg = 0;
		for (int i = 0; i < 1000 && (mg = mergeable(mem)) == 0; i++) {
			struct timespec ts = {0, 10 * 1000 * 1000};
			nanosleep(&ts, NULL);
		}
		printf("merge=%d nnp=%d mg=%d\n", prctl(PR_GET_MEMORY_MERGE, 0, 0, 0, 0),
		       prctl(PR_GET_NO_NEW_PRIVS, 0, 0, 0, 0), mg);
		fflush(stdout);
		if (argc > 2) {
			execv(argv[2], argv + 2);
			perror("execv");
			return 4;
		}
		return 0;
	}
	if (strcmp(mode, "capdrop") == 0)
		return capdrop();
	if ((strcmp(mode, "drop") == 0 || strcmp(mode, "keepcaps") == 0) && argc > 4) {
		uid_t uid = (uid_t)strtoul(argv[2], NULL, 10);
		gid_t gid = (gid_t)strtoul(argv[3], NULL, 10);
		if (strcmp(mode, "drop") == 0) {
			if (setgroups(0, NULL) != 0 || setgid(gid) != 0 || setuid(uid) != 0) {
				perror("drop");
				return 5;
			}
		} else {
			if (prctl(PR_SET_KEEPCAPS, 1, 0, 0, 0) != 0 || setresuid(uid, uid, uid) != 0 || caps(1) != 0 ||
			    setresgid(gid, gid, gid) != 0 || setgroups(0, NULL) != 0) {
				perror("keepcaps");
				return 5;
			}
		}
		execv(argv[4], argv + 4);
		perror("execv");
		return 4;
	}
	return 2;
}
