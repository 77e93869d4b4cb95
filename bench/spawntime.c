/*
 * spawntime: run one command and time it, for bench/run.py.
 *
 *   spawntime [-m MARKER] [-f TEXT]... [-t SECS] [-l LABEL] [-k] [-v] -- CMD [ARG...]
 *
 * Takes a CLOCK_MONOTONIC timestamp right before posix_spawn(), gives the command /dev/null as
 * stdin and one pipe as stdout+stderr, reads that pipe unbuffered (read(2) straight from the
 * fd), and records:
 *   marker_ms  when the first output line containing MARKER was read (-1: never)
 *   first_byte_ms  (with -f, up to 4 times) for each TEXT in the order given: when the first
 *              byte of the first output line containing TEXT was read (-1: never); the bytes of
 *              one line can come in several reads, and this is the time of the earliest
 *   exit_ms    when the process exited (its pidfd became readable; without pidfd support, when
 *              wait4() returned after EOF on the pipe)
 *   maxrss_kib ru_maxrss of the process from wait4() (peak RSS, KiB)
 *   utime_ms, stime_ms  its CPU time from the same rusage
 * and prints them as one line on stdout:
 *   SPAWNTIME label=L marker_ms=... exit_ms=... status=exit:N|signal:N|timeout maxrss_kib=...
 *       utime_ms=... stime_ms=... out_bytes=... pidfd=0|1 spawn_ns=T [first_byte_ms=A,B,...]
 * spawn_ns is the CLOCK_MONOTONIC timestamp taken right before posix_spawn(), in nanoseconds,
 * so that timestamps the command itself takes on the same clock can be put on its timeline.
 * After -t SECS (default 60) the command is killed (SIGKILL) and status is "timeout". With -k
 * it is killed (SIGKILL) as soon as the marker line has been read (for a VMM that restarts the
 * guest on its reset instead of exiting): status is then "signal:9", exit_ms when it was gone.
 * If the marker was not seen, or with -v, the last output bytes follow on stderr as
 * "SPAWNTIME-OUTPUT: ..." lines. Exit status: 0 if the marker was seen, 1 if not, 2 on a usage
 * or system error.
 *
 * Built statically (gcc -static -O2) so that it runs unchanged inside the emulated KVM host.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#ifndef SYS_pidfd_open
#define SYS_pidfd_open 434
#endif

extern char **environ;

#define TAIL 4096
#define LINE 4096
#define MAX_FIRST 4

static long long now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static void die(const char *what)
{
	fprintf(stderr, "spawntime: %s: %s\n", what, strerror(errno));
	exit(2);
}

static void usage(void)
{
	fprintf(stderr, "usage: spawntime [-m MARKER] [-f TEXT]... [-t SECS] [-l LABEL] [-k] [-v] -- "
			"CMD [ARG...]\n");
	exit(2);
}

/* Output state: the current line (for the marker) and the last TAIL bytes (for diagnostics). */
static char line[LINE];
static size_t line_len;
static char tail[TAIL];
static size_t tail_len;
static long long total_bytes;
/* -f: the texts, when the first line holding each was first seen (its first byte), and when
 * the current line's first byte was read. */
static const char *first_text[MAX_FIRST];
static long long first_at[MAX_FIRST];
static int n_first;
static long long line_start = -1;

/* Feeds bytes read at time t; returns 1 if a line containing marker ended in them. */
static int feed(const char *buf, size_t n, const char *marker, long long t)
{
	int found = 0;
	total_bytes += (long long)n;
	for (size_t i = 0; i < n; i++) {
		char c = buf[i];
		if (tail_len == TAIL) {
			memmove(tail, tail + TAIL / 2, TAIL / 2);
			tail_len = TAIL / 2;
		}
		tail[tail_len++] = c;
		if (line_start < 0)
			line_start = t;
		if (c == '\n') {
			line[line_len] = '\0';
			if (marker && *marker && strstr(line, marker))
				found = 1;
			for (int k = 0; k < n_first; k++)
				if (first_at[k] < 0 && strstr(line, first_text[k]))
					first_at[k] = line_start;
			line_len = 0;
			line_start = -1;
		} else if (c != '\r' && c != '\0' && line_len < LINE - 1) {
			line[line_len++] = c;
		}
	}
	return found;
}

static void print_tail(void)
{
	char *p = tail, *end = tail + tail_len;
	while (p < end) {
		char *nl = memchr(p, '\n', (size_t)(end - p));
		size_t n = nl ? (size_t)(nl - p) : (size_t)(end - p);
		while (n > 0 && p[n - 1] == '\r')
			n--;
		fprintf(stderr, "SPAWNTIME-OUTPUT: %.*s\n", (int)n, p);
		p = nl ? nl + 1 : end;
	}
}

int main(int argc, char **argv)
{
	const char *marker = NULL, *label = "-";
	double timeout_s = 60;
	int verbose = 0, kill_at_marker = 0, i;

	for (i = 1; i < argc; i++) {
		if (!strcmp(argv[i], "--")) {
			i++;
			break;
		} else if (!strcmp(argv[i], "-m") && i + 1 < argc) {
			marker = argv[++i];
		} else if (!strcmp(argv[i], "-f") && i + 1 < argc && n_first < MAX_FIRST) {
			first_text[n_first] = argv[++i];
			first_at[n_first++] = -1;
		} else if (!strcmp(argv[i], "-t") && i + 1 < argc) {
			timeout_s = atof(argv[++i]);
		} else if (!strcmp(argv[i], "-l") && i + 1 < argc) {
			label = argv[++i];
		} else if (!strcmp(argv[i], "-v")) {
			verbose = 1;
		} else if (!strcmp(argv[i], "-k")) {
			kill_at_marker = 1;
		} else {
			usage();
		}
	}
	if (i >= argc || timeout_s <= 0)
		usage();

	int p[2];
	if (pipe2(p, O_CLOEXEC) < 0)
		die("pipe2");
	posix_spawn_file_actions_t fa;
	posix_spawn_file_actions_init(&fa);
	posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
	posix_spawn_file_actions_adddup2(&fa, p[1], 1);
	posix_spawn_file_actions_adddup2(&fa, p[1], 2);

	pid_t pid;
	long long t0 = now_ns();
	int err = posix_spawnp(&pid, argv[i], &fa, NULL, &argv[i], environ);
	if (err) {
		errno = err;
		fprintf(stderr, "spawntime: cannot run %s: %s\n", argv[i], strerror(errno));
		return 2;
	}
	close(p[1]);
	int out = p[0];
	int pidfd = (int)syscall(SYS_pidfd_open, pid, 0);
	long long deadline = t0 + (long long)(timeout_s * 1e9);
	long long t_marker = -1, t_exit = -1;
	int timed_out = 0;
	char buf[65536];

	while (out >= 0 || (pidfd >= 0 && t_exit < 0)) {
		struct pollfd fds[2];
		int nfds = 0, out_i = -1, pid_i = -1;
		if (out >= 0) {
			out_i = nfds;
			fds[nfds++] = (struct pollfd){ .fd = out, .events = POLLIN };
		}
		if (pidfd >= 0 && t_exit < 0) {
			pid_i = nfds;
			fds[nfds++] = (struct pollfd){ .fd = pidfd, .events = POLLIN };
		}
		long long left = deadline - now_ns();
		if (left <= 0) {
			timed_out = 1;
			break;
		}
		int r = poll(fds, (nfds_t)nfds, (int)(left / 1000000 + 1));
		if (r < 0) {
			if (errno == EINTR)
				continue;
			die("poll");
		}
		if (r == 0)
			continue;
		/* The pipe first: output written just before the exit is counted before it. */
		if (out_i >= 0 && (fds[out_i].revents & (POLLIN | POLLHUP | POLLERR))) {
			ssize_t n = read(out, buf, sizeof buf);
			long long t = now_ns();
			if (n > 0) {
				if (feed(buf, (size_t)n, marker, t) && t_marker < 0) {
					t_marker = t;
					if (kill_at_marker)
						kill(pid, SIGKILL);
				}
			} else if (n == 0 || errno != EINTR) {
				close(out);
				out = -1;
			}
		}
		if (pid_i >= 0 && (fds[pid_i].revents & POLLIN)) {
			t_exit = now_ns();
			/* Whatever is still in the pipe; a leftover child holding it open must not block us. */
			if (out >= 0) {
				fcntl(out, F_SETFL, O_NONBLOCK);
				ssize_t n;
				while ((n = read(out, buf, sizeof buf)) > 0)
					if (feed(buf, (size_t)n, marker, t_exit) && t_marker < 0)
						t_marker = t_exit;
				close(out);
				out = -1;
			}
		}
	}
	if (timed_out) {
		kill(pid, SIGKILL);
		if (out >= 0) {
			close(out);
			out = -1;
		}
	}

	int status;
	struct rusage ru;
	if (wait4(pid, &status, 0, &ru) < 0)
		die("wait4");
	if (t_exit < 0 && !timed_out)
		t_exit = now_ns();

	char st[32];
	if (timed_out)
		snprintf(st, sizeof st, "timeout");
	else if (WIFEXITED(status))
		snprintf(st, sizeof st, "exit:%d", WEXITSTATUS(status));
	else
		snprintf(st, sizeof st, "signal:%d", WTERMSIG(status));
	double marker_ms = t_marker < 0 ? -1.0 : (double)(t_marker - t0) / 1e6;
	double exit_ms = t_exit < 0 ? -1.0 : (double)(t_exit - t0) / 1e6;
	double ut = (double)ru.ru_utime.tv_sec * 1e3 + (double)ru.ru_utime.tv_usec / 1e3;
	double stt = (double)ru.ru_stime.tv_sec * 1e3 + (double)ru.ru_stime.tv_usec / 1e3;
	/* A last line without a newline still counts for -f. */
	if (line_len > 0) {
		line[line_len] = '\0';
		for (int k = 0; k < n_first; k++)
			if (first_at[k] < 0 && strstr(line, first_text[k]))
				first_at[k] = line_start;
	}
	printf("SPAWNTIME label=%s marker_ms=%.3f exit_ms=%.3f status=%s maxrss_kib=%ld utime_ms=%.1f "
	       "stime_ms=%.1f out_bytes=%lld pidfd=%d spawn_ns=%lld",
	       label, marker_ms, exit_ms, st, ru.ru_maxrss, ut, stt, total_bytes, pidfd >= 0, t0);
	for (int k = 0; k < n_first; k++)
		printf("%s%.3f", k ? "," : " first_byte_ms=",
		       first_at[k] < 0 ? -1.0 : (double)(first_at[k] - t0) / 1e6);
	printf("\n");
	fflush(stdout);
	if (verbose || t_marker < 0)
		print_tail();
	return t_marker < 0 ? 1 : 0;
}
