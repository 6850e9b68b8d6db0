/*
 * A request/response server and client on loopback, at full rate: the client sends a
 * SIZE-byte request (argv[2], default 256) and waits for the SIZE-byte reply, for
 * DURATION_MS (argv[1], default 3000); the server (a forked child) echoes. Prints
 * requests per second. Every request is a send, a recv and a wakeup on each side: the
 * realistic shape of an RPC service for the capture-overhead benchmark.
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static double now_ms(void)
{
	struct timespec t;

	clock_gettime(CLOCK_MONOTONIC, &t);
	return t.tv_sec * 1e3 + t.tv_nsec / 1e6;
}

static int full(int fd, char *buf, int size, int sending)
{
	int done = 0;

	while (done < size) {
		int n = sending ? send(fd, buf + done, size - done, 0)
				: recv(fd, buf + done, size - done, 0);
		if (n <= 0)
			return -1;
		done += n;
	}
	return 0;
}

int main(int argc, char **argv)
{
	double duration = argc > 1 ? atof(argv[1]) : 3000;
	int size = argc > 2 ? atoi(argv[2]) : 256;
	char *buf = calloc(1, size);
	struct sockaddr_in addr = { .sin_family = AF_INET };
	socklen_t len = sizeof(addr);
	int one = 1, lsock = socket(AF_INET, SOCK_STREAM, 0);

	addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	if (bind(lsock, (struct sockaddr *)&addr, sizeof(addr)) || listen(lsock, 1) ||
	    getsockname(lsock, (struct sockaddr *)&addr, &len))
		return 2;
	pid_t server = fork();
	if (server == 0) {
		int c = accept(lsock, NULL, NULL);
		setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
		while (full(c, buf, size, 0) == 0 && full(c, buf, size, 1) == 0)
			;
		_exit(0);
	}
	int c = socket(AF_INET, SOCK_STREAM, 0);
	if (connect(c, (struct sockaddr *)&addr, sizeof(addr)))
		return 3;
	setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	long requests = 0;
	double start = now_ms(), end = start + duration;
	while (now_ms() < end) {
		for (int i = 0; i < 100; i++) {
			if (full(c, buf, size, 1) || full(c, buf, size, 0))
				return 4;
			requests++;
		}
	}
	double secs = (now_ms() - start) / 1e3;
	close(c);
	kill(server, SIGTERM);
	waitpid(server, NULL, 0);
	printf("%.0f\n", requests / secs);
	return 0;
}
