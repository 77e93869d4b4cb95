/* The two ends of tests/full_guest_vsock.rs, one static program (cc -static -O2), run in the
 * guest and in the (emulated) host:
 *   vsock_peer echo PORT           guest: listen on vsock PORT, echo one connection until EOF,
 *                                  then half-close; prints "echoed=BYTES"
 *   vsock_peer send CID PORT       guest: connect to CID:PORT, send stdin, half-close, read
 *                                  until EOF; prints "sent=BYTES connect-ms=MS"
 *   vsock_peer connect CID PORT    guest: try to connect; prints "connect=OK|ERRNO-NAME ms=MS"
 *   vsock_peer unix-sink PATH      host: listen on the Unix socket PATH, take one connection,
 *                                  copy it to stdout until EOF
 * Lines go to stderr prefixed "VT " so the guest's console shows them. */
#define _GNU_SOURCE
#include <errno.h>
#include <linux/vm_sockets.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

static long now_ms(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1000 + t.tv_nsec / 1000000;
}

static int write_all(int fd, const char *buf, ssize_t n) {
    while (n > 0) {
        ssize_t w = write(fd, buf, n);
        if (w < 0) {
            if (errno == EINTR) continue;
            return -1;
        }
        buf += w;
        n -= w;
    }
    return 0;
}

static int vsock_connect(unsigned cid, unsigned port) {
    struct sockaddr_vm a = {.svm_family = AF_VSOCK, .svm_cid = cid, .svm_port = port};
    int s = socket(AF_VSOCK, SOCK_STREAM, 0);
    if (s < 0) return -1;
    if (connect(s, (struct sockaddr *)&a, sizeof a) < 0) {
        int e = errno;
        close(s);
        errno = e;
        return -1;
    }
    return s;
}

int main(int argc, char **argv) {
    static char buf[65536];
    if (argc == 3 && !strcmp(argv[1], "echo")) {
        struct sockaddr_vm a = {.svm_family = AF_VSOCK, .svm_cid = VMADDR_CID_ANY,
                                .svm_port = (unsigned)atoi(argv[2])};
        int s = socket(AF_VSOCK, SOCK_STREAM, 0);
        if (s < 0 || bind(s, (struct sockaddr *)&a, sizeof a) < 0 || listen(s, 4) < 0) {
            fprintf(stderr, "VT echo-error=%s\n", strerrorname_np(errno));
            return 1;
        }
        fprintf(stderr, "VT echo-listening\n");
        int c = accept(s, NULL, NULL);
        long total = 0;
        for (;;) {
            ssize_t n = read(c, buf, sizeof buf);
            if (n < 0 && errno == EINTR) continue;
            if (n <= 0) break;
            if (write_all(c, buf, n) < 0) break;
            total += n;
        }
        shutdown(c, SHUT_WR);
        /* Wait for the peer's close before ours. */
        while (read(c, buf, sizeof buf) > 0) {
        }
        close(c);
        fprintf(stderr, "VT echoed=%ld\n", total);
        return 0;
    }
    if (argc == 4 && !strcmp(argv[1], "send")) {
        long t0 = now_ms();
        int s = vsock_connect((unsigned)atoi(argv[2]), (unsigned)atoi(argv[3]));
        if (s < 0) {
            fprintf(stderr, "VT send-error=%s\n", strerrorname_np(errno));
            return 1;
        }
        long connected = now_ms() - t0;
        long total = 0;
        for (;;) {
            ssize_t n = read(0, buf, sizeof buf);
            if (n < 0 && errno == EINTR) continue;
            if (n <= 0) break;
            if (write_all(s, buf, n) < 0) {
                fprintf(stderr, "VT send-error=%s\n", strerrorname_np(errno));
                return 1;
            }
            total += n;
        }
        shutdown(s, SHUT_WR);
        while (read(s, buf, sizeof buf) > 0) {
        }
        close(s);
        fprintf(stderr, "VT sent=%ld connect-ms=%ld\n", total, connected);
        return 0;
    }
    if (argc == 4 && !strcmp(argv[1], "connect")) {
        long t0 = now_ms();
        int s = vsock_connect((unsigned)atoi(argv[2]), (unsigned)atoi(argv[3]));
        fprintf(stderr, "VT connect=%s ms=%ld\n", s < 0 ? strerrorname_np(errno) : "OK", now_ms() - t0);
        return s < 0;
    }
    if (argc == 3 && !strcmp(argv[1], "unix-sink")) {
        struct sockaddr_un a = {.sun_family = AF_UNIX};
        strncpy(a.sun_path, argv[2], sizeof a.sun_path - 1);
        int s = socket(AF_UNIX, SOCK_STREAM, 0);
        if (s < 0 || bind(s, (struct sockaddr *)&a, sizeof a) < 0 || listen(s, 4) < 0) {
            perror("unix-sink");
            return 1;
        }
        int c = accept(s, NULL, NULL);
        for (;;) {
            ssize_t n = read(c, buf, sizeof buf);
            if (n < 0 && errno == EINTR) continue;
            if (n <= 0) break;
            if (write_all(1, buf, n) < 0) return 1;
        }
        close(c);
        return 0;
    }
    fprintf(stderr, "usage: vsock_peer echo PORT | send CID PORT | connect CID PORT | unix-sink PATH\n");
    return 2;
}
