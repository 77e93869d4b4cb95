/*
 * odirect: sequential O_DIRECT writes, then reads, of a block device, for bench/run.py part 5.
 *
 *   odirect DEVICE MIB BLOCK_KIB PASSES
 *
 * Opens DEVICE with O_RDWR | O_DIRECT and, PASSES times: writes the first MIB MiB in blocks of
 * BLOCK_KIB KiB from a page-aligned buffer (pwrite, one block at a time, in order), then
 * fdatasync (a FLUSH to the disk), then reads the same range back the same way (pread) and
 * checks that every 4 KiB of it holds what this pass wrote there (a tag per pass and offset, so a
 * read that returns stale or foreign data is caught). Each phase is timed with CLOCK_MONOTONIC
 * and reported as one line on stdout:
 *   ODIRECT op=write pass=N bytes=B ns=T mbps=M
 *   ODIRECT op=read pass=N bytes=B ns=T mbps=M
 * (MB/s = 10^6 bytes per second). A failed call or a wrong byte prints
 *   ODIRECT error=WHAT ...
 * and exits 1; usage errors exit 2. On success the last line is "ODIRECT done".
 *
 * Built statically (gcc -static -O2) on the host; it runs unchanged inside the test guest.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define TAG_STRIDE 4096

static long long now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static long parse(const char *s, const char *what)
{
	char *end;
	long v = strtol(s, &end, 10);
	if (*s == '\0' || *end != '\0' || v <= 0) {
		fprintf(stderr, "odirect: %s must be a positive integer, not '%s'\n", what, s);
		exit(2);
	}
	return v;
}

/* The tag at byte offset `off` of the disk in pass `pass`. */
static uint64_t tag(long pass, long long off)
{
	return 0x4f44495200000000ULL ^ ((uint64_t)pass << 48) ^ (uint64_t)off;
}

static void fill(unsigned char *buf, size_t len, long pass, long long off)
{
	for (size_t i = 0; i < len; i += TAG_STRIDE) {
		uint64_t t = tag(pass, off + (long long)i);
		memcpy(buf + i, &t, sizeof t);
	}
}

static int check(const unsigned char *buf, size_t len, long pass, long long off)
{
	for (size_t i = 0; i < len; i += TAG_STRIDE) {
		uint64_t t;
		memcpy(&t, buf + i, sizeof t);
		if (t != tag(pass, off + (long long)i)) {
			printf("ODIRECT error=verify pass=%ld offset=%lld\n", pass, off + (long long)i);
			return -1;
		}
	}
	return 0;
}

static void report(const char *op, long pass, long long bytes, long long ns)
{
	printf("ODIRECT op=%s pass=%ld bytes=%lld ns=%lld mbps=%.2f\n", op, pass, bytes, ns,
	       ns > 0 ? (double)bytes * 1e3 / (double)ns : 0.0);
	fflush(stdout);
}

int main(int argc, char **argv)
{
	if (argc != 5) {
		fprintf(stderr, "usage: odirect DEVICE MIB BLOCK_KIB PASSES\n");
		return 2;
	}
	const char *dev = argv[1];
	long long total = parse(argv[2], "MIB") << 20;
	size_t block = (size_t)parse(argv[3], "BLOCK_KIB") << 10;
	long passes = parse(argv[4], "PASSES");
	if (total % (long long)block != 0) {
		fprintf(stderr, "odirect: MIB must be a multiple of the block size\n");
		return 2;
	}
	int fd = open(dev, O_RDWR | O_DIRECT);
	if (fd < 0) {
		printf("ODIRECT error=open device=%s errno=%d (%s)\n", dev, errno, strerror(errno));
		return 1;
	}
	unsigned char *buf;
	if (posix_memalign((void **)&buf, 4096, block) != 0) {
		printf("ODIRECT error=alloc\n");
		return 1;
	}
	memset(buf, 0x5a, block);

	for (long pass = 1; pass <= passes; pass++) {
		long long t0 = now_ns();
		for (long long off = 0; off < total; off += (long long)block) {
			/* The tags are written into the buffer inside the timed loop: one 8-byte store per
			 * 4 KiB, negligible next to the I/O, and it keeps every block distinct. */
			fill(buf, block, pass, off);
			ssize_t n = pwrite(fd, buf, block, off);
			if (n != (ssize_t)block) {
				printf("ODIRECT error=write pass=%ld offset=%lld ret=%zd errno=%d (%s)\n", pass,
				       off, n, errno, strerror(errno));
				return 1;
			}
		}
		if (fdatasync(fd) != 0) {
			printf("ODIRECT error=fdatasync errno=%d (%s)\n", errno, strerror(errno));
			return 1;
		}
		report("write", pass, total, now_ns() - t0);

		t0 = now_ns();
		for (long long off = 0; off < total; off += (long long)block) {
			ssize_t n = pread(fd, buf, block, off);
			if (n != (ssize_t)block) {
				printf("ODIRECT error=read pass=%ld offset=%lld ret=%zd errno=%d (%s)\n", pass,
				       off, n, errno, strerror(errno));
				return 1;
			}
			if (check(buf, block, pass, off) != 0)
				return 1;
		}
		report("read", pass, total, now_ns() - t0);
	}
	close(fd);
	printf("ODIRECT done\n");
	return 0;
}
