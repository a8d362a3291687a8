// SPDX-License-Identifier: GPL-2.0-or-later
// A process whose layout test_remote_advice.py controls: a private
// anonymous region (ANON_MIB, filled), a MAP_SHARED anonymous region
// (never advised) and a private read-only mapping of a file (argv[1],
// class rodata).  Prints one JSON line with their addresses, then waits
// for stdin to close (or a signal).
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#define ANON_MIB 8
#define SHARED_MIB 1

int main(int argc, char **argv)
{
	size_t anon_len = (size_t)ANON_MIB << 20, shared_len = (size_t)SHARED_MIB << 20;
	char *anon = mmap(NULL, anon_len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	char *shared = mmap(NULL, shared_len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	char *file = MAP_FAILED;
	struct stat st;
	int fd;

	if (argc < 2 || anon == MAP_FAILED || shared == MAP_FAILED)
		return 1;
	fd = open(argv[1], O_RDONLY);
	if (fd < 0 || fstat(fd, &st) != 0)
		return 1;
	file = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
	if (file == MAP_FAILED)
		return 1;
	for (size_t i = 0; i < anon_len; i += 4096)
		memset(anon + i, (int)(i / 4096 % 251), 4096);
	memset(shared, 1, shared_len);
	printf("{\"anon\": %lu, \"anon_len\": %zu, \"shared\": %lu, \"shared_len\": %zu, \"file\": %lu, \"file_len\": %lld}\n",
	       (unsigned long)anon, anon_len, (unsigned long)shared, shared_len, (unsigned long)file,
	       (long long)st.st_size);
	fflush(stdout);
	while (getchar() != EOF)
		;
	return 0;
}
