/* glibc compatibility of libupm-preload.so.
 *
 * The library is bind-mounted into images whose glibc may be older than the
 * build host's.  The static libstdc++ of GCC 12 references arc4random()
 * (glibc 2.36, through std::random_device, which upm never uses); a hidden
 * definition here satisfies that reference inside the library, so the
 * oldest glibc it needs is 2.35 (_dl_find_object, used by the static
 * libgcc unwinder) -- Ubuntu 22.04 -- instead of 2.36.  test_preload.py
 * checks the highest GLIBC_ version the library needs. */
#include <stdint.h>
#include <sys/random.h>

__attribute__((visibility("hidden"))) uint32_t arc4random(void)
{
	uint32_t v = 0;
	while (getrandom(&v, sizeof v, 0) != (ssize_t)sizeof v)
		;
	return v;
}
