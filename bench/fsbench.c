/*
 * fsbench: a file system's sequential throughput and small-file rates, for bench/run.py part 9.
 *
 *   fsbench DIR MIB FILES PASSES
 *
 * In the directory DIR (a mounted file system: virtio-fs or ext4 on virtio-blk), PASSES times:
 *   write:  DIR/seq.bin created, MIB MiB written in 1 MiB write()s from one buffer (a tag per
 *           4 KiB, different each pass), then fsync(): timed from the open to the fsync's return;
 *   read:   the page cache dropped (sync; echo 3 > /proc/sys/vm/drop_caches), then the file read
 *           in 1 MiB read()s and every 4 KiB's tag checked: timed from the open to the close;
 *           then the file is unlinked;
 *   create: FILES files DIR/files/fNNNNN created (open O_CREAT|O_EXCL, a 1 KiB write, close),
 *           then syncfs(): timed to the syncfs's return;
 *   stat:   caches dropped, then stat() of each file: timed;
 *   delete: caches dropped, then unlink() of each file, then syncfs(): timed.
 * Each phase is one line on stdout (MB/s = 10^6 bytes/s; files/s):
 *   FSBENCH op=write pass=N bytes=B ns=T
 *   FSBENCH op=read pass=N bytes=B ns=T
 *   FSBENCH op=create pass=N files=F ns=T      (and op=stat, op=delete)
 * Failures print "FSBENCH error=WHAT ..." and exit 1; usage errors exit 2. On success the last
 * line is "FSBENCH done". Timed with CLOCK_MONOTONIC. Built statically (gcc -static -O2) on the
 * host; it runs unchanged in the test guest.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define BLOCK (1 << 20)
#define TAG_STRIDE 4096
#define SMALL 1024

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
		fprintf(stderr, "fsbench: %s must be a positive integer, not '%s'\n", what, s);
		exit(2);
	}
	return v;
}

static void die(const char *what, const char *path)
{
	printf("FSBENCH error=%s path=%s errno=%d (%s)\n", what, path, errno, strerror(errno));
	fflush(stdout);
	exit(1);
}

static void drop_caches(void)
{
	sync();
	int fd = open("/proc/sys/vm/drop_caches", O_WRONLY);
	if (fd < 0 || write(fd, "3\n", 2) != 2)
		die("drop_caches", "/proc/sys/vm/drop_caches");
	close(fd);
}

static uint64_t tag(long pass, long long off)
{
	return 0x4653424e00000000ULL ^ ((uint64_t)pass << 48) ^ (uint64_t)off;
}

static void syncfs_dir(const char *dir)
{
	int fd = open(dir, O_RDONLY | O_DIRECTORY);
	if (fd < 0)
		die("open-dir", dir);
	if (syncfs(fd) != 0)
		die("syncfs", dir);
	close(fd);
}

int main(int argc, char **argv)
{
	if (argc != 5) {
		fprintf(stderr, "usage: fsbench DIR MIB FILES PASSES\n");
		return 2;
	}
	const char *dir = argv[1];
	long mib = parse(argv[2], "MIB"), files = parse(argv[3], "FILES");
	long passes = parse(argv[4], "PASSES");
	char path[4096], fdir[4096];
	snprintf(path, sizeof path, "%s/seq.bin", dir);
	snprintf(fdir, sizeof fdir, "%s/files", dir);
	unsigned char *buf = aligned_alloc(4096, BLOCK);
	unsigned char small[SMALL];
	if (!buf)
		die("alloc", "-");
	memset(buf, 0x5a, BLOCK);
	memset(small, 0x33, sizeof small);
	setvbuf(stdout, NULL, _IOLBF, 0);

	for (long pass = 1; pass <= passes; pass++) {
		long long bytes = (long long)mib * BLOCK;
		/* write */
		long long t0 = now_ns();
		int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
		if (fd < 0)
			die("open-write", path);
		for (long long off = 0; off < bytes; off += BLOCK) {
			for (size_t i = 0; i < BLOCK; i += TAG_STRIDE) {
				uint64_t t = tag(pass, off + (long long)i);
				memcpy(buf + i, &t, sizeof t);
			}
			for (size_t done = 0; done < BLOCK;) {
				ssize_t n = write(fd, buf + done, BLOCK - done);
				if (n <= 0)
					die("write", path);
				done += (size_t)n;
			}
		}
		if (fsync(fd) != 0)
			die("fsync", path);
		if (close(fd) != 0)
			die("close", path);
		long long t1 = now_ns();
		printf("FSBENCH op=write pass=%ld bytes=%lld ns=%lld\n", pass, bytes, t1 - t0);

		/* read */
		drop_caches();
		t0 = now_ns();
		fd = open(path, O_RDONLY);
		if (fd < 0)
			die("open-read", path);
		for (long long off = 0; off < bytes; off += BLOCK) {
			for (size_t done = 0; done < BLOCK;) {
				ssize_t n = read(fd, buf + done, BLOCK - done);
				if (n <= 0)
					die(n == 0 ? "short-read" : "read", path);
				done += (size_t)n;
			}
			for (size_t i = 0; i < BLOCK; i += TAG_STRIDE) {
				uint64_t t, want = tag(pass, off + (long long)i);
				memcpy(&t, buf + i, sizeof t);
				if (t != want) {
					printf("FSBENCH error=wrong-data path=%s offset=%lld\n", path,
					       off + (long long)i);
					return 1;
				}
			}
		}
		close(fd);
		t1 = now_ns();
		printf("FSBENCH op=read pass=%ld bytes=%lld ns=%lld\n", pass, bytes, t1 - t0);
		if (unlink(path) != 0)
			die("unlink", path);

		/* create */
		if (mkdir(fdir, 0755) != 0 && errno != EEXIST)
			die("mkdir", fdir);
		drop_caches();
		t0 = now_ns();
		for (long i = 0; i < files; i++) {
			char f[4200];
			snprintf(f, sizeof f, "%s/f%05ld", fdir, i);
			int ffd = open(f, O_WRONLY | O_CREAT | O_EXCL, 0644);
			if (ffd < 0)
				die("create", f);
			if (write(ffd, small, sizeof small) != (ssize_t)sizeof small)
				die("write-small", f);
			if (close(ffd) != 0)
				die("close-small", f);
		}
		syncfs_dir(fdir);
		t1 = now_ns();
		printf("FSBENCH op=create pass=%ld files=%ld ns=%lld\n", pass, files, t1 - t0);

		/* stat */
		drop_caches();
		t0 = now_ns();
		for (long i = 0; i < files; i++) {
			char f[4200];
			struct stat st;
			snprintf(f, sizeof f, "%s/f%05ld", fdir, i);
			if (stat(f, &st) != 0)
				die("stat", f);
			if (st.st_size != SMALL) {
				printf("FSBENCH error=wrong-size path=%s size=%lld\n", f,
				       (long long)st.st_size);
				return 1;
			}
		}
		t1 = now_ns();
		printf("FSBENCH op=stat pass=%ld files=%ld ns=%lld\n", pass, files, t1 - t0);

		/* delete */
		drop_caches();
		t0 = now_ns();
		for (long i = 0; i < files; i++) {
			char f[4200];
			snprintf(f, sizeof f, "%s/f%05ld", fdir, i);
			if (unlink(f) != 0)
				die("unlink", f);
		}
		syncfs_dir(fdir);
		t1 = now_ns();
		printf("FSBENCH op=delete pass=%ld files=%ld ns=%lld\n", pass, files, t1 - t0);
		if (rmdir(fdir) != 0)
			die("rmdir", fdir);
	}
	printf("FSBENCH done\n");
	return 0;
}
