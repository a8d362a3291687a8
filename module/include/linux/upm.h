/* SPDX-License-Identifier: GPL-2.0 */
/*
 * User-guided Page Merging (UPM): synchronous, advice-driven merging of
 * identical anonymous pages into KSM pages.  See mm/upm.c.
 */
#ifndef _LINUX_UPM_H
#define _LINUX_UPM_H

#include <linux/types.h>
#include <uapi/linux/upm.h>

struct mm_struct;

#ifdef CONFIG_UPM
int upm_madvise(struct mm_struct *mm, unsigned long start,
		unsigned long end);
void upm_unmerged(struct mm_struct *mm, unsigned long start,
		  unsigned long end);
#else
static inline int upm_madvise(struct mm_struct *mm, unsigned long start,
			      unsigned long end)
{
	return -EINVAL;
}

static inline void upm_unmerged(struct mm_struct *mm, unsigned long start,
				unsigned long end)
{
}
#endif /* CONFIG_UPM */

#endif /* _LINUX_UPM_H */
