/*
 * Writes exactly NBYTES to PATH and makes them reach the disk, then prints "done PID".
 *
 *   block_writer direct PATH NBYTES   O_DIRECT writes of 256 KiB (NBYTES: a multiple of
 *                                     4096), then fsync: the writer submits the I/O
 *   block_writer fsync PATH NBYTES    buffered writes, then fsync: the fsync caller
 *                                     submits the writeback
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define CHUNK (256 * 1024)

int main(int argc, char **argv)
{
	long total, left;
	int direct, fd;
	void *buf;

	if (argc != 4 || (strcmp(argv[1], "direct") && strcmp(argv[1], "fsync"))) {
		fprintf(stderr, "usage: block_writer direct|fsync PATH NBYTES\n");
		return 2;
	}
	direct = !strcmp(argv[1], "direct");
	total = atol(argv[3]);
	if (posix_memalign(&buf, 4096, CHUNK))
		return 1;
	memset(buf, 'b', CHUNK);
	fd = open(argv[2], O_WRONLY | O_CREAT | O_TRUNC | (direct ? O_DIRECT : 0), 0600);
	if (fd < 0) {
		perror("open");
		return 1;
	}
	for (left = total; left > 0;) {
		ssize_t n = write(fd, buf, left < CHUNK ? left : CHUNK);

		if (n <= 0) {
			perror("write");
			return 1;
		}
		left -= n;
	}
	if (fsync(fd)) {
		perror("fsync");
		return 1;
	}
	close(fd);
	printf("done %d\n", getpid());
	return 0;
}
