/*
 * savectl: the control side of part 11 (save and restore inside the emulated KVM host), where
 * only busybox runs: QEMU's QMP and Firecracker's HTTP API on their Unix sockets, timed.
 *
 *   savectl qmp-save SOCK FILE   (max-bandwidth lifted first) `stop`, then `migrate exec:cat > FILE`, polling query-migrate
 *                                until it ends; prints
 *                                SAVECTL qmp-save stop_ms=A migrate_ms=B status=S
 *   savectl qmp-cont SOCK        waits until query-status leaves "inmigrate", then `cont`;
 *                                prints SAVECTL qmp-cont wait_ms=A cont_ms=B
 *   savectl http SOCK METHOD URL BODY
 *                                one HTTP/1.1 request (Firecracker's API); prints
 *                                SAVECTL http status=N ms=A body=...
 * The socket is retried for up to 60 s (the VMM may just have started); an answer is waited
 * for up to 120 s. Times are from the
 * request's send to its answer (CLOCK_MONOTONIC). Exit status 0 on success, 1 otherwise.
 *
 * Built statically (gcc -static -O2), like spawntime.c.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

static double now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

static void die(const char *what)
{
	fprintf(stderr, "savectl: %s: %s\n", what, strerror(errno));
	exit(1);
}

static int connect_unix(const char *path)
{
	struct sockaddr_un a = {.sun_family = AF_UNIX};
	if (strlen(path) >= sizeof(a.sun_path)) {
		errno = ENAMETOOLONG;
		die(path);
	}
	strcpy(a.sun_path, path);
	double deadline = now_ms() + 60000;
	for (;;) {
		int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
		if (fd < 0)
			die("socket");
		if (connect(fd, (struct sockaddr *)&a, sizeof a) == 0) {
			/* A VMM that never answers ends the wait after 120 s (an error), not never. */
			struct timeval tv = {.tv_sec = 120};
			setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
			return fd;
		}
		close(fd);
		if (now_ms() > deadline)
			die(path);
		usleep(1000);
	}
}

static void send_all(int fd, const char *s, size_t n)
{
	while (n) {
		ssize_t w = write(fd, s, n);
		if (w < 0) {
			if (errno == EINTR)
				continue;
			die("write");
		}
		s += w;
		n -= (size_t)w;
	}
}

/* Line reader for QMP. */
static char rbuf[1 << 16];
static size_t rlen;

static char *read_line(int fd)
{
	static char line[1 << 16];
	for (;;) {
		char *nl = memchr(rbuf, '\n', rlen);
		if (nl) {
			size_t n = (size_t)(nl - rbuf);
			if (n >= sizeof line)
				n = sizeof line - 1;
			memcpy(line, rbuf, n);
			line[n] = 0;
			rlen -= (size_t)(nl - rbuf) + 1;
			memmove(rbuf, nl + 1, rlen);
			return line;
		}
		if (rlen == sizeof rbuf)
			rlen = 0;
		ssize_t r = read(fd, rbuf + rlen, sizeof rbuf - rlen);
		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0) {
			fprintf(stderr, "savectl: QMP socket closed\n");
			exit(1);
		}
		rlen += (size_t)r;
	}
}

/* Sends one QMP command, returns its answer line (events skipped); exits on an error answer. */
static char *qmp(int fd, const char *cmd)
{
	send_all(fd, cmd, strlen(cmd));
	send_all(fd, "\n", 1);
	for (;;) {
		char *l = read_line(fd);
		if (strstr(l, "\"return\""))
			return l;
		if (strstr(l, "\"error\"")) {
			fprintf(stderr, "savectl: QMP %s: %s\n", cmd, l);
			printf("SAVECTL qmp-error %s\n", l);
			exit(1);
		}
	}
}

/* The value of the first "status": "..." of a line, into out. */
static void status_of(const char *l, char *out, size_t n)
{
	const char *p = strstr(l, "\"status\"");
	out[0] = 0;
	if (!p)
		return;
	p = strchr(p + 8, '"');
	if (!p)
		return;
	p++;
	size_t k = 0;
	while (*p && *p != '"' && k + 1 < n)
		out[k++] = *p++;
	out[k] = 0;
}

static int qmp_open(const char *sock)
{
	int fd = connect_unix(sock);
	read_line(fd); /* the greeting */
	qmp(fd, "{\"execute\":\"qmp_capabilities\"}");
	return fd;
}

static int qmp_save(const char *sock, const char *file)
{
	int fd = qmp_open(sock);
	char cmd[4096], st[64];
	/* QEMU throttles a migration to 128 MiB/s by default (max-bandwidth): lift it, a file is
	 * no network link. Not timed. */
	qmp(fd, "{\"execute\":\"migrate-set-parameters\",\"arguments\":"
		"{\"max-bandwidth\":1099511627776}}");
	double t0 = now_ms();
	qmp(fd, "{\"execute\":\"stop\"}");
	double t1 = now_ms();
	snprintf(cmd, sizeof cmd,
		 "{\"execute\":\"migrate\",\"arguments\":{\"uri\":\"exec:cat > %s\"}}", file);
	qmp(fd, cmd);
	for (;;) {
		status_of(qmp(fd, "{\"execute\":\"query-migrate\"}"), st, sizeof st);
		if (!strcmp(st, "completed") || !strcmp(st, "failed") || !strcmp(st, "cancelled"))
			break;
		usleep(200);
	}
	double t2 = now_ms();
	printf("SAVECTL qmp-save stop_ms=%.3f migrate_ms=%.3f status=%s\n", t1 - t0, t2 - t1, st);
	return strcmp(st, "completed") != 0;
}

static int qmp_cont(const char *sock)
{
	int fd = qmp_open(sock);
	char st[64];
	double t0 = now_ms();
	for (;;) {
		status_of(qmp(fd, "{\"execute\":\"query-status\"}"), st, sizeof st);
		if (strcmp(st, "inmigrate"))
			break;
		usleep(200);
	}
	double t1 = now_ms();
	qmp(fd, "{\"execute\":\"cont\"}");
	double t2 = now_ms();
	printf("SAVECTL qmp-cont wait_ms=%.3f cont_ms=%.3f status=%s\n", t1 - t0, t2 - t1, st);
	return 0;
}

static int http(const char *sock, const char *method, const char *url, const char *body)
{
	int fd = connect_unix(sock);
	char req[8192];
	int n = snprintf(req, sizeof req,
			 "%s %s HTTP/1.1\r\nHost: localhost\r\nAccept: application/json\r\n"
			 "Content-Type: application/json\r\nContent-Length: %zu\r\n\r\n%s",
			 method, url, strlen(body), body);
	double t0 = now_ms();
	send_all(fd, req, (size_t)n);
	char resp[8192];
	size_t len = 0;
	char *end = NULL;
	while (!end && len + 1 < sizeof resp) {
		ssize_t r = read(fd, resp + len, sizeof resp - 1 - len);
		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0)
			break;
		len += (size_t)r;
		resp[len] = 0;
		end = strstr(resp, "\r\n\r\n");
	}
	double t1 = now_ms();
	resp[len] = 0;
	int status = 0;
	sscanf(resp, "HTTP/1.%*d %d", &status);
	/* The body, if any came with the headers, on one line. */
	char *b = end ? end + 4 : resp;
	for (char *p = b; *p; p++)
		if (*p == '\n' || *p == '\r')
			*p = ' ';
	printf("SAVECTL http status=%d ms=%.3f body=%.300s\n", status, t1 - t0, b);
	return status / 100 != 2;
}

int main(int argc, char **argv)
{
	setvbuf(stdout, NULL, _IOLBF, 0);
	if (argc == 4 && !strcmp(argv[1], "qmp-save"))
		return qmp_save(argv[2], argv[3]);
	if (argc == 3 && !strcmp(argv[1], "qmp-cont"))
		return qmp_cont(argv[2]);
	if (argc == 6 && !strcmp(argv[1], "http"))
		return http(argv[2], argv[3], argv[4], argv[5]);
	fprintf(stderr, "usage: savectl qmp-save SOCK FILE | qmp-cont SOCK | "
			"http SOCK METHOD URL BODY\n");
	return 2;
}
