/*
 * Many context switches, fast: two threads bounce a byte through two pipes ROUNDS times
 * (argv[1], default 100000). Each bounce blocks a reader, so every round is at least a
 * few sched_switch / sched_waking / sched_wakeup events. Used to overflow small rings and
 * to measure the drain rate.
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

static int ping[2], pong[2];
static long rounds = 100000;

static void *bouncer(void *arg)
{
	char byte;

	for (long i = 0; i < rounds; i++) {
		if (read(ping[0], &byte, 1) != 1 || write(pong[1], &byte, 1) != 1)
			exit(2);
	}
	return arg;
}

int main(int argc, char **argv)
{
	pthread_t t;
	char byte = 'x';

	if (argc > 1)
		rounds = atol(argv[1]);
	if (pipe(ping) || pipe(pong))
		return 1;
	pthread_create(&t, NULL, bouncer, NULL);
	for (long i = 0; i < rounds; i++) {
		if (write(ping[1], &byte, 1) != 1 || read(pong[0], &byte, 1) != 1)
			return 3;
	}
	pthread_join(t, NULL);
	return 0;
}
