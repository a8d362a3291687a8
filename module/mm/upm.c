// SPDX-License-Identifier: GPL-2.0
/*
 * User-guided Page Merging (UPM)
 *
 * madvise(addr, len, MADV_UPM) is MADV_MERGEABLE plus one synchronous
 * merge pass over the range: before the call returns, every present
 * private anonymous page of the range that is identical to a page advised
 * earlier by a process of the same sharing domain has been merged into a
 * write-protected KSM page, and the other pages are remembered as
 * candidates for later advice.  process_madvise(pidfd, iov, n, MADV_UPM, 0)
 * does the same for another process.  MADV_COLLAPSE is the precedent: a
 * synchronous form of work that a kernel daemon did in the background.
 *
 * This file is the policy and the user interface: the madvise entry point,
 * sharing domains, tunables and statistics in /sys/kernel/mm/upm/.  The
 * engine is in mm/ksm.c (see "UPM engine" there), because it works on KSM's
 * static state; mm/ksm_internal.h is the interface between the two.
 *
 * Locking: this file takes no lock of its own.  upm_madvise() is called by
 * do_madvise() with no mmap_lock held; it calls do_madvise(MADV_MERGEABLE),
 * which takes and drops the mmap_lock for write, and then
 * ksm_upm_merge_range(), which takes upm_pass_sem, ksm_thread_mutex and,
 * under them, the mmap_lock of one mm at a time.  Statistics are atomics, the tunables are
 * single words read with READ_ONCE().
 *
 * Sharing domains: pages are merged only with pages of the same domain.
 * In domain_mode "memcg" (the default) the domain of an mm is the cgroup
 * id (64 bits, never reused) of the memory cgroup of its owner, or of that
 * cgroup's ancestor at depth domain_level when that is set (a pod or a
 * tenant instead of each container); the root memory cgroup is domain 0.
 * In "global" mode every mm is in domain 0.  Domain 0 is the domain of mms
 * that only ever used MADV_MERGEABLE: a UPM adviser whose domain would be
 * 0 gets UPM_DOMAIN_SHARED instead, shared by such UPM advisers only, so
 * that a synchronous merge never answers "does this content exist?" about
 * every KSM user of the node (unless share_with_ksm is set).  The domain is
 * taken at each MADV_UPM call and stored in mm->upm_domain (inherited by
 * fork), where ksmd reads it too.  The stable tree is ordered by (content,
 * domain), so a KSM page only ever serves one domain.
 *
 * MADV_UPM is refused (EPERM) until root enables it in
 * /sys/kernel/mm/upm/enabled: see Documentation/admin-guide/mm/upm.rst for
 * the content-oracle threat this opt-in and the domains answer.
 */

#include <linux/atomic.h>
#include <linux/cgroup.h>
#include <linux/init.h>
#include <linux/kobject.h>
#include <linux/ktime.h>
#include <linux/memcontrol.h>
#include <linux/mm.h>
#include <linux/mman.h>
#include <linux/sched/coredump.h>
#include <linux/string.h>
#include <linux/sysfs.h>
#include <linux/upm.h>

#include "ksm_internal.h"

enum upm_domain_mode {
	UPM_DOMAIN_GLOBAL,
	UPM_DOMAIN_MEMCG,
};

static const char * const upm_domain_mode_names[] = {
	[UPM_DOMAIN_GLOBAL] = "global",
	[UPM_DOMAIN_MEMCG] = "memcg",
};

/* Tunables (see Documentation/admin-guide/mm/upm.rst) */
static bool upm_enabled __read_mostly;
static int upm_domain_mode __read_mostly = UPM_DOMAIN_MEMCG;
static bool upm_share_with_ksm __read_mostly;
static unsigned int upm_domain_level __read_mostly;
unsigned long upm_max_candidates __read_mostly;
unsigned long upm_max_domain_candidates __read_mostly;

/**
 * struct upm_stats - cumulative statistics, shown in /sys/kernel/mm/upm/
 * @calls: MADV_UPM calls (one per range, also per process_madvise iovec)
 * @pages_examined: present anonymous pages looked at
 * @pages_merged_existing: pages merged into an existing KSM page
 * @pairs_merged: new KSM pages made of a page and a candidate
 * @pages_merged_zero: pages merged with the zero page (use_zero_pages)
 * @candidates_added: pages remembered as candidates
 * @stale_dropped: stale candidates dropped at lookup
 * @index_full: pages not remembered because max_candidates was reached
 * @merge_failed: merges that failed (pinned, locked or changing pages)
 * @reconciled: stale rmap_items taken out of the stable tree or index
 * @time_ns: time spent in MADV_UPM calls
 */
struct upm_stats {
	atomic_long_t calls;
	atomic_long_t pages_examined;
	atomic_long_t pages_merged_existing;
	atomic_long_t pairs_merged;
	atomic_long_t pages_merged_zero;
	atomic_long_t candidates_added;
	atomic_long_t stale_dropped;
	atomic_long_t index_full;
	atomic_long_t merge_failed;
	atomic_long_t reconciled;
	atomic64_t time_ns;
};

static struct upm_stats upm_stats;

/*
 * The domain of UPM advisers that would be in domain 0 (global mode, the
 * root memory cgroup, no memcg): never a cgroup id, so MADV_UPM does not
 * merge with, nor probe, the pages of plain MADV_MERGEABLE users.
 */
#define UPM_DOMAIN_SHARED	U64_MAX

/*
 * The sharing domain of @mm under the current domain_mode.  Takes and
 * drops a reference on the memcg of mm->owner.
 */
static u64 upm_domain_of(struct mm_struct *mm)
{
	u64 domain = 0;
#ifdef CONFIG_MEMCG
	struct mem_cgroup *memcg;

	if (READ_ONCE(upm_domain_mode) != UPM_DOMAIN_MEMCG)
		goto out;
	memcg = get_mem_cgroup_from_mm(mm);
	if (!memcg)
		goto out;
	if (!mem_cgroup_is_root(memcg)) {
		struct cgroup *cgrp = memcg->css.cgroup;
		unsigned int level = READ_ONCE(upm_domain_level);

		/* e.g. a pod or tenant cgroup rather than each container */
		if (level && cgrp->level > level)
			cgrp = cgroup_ancestor(cgrp, level);
		domain = cgroup_id(cgrp);
	}
	css_put(&memcg->css);
out:
#endif
	if (!domain && !READ_ONCE(upm_share_with_ksm))
		domain = UPM_DOMAIN_SHARED;
	return domain;
}

static void upm_account(const struct upm_result *res)
{
	atomic_long_add(res->examined, &upm_stats.pages_examined);
	atomic_long_add(res->merged_stable, &upm_stats.pages_merged_existing);
	atomic_long_add(res->merged_pairs, &upm_stats.pairs_merged);
	atomic_long_add(res->merged_zero, &upm_stats.pages_merged_zero);
	atomic_long_add(res->candidates, &upm_stats.candidates_added);
	atomic_long_add(res->stale, &upm_stats.stale_dropped);
	atomic_long_add(res->index_full, &upm_stats.index_full);
	atomic_long_add(res->failed, &upm_stats.merge_failed);
	atomic_long_add(res->reconciled, &upm_stats.reconciled);
}

/*
 * Merge, charging the memory of the index (rmap_items, __GFP_ACCOUNT) to
 * the memcg of the mm whose pages are indexed: the caller's own for
 * madvise(), the target's for process_madvise() by an agent.
 */
static int upm_merge_charged(struct mm_struct *mm, unsigned long start,
			     unsigned long end, struct upm_result *res)
{
	u64 domain = upm_domain_of(mm);
#ifdef CONFIG_MEMCG
	struct mem_cgroup *memcg = NULL, *old_memcg = NULL;
	int err;

	if (mm != current->mm) {
		memcg = get_mem_cgroup_from_mm(mm);
		old_memcg = set_active_memcg(memcg);
	}
	err = ksm_upm_merge_range(mm, start, end, domain, res);
	if (memcg) {
		set_active_memcg(old_memcg);
		mem_cgroup_put(memcg);
	}
	return err;
#else
	return ksm_upm_merge_range(mm, start, end, domain, res);
#endif
}

/**
 * upm_madvise - MADV_UPM on [@start, @end) of @mm
 * @mm: the mm to advise, pinned by the caller (current->mm, or the mm of a
 *	process_madvise() target, after its permission checks)
 * @start: page-aligned, untagged start of the range
 * @end: end of the range, above @start
 *
 * Called by do_madvise() before it takes the mmap_lock: the merge takes
 * ksm_thread_mutex, which ranks above every mmap_lock.
 *
 * Return: 0; -ENOMEM if part of the range is unmapped (the mapped part is
 * still advised and merged); -EPERM when UPM is not enabled (nothing is
 * done, not even MADV_MERGEABLE); -EAGAIN when
 * KSM is unmerging everything (run=2) or memory ran short; -EINTR on a
 * fatal signal; another error of MADV_MERGEABLE.
 */
int upm_madvise(struct mm_struct *mm, unsigned long start, unsigned long end)
{
	struct upm_result res = {};
	u64 t0;
	int err, ret;

	if (!READ_ONCE(upm_enabled))
		return -EPERM;

	t0 = ktime_get_ns();
	err = do_madvise(mm, start, end - start, MADV_MERGEABLE);
	if (err && err != -ENOMEM)
		goto out;

	ret = upm_merge_charged(mm, start, end, &res);
	if (ret)
		err = ret;
	upm_account(&res);
out:
	atomic_long_inc(&upm_stats.calls);
	atomic64_add(ktime_get_ns() - t0, &upm_stats.time_ns);
	return err;
}

/**
 * upm_unmerged - MADV_UNMERGEABLE was applied to [@start, @end) of @mm
 * @mm: the mm, pinned by the caller
 * @start: start of the range
 * @end: end of the range
 *
 * Called by do_madvise() after it dropped the mmap_lock: takes the merged
 * pages of the range out of the KSM counters right away, instead of when
 * ksmd next passes by (never, with ksmd stopped).  Only for an mm that
 * used MADV_UPM (a non-zero domain; with share_with_ksm, an adviser of
 * domain 0 is treated as a plain KSM user here): a plain KSM user's
 * MADV_UNMERGEABLE stays as upstream, without ksm_thread_mutex.
 */
void upm_unmerged(struct mm_struct *mm, unsigned long start,
		  unsigned long end)
{
	if (READ_ONCE(mm->upm_domain) &&
	    test_bit(MMF_VM_MERGEABLE, &mm->flags))
		ksm_upm_reconcile_range(mm, start, end);
}

#ifdef CONFIG_SYSFS
#define UPM_ATTR_RO(_name) \
	static struct kobj_attribute _name##_attr = __ATTR_RO(_name)
#define UPM_ATTR(_name) \
	static struct kobj_attribute _name##_attr = __ATTR_RW(_name)

/**
 * struct upm_stat_attr - a read-only sysfs file showing one statistic
 * @attr: the sysfs attribute
 * @stat: the counter it shows
 */
struct upm_stat_attr {
	struct kobj_attribute attr;
	atomic_long_t *stat;
};

static ssize_t upm_stat_show(struct kobject *kobj,
			     struct kobj_attribute *attr, char *buf)
{
	struct upm_stat_attr *sa = container_of(attr, struct upm_stat_attr,
						attr);

	return sysfs_emit(buf, "%ld\n", atomic_long_read(sa->stat));
}

#define UPM_STAT_ATTR(_name, _stat)					\
	static struct upm_stat_attr _name##_attr = {			\
		.attr = __ATTR(_name, 0444, upm_stat_show, NULL),	\
		.stat = (_stat),					\
	}

UPM_STAT_ATTR(calls, &upm_stats.calls);
UPM_STAT_ATTR(pages_examined, &upm_stats.pages_examined);
UPM_STAT_ATTR(pages_merged_existing, &upm_stats.pages_merged_existing);
UPM_STAT_ATTR(pairs_merged, &upm_stats.pairs_merged);
UPM_STAT_ATTR(pages_merged_zero, &upm_stats.pages_merged_zero);
UPM_STAT_ATTR(candidates_added, &upm_stats.candidates_added);
UPM_STAT_ATTR(stale_dropped, &upm_stats.stale_dropped);
UPM_STAT_ATTR(index_full, &upm_stats.index_full);
UPM_STAT_ATTR(merge_failed, &upm_stats.merge_failed);
UPM_STAT_ATTR(reconciled, &upm_stats.reconciled);

static ssize_t time_ns_show(struct kobject *kobj,
			    struct kobj_attribute *attr, char *buf)
{
	return sysfs_emit(buf, "%lld\n", atomic64_read(&upm_stats.time_ns));
}
UPM_ATTR_RO(time_ns);

static ssize_t candidates_show(struct kobject *kobj,
			       struct kobj_attribute *attr, char *buf)
{
	return sysfs_emit(buf, "%lu\n", ksm_upm_candidates());
}
UPM_ATTR_RO(candidates);

static ssize_t index_bytes_show(struct kobject *kobj,
				struct kobj_attribute *attr, char *buf)
{
	return sysfs_emit(buf, "%lu\n", ksm_upm_index_bytes());
}
UPM_ATTR_RO(index_bytes);

static ssize_t hash_table_bytes_show(struct kobject *kobj,
				     struct kobj_attribute *attr, char *buf)
{
	return sysfs_emit(buf, "%lu\n", ksm_upm_hash_bytes());
}
UPM_ATTR_RO(hash_table_bytes);

static ssize_t enabled_show(struct kobject *kobj,
			    struct kobj_attribute *attr, char *buf)
{
	return sysfs_emit(buf, "%d\n", READ_ONCE(upm_enabled));
}

static ssize_t enabled_store(struct kobject *kobj,
			     struct kobj_attribute *attr,
			     const char *buf, size_t count)
{
	bool value;
	int err;

	err = kstrtobool(buf, &value);
	if (err)
		return -EINVAL;
	WRITE_ONCE(upm_enabled, value);
	return count;
}
UPM_ATTR(enabled);

static ssize_t share_with_ksm_show(struct kobject *kobj,
				   struct kobj_attribute *attr, char *buf)
{
	return sysfs_emit(buf, "%d\n", READ_ONCE(upm_share_with_ksm));
}

static ssize_t share_with_ksm_store(struct kobject *kobj,
				    struct kobj_attribute *attr,
				    const char *buf, size_t count)
{
	bool value;
	int err;

	err = kstrtobool(buf, &value);
	if (err)
		return -EINVAL;
	WRITE_ONCE(upm_share_with_ksm, value);
	return count;
}
UPM_ATTR(share_with_ksm);

static ssize_t max_candidates_show(struct kobject *kobj,
				   struct kobj_attribute *attr, char *buf)
{
	return sysfs_emit(buf, "%lu\n", READ_ONCE(upm_max_candidates));
}

static ssize_t max_candidates_store(struct kobject *kobj,
				    struct kobj_attribute *attr,
				    const char *buf, size_t count)
{
	unsigned long value;
	int err;

	err = kstrtoul(buf, 10, &value);
	if (err)
		return -EINVAL;
	/* Lowering it stops new candidates; held ones age out. */
	WRITE_ONCE(upm_max_candidates, value);
	return count;
}
UPM_ATTR(max_candidates);

static ssize_t max_candidates_per_domain_show(struct kobject *kobj,
					      struct kobj_attribute *attr,
					      char *buf)
{
	return sysfs_emit(buf, "%lu\n", READ_ONCE(upm_max_domain_candidates));
}

static ssize_t max_candidates_per_domain_store(struct kobject *kobj,
					       struct kobj_attribute *attr,
					       const char *buf, size_t count)
{
	unsigned long value;
	int err;

	err = kstrtoul(buf, 10, &value);
	if (err)
		return -EINVAL;
	WRITE_ONCE(upm_max_domain_candidates, value);
	return count;
}
UPM_ATTR(max_candidates_per_domain);

static ssize_t domain_mode_show(struct kobject *kobj,
				struct kobj_attribute *attr, char *buf)
{
	return sysfs_emit(buf, "%s\n",
			  upm_domain_mode_names[READ_ONCE(upm_domain_mode)]);
}

static ssize_t domain_mode_store(struct kobject *kobj,
				 struct kobj_attribute *attr,
				 const char *buf, size_t count)
{
	int mode;

	mode = sysfs_match_string(upm_domain_mode_names, buf);
	if (mode < 0)
		return -EINVAL;
	WRITE_ONCE(upm_domain_mode, mode);
	return count;
}
UPM_ATTR(domain_mode);

static ssize_t domain_level_show(struct kobject *kobj,
				 struct kobj_attribute *attr, char *buf)
{
	return sysfs_emit(buf, "%u\n", READ_ONCE(upm_domain_level));
}

static ssize_t domain_level_store(struct kobject *kobj,
				  struct kobj_attribute *attr,
				  const char *buf, size_t count)
{
	unsigned int value;
	int err;

	err = kstrtouint(buf, 10, &value);
	if (err)
		return -EINVAL;
	WRITE_ONCE(upm_domain_level, value);
	return count;
}
UPM_ATTR(domain_level);

static struct attribute *upm_attrs[] = {
	&enabled_attr.attr,
	&domain_mode_attr.attr,
	&domain_level_attr.attr,
	&share_with_ksm_attr.attr,
	&max_candidates_attr.attr,
	&max_candidates_per_domain_attr.attr,
	&calls_attr.attr.attr,
	&pages_examined_attr.attr.attr,
	&pages_merged_existing_attr.attr.attr,
	&pairs_merged_attr.attr.attr,
	&pages_merged_zero_attr.attr.attr,
	&candidates_attr.attr,
	&candidates_added_attr.attr.attr,
	&stale_dropped_attr.attr.attr,
	&index_full_attr.attr.attr,
	&merge_failed_attr.attr.attr,
	&reconciled_attr.attr.attr,
	&index_bytes_attr.attr,
	&hash_table_bytes_attr.attr,
	&time_ns_attr.attr,
	NULL,
};

static const struct attribute_group upm_attr_group = {
	.attrs = upm_attrs,
	.name = "upm",
};
#endif /* CONFIG_SYSFS */

static int __init upm_init(void)
{
	/* 64 bytes of rmap_item per candidate: at most 0.4% of memory */
	upm_max_candidates = totalram_pages() / 4;
	/* one domain (tenant) may hold at most half of them */
	upm_max_domain_candidates = upm_max_candidates / 2;
#ifdef CONFIG_SYSFS
	if (sysfs_create_group(mm_kobj, &upm_attr_group))
		pr_err("upm: register sysfs failed\n");
#endif
	return 0;
}
subsys_initcall(upm_init);
