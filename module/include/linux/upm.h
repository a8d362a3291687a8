/* SPDX-License-Identifier: GPL-2.0 */
/*
 * User-guided Page Merging (UPM): synchronous, advice-driven merging of
 * identical anonymous pages into KSM pages.  See mm/upm.c.
 */
#ifndef _LINUX_UPM_H
#define _LINUX_UPM_H

#include <linux/compiler.h>
#include <linux/mm_types.h>
#include <linux/types.h>
#include <uapi/linux/upm.h>

#ifdef CONFIG_UPM
int upm_madvise(struct mm_struct *mm, unsigned long start,
		unsigned long end);
void upm_unmerged(struct mm_struct *mm, unsigned long start,
		  unsigned long end);

/**
 * upm_ksm_unmapped - a ksm page was unmapped from @mm
 * @mm: the mm
 *
 * Called by page_remove_rmap() (under the PTL): the rmap_item of that
 * mapping is stale, and with ksmd stopped nothing would take it out of the
 * KSM counters.  Mark @mm for reconciliation by the next MADV_UPM or the
 * UPM reaper.
 */
static inline void upm_ksm_unmapped(struct mm_struct *mm)
{
	if (!READ_ONCE(mm->upm_stale))
		WRITE_ONCE(mm->upm_stale, 1);
}
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

static inline void upm_ksm_unmapped(struct mm_struct *mm)
{
}
#endif /* CONFIG_UPM */

#endif /* _LINUX_UPM_H */
