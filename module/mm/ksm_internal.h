/* SPDX-License-Identifier: GPL-2.0 */
/*
 * Interface between the KSM engine (mm/ksm.c) and User-guided Page Merging
 * (mm/upm.c).  Only those two files include it.
 *
 * The merge engine lives in mm/ksm.c because it needs KSM's static state:
 * the stable tree, the mm_slot list, ksmd's scan cursor, ksm_thread_mutex
 * and the rmap_item cache.  mm/upm.c holds the policy: the madvise entry,
 * sharing domains, tunables and statistics.
 */
#ifndef _MM_KSM_INTERNAL_H
#define _MM_KSM_INTERNAL_H

#include <linux/types.h>

struct mm_struct;

#ifdef CONFIG_UPM

/**
 * struct upm_result - what one synchronous merge pass did
 * @examined: present anonymous pages looked at
 * @merged_stable: pages merged into an already existing KSM page
 * @merged_pairs: new KSM pages made of the page and an indexed candidate
 *	(each counts two merged pages)
 * @merged_zero: pages merged with the zero page (use_zero_pages)
 * @already: pages that were already merged, or fork-shared with the
 *	candidate they matched
 * @candidates: pages remembered in the candidate index
 * @stale: stale candidates dropped (content changed, unmapped, mm gone)
 * @index_full: pages not remembered because max_candidates was reached
 * @failed: merges that failed (page pinned, locked or changed meanwhile)
 * @failed_ref: of those, merges that failed while a page had a reference
 *	beyond its mappings (e.g. in another CPU's LRU batch)
 * @reconciled: stale rmap_items taken out of the stable tree or index
 */
struct upm_result {
	unsigned long examined;
	unsigned long merged_stable;
	unsigned long merged_pairs;
	unsigned long merged_zero;
	unsigned long already;
	unsigned long candidates;
	unsigned long stale;
	unsigned long index_full;
	unsigned long failed;
	unsigned long failed_ref;
	unsigned long reconciled;
};

/* Tunables, read by mm/ksm.c under ksm_thread_mutex; owned by mm/upm.c. */
extern unsigned long upm_max_candidates;
extern unsigned long upm_max_domain_candidates;

int ksm_upm_merge_range(struct mm_struct *mm, unsigned long start,
			unsigned long end, u64 domain,
			struct upm_result *res);
int ksm_upm_reconcile_range(struct mm_struct *mm, unsigned long start,
			    unsigned long end);
unsigned long ksm_upm_candidates(void);
unsigned long ksm_upm_index_bytes(void);
unsigned long ksm_upm_hash_bytes(void);

#endif /* CONFIG_UPM */
#endif /* _MM_KSM_INTERNAL_H */
