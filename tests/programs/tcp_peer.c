/*
 * One TCP connection on 127.0.0.1 with exactly known byte counts in each direction.
 *
 *   tcp_peer server PORT REQ RESP   listen, print "ready PID", accept one client,
 *                                   receive REQ bytes, send RESP bytes, wait for the
 *                                   client to close, print "done"
 *   tcp_peer client PORT REQ RESP   connect, print "connected PID LOCAL_PORT", send REQ
 *                                   bytes, receive RESP bytes, close, print "done"
 *
 * Sends and receives go in chunks of at most 64 KiB (one syscall each).
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define CHUNK (64 * 1024)

static char buf[CHUNK];

static void die(const char *what)
{
	perror(what);
	exit(1);
}

static void send_all(int fd, long total)
{
	while (total > 0) {
		ssize_t n = send(fd, buf, total < CHUNK ? total : CHUNK, 0);

		if (n < 0)
			die("send");
		total -= n;
	}
}

static void recv_all(int fd, long total)
{
	while (total > 0) {
		ssize_t n = recv(fd, buf, total < CHUNK ? total : CHUNK, 0);

		if (n <= 0)
			die("recv");
		total -= n;
	}
}

int main(int argc, char **argv)
{
	struct sockaddr_in addr = {.sin_family = AF_INET};
	long req, resp;
	int fd, one = 1;

	if (argc != 5 || (strcmp(argv[1], "server") && strcmp(argv[1], "client"))) {
		fprintf(stderr, "usage: tcp_peer server|client PORT REQ RESP\n");
		return 2;
	}
	addr.sin_port = htons(atoi(argv[2]));
	addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	req = atol(argv[3]);
	resp = atol(argv[4]);
	memset(buf, 'k', sizeof(buf));
	setvbuf(stdout, NULL, _IOLBF, 0);

	fd = socket(AF_INET, SOCK_STREAM, 0);
	if (fd < 0)
		die("socket");
	if (!strcmp(argv[1], "server")) {
		int conn;

		if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)))
			die("setsockopt");
		if (bind(fd, (struct sockaddr *)&addr, sizeof(addr)) || listen(fd, 1))
			die("bind/listen");
		printf("ready %d\n", getpid());
		conn = accept(fd, NULL, NULL);
		if (conn < 0)
			die("accept");
		recv_all(conn, req);
		send_all(conn, resp);
		if (recv(conn, buf, 1, 0) != 0) /* the client's close */
			die("expected end of stream");
		close(conn);
	} else {
		struct sockaddr_in local;
		socklen_t len = sizeof(local);

		if (connect(fd, (struct sockaddr *)&addr, sizeof(addr)))
			die("connect");
		if (getsockname(fd, (struct sockaddr *)&local, &len))
			die("getsockname");
		printf("connected %d %d\n", getpid(), ntohs(local.sin_port));
		send_all(fd, req);
		recv_all(fd, resp);
	}
	close(fd);
	printf("done\n");
	return 0;
}
