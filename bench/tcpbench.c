/* bench/tcpbench.c: TCP throughput each way and 1-byte request/response rate between a guest
 * and the host it runs on (bench/run.py part 7). Compiled static at bench time; the same
 * program is the server (on the emulated KVM host) and the client (in the guest), so the guest
 * needs nothing but this file.
 *
 *   tcpbench server PORT
 *       Answers one connection at a time, forever. The client's first byte says what to do:
 *       'S': read until end of file, then answer the byte count (8 bytes, big-endian);
 *       'R': send for the number of milliseconds in the next 4 bytes (big-endian), then close;
 *       'P': echo each byte back until end of file.
 *   tcpbench client ADDR PORT send|recv|rr SECONDS
 *       Prints one line `NETBENCH mode=M bytes=B ns=T` (rr: `count=N` round trips instead of
 *       bytes). The client times each run with CLOCK_MONOTONIC:
 *       send: from the first write to the server's count (so it covers every byte the server
 *             read, none left in buffers); bytes = what the server read;
 *       recv: from the first byte received to end of file; bytes = what came after that byte;
 *       rr:   1 byte out, 1 byte back, over and over (TCP_NODELAY on both sides).
 *
 * Not robust against a hostile peer: a benchmark tool between two ends we start ourselves.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define CHUNK (128 * 1024)

static char buf[CHUNK];

static uint64_t now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static void die(const char *what)
{
	fprintf(stderr, "tcpbench: %s: %s\n", what, strerror(errno));
	exit(1);
}

static int write_all(int fd, const void *p, size_t n)
{
	const char *c = p;
	while (n > 0) {
		ssize_t k = write(fd, c, n);
		if (k < 0 && errno == EINTR)
			continue;
		if (k <= 0)
			return -1;
		c += k;
		n -= (size_t)k;
	}
	return 0;
}

static int read_all(int fd, void *p, size_t n)
{
	char *c = p;
	while (n > 0) {
		ssize_t k = read(fd, c, n);
		if (k < 0 && errno == EINTR)
			continue;
		if (k <= 0)
			return -1;
		c += k;
		n -= (size_t)k;
	}
	return 0;
}

static void nodelay(int fd)
{
	int one = 1;
	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
}

static void serve(int c)
{
	char mode;
	if (read_all(c, &mode, 1) < 0)
		return;
	if (mode == 'S') {
		uint64_t total = 0;
		for (;;) {
			ssize_t k = read(c, buf, sizeof(buf));
			if (k < 0 && errno == EINTR)
				continue;
			if (k <= 0)
				break;
			total += (uint64_t)k;
		}
		unsigned char out[8];
		for (int i = 0; i < 8; i++)
			out[i] = (unsigned char)(total >> (56 - 8 * i));
		write_all(c, out, 8);
	} else if (mode == 'R') {
		unsigned char ms[4];
		if (read_all(c, ms, 4) < 0)
			return;
		uint64_t dur = ((uint64_t)ms[0] << 24 | (uint64_t)ms[1] << 16 | (uint64_t)ms[2] << 8 |
				ms[3]) * 1000000ull;
		uint64_t t0 = now_ns();
		while (now_ns() - t0 < dur)
			if (write_all(c, buf, sizeof(buf)) < 0)
				break;
	} else if (mode == 'P') {
		nodelay(c);
		char b;
		while (read_all(c, &b, 1) == 0)
			if (write_all(c, &b, 1) < 0)
				break;
	}
}

static int server(int port)
{
	int s = socket(AF_INET, SOCK_STREAM, 0);
	if (s < 0)
		die("socket");
	int one = 1;
	setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons((uint16_t)port) };
	a.sin_addr.s_addr = htonl(INADDR_ANY);
	if (bind(s, (struct sockaddr *)&a, sizeof(a)) < 0)
		die("bind");
	if (listen(s, 8) < 0)
		die("listen");
	printf("tcpbench: listening on port %d\n", port);
	fflush(stdout);
	for (;;) {
		int c = accept(s, NULL, NULL);
		if (c < 0) {
			if (errno == EINTR)
				continue;
			die("accept");
		}
		serve(c);
		close(c);
	}
	return 0;
}

static int client(const char *addr, int port, const char *mode, double seconds)
{
	int s = socket(AF_INET, SOCK_STREAM, 0);
	if (s < 0)
		die("socket");
	struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons((uint16_t)port) };
	if (inet_pton(AF_INET, addr, &a.sin_addr) != 1) {
		fprintf(stderr, "tcpbench: bad address %s\n", addr);
		return 2;
	}
	if (connect(s, (struct sockaddr *)&a, sizeof(a)) < 0)
		die("connect");
	uint64_t dur = (uint64_t)(seconds * 1e9);
	if (strcmp(mode, "send") == 0) {
		memset(buf, 0x5a, sizeof(buf));
		if (write_all(s, "S", 1) < 0)
			die("write");
		uint64_t t0 = now_ns();
		while (now_ns() - t0 < dur)
			if (write_all(s, buf, sizeof(buf)) < 0)
				die("write");
		shutdown(s, SHUT_WR);
		unsigned char in[8];
		if (read_all(s, in, 8) < 0)
			die("reading the server's count");
		uint64_t t1 = now_ns(), total = 0;
		for (int i = 0; i < 8; i++)
			total = total << 8 | in[i];
		printf("NETBENCH mode=send bytes=%llu ns=%llu\n", (unsigned long long)total,
		       (unsigned long long)(t1 - t0));
	} else if (strcmp(mode, "recv") == 0) {
		unsigned ms = (unsigned)(seconds * 1000);
		unsigned char head[5] = { 'R', ms >> 24, ms >> 16, ms >> 8, ms };
		if (write_all(s, head, 5) < 0)
			die("write");
		uint64_t t0 = 0, total = 0;
		for (;;) {
			ssize_t k = read(s, buf, sizeof(buf));
			if (k < 0 && errno == EINTR)
				continue;
			if (k < 0)
				die("read");
			if (k == 0)
				break;
			if (t0 == 0)
				t0 = now_ns();
			else
				total += (uint64_t)k;
		}
		uint64_t t1 = now_ns();
		printf("NETBENCH mode=recv bytes=%llu ns=%llu\n", (unsigned long long)total,
		       (unsigned long long)(t0 ? t1 - t0 : 0));
	} else if (strcmp(mode, "rr") == 0) {
		nodelay(s);
		if (write_all(s, "P", 1) < 0)
			die("write");
		uint64_t t0 = now_ns(), t1 = t0, count = 0;
		char b = 'x';
		while (t1 - t0 < dur) {
			if (write_all(s, &b, 1) < 0 || read_all(s, &b, 1) < 0)
				die("round trip");
			count++;
			t1 = now_ns();
		}
		printf("NETBENCH mode=rr count=%llu ns=%llu\n", (unsigned long long)count,
		       (unsigned long long)(t1 - t0));
	} else {
		fprintf(stderr, "tcpbench: mode is send, recv or rr\n");
		return 2;
	}
	fflush(stdout);
	close(s);
	return 0;
}

int main(int argc, char **argv)
{
	signal(SIGPIPE, SIG_IGN);
	if (argc == 3 && strcmp(argv[1], "server") == 0)
		return server(atoi(argv[2]));
	if (argc == 6 && strcmp(argv[1], "client") == 0)
		return client(argv[2], atoi(argv[3]), argv[4], atof(argv[5]));
	fprintf(stderr, "usage: tcpbench server PORT | tcpbench client ADDR PORT send|recv|rr SECONDS\n");
	return 2;
}
