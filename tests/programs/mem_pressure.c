/*
 * Reads a file through the page cache, PASSES times, after dropping it from the cache:
 * in a memory cgroup whose limit is below the file's size, every pass charges page cache
 * to the cgroup and the kernel must reclaim (memcg reclaim, in this thread) to go on.
 *
 * Usage: mem_pressure FILE [PASSES]
 * Protocol: prints "ready <pid> <tid>", waits for a line on stdin (the test moves the
 * process into the cgroup meanwhile), reads, prints "done <bytes>", exits 0.
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

int main(int argc, char **argv)
{
	static char buf[1 << 20];
	int passes = argc > 2 ? atoi(argv[2]) : 1;
	long long total = 0;
	char line[64];
	ssize_t got;
	int fd;

	if (argc < 2)
		return 2;
	printf("ready %d %d\n", getpid(), gettid());
	fflush(stdout);
	if (!fgets(line, sizeof(line), stdin))
		return 1;
	for (int pass = 0; pass < passes; pass++) {
		fd = open(argv[1], O_RDONLY);
		if (fd < 0)
			return 1;
		/* cached pages belong to whoever read them first: start from the disk */
		if (fdatasync(fd) || posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED))
			return 1;
		while ((got = read(fd, buf, sizeof(buf))) > 0)
			total += got;
		close(fd);
		if (got < 0)
			return 1;
	}
	printf("done %lld\n", total);
	fflush(stdout);
	return 0;
}
