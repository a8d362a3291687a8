// SPDX-License-Identifier: GPL-2.0
/*
 * upm_lockdep -- issue #15 defect 7b: upm_pass_sem is visible to lockdep.
 *
 * On a kernel with lockdep (/proc/lockdep, the debug kernel), after a
 * MADV_UPM pass the lock class "upm_pass_sem" must be listed, with
 * ksm_thread_mutex after it in the dependency chains lockdep checks.
 * Skips on kernels without /proc/lockdep.
 */
#include "upmtest.h"

/*
 * 1 if /proc/lockdep has the class @name (the last word of its line, not
 * e.g. "upm_pass_sem.lock", the semaphore's own spinlock) and, when @dep
 * is set, a dependency "-> [...] @dep" in that class's block.
 */
static int lockdep_has(const char *name, const char *dep)
{
	char line[512];
	int in = 0, found = 0;
	FILE *f = fopen("/proc/lockdep", "r");

	if (!f)
		ut_fail("open /proc/lockdep: %s", strerror(errno));
	while (fgets(line, sizeof(line), f)) {
		char *w = strrchr(line, ' ');

		line[strcspn(line, "\n")] = 0;
		if (strstr(line, " -> [")) {
			if (in && dep && w && !strcmp(w + 1, dep))
				found = 1;
			continue;
		}
		if (!line[0] || !w)
			continue;
		in = !strcmp(w + 1, name);
		if (in && !dep)
			found = 1;
	}
	fclose(f);
	return found;
}

int main(void)
{
	size_t n = 64;
	char *p;

	ut_name = "upm_lockdep";
	ut_require_upm();
	if (access("/proc/lockdep", R_OK))
		ut_skip("no /proc/lockdep (kernel without CONFIG_LOCKDEP; the debug kernel has it)");
	ksm_quiesce();
	p = ut_map_anon(n * PG);
	region_fill(p, n, 0x10c);
	UT_CHECK(upm_advise(p, n * PG) == 0, "advise failed");
	UT_CHECK(lockdep_has("ksm_thread_mutex", NULL), "lockdep does not list ksm_thread_mutex");
	UT_CHECK(lockdep_has("upm_pass_sem", NULL),
		 "lockdep has no class upm_pass_sem after a MADV_UPM pass: the semaphore is invisible to it");
	UT_CHECK(lockdep_has("upm_pass_sem", "ksm_thread_mutex"),
		 "lockdep has no dependency upm_pass_sem -> ksm_thread_mutex");
	ut_note("/proc/lockdep: class upm_pass_sem with upm_pass_sem -> ksm_thread_mutex");
	munmap(p, n * PG);
	return UT_PASS;
}
