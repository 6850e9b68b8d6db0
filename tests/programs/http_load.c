/*
 * An HTTP/1.1 keep-alive load generator: CONNECTIONS threads, each with its own
 * connection, POST a JSON payment to 127.0.0.1:PORT/authorize and read the whole reply
 * (headers, then Content-Length bytes) before the next, for DURATION_MS. Prints requests
 * per second and the number of non-200 replies.
 *
 *   http_load PORT CONNECTIONS DURATION_MS
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static int port;
static double end_ms;

static double now_ms(void)
{
	struct timespec t;

	clock_gettime(CLOCK_MONOTONIC, &t);
	return t.tv_sec * 1e3 + t.tv_nsec / 1e6;
}

struct worker {
	pthread_t thread;
	int id;
	long done;
	long failed;
};

/* Read one reply; 1 if its status was 200, 0 if not, -1 on a broken connection. */
static int read_reply(int fd, char *buf, int size)
{
	int have = 0, header_end = -1, length = -1;

	while (header_end < 0) {
		int n = recv(fd, buf + have, size - have - 1, 0);

		if (n <= 0)
			return -1;
		have += n;
		buf[have] = 0;
		char *end = strstr(buf, "\r\n\r\n");
		if (end) {
			header_end = end - buf + 4;
			char *cl = strcasestr(buf, "Content-Length:");
			length = cl ? atoi(cl + 15) : 0;
		}
	}
	while (have < header_end + length) {
		int n = recv(fd, buf + have, size - have - 1, 0);

		if (n <= 0)
			return -1;
		have += n;
	}
	return strncmp(buf + 9, "200", 3) == 0;
}

static void *run(void *arg)
{
	struct worker *w = arg;
	struct sockaddr_in addr = { .sin_family = AF_INET, .sin_port = htons(port) };
	char request[512], body[256], reply[8192];
	int one = 1, fd = socket(AF_INET, SOCK_STREAM, 0);

	addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	if (connect(fd, (struct sockaddr *)&addr, sizeof(addr)))
		return NULL;
	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	while (now_ms() < end_ms) {
		long seq = w->done + w->failed;
		int blen = snprintf(body, sizeof(body),
				    "{\"payment_id\": \"p-%d-%ld\", \"account\": \"acct-%ld\", "
				    "\"amount_paise\": %ld, \"currency\": \"INR\"}",
				    w->id, seq, (seq * 7 + w->id) % 500, 100000 + (seq % 977) * 1000);
		int rlen = snprintf(request, sizeof(request),
				    "POST /authorize HTTP/1.1\r\nHost: 127.0.0.1\r\n"
				    "Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s",
				    blen, body);
		if (send(fd, request, rlen, 0) != rlen)
			break;
		int ok = read_reply(fd, reply, sizeof(reply));
		if (ok < 0)
			break;
		if (ok)
			w->done++;
		else
			w->failed++;
	}
	close(fd);
	return NULL;
}

int main(int argc, char **argv)
{
	if (argc != 4) {
		fprintf(stderr, "usage: %s PORT CONNECTIONS DURATION_MS\n", argv[0]);
		return 2;
	}
	port = atoi(argv[1]);
	int n = atoi(argv[2]);
	struct worker *workers = calloc(n, sizeof(*workers));
	double start = now_ms();

	end_ms = start + atof(argv[3]);
	for (int i = 0; i < n; i++) {
		workers[i].id = i;
		pthread_create(&workers[i].thread, NULL, run, &workers[i]);
	}
	long done = 0, failed = 0;
	for (int i = 0; i < n; i++) {
		pthread_join(workers[i].thread, NULL);
		done += workers[i].done;
		failed += workers[i].failed;
	}
	printf("%.0f %ld\n", done / ((now_ms() - start) / 1e3), failed);
	return 0;
}
