/*
 * Cost of a syscall: a tight loop of one cheap syscall, timed. For the syscalls family's
 * overhead measurements (tests/bench/bench_syscall_overhead.py).
 *
 *   null_syscalls getppid ITERATIONS ROUNDS   getppid() (no arguments, no payload)
 *   null_syscalls read:N ITERATIONS ROUNDS    read(/dev/zero, N bytes) (a payload of N)
 *   null_syscalls clock ITERATIONS ROUNDS     clock_gettime() through libc (the vDSO: no
 *                                             syscall, but a uprobe on libc traps it)
 *   null_syscalls clocksys ITERATIONS ROUNDS  the clock_gettime syscall itself
 *
 * Prints "ready <pid>", waits for a line on stdin (so the caller can target it first),
 * runs ROUNDS rounds of ITERATIONS calls and prints "ns <best round's ns per call>".
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>
#include "now_ns.h"

int main(int argc, char **argv)
{
	static char buf[1 << 20];
	long iterations, rounds, size = 0, i, r;
	int fd = -1, clock = 0;
	struct timespec ts;
	double best = 1e18;
	char line[16];

	if (argc != 4) {
		fprintf(stderr, "usage: %s getppid|read:N|clock|clocksys ITERATIONS ROUNDS\n", argv[0]);
		return 2;
	}
	if (strncmp(argv[1], "read:", 5) == 0) {
		size = atol(argv[1] + 5);
		if (size <= 0 || size > (long)sizeof(buf))
			return 2;
		fd = open("/dev/zero", O_RDONLY);
		if (fd < 0)
			return 3;
	} else if (strcmp(argv[1], "clock") == 0) {
		clock = 1;
	} else if (strcmp(argv[1], "clocksys") == 0) {
		clock = 2;
	} else if (strcmp(argv[1], "getppid") != 0) {
		return 2;
	}
	iterations = atol(argv[2]);
	rounds = atol(argv[3]);
	printf("ready %d\n", getpid());
	fflush(stdout);
	if (!fgets(line, sizeof(line), stdin))
		return 4;
	for (r = 0; r < rounds; r++) {
		long long t0 = now_ns();

		for (i = 0; i < iterations; i++) {
			if (clock == 1) {
				clock_gettime(CLOCK_REALTIME, &ts);
			} else if (clock) {
				syscall(SYS_clock_gettime, CLOCK_REALTIME, &ts);
			} else if (fd >= 0) {
				if (read(fd, buf, size) != size)
					return 5;
			} else {
				syscall(SYS_getppid);
			}
		}
		double per_call = (double)(now_ns() - t0) / iterations;
		if (per_call < best)
			best = per_call;
	}
	printf("ns %.1f\n", best);
	return 0;
}
