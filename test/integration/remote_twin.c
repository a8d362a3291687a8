// SPDX-License-Identifier: GPL-2.0-or-later
// An instance for the remote-advice guest test (test_remote_kernel.py):
// MIB MiB of private anonymous memory whose pages are distinct within the
// region and identical across instances started with the same SEED.
// Built twice, static (no preload can reach it) and dynamic.  Prints one
// JSON line, then for every line on stdin: "check" writes the first byte
// of every 16th page (copy-on-write of merged pages), verifies every page
// and prints "ok" or "bad PAGE"; EOF exits.
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

static uint64_t word(uint64_t seed, size_t page, size_t i)
{
	uint64_t x = seed * 0x9e3779b97f4a7c15ull ^ (page << 20 | i);

	x ^= x >> 31;
	x *= 0xbf58476d1ce4e5b9ull;
	return x ^ (x >> 29);
}

static int page_ok(const uint64_t *p, uint64_t seed, size_t page, int written)
{
	for (size_t i = 0; i < 4096 / 8; i++) {
		uint64_t want = word(seed, page, i);

		if (i == 0 && written)
			want = (want & ~0xffull) | 0x5a;
		if (p[i] != want)
			return 0;
	}
	return 1;
}

int main(int argc, char **argv)
{
	size_t mib = argc > 1 ? strtoul(argv[1], NULL, 10) : 16;
	uint64_t seed = argc > 2 ? strtoull(argv[2], NULL, 10) : 1;
	size_t pages = mib << 8;
	char line[64];
	int written = 0;
	uint64_t *mem = mmap(NULL, pages * 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);

	if (mem == MAP_FAILED)
		return 1;
	for (size_t pg = 0; pg < pages; pg++)
		for (size_t i = 0; i < 4096 / 8; i++)
			mem[pg * 512 + i] = word(seed, pg, i);
	printf("{\"addr\": %lu, \"pages\": %zu}\n", (unsigned long)(uintptr_t)mem, pages);
	fflush(stdout);
	while (fgets(line, sizeof(line), stdin)) {
		size_t bad = pages;

		if (strncmp(line, "check", 5) != 0)
			continue;
		if (!written)
			for (size_t pg = 0; pg < pages; pg += 16)
				((unsigned char *)&mem[pg * 512])[0] = 0x5a;
		written = 1;
		for (size_t pg = 0; pg < pages && bad == pages; pg++)
			if (!page_ok(&mem[pg * 512], seed, pg, pg % 16 == 0))
				bad = pg;
		if (bad == pages)
			printf("ok\n");
		else
			printf("bad %zu\n", bad);
		fflush(stdout);
	}
	return 0;
}
