/*
 * Two threads hand off through a pipe: the reader blocks in read(); the writer sleeps
 * HANDOFF_MS (default 50) then writes one byte. Gives the sched tests one known
 * off-CPU interval (the reader, state S, ~HANDOFF_MS) with a known waker (the writer).
 *
 * Protocol on stdout/stdin, so the test can target the process before the handoff:
 *   prints "ready <pid> <reader_tid> <writer_tid>", waits for a line on stdin,
 *   runs the handoff, prints "done <reader_blocked_ns>", exits 0.
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>
#include "now_ns.h"

static int handoff[2];
static pthread_barrier_t started, go;
static volatile pid_t reader_tid, writer_tid;
static long handoff_ms = 50;
static long long blocked_ns;

static void *reader(void *arg)
{
	char byte;
	long long t0;

	reader_tid = gettid();
	pthread_barrier_wait(&started);
	pthread_barrier_wait(&go);
	t0 = now_ns();
	if (read(handoff[0], &byte, 1) != 1)
		exit(2);
	blocked_ns = now_ns() - t0;
	return arg;
}

static void *writer(void *arg)
{
	struct timespec delay = {handoff_ms / 1000, (handoff_ms % 1000) * 1000000L};

	writer_tid = gettid();
	pthread_barrier_wait(&started);
	pthread_barrier_wait(&go);
	nanosleep(&delay, NULL);
	if (write(handoff[1], "x", 1) != 1)
		exit(3);
	return arg;
}

int main(int argc, char **argv)
{
	pthread_t r, w;
	char line[64];

	if (argc > 1)
		handoff_ms = atol(argv[1]);
	if (pipe(handoff))
		return 1;
	pthread_barrier_init(&started, NULL, 3);
	pthread_barrier_init(&go, NULL, 3);
	pthread_create(&r, NULL, reader, NULL);
	pthread_create(&w, NULL, writer, NULL);
	pthread_barrier_wait(&started);
	printf("ready %d %d %d\n", getpid(), reader_tid, writer_tid);
	fflush(stdout);
	if (!fgets(line, sizeof(line), stdin))
		return 1;
	pthread_barrier_wait(&go);
	pthread_join(r, NULL);
	pthread_join(w, NULL);
	printf("done %lld\n", blocked_ns);
	fflush(stdout);
	return 0;
}
