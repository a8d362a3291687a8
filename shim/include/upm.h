/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * upm.h -- the C API of libupm-preload.so (User-guided Page Merging).
 *
 * A program that runs under upm (in an annotated container, or started with
 * `upm run`) has libupm-preload.so loaded through LD_PRELOAD.  The library
 * advises the program's memory on its own (at start, after dlopen(), after
 * delays, periodically, on a signal -- as its policy says); these functions
 * let the program advise *now*, e.g. right after it loaded a model or built
 * a large read-mostly table, when merging pays most.
 *
 * Linking: the functions are defined by libupm-preload.so itself.  Either
 *   - link with the library (-L/usr/lib/upm -lupm-preload, or its full path;
 *     the library then also runs its policy triggers when LD_PRELOAD names it),
 *   - or look the functions up at run time (dlsym(RTLD_DEFAULT, "upm_advise"))
 *     so that the program also runs where upm is absent; declare them weak:
 *         #pragma weak upm_advise
 *         if (upm_advise) upm_advise(p, n);
 *
 * Every function is thread-safe, may be called from any thread at any time
 * (also before main() and from other libraries' constructors), never throws,
 * never blocks on other threads, and never changes what the program
 * computes: advice only decides whether identical pages are shared.  None is
 * async-signal-safe.  Errors are returned as errno values (0 = success);
 * errno itself is left unchanged.
 */
#ifndef UPM_H
#define UPM_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

/**
 * upm_advise() - advise one range of the caller's memory now.
 * @addr: start of the range; must be page-aligned (like madvise(2)).
 * @len:  length in bytes; rounded up to whole pages by the kernel.
 *
 * The range is advised with the backend the library selected (see
 * upm_backend()), regardless of the policy's region classes: the caller
 * asked for it.  With the "upm" backend the merge happens inside the call:
 * when it returns, every present private anonymous page of the range that
 * is identical to a page advised earlier (in the same sharing domain) is
 * shared.  With "ksm"/"ksm-process" the range is marked mergeable and ksmd
 * merges it in the background.  Shared and file-backed pages are left alone
 * by the kernel.
 *
 * Return: 0 on success; EINVAL if @addr is not page-aligned or the range
 * is not valid for advice; ENOMEM if part of the range is not mapped;
 * EAGAIN if the kernel ran out of resources; ENOSYS if no backend is
 * available (upm disabled, broken policy, kernel without KSM); other errno
 * values from madvise(2).
 */
int upm_advise(void *addr, size_t len);

/**
 * upm_advise_all() - apply the policy to the whole process now.
 *
 * Reads /proc/self/maps, selects the regions the policy's classes and path
 * filters allow, and advises each of them, on the calling thread (with the
 * "upm" backend the merging happens in this call).  Takes about as long as
 * the kernel needs for the advised memory; it does not wait for the
 * library's own worker thread.
 *
 * Return: 0 when every selected region was advised; otherwise the errno
 * value of the first failure (the remaining regions are still advised);
 * ENOSYS if no backend is available.
 */
int upm_advise_all(void);

/**
 * upm_version() - the library's version.
 *
 * Return: a static string such as "0.1.0"; never NULL.
 */
const char *upm_version(void);

/**
 * upm_backend() - how advice reaches the kernel in this process.
 *
 * Return: a static string, never NULL: "upm" (madvise(MADV_UPM),
 * synchronous merging), "ksm" (madvise(MADV_MERGEABLE), ksmd merges),
 * "ksm-process" (prctl(PR_SET_MEMORY_MERGE): the whole process is mergeable)
 * or "none" (nothing is advised; upm_advise() returns ENOSYS).
 */
const char *upm_backend(void);

#ifdef __cplusplus
}
#endif

#endif /* UPM_H */
