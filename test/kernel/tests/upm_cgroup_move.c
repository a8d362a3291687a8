// SPDX-License-Identifier: GPL-2.0
/*
 * upm_cgroup_move -- issue #15 defect 7a: a cgroup move of an adviser must
 * not re-key what it already has in ksmd's unstable tree or the candidate
 * index, nor merge across domains.
 *
 * ksmd runs throughout (pages_to_scan 2000, 10 ms).  X, in cgroup upmM1,
 * advises R1 (MADV_UPM: candidates of domain M1), rewrites R1's odd pages
 * (ksmd then keeps them in its unstable tree, keyed by X's domain), and
 * ksmd completes 2 full scans.  X moves to upmM2 and advises another
 * region R2 (its domain becomes M2 while R1's items stay where they are);
 * ksmd completes 3 more scans.  Y in upmM1 then advises R1's original
 * data, Z in upmM2 R1's current data: Y must merge nothing (X left M1),
 * Z may merge with X (same domain now); data intact.  On the debug kernel
 * the tree operations are checked by DEBUG_VM/DEBUG_LIST/KASAN (console).
 */
#include "upmtest.h"

enum { X_ADVISE1 = 1, X_WRITE_ODD, X_ADVISE2, X_VERIFY, X_MERGING, X_EXIT };

struct xproc {
	pid_t pid;
	int cmd_w, ack_r;
};

static int xsend(struct xproc *x, int c)
{
	int v;

	if (write(x->cmd_w, &c, sizeof(c)) != sizeof(c))
		ut_fail("X: command write failed");
	if (c == X_EXIT)
		return 0;
	if (read(x->ack_r, &v, sizeof(v)) != sizeof(v))
		ut_fail("X died during command %d", c);
	return v;
}

static void xstart(struct xproc *x, size_t n, uint64_t s1, uint64_t s2)
{
	int cmd[2], ack[2];

	if (pipe(cmd) || pipe(ack))
		ut_fail("pipe: %s", strerror(errno));
	x->pid = ut_fork();
	if (!x->pid) {
		char *r1 = ut_map_anon(n * PG), *r2 = ut_map_anon(n * PG);
		int odd = 0, c, v;

		region_fill(r1, n, s1);
		region_fill(r2, n, s2);
		for (;;) {
			if (read(cmd[0], &c, sizeof(c)) != sizeof(c))
				_exit(0);
			switch (c) {
			case X_ADVISE1: v = upm_advise(r1, n * PG); break;
			case X_ADVISE2: v = upm_advise(r2, n * PG); break;
			case X_WRITE_ODD:
				for (size_t i = 1; i < n; i += 2)
					page_fill(r1 + i * PG, s1 + 1, i);
				odd = 1;
				v = 0;
				break;
			case X_VERIFY:
				v = 0;
				for (size_t i = 0; i < n; i++) {
					v += !page_check(r1 + i * PG, (odd && (i & 1)) ? s1 + 1 : s1, i);
					v += !page_check(r2 + i * PG, s2, i);
				}
				break;
			case X_MERGING: v = (int)ut_merging_pages(0); break;
			case X_EXIT: _exit(0);
			default: v = -1;
			}
			if (write(ack[1], &v, sizeof(v)) != sizeof(v))
				_exit(1);
		}
	}
	close(cmd[0]);
	close(ack[1]);
	x->cmd_w = cmd[1];
	x->ack_r = ack[0];
}

int main(void)
{
	size_t n = 512;
	uint64_t s1 = 0xc90, s2 = 0xc92;
	struct ut_sharer y, z;
	struct xproc x;
	long mx, my, mz;
	char old[32] = "";

	ut_name = "upm_cgroup_move";
	ut_require_upm();
	if (access(UT_CG "/cgroup.procs", W_OK))
		ut_skip("cgroup v2 not mounted at " UT_CG);
	if (ut_read_str(UPM_DIR "/domain_mode", old, sizeof(old)) == 0)
		upm_set("domain_mode", "memcg");
	ksm_quiesce();
	ksm_set("pages_to_scan", 2000);
	ksm_set("sleep_millisecs", 10);

	xstart(&x, n, s1, s2);
	ut_cg_move("upmM1", x.pid);
	UT_CHECK(xsend(&x, X_ADVISE1) == 0, "X: advise R1 in M1 failed");
	UT_CHECK(xsend(&x, X_WRITE_ODD) == 0, "X: write odd pages");
	ksm_set("run", 1);
	ut_wait_full_scans(2, 120);
	ut_cg_move("upmM2", x.pid);
	UT_CHECK(xsend(&x, X_ADVISE2) == 0, "X: advise R2 in M2 failed");
	ut_wait_full_scans(3, 120);

	/* Y: R1's original data (even pages still equal X's candidates) */
	ut_sharer_start(&y, n, s1);
	ut_cg_move("upmM1", y.pid);
	UT_CHECK(ut_sharer_send(&y, SH_ADVISE) == 0, "Y: advise failed");
	/* Z: X's R1 as it is now (odd pages rewritten) */
	ut_sharer_start(&z, n, s1);
	ut_cg_move("upmM2", z.pid);
	UT_CHECK(ut_sharer_send(&z, SH_WRITE_ODD) == 0, "Z: write odd");
	UT_CHECK(ut_sharer_send(&z, SH_ADVISE) == 0, "Z: advise failed");
	ut_wait_full_scans(3, 120);
	UT_CHECK(xsend(&x, X_ADVISE1) == 0, "X: re-advise R1 in M2 failed");
	ut_wait_full_scans(2, 120);

	mx = xsend(&x, X_MERGING);
	my = ut_sharer_send(&y, SH_MERGING);
	mz = ut_sharer_send(&z, SH_MERGING);
	ut_note("merging pages: X (moved M1->M2) %ld, Y (M1) %ld, Z (M2) %ld of %zu", mx, my, mz, n);
	UT_CHECK(my == 0, "Y in M1 merged %ld pages: with X, which had moved to M2 (cross-domain merge)", my);
	UT_CHECK(mz * 100 >= (long)n * 99, "Z in M2 merged only %ld of %zu with X (same domain now)", mz, n);
	UT_CHECK(xsend(&x, X_VERIFY) == 0, "X lost data");
	ut_sharer_verify(&y, "Y");
	ut_sharer_verify(&z, "Z");
	ut_sharer_stop(&y);
	ut_sharer_stop(&z);
	xsend(&x, X_EXIT);
	ut_reap(x.pid);
	if (old[0])
		upm_set("domain_mode", old);
	ksm_unmerge_all();
	ksm_set("run", 0);
	usleep(100000);
	rmdir(UT_CG "/upmM1");
	rmdir(UT_CG "/upmM2");
	return UT_PASS;
}
