/*
 * Known syscalls with known bytes, for the syscalls family tests.
 *
 *   syscall_io PATH N M BIG
 *
 * Prints "ready <pid>" and waits for a line on stdin (so the test can target it), then:
 *   open PATH; M x write(N bytes, byte i of write j = (7j + 13i + 1) & 0xff); fsync;
 *   lseek 0; M x read(N); write(BIG bytes, byte i = (7i + 3) & 0xff);
 *   pread64(BIG at offset M*N); lseek 0; readv into iovecs of 10, 0 and 300 bytes;
 *   fstat; getrandom(32); pipe2; clock_gettime(CLOCK_MONOTONIC) as a real syscall;
 *   socketpair(AF_UNIX, SOCK_DGRAM) + send "hello, recvmsg" + recvmsg into 5 + 100 bytes;
 *   getpid as a 32-bit syscall (int $0x80, i386 number 20).
 * Prints "done fd=<fd> size=<st_size> ino=<st_ino> random=<hex> pipe=<r>,<w>
 * clock=<sec>,<nsec> recv_fd=<fd>" and exits 0 (non-zero on any unexpected result).
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#define CHECK(cond, code)          \
	do {                       \
		if (!(cond))       \
			exit(code); \
	} while (0)

int main(int argc, char **argv)
{
	long n, m, big, i, j, ia32_ret;
	unsigned char *buf, *bigbuf, rnd[32], v1[10], v3[300], r1[5], r2[100];
	struct iovec iov[3] = {{v1, sizeof(v1)}, {NULL, 0}, {v3, sizeof(v3)}};
	struct iovec riov[2] = {{r1, sizeof(r1)}, {r2, sizeof(r2)}};
	struct msghdr msg = {0};
	struct timespec ts;
	struct stat st;
	int fd, pipefd[2], sv[2];
	char line[16];

	CHECK(argc == 5, 2);
	n = atol(argv[2]);
	m = atol(argv[3]);
	big = atol(argv[4]);
	buf = malloc(n);
	bigbuf = malloc(big);
	CHECK(buf && bigbuf, 3);
	printf("ready %d\n", getpid());
	fflush(stdout);
	CHECK(fgets(line, sizeof(line), stdin), 4);

	fd = open(argv[1], O_RDWR | O_CREAT | O_TRUNC, 0600);
	CHECK(fd >= 0, 5);
	for (j = 0; j < m; j++) {
		for (i = 0; i < n; i++)
			buf[i] = (7 * j + 13 * i + 1) & 0xff;
		CHECK(write(fd, buf, n) == n, 6);
	}
	CHECK(fsync(fd) == 0, 7);
	CHECK(lseek(fd, 0, SEEK_SET) == 0, 8);
	for (j = 0; j < m; j++)
		CHECK(read(fd, buf, n) == n, 9);
	for (i = 0; i < big; i++)
		bigbuf[i] = (7 * i + 3) & 0xff;
	CHECK(write(fd, bigbuf, big) == big, 10);
	memset(bigbuf, 0, big);
	CHECK(pread(fd, bigbuf, big, m * n) == big, 11);
	CHECK(lseek(fd, 0, SEEK_SET) == 0, 12);
	CHECK(readv(fd, iov, 3) == 310, 13);
	CHECK(fstat(fd, &st) == 0, 14);
	CHECK(syscall(SYS_getrandom, rnd, sizeof(rnd), 0) == sizeof(rnd), 15);
	CHECK(pipe2(pipefd, O_CLOEXEC) == 0, 16);
	CHECK(syscall(SYS_clock_gettime, CLOCK_MONOTONIC, &ts) == 0, 17);
	CHECK(socketpair(AF_UNIX, SOCK_DGRAM, 0, sv) == 0, 18);
	CHECK(send(sv[0], "hello, recvmsg", 14, 0) == 14, 19);
	msg.msg_iov = riov;
	msg.msg_iovlen = 2;
	CHECK(recvmsg(sv[1], &msg, 0) == 14, 20);
	/* int $0x80 from 64-bit code is an ia32 syscall; it zeroes r8-r11 */
	asm volatile("int $0x80" : "=a"(ia32_ret) : "a"(20L) : "r8", "r9", "r10", "r11", "memory");
	CHECK(ia32_ret == getpid(), 21);

	printf("done fd=%d size=%lld ino=%llu random=", fd, (long long)st.st_size,
	       (unsigned long long)st.st_ino);
	for (i = 0; i < (long)sizeof(rnd); i++)
		printf("%02x", rnd[i]);
	printf(" pipe=%d,%d clock=%lld,%ld recv_fd=%d\n", pipefd[0], pipefd[1],
	       (long long)ts.tv_sec, ts.tv_nsec, sv[1]);
	fflush(stdout);
	return 0;
}
