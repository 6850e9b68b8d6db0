/*
 * Threads that do nothing but read clocks through libc (the vDSO), for the test that
 * rewrites a live process's vDSO (capture_agent/vdso_patch.py): most of their time is spent
 * inside the vDSO's entry points, so a rewrite that caught a thread within the bytes it
 * changes would crash it.
 *
 *   clock_hammer THREADS     (0: none; only the last read)
 *
 * Prints "ready <pid>", reads until a line on stdin, then stops the threads and prints
 * "reads <n> backwards <m>" (m: reads that went back in time: must be 0) and, last, one
 * CLOCK_REALTIME read as "realtime <sec> <nsec>".
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

static atomic_int stop;
static atomic_long reads, backwards;

static void *hammer(void *arg)
{
	struct timespec ts;
	long long last = 0, now, n = 0, back = 0;

	(void)arg;
	while (!atomic_load_explicit(&stop, memory_order_relaxed)) {
		clock_gettime(CLOCK_MONOTONIC, &ts);
		now = ts.tv_sec * 1000000000LL + ts.tv_nsec;
		if (now < last)
			back++;
		last = now;
		n++;
	}
	atomic_fetch_add(&reads, n);
	atomic_fetch_add(&backwards, back);
	return NULL;
}

int main(int argc, char **argv)
{
	int threads = argc > 1 ? atoi(argv[1]) : 4, i;
	pthread_t tids[64];
	struct timespec ts;
	char line[16];

	if (threads < 0 || threads > 64)
		return 2;
	for (i = 0; i < threads; i++)
		if (pthread_create(&tids[i], NULL, hammer, NULL))
			return 3;
	printf("ready %d\n", (int)getpid());
	fflush(stdout);
	if (!fgets(line, sizeof(line), stdin))
		return 4;
	atomic_store(&stop, 1);
	for (i = 0; i < threads; i++)
		pthread_join(tids[i], NULL);
	clock_gettime(CLOCK_REALTIME, &ts);
	printf("reads %ld backwards %ld\nrealtime %lld %ld\n", atomic_load(&reads),
	       atomic_load(&backwards), (long long)ts.tv_sec, ts.tv_nsec);
	return 0;
}
