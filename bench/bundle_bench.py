#!/usr/bin/env python3
"""virtkit disk images benchmark: cloning a VM disk file, and importing a qcow2 image.

Part A, clone: a 20 GiB sparse disk file holding 1 GiB of random data (64 pieces of 16 MiB spread
evenly over it) is cloned with `virtkit_disk::clone_file` (through the example
crates/disk/examples/disk_image_tool.rs) on
  - a reflink file system: btrfs (else XFS with reflink=1) made by this script in a file under
    bench/out and loop-mounted (needs root and mkfs.btrfs or mkfs.xfs), and
  - the file system holding bench/out (ext4 here: no reflink, so a sparse copy).
Per run: the tool's own time (open to fsync done), and the bytes the copy really took: the
difference of the file system's used blocks (statvfs) before and after (after `sync`), and the
copy's st_blocks.

Part B, import: an 8 GiB raw disk with 1 GiB of random data (16 pieces of 64 MiB) is converted
to qcow2 with `qemu-img convert -O qcow2`, then half of one data piece (32 MiB) is turned into zero
clusters with `qemu-io -c "write -z"`. That image is imported with `disk_image_tool import` and
converted with `qemu-img convert -O raw` (its default, which does not flush the result to disk)
and with `qemu-img convert -t writeback -O raw` (flushes at the end, as the import does), all to
the file system holding bench/out. The outputs are compared once with cmp.

Every figure is the median of --runs runs (default 5); the tools take turns in each round. Two
page cache states: "warm" (the source was just read or written, so it is in the page cache), and
"cold" (the source's pages evicted with posix_fadvise(POSIX_FADV_DONTNEED) after `sync` before
each run; no global cache drop, so other work on the machine keeps its cache). Outputs are
removed between runs.

Prints a Markdown section and writes it to bench/out/bundle.md. Only the standard library is
used. Run as root from the repository: `python3 bench/bundle_bench.py`.
"""

import argparse
import datetime
import json
import os
import platform
import random
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "out"
REPORT = OUT / "bundle.md"
TOOL = ROOT / "target" / "release" / "examples" / "disk_image_tool"
GIB = 1 << 30
MIB = 1 << 20

CLONE_DISK = 20 * GIB
CLONE_PIECES = 64
CLONE_PIECE = 16 * MIB
IMPORT_DISK = 8 * GIB
IMPORT_PIECES = 16
IMPORT_PIECE = 64 * MIB
REFLINK_FS_BYTES = 8 * GIB


def log(msg):
    print(f"[bundle_bench] {msg}", file=sys.stderr, flush=True)


def run(cmd, **kw):
    return subprocess.run(cmd, check=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def make_sparse_disk(path, size, pieces, piece_len, seed):
    """A sparse file of `size` bytes with `pieces` random pieces spread evenly over it."""
    rng = random.Random(seed)
    spacing = size // pieces
    with open(path, "wb") as f:
        f.truncate(size)
        for i in range(pieces):
            os.pwrite(f.fileno(), rng.randbytes(piece_len), i * spacing)
        os.fsync(f.fileno())


def used_bytes(path):
    st = os.statvfs(path)
    return (st.f_blocks - st.f_bfree) * st.f_frsize


def allocated(path):
    return os.stat(path).st_blocks * 512


def evict(path):
    """Drops the file's clean pages from the page cache (after a sync, all of them)."""
    os.sync()
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def remove(path):
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def fs_type(path):
    return run(["findmnt", "-n", "-o", "FSTYPE", "-T", str(path)]).stdout.strip()


def tool(*args):
    """Runs disk_image_tool; returns its JSON report and the wall time of the process."""
    start = time.monotonic()
    out = run([str(TOOL), *map(str, args)]).stdout
    wall = time.monotonic() - start
    report = json.loads(out)
    report["wall"] = wall
    return report


def timed(cmd):
    start = time.monotonic()
    run(cmd)
    return time.monotonic() - start


def med(values):
    return statistics.median(values)


def fmt_bytes(n):
    for unit, size in (("GiB", GIB), ("MiB", MIB), ("KiB", 1024)):
        if abs(n) >= size:
            return f"{n / size:.2f} {unit}"
    return f"{n} B"


# ------------------------------------------------------------------------------------------------
# The reflink file system


class ReflinkFs:
    """A btrfs (else XFS reflink=1) file system in bench/out/reflink.fs, loop-mounted."""

    def __init__(self):
        self.image = OUT / "reflink.fs"
        self.mount = OUT / "reflink-mnt"
        self.kind = None
        self.why_not = None

    def __enter__(self):
        if os.geteuid() != 0:
            self.why_not = "needs root to loop-mount a file system"
            return self
        if shutil.which("mkfs.btrfs"):
            self.kind, mkfs = "btrfs", ["mkfs.btrfs", "-q", "-f"]
        elif shutil.which("mkfs.xfs"):
            self.kind, mkfs = "xfs", ["mkfs.xfs", "-q", "-f", "-m", "reflink=1"]
        else:
            self.why_not = "neither mkfs.btrfs nor mkfs.xfs (apt-get install btrfs-progs xfsprogs)"
            return self
        subprocess.run(["umount", str(self.mount)], stderr=subprocess.DEVNULL)
        remove(self.image)
        with open(self.image, "wb") as f:
            f.truncate(REFLINK_FS_BYTES)
        self.mount.mkdir(parents=True, exist_ok=True)
        try:
            run([*mkfs, str(self.image)])
            run(["mount", "-o", "loop", str(self.image), str(self.mount)])
        except subprocess.CalledProcessError as e:
            self.why_not = f"{' '.join(e.cmd)} failed: {e.stderr.strip()}"
            self.kind = None
        return self

    def __exit__(self, *exc):
        if self.kind:
            subprocess.run(["umount", str(self.mount)], check=False)
        remove(self.image)
        return False


# ------------------------------------------------------------------------------------------------
# Part A: clone


def bench_clone(directory, label, runs):
    src = directory / "clone-src.img"
    dst = directory / "clone-copy.img"
    remove(dst)
    if not src.exists():
        log(f"making the {fmt_bytes(CLONE_DISK)} clone source in {directory}")
        make_sparse_disk(src, CLONE_DISK, CLONE_PIECES, CLONE_PIECE, seed=1)
    rows = []
    for cache in ("warm", "cold"):
        times, df_deltas, blocks, methods = [], [], [], set()
        for i in range(runs):
            remove(dst)
            os.sync()
            if cache == "cold":
                evict(src)
            else:
                # Warm: read the data once (cheap after the first run).
                with open(src, "rb") as f:
                    for off in range(0, CLONE_DISK, CLONE_DISK // CLONE_PIECES):
                        os.pread(f.fileno(), CLONE_PIECE, off)
            before = used_bytes(directory)
            report = tool("clone", src, dst)
            os.sync()
            after = used_bytes(directory)
            times.append(report["seconds"])
            df_deltas.append(after - before)
            blocks.append(allocated(dst))
            methods.add(report["method"])
            log(f"clone {label} {cache} run {i + 1}: {report['method']} {report['seconds']:.3f} s, "
                f"df +{fmt_bytes(after - before)}")
        if cache == "warm" and runs > 0:
            # Content check once per file system: the copy must equal the source.
            run(["cmp", str(src), str(dst)])
        rows.append({
            "fs": label, "cache": cache, "method": "/".join(sorted(methods)),
            "seconds": med(times), "min": min(times), "max": max(times),
            "df_delta": med(df_deltas), "st_blocks": med(blocks),
        })
    remove(dst)
    remove(src)
    return rows


# ------------------------------------------------------------------------------------------------
# Part B: import


def make_import_image():
    raw = OUT / "import-src.raw"
    image = OUT / "import-src.qcow2"
    remove(raw)
    remove(image)
    log(f"making the {fmt_bytes(IMPORT_DISK)} qcow2 image")
    make_sparse_disk(raw, IMPORT_DISK, IMPORT_PIECES, IMPORT_PIECE, seed=2)
    run(["qemu-img", "convert", "-O", "qcow2", str(raw), str(image)])
    remove(raw)
    # Zero clusters over the start of the third data piece (their old data stays in the file).
    zero_at = 2 * (IMPORT_DISK // IMPORT_PIECES)
    run(["qemu-io", "-c", f"write -z {zero_at} {IMPORT_PIECE // 2}", str(image)])
    return image


def bench_import(image, runs):
    ours_dst = OUT / "import-virtkit.img"
    qemu_dst = OUT / "import-qemu.img"
    qemu_wb_dst = OUT / "import-qemu-wb.img"
    contenders = {
        "virtkit import": (ours_dst, lambda: tool("import", image, ours_dst)),
        "qemu-img convert -O raw": (qemu_dst, lambda: {"wall": timed(
            ["qemu-img", "convert", "-O", "raw", str(image), str(qemu_dst)])}),
        "qemu-img convert -t writeback -O raw": (qemu_wb_dst, lambda: {"wall": timed(
            ["qemu-img", "convert", "-t", "writeback", "-O", "raw", str(image), str(qemu_wb_dst)])}),
    }
    names = list(contenders)
    results = {}
    data_bytes = None
    for cache in ("warm", "cold"):
        times = {name: [] for name in names}
        for i in range(runs):
            order = names[i % len(names):] + names[:i % len(names)]
            for name in order:
                dst, go = contenders[name]
                remove(dst)
                os.sync()
                if cache == "cold":
                    evict(image)
                else:
                    with open(image, "rb") as f:
                        while f.read(8 * MIB):
                            pass
                report = go()
                times[name].append(report["wall"])
                if "bytes_written" in report:
                    data_bytes = report["bytes_written"]
                log(f"import {cache} run {i + 1}: {name}: {report['wall']:.3f} s")
        results[cache] = times
    # The outputs must be the same disk.
    run(["cmp", str(ours_dst), str(qemu_dst)])
    sizes = {name: allocated(contenders[name][0]) for name in names}
    for dst, _ in contenders.values():
        remove(dst)
    return names, results, data_bytes, sizes


# ------------------------------------------------------------------------------------------------


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--no-build", action="store_true", help="use the built disk_image_tool as is")
    parser.add_argument("--only", choices=["clone", "import"], help="run one part")
    parser.add_argument("--small", action="store_true",
                        help="1/16 of the sizes, to check the script itself (figures not comparable)")
    args = parser.parse_args()
    if args.small:
        global CLONE_DISK, CLONE_PIECE, IMPORT_DISK, IMPORT_PIECE
        CLONE_DISK, CLONE_PIECE = CLONE_DISK // 16, CLONE_PIECE // 16
        IMPORT_DISK, IMPORT_PIECE = IMPORT_DISK // 16, IMPORT_PIECE // 16

    OUT.mkdir(parents=True, exist_ok=True)
    load_before = os.getloadavg()[0]
    if not args.no_build:
        log("building disk_image_tool (release)")
        subprocess.run(["cargo", "build", "--release", "-p", "virtkit-disk", "--example", "disk_image_tool"],
                       cwd=ROOT, check=True)
    for needed in ("qemu-img", "qemu-io", "cmp", "findmnt"):
        if not shutil.which(needed):
            sys.exit(f"{needed} not found (apt-get install qemu-utils coreutils diffutils)")

    here = fs_type(OUT)
    clone_rows, reflink_note = [], ""
    if args.only in (None, "clone"):
        with ReflinkFs() as rfs:
            if rfs.kind:
                clone_rows += bench_clone(rfs.mount, f"{rfs.kind} (loop)", args.runs)
            else:
                reflink_note = f"Reflink file system not measured: {rfs.why_not}."
        clone_rows += bench_clone(OUT, f"{here} (bench/out)", args.runs)

    import_part = None
    if args.only in (None, "import"):
        image = make_import_image()
        image_size = os.path.getsize(image)
        import_part = (image_size, *bench_import(image, args.runs))
        remove(image)

    qemu_version = run(["qemu-img", "--version"]).stdout.splitlines()[0]
    load_after = os.getloadavg()[0]
    lines = [
        "## Disk images: clone and import",
        "",
        f"Run {datetime.datetime.now().strftime('%Y-%m-%d %H:%M')} on Linux {platform.release()}, "
        f"{os.cpu_count()} CPUs, bench/out on {here}; {qemu_version}. Command: "
        f"`python3 bench/bundle_bench.py{' --runs ' + str(args.runs) if args.runs != 5 else ''}` "
        f"(as root). Medians of {args.runs} runs. Load average (1 min) {load_before:.1f} at the start, "
        f"{load_after:.1f} at the end (other work on the machine).",
        "",
    ]
    if args.only in (None, "clone"):
        lines += [
            f"### Clone of a {fmt_bytes(CLONE_DISK)} disk file holding "
            f"{fmt_bytes(CLONE_PIECES * CLONE_PIECE)} of data",
            "",
            "`clone_file` through `disk_image_tool clone`; time from the tool (open, copy, fsync). "
            "*df* is the growth of the file system's used space (statvfs, after sync); "
            "*st_blocks* is the copy's allocated size (a reflink's blocks are shared with the "
            "source, so they count there without taking space).",
            "",
            "| file system | page cache | method | time (median) | min–max | df growth | st_blocks |",
            "|---|---|---|---|---|---|---|",
        ]
        for r in clone_rows:
            lines.append(
                f"| {r['fs']} | {r['cache']} | {r['method']} | {r['seconds'] * 1000:.1f} ms | "
                f"{r['min'] * 1000:.1f}–{r['max'] * 1000:.1f} ms | {fmt_bytes(r['df_delta'])} | "
                f"{fmt_bytes(r['st_blocks'])} |")
        if reflink_note:
            lines += ["", reflink_note]
        lines.append("")
    if import_part:
        image_size, names, results, data_bytes, sizes = import_part
        lines += [
            f"### Import of a qcow2 image ({fmt_bytes(IMPORT_DISK)} disk, "
            f"{fmt_bytes(IMPORT_PIECES * IMPORT_PIECE)} of data) into a raw disk",
            "",
            f"The qcow2 file is {fmt_bytes(image_size)}; {fmt_bytes(data_bytes or 0)} of non-zero "
            f"data is written ({fmt_bytes(IMPORT_PIECE // 2)} of the data were turned into zero "
            "clusters with `qemu-io -c 'write -z'`). Times are process start to "
            "exit. MB/s is that data (10^6 bytes) per second. The ratio is the time of "
            "`qemu-img convert` divided by the import's: **above 1 means the import is faster**. "
            "`qemu-img convert` does not flush its output by default; with `-t writeback` it "
            "flushes at the end, as the import does (fsync).",
            "",
            "| page cache | tool | time (median) | min–max | data MB/s | ratio (qemu-img ÷ import) | output st_blocks |",
            "|---|---|---|---|---|---|---|",
        ]
        for cache in ("warm", "cold"):
            ours = med(results[cache][names[0]])
            for name in names:
                t = results[cache][name]
                m = med(t)
                ratio = "—" if name == names[0] else f"{m / ours:.2f}"
                mbps = (data_bytes or 0) / m / 1e6
                lines.append(
                    f"| {cache} | `{name}` | {m:.3f} s | {min(t):.3f}–{max(t):.3f} s | {mbps:.0f} | "
                    f"{ratio} | {fmt_bytes(sizes[name])} |")
        lines.append("")
    text = "\n".join(lines)
    REPORT.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
