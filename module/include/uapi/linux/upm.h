/* SPDX-License-Identifier: GPL-2.0 WITH Linux-syscall-note */
/*
 * User-guided Page Merging (UPM): user-space ABI.
 *
 * madvise(addr, len, MADV_UPM) marks [addr, addr + len) mergeable (like
 * MADV_MERGEABLE) and, before returning, merges every present private
 * anonymous page of the range with an identical page advised earlier by a
 * process of the same sharing domain.  The merged pages are ordinary KSM
 * pages.  process_madvise(pidfd, iov, n, MADV_UPM, 0) does the same for
 * another process.
 *
 * Choice of value: upstream allocates advice values in sequence (6.1 uses
 * 0-25 and 100-101; mainline has since added 102-103, and a 2025 RFC for a
 * synchronous merge proposed 26).  An out-of-tree value taken from that
 * sequence would collide with the next upstream addition, so MADV_UPM is
 * the ASCII bytes 'U' 'P' 'M' (0x55504d), far from both sequences, and
 * still a positive int.  Kernels without CONFIG_UPM reject it with EINVAL,
 * which is how user space probes for it.
 */
#ifndef _UAPI_LINUX_UPM_H
#define _UAPI_LINUX_UPM_H

#define MADV_UPM	0x55504d	/* merge synchronously; 'U' 'P' 'M' */

#endif /* _UAPI_LINUX_UPM_H */
