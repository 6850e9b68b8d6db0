/*
 * A card payment with secrets, for the payload protection tests.
 *
 *   card_payment CARD_FILE OUT_FILE [--db-password VALUE]
 *
 * Reads API_KEY and DB_PASSWORD from its environment (and fails without them), reads a
 * card request from CARD_FILE (a PAN and the amount, as an acquirer would get it), sends
 * it over a socketpair to itself (the "acquirer" end), receives it there and writes the
 * authorisation to OUT_FILE. Prints "authorised card ending NNNN, amount A, key set" and
 * exits 0. What it prints depends on the secrets' presence only, never their values: a
 * replay with the secrets redacted prints the same.
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define CHECK(cond, code)          \
	do {                       \
		if (!(cond))       \
			exit(code); \
	} while (0)

int main(int argc, char **argv)
{
	char request[512], received[512], reply[640], last4[5] = {0};
	const char *key = getenv("API_KEY"), *password = getenv("DB_PASSWORD");
	ssize_t n, got, i, digits;
	int fd, sv[2];

	CHECK(argc >= 3, 2);
	CHECK(key && *key && password && *password, 3);
	fd = open(argv[1], O_RDONLY);
	CHECK(fd >= 0, 4);
	n = read(fd, request, sizeof(request) - 1);
	CHECK(n > 0, 5);
	request[n] = 0;
	close(fd);

	CHECK(socketpair(AF_UNIX, SOCK_STREAM, 0, sv) == 0, 6);
	CHECK(write(sv[0], request, n) == n, 7);
	for (got = 0; got < n;) {
		ssize_t r = read(sv[1], received + got, n - got);
		CHECK(r > 0, 8);
		got += r;
	}
	received[got] = 0;

	/* the last four digits of the first run of digits */
	for (i = 0, digits = 0; i < got && digits < 19; i++) {
		if (received[i] >= '0' && received[i] <= '9') {
			memmove(last4, last4 + 1, 3);
			last4[3] = received[i];
			digits++;
		} else if (digits && received[i] != ' ' && received[i] != '-') {
			break;
		}
	}
	n = snprintf(reply, sizeof(reply), "AUTHORISED %s", received);
	fd = open(argv[2], O_WRONLY | O_CREAT | O_TRUNC, 0600);
	CHECK(fd >= 0, 9);
	CHECK(write(fd, reply, n) == n, 10);
	close(fd);
	printf("authorised card ending %s, key set\n", last4);
	return 0;
}
