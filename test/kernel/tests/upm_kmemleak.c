// SPDX-License-Identifier: GPL-2.0
/*
 * upm_kmemleak -- a kmemleak scan at the end of a debug-extra run.
 *
 * The debug-extra flavour has kmemleak without its auto-scan thread; this
 * last test of `run.sh --debug-extra` scans twice, 6 s apart (kmemleak
 * ignores objects younger than 5 s, and lists only objects still
 * unreferenced in the last scan), and prints every report between
 * "upm-kmemleak: BEGIN" and "upm-kmemleak: END" on the console.  run.sh
 * sorts them: a report whose backtrace has a function of mm/ksm.c or
 * mm/upm.c (build.sh's ksm-upm.syms) fails the pseudo-test
 * kmemleak-ksm-upm, the others are listed.  This program fails only when
 * kmemleak cannot scan (it disables itself on an internal error, e.g. its
 * early pool ran out: see the console); it skips on kernels without
 * kmemleak.
 */
#include "upmtest.h"

#define KMEMLEAK "/sys/kernel/debug/kmemleak"

static void kmemleak_scan(void)
{
	double t0 = ut_now();
	int rc = ut_write_str(KMEMLEAK, "scan");

	if (rc)
		ut_fail("cannot start a scan: %s (kmemleak disabled itself? see the console)",
			strerror(-rc));
	ut_note("kmemleak scan took %.1fs", ut_now() - t0);
}

int main(void)
{
	char line[512];
	long objects = 0;
	FILE *f;

	ut_name = "upm_kmemleak";
	if (access(KMEMLEAK, F_OK))
		ut_skip("no %s (kernel without CONFIG_DEBUG_KMEMLEAK, or no debugfs)", KMEMLEAK);
	kmemleak_scan();
	sleep(6);
	kmemleak_scan();
	f = fopen(KMEMLEAK, "r");
	if (!f)
		ut_fail("open " KMEMLEAK ": %s", strerror(errno));
	printf("upm-kmemleak: BEGIN\n");
	while (fgets(line, sizeof(line), f)) {
		objects += !strncmp(line, "unreferenced object", 19);
		fputs(line, stdout);
	}
	fclose(f);
	printf("upm-kmemleak: END %ld unreferenced object(s)\n", objects);
	ut_note("%ld unreferenced object(s) reported (run.sh sorts KSM/UPM ones from the rest)",
		objects);
	return UT_PASS;
}
