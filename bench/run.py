#!/usr/bin/env python3
"""virtkit benchmark: virtkit against QEMU, side by side in one run, and the disk backend.

Part 1, directly on this host's /dev/kvm: virtkit, QEMU -M microvm, QEMU -M pc, Firecracker
and cloud-hypervisor boot the `smoke` PVH guest (prints `virtkit-smoke: ready`, then resets).
Per run: process start to the line read from the VMM's stdout, process start to exit, and peak
RSS. The peers are the binaries scripts/build-peers.sh built from their release tags; a peer
whose binary is absent gets the issue's recorded figures instead, marked "recorded, not run here".

Part 2, inside the emulated KVM host (QEMU TCG with kvm_amd, booted once by
virtkit-testkit's `emulated_host` example): virtkit, QEMU -M microvm, Firecracker and
cloud-hypervisor (the peers' binaries copied in with their libraries; they boot the same kernel
as the ELF vmlinux) boot the stock kernel and the guest initramfs to the init's
`VIRTKIT-GUEST: init` marker and power off (Firecracker: reboot), round-robin; KVM's own exit
counters for each VM are read from debugfs at the marker in extra boots.

Part 3, directly on this host's /dev/kvm: virtkit and QEMU -M q35 boot SeaBIOS and the MBR
program `mbr_bench` from a virtio-blk disk (O_DIRECT on both sides); the program reads 64 MiB
with int 13h and prints the guest TSC cycles it took. Per run: the guest's read time, and process
start to the firmware banner, to the MBR program's first output, and to exit.

Part 4, no VM: crates/devices/examples/blk_throughput drives the virtio-blk request code through a
virtqueue in guest memory against a 1 GiB file with each I/O engine candidate (sync, io_uring, a
thread pool), next to plain pread/pwrite of the same offsets.

Part 5, inside the emulated KVM host again (one boot): the stock kernel's virtio_blk driver under
virtkit and under QEMU -M q35 (virtio-blk-pci, O_DIRECT on the host side in both), on one image
file on the emulated host's disk; the guest runs bench/odirect.c (sequential O_DIRECT writes,
then reads) and prints MB/s; the VMMs alternate. The pieces are in bench/guest_disk.py.

Part 9, inside the emulated KVM host again (one boot): a shared directory, virtkit's virtio-fs
(`--share`, virtkit spawning virtiofsd) against QEMU -M q35's vhost-user-fs-pci with the same
virtiofsd and cache mode, and virtio-blk with ext4 as a reference; the guest runs
bench/fsbench.c (a 256 MiB file written and read, 5,000 small files created, statted and
deleted). Not in the default --parts. The pieces are in bench/guest_fs.py.

Part 10, directly on this host's /dev/kvm: the `stream` guest saved and restored by virtkit (the
library API through crates/virtkit/examples/save_restore.rs, and the CLI: `virtkit suspend`,
`virtkit run NAME`), QEMU -M microvm (migrate to a file, -incoming) and Firecracker (its snapshot
API): time to save a paused VM to a synced file, process start to the guest's first output after
the restore, and the state files' sizes.

Part 11, inside the emulated KVM host again (one boot): the stock kernel and initramfs, its init
writing 96 MiB and then printing a tick every 20 ms, saved and restored in a chain (save of the
booted VM, restore in a new process, save of that VM, ...) by virtkit's CLI (`virtkit suspend`,
`virtkit run NAME`), QEMU -M microvm (QMP migrate to a file, -incoming) and Firecracker (its
snapshot API), driven by bench/savectl.c. Not in the default --parts. The pieces are in
bench/guest_save.py.

Every run is timed by bench/spawntime.c (compiled static into bench/out/), the same tool in both
parts. Results go to stdout and to bench/RESULTS.md (the part below the results marker is
replaced); raw per-run data to bench/out/. Use bench/run.sh; only the standard library is used.
"""

import argparse
import datetime
import hashlib
import http.client
import json
import os
import platform
import queue
import random
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import agent_bench
import guest_disk
import guest_fs
import guest_net
import guest_save

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
OUT = BENCH / "out"
RESULTS = BENCH / "RESULTS.md"
ASSETS = ROOT / ".cache" / "assets" / "current"
# Cargo's target directory: CARGO_TARGET_DIR when set (relative to the repository root), as cargo
# itself takes it.
TARGET = ROOT / os.environ.get("CARGO_TARGET_DIR", "target")
RELEASE = TARGET / "release"
# virtkit's release binary as it is shipped: a static PIE, built by scripts/build-release.sh
# (the test guests and the examples stay in RELEASE).
VIRTKIT = TARGET / "x86_64-unknown-linux-gnu" / "release" / "virtkit"
EMULATED_HOST = RELEASE / "examples" / "emulated_host"
# The static guest agent scripts/build-agent.sh builds (part 8), and part 8's payload size.
AGENT = TARGET / "agent-static" / "x86_64-unknown-linux-gnu" / "release" / "virtkit-agent"
AGENT_PAYLOAD_MIB = 256
HELPER_SRC = BENCH / "spawntime.c"
HELPER = OUT / "spawntime"
# Part 11: QMP and Firecracker's API from the emulated host's shell.
SAVECTL_SRC = BENCH / "savectl.c"
SAVECTL = OUT / "savectl"
QEMU = "/usr/bin/qemu-system-x86_64"
QEMU_MICROVM_FILES = ["bios-microvm.bin", "linuxboot_dma.bin", "linuxboot.bin", "pvh.bin"]
SEABIOS = Path("/usr/share/seabios/bios.bin")
BLK_EXAMPLE = RELEASE / "examples" / "blk_throughput"
NET_EXAMPLE = RELEASE / "examples" / "net_throughput"
# Part 10: saves and restores through virtkit's library API.
SAVE_EXAMPLE = RELEASE / "examples" / "save_restore"
MBR_IMAGE = OUT / "mbr-bench.img"
MBR_IMAGE_BYTES = 128 << 20
BLK_IMAGE = OUT / "blk-throughput.img"
BLK_IMAGE_MIB = 1024
ALL_PARTS = (1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11)
# Part 9 (a shared directory, about 9 minutes) and part 11 (save and restore of the stock kernel in
# the emulated host, several minutes) run only when --parts names them.
DEFAULT_PARTS = "1,2,3,4,5,6,7,8,10"

# QEMU's CPU directly on this host's KVM (parts 1 and 3). This host's KVM (PVM) now refuses
# MSR 0x10a (IA32_ARCH_CAPABILITIES), which QEMU 7.2 sets for `-cpu host` and then aborts on
# ("failed to set MSR 0x10a"), seen 2026-12-05; without the feature QEMU runs as before.
QEMU_DIRECT_CPU = "host,-arch-capabilities"
SMOKE_MARKER = "virtkit-smoke: ready"
GUEST_MARKER = "VIRTKIT-GUEST: init"
# Part 3: what SeaBIOS and the MBR program print.
MBR_BANNER = "SeaBIOS (version"
MBR_FIRST = "bench-read"
MBR_DONE = "mbr-bench done"
MBR_BENCH_BYTES = 64 << 20
MBR_RESULT_RE = re.compile(r"bench-read bytes=67108864 tsc=([0-9a-f]{16})")
# Part 4: what the device must reach, as a fraction of the host file's throughput.
BLK_TARGET = 0.9
# Part 5: the guest program, the emulated host's disk, and what the guest does on each boot.
ODIRECT_SRC = BENCH / "odirect.c"
ODIRECT = OUT / "odirect"
ODIRECT_HOST_DISK = OUT / "odirect-host-disk.img"
ODIRECT_HOST_DISK_MIB = 512
ODIRECT_IMAGE_MIB = 256  # the image; each pass writes and reads all of it
ODIRECT_BLOCK_KIB = 1024
ODIRECT_PASSES = 2  # write-then-read passes per guest boot
ODIRECT_TIMEOUT = 240  # seconds per guest boot (a normal one takes 25-40 s)
# Part 6: what the device alone must move of 64 KiB frames, each way, on one core.
NET_TARGET_GBPS = 10.0
# Part 7: the guest and host program, and what each guest boot does.
TCPBENCH_SRC = BENCH / "tcpbench.c"
TCPBENCH = OUT / "tcpbench"
NET_TIMEOUT = 300  # seconds per guest boot (a normal one takes 40-60 s)
# Part 9: the guest program, the file sizes, and the time allowed per guest boot.
FSBENCH_SRC = BENCH / "fsbench.c"
FSBENCH = OUT / "fsbench"
FS_MIB = 256
FS_FILES = 5000
FS_TIMEOUT = 900  # seconds per guest boot
# /etc/passwd and /etc/group for the emulated host: passt started as root switches to nobody.
PASSWD = "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"
GROUP = "root:x:0:\nnogroup:x:65534:\n"
# What QEMU -M q35 loads when booting a kernel: SeaBIOS and two option ROMs.
QEMU_Q35_FILES = ["/usr/share/seabios/bios-256k.bin", "/usr/share/qemu/linuxboot_dma.bin",
                  "/usr/share/qemu/kvmvapic.bin"]

# The peers (part 1): built once from their release tags by scripts/build-peers.sh into
# .cache/peers/<name>-<tag>/, with a VERSION file; $VIRTKIT_FIRECRACKER and
# $VIRTKIT_CLOUD_HYPERVISOR name other binaries (as for the script).
PEERS = ROOT / ".cache" / "peers"
PEER_BINARIES = {
    "Firecracker": ("VIRTKIT_FIRECRACKER", PEERS / "firecracker-v1.16.1-static" / "firecracker"),
    "cloud-hypervisor": ("VIRTKIT_CLOUD_HYPERVISOR",
                         PEERS / "cloud-hypervisor-v53.0-static" / "cloud-hypervisor"),
}
# Firecracker takes its VM from a file with --no-api (written into bench/out/ by part 1); its log
# goes to a file, or its lines would land in the middle of the guest's on the same stdout.
FIRECRACKER_CONFIG = OUT / "firecracker-smoke.json"
FIRECRACKER_LOG = OUT / "firecracker-smoke.log"
# VMMs that restart the guest on its reset and have no option to exit instead: cloud-hypervisor
# reboots the VM (seen here: the smoke guest printed and reset 278 times in 5 s). spawntime -k
# kills them (SIGKILL) as soon as their marker line is read: their first output, and their peak
# RSS up to that moment, are measured like the others'; an exit they do not have.
RESTARTS_ON_RESET = {"cloud-hypervisor"}

# From the issue: the same smoke guest, measured by the issue's author (not on this host). Only
# for a peer whose binary is absent, marked "recorded, not run here".
# name: (first output ms, exit ms, peak RSS MiB)
REFERENCE = {
    "Firecracker": (11.0, 27.3, 4.0),
    "cloud-hypervisor": (6.1, 22.1, 8.4),
}

RESULTS_MARKER = "<!-- results: generated by bench/run.py; everything below this line is replaced on each run -->"

HEADER = """# virtkit benchmark

One command, `bench/run.sh` (about 25 minutes here), measures virtkit next to QEMU in the same run
(and, in parts 1 and 2, next to Firecracker and cloud-hypervisor built from their release tags by
`scripts/build-peers.sh`, and in part 10 next to that Firecracker), and virtkit's disk backend next to the host's own file I/O, and writes
this file. In the boot and disk-boot tables lower is better for every figure, and a ratio is
virtkit's median divided by the other VMM's median, so **below 1 means virtkit is faster or
smaller** (throughput ratios, marked as such, are the other way round). Parts 3 and 4 have their
targets: at least QEMU on every figure of part 3, and at least 0.9 × the host file's throughput in
part 4.

**How each run is timed.** `bench/spawntime.c` (compiled static at bench time into `bench/out/`,
used by parts 1-3) takes a `CLOCK_MONOTONIC` timestamp right before `posix_spawn()` of the VMM,
gives it `/dev/null` as stdin and one pipe as stdout+stderr, and reads that pipe unbuffered:

- **first output**: process start to the moment the guest's marker line is read from the pipe
  (in part 3: to the moment the **first byte** of the line is read, `spawntime -f`);
- **exit**: process start to the moment the process has exited (its pidfd becomes readable);
- **peak RSS**: `ru_maxrss` of the VMM process from `wait4()` (its code, libraries, heap and the
  guest memory it touched; the kernel also carries the spawning helper's pre-exec high-water mark
  over `exec`, about 1 MiB: see the `/bin/true` row);
- **CPU**: user + system time of the VMM from the same `rusage`.

In part 2 the guest's init also reports its own uptime (`VIRTKIT-GUEST: uptime-at-init`):
that is the guest kernel's share; first output minus it is the time before the guest's clock
started (the VMM's setup, firmware, loading and decompressing the kernel).

**Part 1, direct on this host's KVM.** The `smoke` guest (`crates/test-guests/asm/smoke.s`, a
32-bit PVH ELF: prints `virtkit-smoke: ready` on COM1, then resets through the i8042, or
triple-faults where there is none) with 1 vCPU and 128 MiB. virtkit ends with exit code 3
(guest reset); QEMU with `-no-reboot` exits 0; Firecracker stops on the guest's reset with exit
code 0, or 1 when its vCPU meets the guest's triple fault before Firecracker has acted on the
i8042 write (both are the reset). cloud-hypervisor cannot stop on a guest reset (it has no such
option): it reboots the VM, and the guest prints and resets again, for ever; so it is killed
(SIGKILL, `spawntime -k`) as soon as its marker line is read: its first output is measured like
the others', its peak RSS and CPU up to that moment, and it has no exit time. Two warm-up runs per
VMM are discarded, then the VMMs take turns (round-robin, rotating the order each round). Median
and p10–p90.
The peers are built once from their release tags by `scripts/build-peers.sh` (Firecracker
v1.16.1 and cloud-hypervisor v53.0, their `cargo build --release`, default features, for
x86_64-unknown-linux-gnu, linked statically as their released binaries (musl builds) are and as
virtkit's release binary is (`scripts/build-release.sh`: static PIEs against glibc, so that none
of the three pays the dynamic loader; Firecracker's gnu build has no seccomp filter, its
allow-all `unimplemented.json`) and cached in `.cache/peers/`. Each
gets what virtkit gets (the same ELF as its kernel, 1 vCPU, 128 MiB, COM1 on stdout):
Firecracker `--no-api --config-file` (the file is shown under the table; its log goes to a file,
or its lines would split the guest's on the same stdout), cloud-hypervisor `--kernel`, `--cpus
boot=1 --memory size=128M --console off --serial tty`. A peer whose binary is absent gets the
issue's figures for the same guest, measured elsewhere, marked **recorded, not run here**: its
ratios are indicative only.

**Part 2, inside the emulated KVM host.** One boot of the emulated host (QEMU TCG `-cpu max`
with AMD-V, the asset kernel, `kvm_amd` loaded; see docs/TESTING.md) runs virtkit, QEMU
`-M microvm`, Firecracker and cloud-hypervisor in turn (round-robin, the first VMM rotating each
round) on its nested `/dev/kvm`, booting the same stock kernel and `guest-initramfs.cpio.gz` with
`console=ttyS0 quiet virtkit.action=poweroff`, 1 vCPU, 256 MiB: first output is the init's
`VIRTKIT-GUEST: init` line, exit follows the init's power-off. virtkit and QEMU load the kernel
as `vmlinuz` (bzImage); Firecracker and cloud-hypervisor as `vmlinux` (the same kernel as an
ELF, entered through its PVH note), the peers' binaries (the ones of part 1) copied into the
emulated host with the libraries `ldd` lists. virtkit, QEMU and cloud-hypervisor exit on the
guest's ACPI power-off. Firecracker has none (the kernel halts, Firecracker runs on): it exits
on the guest's reset through the i8042, so its guest gets `reboot=k virtkit.action=reboot`
instead (the init's `reboot -f` in place of `poweroff -f`), and Firecracker adds `pci=off`
itself. **Exits to init**: each VMM boots the guest twice more with the init waiting
(`virtkit.action=wait`), and when the marker appears KVM's own counters for that VM are read from
debugfs (`/sys/kernel/debug/kvm/<pid>-<fd>/`): deterministic where the times are noisy.
Absolute times there are those of nested virtualization under a software emulator (tens of times
slower than hardware); compare the VMMs with each other, not with part 1. A hang of the
emulator before its `/dev/kvm` is ready is retried once by the harness, and the results say so.

**Part 3, a disk read through SeaBIOS, direct on this host's KVM.** virtkit and QEMU `-M q35`
boot the same SeaBIOS (`/usr/share/seabios/bios.bin`) with 128 MiB and one virtio-blk disk
(virtio-blk-pci on both; `cache=uncached` in virtkit and `cache=none` in QEMU, both `O_DIRECT`):
a sparse 128 MiB image, `bench/out/mbr-bench.img`, with the `mbr_bench` program
(`crates/test-guests/asm/mbr_bench.s`) in sector 0. SeaBIOS's own virtio-blk driver serves the
program's extended int 13h reads: 64 MiB from LBA 1 in 64-sector (32 KiB) requests, timed with
`rdtsc` in the guest; the program then prints `bench-read bytes=67108864 tsc=<cycles>` and
`mbr-bench done` and powers off (ACPI S5, exit status 0 from both VMMs). **Guest read time** is
those cycles over the host's TSC frequency (the guest's TSC runs at the host's rate under KVM;
the frequency is the kernel's, from `dmesg`), MB/s = 10^6 bytes/s. The program prints nothing
before its read, so its **first output** (the first byte of the `bench-read` line) comes after
the 64 MiB: it is VMM start + firmware + boot + the read. The **SeaBIOS banner** column (the first
byte of the `SeaBIOS (version` line on COM1, printed by both VMMs' SeaBIOS) is the time to the
firmware's first output. One warm-up run per VMM is discarded, then they alternate.

**Part 4, the disk backend without a VM.** `crates/devices/examples/blk_throughput/` is a test
driver: it lays a split virtqueue (256 entries, `EVENT_IDX`) out in a `GuestMemoryMmap`, makes
requests available (header, one data buffer, status byte) and has the device answer them with
its queue loop (`process_queue`, `complete_requests`) and `RequestHandler` over a disk backend,
as the `v_blk` worker does after a notification or a completion (no vCPU, KVM or interrupt in
the way), on a 1 GiB file in `bench/out/` written in full first (no holes). **Queue depth** N:
the driver keeps N requests available, replacing each answered one at once. The device is
measured with each I/O engine candidate: **sync** (`pread`/`pwrite` on the worker thread, one
request at a time), **io_uring** (the device's default: the worker submits to io_uring and
completes requests out of order; through the page cache, what would not block is done at once
on the worker), and **thread pool** (32 threads doing `pread`/`pwrite` on a shared descriptor,
out of order: `pool.rs` in the example, the same request code). **Host** is `pread`/`pwrite` of
the same sizes and offsets on the same file: one at a time (**host, QD 1**), and on 32 threads
with 32 always outstanding (**host, 32 threads**: what the file gives at depth 32). Workloads:
sequential 64 KiB and random 4 KiB (4 KiB-aligned over the whole file), reads and writes;
**uncached**: `O_DIRECT` on both sides, so every request reaches the host's disk; **cached**:
through the page cache, the file read once first so reads are page-cache hits (the page cache is
not dropped: that would slow down everyone else on a shared host, and `O_DIRECT` already covers
reads from the disk). Each figure is the median of 7 repetitions of 0.4 s, the eight
measurements of a workload taking turns (so a slow spell of the shared disk falls on all of
them, not on one). The target ratio at QD 1 is against the host at QD 1; at QD 32 against the
better of the two host figures. **Device on memory** is the device with an in-memory disk: its
own cost per request.

**Part 5, the guest's O_DIRECT disk I/O inside the emulated KVM host.** One more boot of the
emulated host (as in part 2), this time with a disk of its own: a `virtio-blk-device` of its QEMU
backed by a sparse 512 MiB file in `bench/out/` with `cache=unsafe` (this machine's page cache,
where the emulated host's flushes end: the shared machine's disk and its other users stay out of
the figures), holding an ext4 file system that `mkfs.ext4` makes fresh each run. The emulated
host loads `virtio_mmio` and `virtio_blk` (taken from the guest initramfs: the same kernel),
mounts it and writes the image, `/mnt/bench/guest-disk.img` (256 MiB), in full with `O_DIRECT`
(no holes). Then virtkit and QEMU `-M q35` take turns booting the stock kernel with 1 vCPU,
256 MiB and that image as a virtio-blk-pci disk opened with `O_DIRECT` by both (virtkit
`--disk IMG,cache=uncached`; QEMU `-drive file=IMG,format=raw,cache=none,aio=threads -device
virtio-blk-pci`). The image is not in the emulated host's tmpfs because the 6.1 kernel's tmpfs
refuses `O_DIRECT`, so neither VMM could open it there with these settings. The guest initramfs
is the asset one with a second archive appended holding `bench/odirect.c` (compiled static); the
guest's init runs it (`virtkit.run`) on `/dev/vda`: per pass, sequential 1 MiB `pwrite`s with
`O_DIRECT` from an aligned buffer over the whole 256 MiB and an `fdatasync`, then sequential
1 MiB `pread`s of the same, each block checked against what the pass wrote (a tag per 4 KiB);
each phase timed by the guest's `CLOCK_MONOTONIC`; 2 passes per boot, then power-off. Before the
boots, the emulated host touches 768 MiB of its memory once (its QEMU allocates memory on first
touch, slowly under TCG, which made the first boots of a run slower than the later ones), and
each VMM boots once as a warm-up that is not counted. Figures are medians over all passes of the
other boots (default 4 per VMM, alternating which goes first); next to the ratio, its 95 % range
when the boots of each side are resampled (4000 times, fixed seed): how far other boots of the
same kind could move it.
**Caveats:** the emulated host's CPU is QEMU's software emulator, so everything on a request's
way (the guest's driver, the nested exits through the emulated host's `kvm_amd` into the VMM,
the VMM's I/O, the emulated host's ext4 and `virtio_blk`, its QEMU's backend) runs tens of times
slower than on hardware: the absolute MB/s say nothing about hardware, only the ratio between
the two VMMs means something, and the cost below the VMMs' own `pread`/`pwrite`, the same for
both, pulls that ratio toward 1. The guest's `O_DIRECT` does not depend on the host-side cache
mode; the queue depth is what Linux's `virtio_blk` sends for 1 MiB requests from one thread.

**Part 6, the network device without a VM.** `crates/devices/examples/net_throughput/` is a test
driver like part 4's: it lays the tx and rx split virtqueues (256 entries each, `EVENT_IDX`) out
in a `GuestMemoryMmap` and has the device's own queue loop (`NetHandler::process_tx` and
`process_rx`, what the `v_net` worker runs on each pass) move 64 KiB Ethernet frames on the
measuring thread, one core, no vCPU, epoll or interrupt in the way. **tx** (guest → backend):
48 chains always available, each a 12-byte virtio-net header descriptor and the frame in four
16 KiB descriptors, a used chain made available again at once. **rx** (backend → guest): the
ring full of 4096-byte device-writable buffers with mergeable rx buffers negotiated (as Linux's
`virtio_net` posts them, at most a page each), so a frame spreads over 17 of them; the driver
checks every frame's `num_buffers` and length and gives the buffers back. Backends: **stream**,
the device's real `StreamBackend` on one end of a `socketpair(AF_UNIX, SOCK_STREAM)` (passt's
framing: a 4-byte big-endian length before each frame), a peer thread on the other end reading
and checking the length prefixes (tx) or writing prefixed frames as fast as the socket takes
them (rx), the driver waiting in `poll` when the device would block (as the worker waits in
epoll); **null**, a backend that takes every frame and gives a frame whenever asked without
writing it: what is left is the device's own cost (its copies to and from guest memory, its ring
handling). Gbit/s counts the 64 KiB frames (not the header) over wall time; the device thread's
CPU time (`CLOCK_THREAD_CPUTIME_ID`) is reported too, so the rate per busy core is known on a
machine shared with others. Target: ≥ 10 Gbit/s of 64 KiB frames on one core. Before measuring,
one frame each way through the stream backend is compared byte for byte. Each figure is the
median of 7 runs of 0.5 s, the four measurements taking turns. The same runs again with
1514-byte frames (`--frame 1514`: a frame of the usual MTU, what part 7's guest sends) and 128 tx
chains of two descriptors in flight: the device's cost per frame, where a system call per frame
shows; the target is for 64 KiB frames.

**Part 7, the guest's network inside the emulated KVM host.** One more boot of the emulated host
(as in part 2, with its root on a tmpfs because passt sandboxes itself with `pivot_root`, and its
loopback given a MAC and the default route: passt's template interface). Each **row** is one
network attachment, the same kind for both VMMs (`bench/guest_net.py`, `ROWS`): **passt** (a
fresh Debian passt per guest boot, `passt -f -1 -s SOCKET -a 10.0.2.15 -n 24 -g 10.0.2.2`;
virtkit `--network socket:SOCKET`, QEMU `-netdev stream,server=off,addr.type=unix,addr.path=SOCKET
-device virtio-net-pci`), **TAP** (a TAP in the emulated host with 10.0.3.1/24; virtkit
`--network tap:NAME`, QEMU `-netdev tap,ifname=NAME,vhost=off`, both moving packets in user
space) and **TAP with vhost-net** (QEMU `vhost=on`, the kernel's data path, against virtkit on
TAP). A row is skipped, with its reason in the table and never with a figure, when virtkit's
`run --help` lacks the attachment (`tap:` today) or the emulated host cannot set it up (no
`/dev/net/tun` or `/dev/vhost-net`). virtkit and QEMU `-M q35` take turns booting the stock
kernel with 1 vCPU, 256 MiB and one virtio-net PCI card (QEMU's without its option ROM,
`romfile=`), and the guest initramfs with a second archive appended holding `bench/tcpbench.c`
(compiled static) and a script. The guest configures its card statically (no DHCP), waits until
the server answers, then runs, twice per boot, each for 3 s: **guest → host** (it sends, the
server on the emulated host counts what it read and answers the count; timed from the first
write to that answer), **host → guest** (the server sends, the guest counts; timed from the first
byte to end of file) and **request/response** (1 byte out, 1 byte back, `TCP_NODELAY`, round
trips per second). The server (`tcpbench server`, the same program) listens on the emulated
host; passt maps the gateway address to the emulated host's loopback. Each boot also reports
the card's negotiated virtio features, its interrupt counts, the guest's TCP counters
(retransmissions, out-of-order segments) and KVM's counters of the VM (exits by kind, interrupts
injected; debugfs, sampled each second) to `bench/out/results.json` and the log. Figures are
medians over all passes of the boots that completed (default 3 boots per VMM and row, alternating
which goes first); next to each ratio its 95 % range with the boots of each side resampled, as in
part 5. No warm-up boot (part 5's first-touch effect is taken care of by touching 768 MiB of the
emulated host's memory first).
**Caveats:** as in part 5, everything runs under QEMU's software emulator: the absolute figures
(a few Mbit/s to about a hundred) say nothing about hardware, and the emulated host's two vCPUs are
shared by the guest's vCPU, the VMM's threads, passt and the server, so the spread between passes
is large; only the ratio means something, and its range says how much. The guest's MTU is 1500
and neither backend takes the virtio-net header, so neither VMM offers checksum or segmentation
offloads (QEMU drops them too without a vnet-header peer): both move 1514-byte frames.

**Part 9, a shared directory inside the emulated KVM host** (not in the default `--parts`: it
takes about 9 minutes; `--parts 9` runs it). One more boot of the emulated host (as in part 2),
with a tmpfs at `/bench9` holding the shared directory and a sparse 640 MiB image file, so that
every configuration's data ends in the same place. The configurations (`bench/guest_fs.py`,
`CONFIGS`) boot the stock kernel with 1 vCPU and 256 MiB, each once per round, the order
rotating from round to round: **virtkit, virtio-fs** (`virtkit run --share /bench9/share:bench`:
virtkit spawns virtiofsd itself, found through `VIRTKIT_VIRTIOFSD`; as root on the emulated
host's initramfs root, where `pivot_root` fails, it falls back from `--sandbox namespace` to
`chroot`, as the daemon's command line, captured during each boot and shown with the results,
says); **QEMU `-M q35`, vhost-user-fs-pci** (before each boot the script starts the same
virtiofsd binary, `scripts/build-virtiofsd.sh`'s, with the same options, `virtiofsd
--socket-path=/tmp/vfs.sock --shared-dir=/bench9/share --cache auto --sandbox chroot --log-level
info`, then QEMU with `-object memory-backend-memfd,id=mem,size=256M,share=on -numa
node,memdev=mem -chardev socket,id=char0,path=/tmp/vfs.sock -device
vhost-user-fs-pci,chardev=char0,tag=bench,queue-size=1024`: 1024 is virtkit's queue size, QEMU
7.2's default is 128); and, as a reference, **virtkit, virtio-blk + ext4** (`--disk` with the
image, through the emulated host's page cache; the guest makes ext4 on it with `mkfs.ext4`,
lazy init off, not timed; QEMU's virtio-blk-pci can be added with `--fs-configs
virtkit-fs,qemu-fs,virtkit-blk,qemu-blk`). The guest initramfs has `bench/fsbench.c` (compiled
static) and a script appended; the guest mounts the share by tag (`mount -t virtiofs bench
/mnt/b`) or the ext4 and runs, each phase timed by its `CLOCK_MONOTONIC`: **sequential write**
of a 256 MiB file in 1 MiB `write()`s, up to the return of the final `fsync`; the guest's caches
dropped (`sync; echo 3 > /proc/sys/vm/drop_caches`); **sequential read** of the file in 1 MiB
`read()`s, every 4 KiB checked; **create** of 5,000 files of 1 KiB in one directory
(`open(O_CREAT|O_EXCL)`, `write`, `close`) up to a final `syncfs`; caches dropped; **stat** of
each; caches dropped; **delete** of each up to a final `syncfs`. MB/s = 10^6 bytes/s; files/s
over the whole phase. Figures are medians over all passes of the boots that completed (default 2
boots per configuration, 1 pass each); next to each ratio its 95 % range with the boots resampled,
as in part 5. No warm-up boot (768 MiB of the emulated host's memory are touched first, as in
part 7). **Caveats:** as in parts 5 and 7, everything runs under QEMU's software emulator, tens
of times slower than hardware (each virtio-fs request is a nested exit, a trip through the
emulated host's `kvm_amd` and virtiofsd's threads): compare the configurations with each other,
not with hardware; with 2 boots per configuration the ranges are wide. virtio-fs with `--cache
auto` has neither DAX nor the writeback cache (virtiofsd's defaults), so every write goes to
virtiofsd as it is made, while ext4 on virtio-blk writes into the guest's page cache until the
`fsync`, and keeps metadata in the guest: the virtio-blk row is a reference for what a disk
image gives, not a like-for-like comparison.

**Rerun:** `bench/run.sh` from the repository root (it builds `virtkit-cli`, `virtkit-test-guests`,
the `emulated_host` example and the `blk_throughput` and `net_throughput` examples in release
mode first; it needs
`scripts/assets.sh` to have been run, QEMU, SeaBIOS, gcc with the static glibc, Python 3,
`mkfs.ext4` (e2fsprogs), passt (parts 7 and 8), virtiofsd (part 9: `scripts/build-virtiofsd.sh` finds or builds it), the OpenSSH client (part 8; the Debian image of
`scripts/debian-image.sh`, built the first time, needs mmdebstrap), and 1.7 GiB free in `bench/out/` on a filesystem with `O_DIRECT`).
**Part 10, save and restore of a small guest, direct on this host's KVM** (about 1 minute;
`--save-runs N`, default 10, after one warm-up each). The `stream` guest
(`crates/test-guests/asm/stream.s`, a 32-bit PVH ELF: prints `virtkit-guest: stream N` lines as
fast as it can, touching no device but COM1's transmit register, so a restored copy prints
within microseconds of its first instruction) with 1 vCPU and 128 MiB, run 0.3 s, then saved
and restored by each VMM in one run. **virtkit, library API**:
`crates/virtkit/examples/save_restore.rs` boots it, pauses it and times
`save_machine_state` (the file synced and renamed into place) several times in one process;
each restore is a new process (`save_restore restore`) that builds the same configuration,
calls `restore_machine_state` and `resume`, with COM1 on its stdout, and writes its own
CLOCK_MONOTONIC timestamps (at `main`, after `VirtualMachine::new`, after the restore, after
`resume`) so that the table of steps puts them on spawntime's timeline (`spawn_ns`). The first
save of a restored VM is timed too, each in a new process (`save --from`), because it differs
(below). **virtkit CLI**: a bundle (`virtkit create sb --kernel stream.elf --memory 128M --cpus 1
--disk-size 1M --network none`, so with the bundle's disk, entropy device, balloon and vsock
device) booted once with `run --detach`; then, N+1 times, `virtkit suspend sb` timed by
spawntime from its spawn to its exit (the request, the VM process's pause, save and stop, the
answer), and `virtkit run sb` in the foreground timed from its spawn to the guest's first line
(the next suspend ends it). **QEMU** `-M microvm` with `-cpu host,-arch-capabilities` as in part
1 and a QMP socket: `stop`, then `migrate` to `exec:cat > FILE`, timed until `query-migrate`
says `completed`; the restore is a new QEMU with `-incoming "exec:cat FILE"`, and the harness
sends `cont` as soon as `query-status` says `paused` (a VM saved paused comes back paused).
**Firecracker** v1.16.1 (part 1's build) with its API socket and the same configuration file
as part 1 but the stream guest: `PATCH /vm` Paused, `PUT /snapshot/create` (Full,
`snapshot_path` and `mem_file_path`); the restore is a new Firecracker and `PUT
/snapshot/load` with `mem_backend` File and `resume_vm: true` as soon as its socket answers.
Firecracker and QEMU do not sync what they write, so the harness fsyncs their files right after
and adds that time (shown apart); virtkit's save syncs its file itself. **Restore to running**
is spawntime's timestamp right before `posix_spawn` of the VMM to the first byte of the first
complete `stream` line read from its stdout, whatever the VMM needs from its orchestrator
(QMP, HTTP) sent in between by the harness as fast as Python can; the QEMU, Firecracker and
library processes are killed at that line (`spawntime -k`). File sizes: apparent (`st_size`)
and allocated (`st_blocks`). Targets from issue 12: restore to running under 5 ms for a small
guest on this host, and ahead of every peer measured.

**Part 11, save and restore of the stock kernel inside the emulated KVM host** (not in the
default `--parts`: about 4 minutes; `--parts 11` runs it; `bench/guest_save.py`). One
boot of the emulated host (as in part 2). For each VMM in turn, the stock kernel with the test
initramfs (vmlinux for Firecracker), 1 vCPU and 256 MiB, boots once; its init (`virtkit.run=`)
writes 96 MiB (one random MiB repeated: no zero page) to its tmpfs, prints `SB-READY` with the
memory it uses (MemTotal − MemFree), then `SB-TICK N` every 20 ms. Then a chain: save of the
booted VM, restore in a new process, save of that restored VM 4 s later, and so on
(`--emulated-save-runs N` restores, N+1 saves, default 3). **virtkit**: its CLI on a bundle
(`virtkit create sb --kernel --initrd --cmdline ... --disk-size 1M --network none`, `run
--detach`), the save is the whole `virtkit suspend sb` command timed by spawntime to its exit,
the restore `virtkit run sb` in the foreground; and the library API without the CLI, manager and
bundle (`crates/virtkit/examples/save_restore.rs` with `--initrd` and `--cmdline`: a save of the
booted VM 30 s after its first output, then per run a restore of that file in a new process and
a save of a VM restored from it). **QEMU** `-M microvm,rtc=on -cpu host` with a
QMP socket: (`max-bandwidth` lifted) `stop` + `migrate exec:cat > FILE` until `query-migrate` says `completed`; the
restore a new QEMU with `-incoming "exec:cat FILE"` and `cont` once `query-status` leaves
`inmigrate`. **Firecracker** (part 1's build) with its API socket: `PATCH /vm` Paused + `PUT
/snapshot/create` Full; the restore a new Firecracker and `PUT /snapshot/load` (File backend,
`resume_vm`). QMP and HTTP are spoken by `bench/savectl.c` (static, like spawntime: only busybox
runs in the emulated host). **Restore to running**: spawntime's spawn of the new VMM process to
the first byte of the first `SB-TICK` line it prints (the 20 ms tick can add up to 20 ms to every
VMM's figure). The state files are on a tmpfs of the emulated host: nothing is synced.

Options: `--parts 1,2,3,4,5,6,7,8,9,10,11` (which parts to run; default 1-8 and 10: parts 9 and 11 run only when named), `--runs N` (part 1, default 30), `--inner-runs N` (part 2, per VMM,
default 6), `--disk-runs N` (part 3, per VMM, default 12), `--blk-seconds S` and `--blk-reps N`
(part 4: seconds per measurement, default 0.4, and repetitions, default 7), `--odirect-runs N`
(part 5, guest boots per VMM, default 4), `--net-seconds S` and `--net-reps N` (part 6: seconds
per measurement, default 0.5, and repetitions, default 7), `--net-runs N`, `--net-passes N` and
`--net-guest-seconds S` (part 7: guest boots per VMM and row, default 3; passes per boot, default
2; seconds per measurement, default 3), `--agent-round-trips N` and `--agent-copies N` (part 8:
round trips of each kind, default 20; copies of 256 MiB each way per tool, default 2), `--fs-runs N`, `--fs-passes N`, `--fs-files N` and `--fs-configs LIST` (part 9: guest boots per configuration, default 2; passes per boot, default 1; small files, default 5000; configurations, default `virtkit-fs,qemu-fs,virtkit-blk`), `--save-runs N` (part 10: saves and restores per VMM, default 10), `--emulated-save-runs N` (part 11: restores per VMM, default 3), `--skip-emulated` (the same as leaving 2 out of
`--parts`), `--no-build`. The sections of the parts that ran are rewritten; those of the parts
that did not run are kept from this file, each marked with the run it comes from, and so are
their lines in the list of where virtkit is slower. Raw per-run data and the emulated hosts'
logs are left in `bench/out/`.
"""


class BenchError(Exception):
    """A failure that ends the benchmark with a message."""


# ---------------------------------------------------------------------------------------------
# Processes: every child runs in its own session so that a timeout kills its whole tree.

_children = set()


def _kill_tree(p):
    try:
        os.killpg(p.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _on_signal(signum, _frame):
    for p in list(_children):
        _kill_tree(p)
    print(f"\nbench: interrupted by signal {signum}; stopped the processes it had started",
          file=sys.stderr)
    os._exit(130)


def run(cmd, timeout, what, capture=True, cwd=ROOT):
    """Runs cmd; returns (returncode, stdout+stderr text). Raises BenchError on timeout."""
    p = subprocess.Popen(
        [str(c) for c in cmd], cwd=cwd, stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE if capture else None,
        stderr=subprocess.STDOUT if capture else None,
        start_new_session=True,
    )
    _children.add(p)
    try:
        out, _ = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill_tree(p)
        p.wait()
        raise BenchError(f"{what} did not finish within {timeout} s; killed it")
    finally:
        _children.discard(p)
    return p.returncode, (out or b"").decode(errors="replace")


def stream(cmd, timeout, what, on_line):
    """Runs cmd, calling on_line for each line of stdout+stderr as it comes; returns the exit
    code. Raises BenchError on timeout."""
    p = subprocess.Popen(
        [str(c) for c in cmd], cwd=ROOT, stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
    )
    _children.add(p)
    lines = queue.Queue()

    def reader():
        for raw in p.stdout:
            lines.put(raw.decode(errors="replace").rstrip("\r\n"))
        lines.put(None)

    threading.Thread(target=reader, daemon=True).start()
    deadline = time.monotonic() + timeout
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                _kill_tree(p)
                p.wait()
                raise BenchError(f"{what} did not finish within {timeout} s; killed it")
            try:
                line = lines.get(timeout=min(left, 1.0))
            except queue.Empty:
                continue
            if line is None:
                break
            on_line(line)
        try:
            return p.wait(timeout=30)
        except subprocess.TimeoutExpired:
            _kill_tree(p)
            return p.wait()
    finally:
        _children.discard(p)


def first_line(cmd):
    try:
        code, out = run(cmd, 30, " ".join(map(str, cmd)))
    except (OSError, BenchError):
        return "unknown"
    return out.strip().splitlines()[0] if code == 0 and out.strip() else "unknown"


# ---------------------------------------------------------------------------------------------
# Prerequisites and builds

def which(name):
    for d in os.environ.get("PATH", "").split(os.pathsep):
        p = Path(d) / name
        if p.is_file() and os.access(p, os.X_OK):
            return p
    return None


def check_prerequisites(args):
    missing = []
    for tool, why in [("cargo", "to build virtkit (rustup)"),
                      ("gcc", "to build bench/spawntime.c (apt-get install gcc libc6-dev)"),
                      ("ldd", "for the emulated host harness (libc-bin)"),
                      ("timeout", "coreutils")]:
        if not which(tool):
            missing.append(f"`{tool}` is not in PATH: needed {why}")
    if not Path(QEMU).is_file():
        missing.append(f"{QEMU} is missing: apt-get install qemu-system-x86")
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        missing.append("/dev/kvm is missing or not accessible (read and write) for this user")
    if 3 in args.parts and not SEABIOS.is_file():
        missing.append(f"{SEABIOS} is missing (part 3): apt-get install seabios")
    if 4 in args.parts:
        OUT.mkdir(parents=True, exist_ok=True)
        st = os.statvfs(OUT)
        free_mib = st.f_bavail * st.f_frsize >> 20
        if free_mib < BLK_IMAGE_MIB + 200:
            missing.append(f"{rel(OUT)} has {free_mib} MiB free; part 4 needs "
                           f"{BLK_IMAGE_MIB + 200} MiB for its image")
    if 5 in args.parts:
        for f in QEMU_Q35_FILES:
            if not Path(f).is_file():
                missing.append(f"{f} is missing (part 5): apt-get install qemu-system-data seabios")
        if not sbin_tool("mkfs.ext4"):
            missing.append("mkfs.ext4 is missing (part 5): apt-get install e2fsprogs")
        OUT.mkdir(parents=True, exist_ok=True)
        st = os.statvfs(OUT)
        if st.f_bavail * st.f_frsize >> 20 < ODIRECT_HOST_DISK_MIB + 100:
            missing.append(f"{rel(OUT)} has too little free space; part 5 needs "
                           f"{ODIRECT_HOST_DISK_MIB + 100} MiB for the emulated host's disk")
    if 7 in args.parts:
        for f in QEMU_Q35_FILES:
            if not Path(f).is_file():
                missing.append(f"{f} is missing (part 7): apt-get install qemu-system-data seabios")
        if not which("passt"):
            missing.append("passt is missing (part 7): apt-get install passt")
    if 9 in args.parts:
        for f in QEMU_Q35_FILES:
            if not Path(f).is_file():
                missing.append(f"{f} is missing (part 9): apt-get install qemu-system-data seabios")
    if 8 in args.parts:
        for tool in ("passt", "ssh", "scp", "ssh-keygen"):
            if not which(tool):
                missing.append(f"{tool} is missing (part 8): apt-get install passt openssh-client")
    if any(p in args.parts for p in (2, 5, 7, 8, 9, 11)):
        need = ["vmlinuz", "guest-initramfs.cpio.gz", "manifest.json", "busybox", "host-modules/order"]
        gone = [n for n in need if not (ASSETS / n).exists()]
        if gone:
            missing.append(
                f"test assets missing in {ASSETS} ({', '.join(gone)}): run scripts/assets.sh first")
        for f in QEMU_MICROVM_FILES[:2]:
            if not (Path("/usr/share/qemu") / f).exists():
                missing.append(f"/usr/share/qemu/{f} is missing: apt-get install qemu-system-data")
    if missing:
        raise BenchError("prerequisites missing:\n  - " + "\n  - ".join(missing))


def sbin_tool(name):
    """A tool looked up in PATH and the sbin directories (mkfs.ext4 is in /usr/sbin)."""
    return which(name) or next((Path(d) / name for d in ("/usr/sbin", "/sbin")
                                if (Path(d) / name).is_file()), None)


def build(args):
    steps = [["scripts/build-release.sh"], ["cargo", "build", "--release", "-p", "virtkit-test-guests"]]
    needed = [VIRTKIT]
    if any(p in args.parts for p in (2, 5, 7, 8, 9, 11)):
        steps.append(["cargo", "build", "--release", "-p", "virtkit-testkit", "--example",
                      "emulated_host"])
        needed.append(EMULATED_HOST)
    if 8 in args.parts:
        steps.append(["scripts/build-agent.sh"])
        needed.append(AGENT)
    if 4 in args.parts:
        steps.append(["cargo", "build", "--release", "-p", "virtkit-devices", "--example",
                      "blk_throughput"])
        needed.append(BLK_EXAMPLE)
    if 6 in args.parts:
        steps.append(["cargo", "build", "--release", "-p", "virtkit-devices", "--example",
                      "net_throughput"])
        needed.append(NET_EXAMPLE)
    if 10 in args.parts or 11 in args.parts:
        steps.append(["cargo", "build", "--release", "-p", "virtkit", "--example", "save_restore"])
        needed.append(SAVE_EXAMPLE)
    if args.no_build:
        gone = [p for p in needed if not p.exists()]
        if gone or not smoke_candidates() or (3 in args.parts and not mbr_candidates()):
            raise BenchError("--no-build, but the release build is missing; run:\n  "
                             + "\n  ".join(" ".join(s) for s in steps))
        return
    for s in steps:
        log(f"building: {' '.join(s)}")
        code, _ = run(s, 1200, " ".join(s), capture=False)
        if code != 0:
            raise BenchError(f"`{' '.join(s)}` failed (exit {code}); fix the build, then rerun")


def smoke_candidates():
    return sorted(RELEASE.glob("build/virtkit-test-guests-*/out/smoke.elf"),
                  key=lambda p: p.stat().st_mtime, reverse=True)


def peer_binary(name):
    """A peer's binary (PEER_BINARIES: the variable's, else the cached build), or None."""
    var, cached = PEER_BINARIES[name]
    p = Path(os.environ[var]) if os.environ.get(var) else cached
    return p if p.is_file() and os.access(p, os.X_OK) else None


def peer_version(name):
    """What runs as a peer: its --version and, for a build of scripts/build-peers.sh, the tag,
    commit and compiler from its VERSION file; None when the binary is absent."""
    p = peer_binary(name)
    if p is None:
        return None
    info = {}
    try:
        info = dict(l.split("=", 1) for l in (p.parent / "VERSION").read_text().splitlines()
                    if "=" in l)
    except OSError:
        pass
    built = (f"tag {info.get('tag', '?')}, commit {info.get('commit', '?')[:12]}, "
             f"{info.get('rustc', '?')}, {info.get('target', '?')}, ") if info else ""
    return f"{first_line([p, '--version'])} ({built}{rel(p)})"


def mbr_candidates():
    return sorted(RELEASE.glob("build/virtkit-test-guests-*/out/mbr_bench.mbr"),
                  key=lambda p: p.stat().st_mtime, reverse=True)


def build_helper(src=HELPER_SRC, dest=HELPER):
    OUT.mkdir(parents=True, exist_ok=True)
    cmd = ["gcc", "-static", "-O2", "-Wall", "-Wextra", "-o", dest, src]
    code, out = run(cmd, 120, "gcc")
    if code != 0:
        raise BenchError(
            f"cannot build {src.relative_to(ROOT)} statically:\n{out.strip()}\n"
            "(a static build needs /usr/lib/x86_64-linux-gnu/libc.a: apt-get install libc6-dev)")


# ---------------------------------------------------------------------------------------------
# Statistics and formatting

def pct(xs, p):
    s = sorted(xs)
    if not s:
        return float("nan")
    k = (len(s) - 1) * p / 100.0
    f = int(k)
    c = min(f + 1, len(s) - 1)
    return s[f] + (s[c] - s[f]) * (k - f)


def med(xs):
    return pct(xs, 50)


SPAWN_RE = re.compile(r"SPAWNTIME label=(\S+) marker_ms=(\S+) exit_ms=(\S+) status=(\S+) "
                      r"maxrss_kib=(\d+) utime_ms=(\S+) stime_ms=(\S+)")
FIRST_BYTE_RE = re.compile(r"first_byte_ms=([-\d.,]+)")


def parse_spawn(line):
    m = SPAWN_RE.search(line)
    if not m:
        return None
    return {
        "label": m.group(1),
        "marker_ms": float(m.group(2)),
        "exit_ms": float(m.group(3)),
        "status": m.group(4),
        "maxrss_kib": int(m.group(5)),
        "cpu_ms": float(m.group(6)) + float(m.group(7)),
        "first_byte_ms": [float(x) for x in FIRST_BYTE_RE.search(line).group(1).split(",")]
                         if FIRST_BYTE_RE.search(line) else [],
    }


def log(msg):
    print(f"bench: {msg}", file=sys.stderr, flush=True)


def rel(p):
    try:
        return str(Path(p).relative_to(ROOT))
    except ValueError:
        return str(p)


def fmt_ms(x):
    return "n/a" if x != x else (f"{x:.1f}" if x < 1000 else f"{x:.0f}")


def fmt_ratio(x):
    return "n/a" if x != x else (f"{x:.2f}" if x >= 0.1 else f"{x:.3f}")


def summary(runs):
    ok = [r for r in runs if r["ok"]]
    first = [r["marker_ms"] for r in ok]
    exit_ = [r["exit_ms"] for r in ok]
    return {
        "n": len(runs),
        "ok": len(ok),
        "first": first,
        "exit": exit_,
        "gap": [r["exit_ms"] - r["marker_ms"] for r in ok],
        "rss_kib": [r["maxrss_kib"] for r in ok],
        "cpu": [r["cpu_ms"] for r in ok],
        "uptime": [r["uptime_at_init"] for r in ok if r.get("uptime_at_init") is not None],
    }


def md_table(head, rows):
    out = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(out)


# ---------------------------------------------------------------------------------------------
# Part 1: direct on this host's KVM

def peer_commands(smoke):
    """Part 1's peer commands: {name: (command, expected status)} for the peers whose binary is
    present. Each gets what virtkit gets: the smoke guest as the kernel, 1 vCPU, 128 MiB, COM1 on
    stdout, nothing else. Firecracker stops on the guest's reset with exit 0, or with exit 1
    ("Unexpected exit reason on vcpu run: Shutdown") when the vCPU reaches the guest's triple
    fault before Firecracker has acted on its i8042 write (it does so from another thread): both
    are the guest's reset. cloud-hypervisor reboots the guest instead (RESTARTS_ON_RESET): it is
    killed at the marker, status signal:9."""
    cmds = {}
    fc = peer_binary("Firecracker")
    if fc:
        FIRECRACKER_CONFIG.write_text(json.dumps({
            "boot-source": {"kernel_image_path": str(smoke), "boot_args": "console=ttyS0"},
            "drives": [],
            "machine-config": {"vcpu_count": 1, "mem_size_mib": 128},
            "logger": {"log_path": str(FIRECRACKER_LOG)},
        }, indent=1) + "\n")
        cmds["Firecracker"] = ([fc, "--no-api", "--config-file", FIRECRACKER_CONFIG],
                               "exit:0|exit:1")
    ch = peer_binary("cloud-hypervisor")
    if ch:
        cmds["cloud-hypervisor"] = ([ch, "--kernel", smoke, "--cpus", "boot=1", "--memory",
                                     "size=128M", "--console", "off", "--serial", "tty"],
                                    "signal:9")
    return cmds


def part1(args, smoke):
    common = ["-m", "128M", "-smp", "1", "-nodefaults", "-no-user-config", "-nographic",
              "-serial", "stdio", "-no-reboot", "-kernel", smoke]
    peers = peer_commands(smoke)
    vmms = [
        ("virtkit", [VIRTKIT, "run", "--kernel", smoke, "--cpus", "1", "--memory", "128M",
                     "--serial", "stdio"], "exit:3", SMOKE_MARKER),
        ("QEMU microvm", [QEMU, "-enable-kvm", "-cpu", QEMU_DIRECT_CPU, "-M", "microvm"] + common,
         "exit:0", SMOKE_MARKER),
        ("QEMU pc", [QEMU, "-enable-kvm", "-cpu", QEMU_DIRECT_CPU, "-M", "pc"] + common, "exit:0",
         SMOKE_MARKER),
    ] + [(name, cmd, expect, SMOKE_MARKER) for name, (cmd, expect) in peers.items()] + [
        ("/bin/true (spawn floor)", ["/bin/true"], "exit:0", None),
    ]
    absent = [n for n in PEER_BINARIES if n not in peers]
    if absent:
        log(f"part 1: no binary for {', '.join(absent)} (scripts/build-peers.sh builds them); "
            "the issue's recorded figures are tabulated instead")
    results = {name: [] for name, *_ in vmms}
    failures = []

    def one(name, cmd, expect, marker, keep):
        hcmd = [HELPER, "-t", "30", "-l", name.replace(" ", "_")]
        if marker:
            hcmd += ["-m", marker]
        if name in RESTARTS_ON_RESET:
            hcmd.append("-k")
        code, out = run(hcmd + ["--"] + cmd, 60, f"{name} run")
        r = next((parse_spawn(l) for l in out.splitlines() if parse_spawn(l)), None)
        if r is None:
            raise BenchError(f"{name}: no result from spawntime:\n{out}")
        r["ok"] = r["status"] in expect.split("|") and (marker is None or r["marker_ms"] >= 0)
        if marker is None:
            r["marker_ms"] = r["exit_ms"]
        if not r["ok"]:
            failures.append(f"{name}: status {r['status']} (expected {expect}), "
                            f"marker {'seen' if r['marker_ms'] >= 0 else 'not seen'}:\n{out}")
            log(f"{name}: FAILED run: status {r['status']}, expected {expect}\n{out}")
        if keep:
            results[name].append(r)

    log(f"part 1: {args.runs} runs of each VMM (+2 warm-up runs), round-robin")
    for _ in range(2):
        for name, cmd, expect, marker in vmms:
            one(name, cmd, expect, marker, keep=False)
    for i in range(args.runs):
        k = i % len(vmms)
        for name, cmd, expect, marker in vmms[k:] + vmms[:k]:
            one(name, cmd, expect, marker, keep=True)
        if (i + 1) % 10 == 0:
            log(f"part 1: round {i + 1}/{args.runs}")
    commands = {name: " ".join(shlex.quote(rel(c)) for c in cmd) + " </dev/null"
                for name, cmd, *_ in vmms}
    return {"runs": results, "commands": commands, "failures": failures,
            "expect": {name: e for name, _, e, _ in vmms}, "absent": absent,
            "peers": {n: peer_version(n) for n in peers},
            "firecracker_config": FIRECRACKER_CONFIG.read_text() if "Firecracker" in peers else None}


# ---------------------------------------------------------------------------------------------
# Part 2: inside the emulated KVM host

INNER_TIMEOUT = 150  # seconds per inner boot (a normal one takes 10-20 s)
# Part 2's peers boot the same kernel as the uncompressed ELF `vmlinux` (its PVH entry: neither
# loads a bzImage) with the same initramfs, 1 vCPU and 256 MiB. Firecracker's configuration
# files are written into bench/out/ and copied into the emulated host next to the kernel; its log
# goes to a file there (its lines would split the guest's on the same stdout).
INNER_GUEST = "/guest"
FIRECRACKER_INNER_LOG = "/tmp/firecracker.log"
# How each VMM ends on the init's power-off (`poweroff -f`), seen in the emulated host: virtkit
# and QEMU exit 0 on the ACPI S5 write, cloud-hypervisor too (its ACPI power-off). Firecracker
# offers no ACPI power-off: the kernel prints "reboot: System halted" and Firecracker runs on
# (killed by the timeout). It exits 0 on the guest's reset through the i8042, so its guest
# reboots instead of powering off: `virtkit.action=reboot` and `reboot=k` (the keyboard
# controller, as Firecracker's docs advise). Firecracker adds `pci=off` to the command line
# itself (it has no PCI without --enable-pci).
INNER_EXPECT = {"virtkit": "exit:0", "QEMU microvm": "exit:0", "Firecracker": "exit:0",
                "cloud-hypervisor": "exit:0"}
INNER_CMDLINE_EXTRA = {"Firecracker": "reboot=k"}
INNER_ACTION = {"Firecracker": {"poweroff": "reboot"}}


def inner_cmdline(name, action):
    action = INNER_ACTION.get(name, {}).get(action, action)
    extra = INNER_CMDLINE_EXTRA.get(name)
    return " ".join(["console=ttyS0 quiet"] + ([extra] if extra else [])
                    + [f"virtkit.action={action}"])


def firecracker_inner_config(action):
    """Firecracker's configuration file for part 2 (written into bench/out/); returns
    (the file here, its path inside the emulated host)."""
    path = OUT / f"firecracker-emulated-{action}.json"
    path.write_text(json.dumps({
        "boot-source": {"kernel_image_path": f"{INNER_GUEST}/vmlinux",
                        "initrd_path": f"{INNER_GUEST}/initrd",
                        "boot_args": inner_cmdline("Firecracker", action)},
        "drives": [],
        "machine-config": {"vcpu_count": 1, "mem_size_mib": 256},
        "logger": {"log_path": FIRECRACKER_INNER_LOG},
    }, indent=1) + "\n")
    return path, f"{INNER_GUEST}/{path.name}"


def inner_commands(action="poweroff"):
    """Part 2's commands inside the emulated host, {name: command}: virtkit and QEMU microvm, and
    the peers whose binary is present; `action` is the init's (poweroff, or wait for the exit
    counts)."""
    k, kel, i = f"{INNER_GUEST}/vmlinuz", f"{INNER_GUEST}/vmlinux", f"{INNER_GUEST}/initrd"
    cmds = {
        "virtkit": ["/usr/bin/virtkit", "run", "--kernel", k, "--initrd", i, "--cmdline",
                    inner_cmdline("virtkit", action), "--cpus", "1", "--memory", "256M",
                    "--serial", "stdio"],
        "QEMU microvm": ["qemu-system-x86_64", "-M", "microvm,rtc=on", "-enable-kvm", "-cpu",
                         "host", "-smp", "1", "-m", "256M", "-nodefaults", "-no-user-config",
                         "-nographic", "-serial", "stdio", "-no-reboot", "-kernel", k, "-initrd",
                         i, "-append", inner_cmdline("QEMU microvm", action)],
    }
    if peer_binary("Firecracker"):
        _, conf = firecracker_inner_config(action)
        cmds["Firecracker"] = ["/usr/bin/firecracker", "--no-api", "--config-file", conf]
    if peer_binary("cloud-hypervisor"):
        cmds["cloud-hypervisor"] = ["/usr/bin/cloud-hypervisor", "--kernel", kel, "--initramfs",
                                    i, "--cmdline", inner_cmdline("cloud-hypervisor", action),
                                    "--cpus", "boot=1", "--memory", "size=256M", "--console",
                                    "off", "--serial", "tty"]
    return cmds


def inner_label(name):
    return name.replace(" ", "_")


def inner_shell_functions(cmds, spawn, prefix):
    """One shell function per VMM (PREFIX0, PREFIX1, ...) running its command; `spawn` prefixes it
    (a spawntime invocation, or `exec ` for one run in the background, so that $! is the VMM's
    own process). Firecracker's log file is emptied first."""
    out = []
    for k, (name, cmd) in enumerate(cmds.items()):
        q = " ".join(shlex.quote(c) for c in cmd)
        pre = f": >{FIRECRACKER_INNER_LOG}; " if name == "Firecracker" else ""
        out.append(f"{prefix}{k}() {{ {pre}{spawn.format(label=inner_label(name))}{q} \"$@\"; }}")
    return "\n".join(out)


# Exits to init: each VMM boots the guest once more with its init waiting (no power-off), and
# when the init marker appears the script reads KVM's own counters for that VM from debugfs
# (`/sys/kernel/debug/kvm/<pid>-<fd>/`: every exit, the ones KVM handles itself included).
# Exits are counted where times are noisy: they say where each VMM's boot goes.
EXIT_RUNS = 2
EXIT_COUNTERS = ["exits", "io_exits", "mmio_exits", "halt_exits", "irq_exits",
                 "irq_window_exits", "signal_exits", "insn_emulation", "irq_injections"]
EXITS_ACTION = "wait"


def exits_script():
    cmds = inner_commands(EXITS_ACTION)
    counters = " ".join(EXIT_COUNTERS)
    return f"""
mount -t debugfs debugfs /sys/kernel/debug 2>/dev/null
{inner_shell_functions(cmds, "exec ", "e")}
exits_to_init() {{ # LABEL FUNCTION
    label=$1; shift
    "$@" </dev/null >/tmp/exits.log 2>&1 &
    pid=$!
    n=0
    while ! grep -q '{GUEST_MARKER}' /tmp/exits.log 2>/dev/null; do
        n=$((n + 1)); [ $n -gt 30000 ] && break
        sleep 0.005
    done
    line="BENCH-EXITS $label"
    for d in /sys/kernel/debug/kvm/*-*; do
        [ -d "$d" ] || continue
        for f in {counters}; do
            [ -r "$d/$f" ] && line="$line $f=$(cat "$d/$f")"
        done
    done
    echo "$line"
    # Every other counter of the VM (its vCPUs' summed, and the VM's own), for the exits that
    # the ones above do not name.
    line="BENCH-KVMSTATS $label"
    for d in /sys/kernel/debug/kvm/*-*; do
        [ -d "$d" ] || continue
        for f in "$d"/*; do
            [ -f "$f" ] || continue
            v=$(cat "$f" 2>/dev/null)
            case "$v" in *[!0-9]*|"") ;; *) line="$line ${{f##*/}}=$v" ;; esac
        done
    done
    echo "$line"
    if ! grep -q '{GUEST_MARKER}' /tmp/exits.log 2>/dev/null; then
        sed 's/^/BENCH-EXITS-OUTPUT: /' /tmp/exits.log | tail -n 20
    fi
    # KILL: a TERM is a power-button press for virtkit, which an init that has not started
    # acpid yet never answers.
    kill -9 $pid 2>/dev/null; wait $pid 2>/dev/null
    sleep 1
}}
j=1
while [ $j -le {EXIT_RUNS} ]; do
{chr(10).join(f"    exits_to_init {inner_label(name)} e{k}" for k, name in enumerate(cmds))}
    j=$((j + 1))
done
"""


def part2(args):
    cmds = inner_commands()
    names = {inner_label(n): n for n in cmds}
    nv = len(cmds)
    # Round-robin, the order rotating each round (as in part 1): round i starts with VMM i mod n.
    rounds = "\n".join(
        f"    {k}) " + "; ".join(f"f{(k + j) % nv}" for j in range(nv)) + " ;;"
        for k in range(nv))
    spawn = f"spawntime -v -t {INNER_TIMEOUT} -m '{GUEST_MARKER}' -l {{label}} -- "
    script = f"""# generated by bench/run.py: part 2, run inside the emulated KVM host
echo "BENCH-HOST kernel=$(uname -r) cpus=$(grep -c ^processor /proc/cpuinfo) \\
memtotal_kib=$(awk '/MemTotal/ {{print $2}}' /proc/meminfo)"
{inner_shell_functions(cmds, spawn, "f")}
i=1
while [ $i -le {args.inner_runs} ]; do
    echo "BENCH-ROUND $i"
    case $(( (i - 1) % {nv} )) in
{rounds}
    esac
    if [ -s {FIRECRACKER_INNER_LOG} ]; then
        grep -v MissingAddressRange {FIRECRACKER_INNER_LOG} | tail -n 5 |
            sed 's/^/BENCH-FIRECRACKER-LOG: /'
    fi
    i=$((i + 1))
done
{exits_script()}
exit 0
"""
    script_path = OUT / "emulated-host-script.sh"
    script_path.write_text(script)
    # After kvm-ready: every inner boot may take up to INNER_TIMEOUT, plus slack.
    after_ready = nv * args.inner_runs * 60 + nv * EXIT_RUNS * 60 + 120
    cmd = [EMULATED_HOST,
           "--binary", f"{VIRTKIT}:/usr/bin/virtkit",
           "--binary", f"{QEMU}:/usr/bin/qemu-system-x86_64",
           "--binary", f"{HELPER}:/usr/bin/spawntime",
           "--file", f"{ASSETS / 'vmlinuz'}:{INNER_GUEST}/vmlinuz",
           "--file", f"{ASSETS / 'guest-initramfs.cpio.gz'}:{INNER_GUEST}/initrd"]
    peers = [n for n in PEER_BINARIES if n in cmds]
    if peers:
        # The peers' kernel, and their binaries (with the libraries ldd lists, if any: the
        # static builds of scripts/build-peers.sh have none).
        cmd += ["--file", f"{ASSETS / 'vmlinux'}:{INNER_GUEST}/vmlinux"]
        for n in peers:
            cmd += ["--binary", f"{peer_binary(n)}:{cmds[n][0]}"]
        if "Firecracker" in peers:
            for action in ("poweroff", EXITS_ACTION):
                here, there = firecracker_inner_config(action)
                cmd += ["--file", f"{here}:{there}"]
    absent = [n for n in PEER_BINARIES if n not in cmds]
    if absent:
        log(f"part 2: no binary for {', '.join(absent)} (scripts/build-peers.sh builds them); "
            "not run in the emulated host")
    for f in QEMU_MICROVM_FILES:
        p = Path("/usr/share/qemu") / f
        if p.exists():
            cmd += ["--file", f"{p}:/usr/share/qemu/{f}"]
    cmd += ["--timeout", str(after_ready), script_path]
    # Two boots of at most 90 s each before kvm-ready (the harness's own limits), then the script.
    outer = 2 * 90 + after_ready + 60

    results = {n: [] for n in cmds}
    exits = {n: [] for n in cmds}
    kvmstats = {n: [] for n in cmds}
    info = {"attempts": None, "boot_to_ready_s": None, "run_s": None, "retry_notices": [],
            "host": None, "script_exit": None}
    failures = []
    log_path = OUT / "emulated-host.log"
    logf = log_path.open("w")
    last = [None]
    tail_of = {}  # the last output lines of the last run, for a failed run's report

    def on_line(line):
        logf.write(line + "\n")
        logf.flush()
        body = line[len("[host] "):] if line.startswith("[host] ") else line
        r = parse_spawn(body)
        if r:
            name = names.get(r["label"], r["label"])
            expect = INNER_EXPECT.get(name, "exit:0")
            r["ok"] = r["status"] in expect.split("|") and r["marker_ms"] >= 0
            r["uptime_at_init"] = None
            r["output"] = []
            results.setdefault(name, []).append(r)
            last[0] = r
            log(f"part 2: {name}: first output {r['marker_ms'] / 1000:.2f} s, exit "
                f"{r['exit_ms'] / 1000:.2f} s, {r['status']}, peak RSS "
                f"{r['maxrss_kib'] / 1024:.1f} MiB")
            if not r["ok"]:
                failures.append(f"{name}: status {r['status']} (expected {expect}), marker "
                                f"{'seen' if r['marker_ms'] >= 0 else 'not seen'}")
            return
        m = re.search(r"SPAWNTIME-OUTPUT: .*VIRTKIT-GUEST: uptime-at-init=([\d.]+)", body)
        if m and last[0] is not None:
            last[0]["uptime_at_init"] = float(m.group(1))
            return
        if body.startswith("SPAWNTIME-OUTPUT: ") and last[0] is not None:
            # Kept for a failed run's report (its error output).
            last[0]["output"] = (last[0]["output"] + [body[len("SPAWNTIME-OUTPUT: "):]])[-25:]
            return
        if "SPAWNTIME-OUTPUT" in body:
            return
        if body.startswith("BENCH-FIRECRACKER-LOG: ") and last[0] is not None:
            tail_of.setdefault("Firecracker", []).append(body[len("BENCH-FIRECRACKER-LOG: "):])
            return
        if body.startswith("BENCH-HOST "):
            info["host"] = body[len("BENCH-HOST "):]
        if body.startswith("BENCH-KVMSTATS "):
            parts = body.split()
            name = names.get(parts[1], parts[1])
            kvmstats.setdefault(name, []).append(
                {k: int(v) for k, v in (p.split("=", 1) for p in parts[2:] if "=" in p)
                 if v.isdigit()})
            return
        if body.startswith("BENCH-EXITS "):
            parts = body.split()
            name = names.get(parts[1], parts[1])
            counts = {k: int(v) for k, v in (p.split("=", 1) for p in parts[2:] if "=" in p)
                      if v.isdigit()}
            if not counts:
                # Seen once for QEMU microvm (2026-12-05): the marker was read, but no
                # /sys/kernel/debug/kvm/<pid>-<fd>/ was there; the boot is left out of the medians.
                info.setdefault("exits_missing", []).append(name)
                log(f"part 2: {name}: no KVM debugfs directory at the init marker; this exit "
                    "count is left out")
                return
            exits.setdefault(name, []).append(counts)
            log(f"part 2: {name}: {counts.get('exits', '?')} exits to init (KVM's count)")
        if "hung before /dev/kvm was ready" in line:
            info["retry_notices"].append(line.strip())
            log(line.strip())
        m = re.search(r"boot to kvm-ready ([\d.]+) s, run ([\d.]+) s, attempts (\d+), "
                      r"script exit (\S+)", line)
        if m:
            info["boot_to_ready_s"] = float(m.group(1))
            info["run_s"] = float(m.group(2))
            info["attempts"] = int(m.group(3))
            info["script_exit"] = m.group(4)
        if "VIRTKIT-HOST: kvm-ready" in line:
            log("part 2: emulated host is up (kvm-ready); running the inner boots")

    log(f"part 2: booting the emulated KVM host; {args.inner_runs} inner boots of each of "
        f"{', '.join(cmds)}, round-robin (about 7 s per boot)")
    t0 = time.monotonic()
    try:
        code = stream(cmd, outer, "the emulated host run", on_line)
    finally:
        logf.close()
    info["wall_s"] = time.monotonic() - t0
    info["exit_code"] = code
    if code != 0:
        tail = "\n".join(log_path.read_text().splitlines()[-30:])
        hang = "HangBeforeReady" in tail or "before /dev/kvm was ready" in tail
        raise BenchError(
            f"the emulated host run failed (exit {code})"
            + ("; it hung before /dev/kvm was ready twice (emulator hangs, not virtkit): "
               "rerun bench/run.sh" if hang else "")
            + f"; log: {rel(log_path)}; last lines:\n{tail}")
    # A VMM none of whose runs reached the marker and exited: its last run's own output (its
    # error), for the results.
    errors = {n: next((r["output"] for r in reversed(runs) if not r["ok"]), [])
              for n, runs in results.items() if runs and not any(r["ok"] for r in runs)}
    return {"runs": results, "info": info, "failures": failures, "exits": exits,
            "kvmstats": kvmstats, "errors": errors,
            "firecracker_log": tail_of.get("Firecracker", [])[-5:],
            "peers": {n: peer_version(n) for n in peers}, "absent": absent,
            "expect": {n: INNER_EXPECT.get(n, "exit:0") for n in cmds},
            "cmdlines": {n: inner_cmdline(n, "poweroff") for n in cmds},
            "firecracker_config": (OUT / "firecracker-emulated-poweroff.json").read_text()
            if "Firecracker" in peers else None,
            "commands": {n: " ".join(shlex.quote(c) for c in c_) + " </dev/null"
                         for n, c_ in cmds.items()},
            "harness": " ".join(shlex.quote(rel(c)) for c in cmd)}


# ---------------------------------------------------------------------------------------------
# Part 3: SeaBIOS and an MBR program reading 64 MiB from a virtio-blk disk, direct on KVM

DISK_TIMEOUT = 60  # seconds per boot (a normal one takes 3-5 s here)


def tsc_frequency():
    """The host's TSC frequency in Hz and where it came from."""
    try:
        code, out = run(["dmesg"], 30, "dmesg")
    except (OSError, BenchError):
        code, out = 1, ""
    if code == 0:
        # The refined calibration, where the kernel made one, is the more exact.
        for kind in ("Refined TSC clocksource calibration: ", "Detected "):
            m = re.findall(r"(tsc: " + kind + r"([\d.]+) MHz)", out)
            if m:
                return float(m[-1][1]) * 1e6, f"dmesg `{m[-1][0]}`"
    try:
        info = Path("/proc/cpuinfo").read_text()
        if "constant_tsc" in info:
            mhz = float(re.search(r"cpu MHz\s*:\s*([\d.]+)", info).group(1))
            return mhz * 1e6, f"/proc/cpuinfo cpu MHz {mhz} (constant_tsc)"
    except (OSError, AttributeError):
        pass
    raise BenchError("cannot find the TSC frequency (neither dmesg's `tsc: Detected` line nor "
                     "/proc/cpuinfo with constant_tsc)")


def make_mbr_image(mbr):
    code = mbr.read_bytes()
    if len(code) != 512 or code[510:] != b"\x55\xaa":
        raise BenchError(f"{rel(mbr)} is not a 512-byte boot sector")
    OUT.mkdir(parents=True, exist_ok=True)
    with open(MBR_IMAGE, "wb") as f:
        f.truncate(MBR_IMAGE_BYTES)
        f.write(code)


def disk_commands():
    img = rel(MBR_IMAGE)
    return [
        ("virtkit", [VIRTKIT, "run", "--firmware", SEABIOS, "--memory", "128M", "--disk",
                     f"{img},cache=uncached"]),
        ("QEMU q35", [QEMU, "-enable-kvm", "-M", "q35", "-cpu", QEMU_DIRECT_CPU, "-m", "128M", "-nodefaults",
                      "-no-user-config", "-nographic", "-serial", "stdio", "-no-reboot", "-bios",
                      SEABIOS, "-drive", f"file={img},format=raw,if=none,id=d0,cache=none",
                      "-device", "virtio-blk-pci,drive=d0"]),
    ]


def part3(args, mbr):
    hz, hz_source = tsc_frequency()
    make_mbr_image(mbr)
    vmms = disk_commands()
    results = {name: [] for name, _ in vmms}
    failures = []

    def one(name, cmd, keep):
        hcmd = [HELPER, "-v", "-t", str(DISK_TIMEOUT), "-l", name.replace(" ", "_"),
                "-m", MBR_DONE, "-f", MBR_BANNER, "-f", MBR_FIRST]
        code, out = run(hcmd + ["--"] + cmd, DISK_TIMEOUT + 30, f"{name} disk run")
        r = next((parse_spawn(l) for l in out.splitlines() if parse_spawn(l)), None)
        if r is None:
            raise BenchError(f"{name}: no result from spawntime:\n{out}")
        m = MBR_RESULT_RE.search(out)
        fb = r["first_byte_ms"] + [-1.0, -1.0]
        r["banner_ms"], r["first_ms"] = fb[0], fb[1]
        r["tsc"] = int(m.group(1), 16) if m else None
        r["ok"] = (r["status"] == "exit:0" and r["marker_ms"] >= 0 and r["tsc"] is not None
                   and r["first_ms"] >= 0)
        if r["ok"]:
            r["read_ms"] = r["tsc"] / hz * 1000
            r["mbps"] = MBR_BENCH_BYTES / (r["tsc"] / hz) / 1e6
        else:
            tail = "\n".join(l for l in out.splitlines() if "SPAWNTIME-OUTPUT" in l)
            failures.append(f"{name}: status {r['status']}, "
                            f"{'no bench-read result' if r['tsc'] is None else 'marker missing'}")
            log(f"part 3: {name}: FAILED run: status {r['status']}\n{tail}")
        if keep:
            results[name].append(r)
        return r

    log(f"part 3: {args.disk_runs} disk-read boots of each VMM (+1 warm-up), alternating; "
        f"TSC {hz / 1e6:.3f} MHz ({hz_source})")
    for name, cmd in vmms:
        one(name, cmd, keep=False)
    for i in range(args.disk_runs):
        order = vmms if i % 2 == 0 else vmms[::-1]
        for name, cmd in order:
            r = one(name, cmd, keep=True)
            if r["ok"]:
                log(f"part 3: {name}: read {r['read_ms']:.0f} ms ({r['mbps']:.1f} MB/s), banner "
                    f"{r['banner_ms']:.0f} ms, bench-read {r['first_ms']:.0f} ms, exit "
                    f"{r['exit_ms']:.0f} ms")
    commands = {name: " ".join(shlex.quote(rel(c)) for c in cmd) + " </dev/null"
                for name, cmd in vmms}
    return {"runs": results, "commands": commands, "failures": failures, "tsc_hz": hz,
            "tsc_source": hz_source, "mbr": rel(mbr)}


# ---------------------------------------------------------------------------------------------
# Part 4: the disk backend against the host's file I/O, no VM

def storage_info(path):
    code, out = run(["findmnt", "-n", "-o", "SOURCE,FSTYPE", "-T", path], 30, "findmnt")
    if code != 0 or not out.strip():
        return "unknown"
    src, fstype = (out.split() + ["?", "?"])[:2]
    extra = ""
    dev = Path(src).name
    for d in (dev, re.sub(r"p?\d+$", "", dev)):
        q = Path("/sys/block") / d / "queue"
        if q.is_dir():
            try:
                rot = (q / "rotational").read_text().strip()
                sched = re.search(r"\[(\S+)\]", (q / "scheduler").read_text())
                extra = (f", {'rotational' if rot == '1' else 'non-rotational'}, scheduler "
                         f"{sched.group(1) if sched else 'none'}")
                model = Path("/sys/block") / d / "device" / "model"
                if model.exists() and model.read_text().strip():
                    extra += f", model {model.read_text().strip()}"
                elif d.startswith("vd"):
                    extra += ", a virtio disk of this VM"
            except OSError:
                pass
            break
    return f"{src} ({fstype}{extra})"


def part4(args):
    cmd = [BLK_EXAMPLE, "--file", rel(BLK_IMAGE), "--size-mib", str(BLK_IMAGE_MIB),
           "--seconds", str(args.blk_seconds), "--reps", str(args.blk_reps)]
    results = []

    def on_line(line):
        if line.startswith("BLKTHR "):
            try:
                results.append(json.loads(line[len("BLKTHR "):]))
            except ValueError:
                log(f"part 4: cannot parse: {line}")
        elif line.strip():
            log(f"part 4: {line.strip()}")

    # 8 workloads x 8 measurements + 8 device-on-memory ones, each reps x seconds; plus writing
    # and reading the image.
    timeout = int(72 * args.blk_reps * args.blk_seconds * 2 + 300)
    log(f"part 4: blk_throughput, {args.blk_reps} x {args.blk_seconds} s per measurement "
        f"(about {72 * args.blk_reps * args.blk_seconds / 60 + 0.3:.1f} min)")
    t0 = time.monotonic()
    code = stream(cmd, timeout, "blk_throughput", on_line)
    wall = time.monotonic() - t0
    if code != 0:
        raise BenchError(f"`{' '.join(map(str, cmd))}` failed (exit {code}); see the lines above")
    return {"results": results, "command": " ".join(shlex.quote(rel(c)) for c in cmd),
            "storage": storage_info(OUT), "wall_s": wall}


# ---------------------------------------------------------------------------------------------
# Part 5: the guest's sequential O_DIRECT throughput inside the emulated KVM host

def make_odirect_host_disk():
    """A fresh ext4 file system on a sparse file of this machine: the emulated host's disk."""
    ODIRECT_HOST_DISK.unlink(missing_ok=True)
    with open(ODIRECT_HOST_DISK, "wb") as f:
        f.truncate(ODIRECT_HOST_DISK_MIB << 20)
    # Nothing left to initialise lazily: a background ext4lazyinit thread in the emulated host
    # would take CPU and disk from the first boots.
    cmd = [sbin_tool("mkfs.ext4"), "-q", "-F", "-L", "bench5", "-E",
           "lazy_itable_init=0,lazy_journal_init=0", ODIRECT_HOST_DISK]
    code, out = run(cmd, 120, "mkfs.ext4")
    if code != 0:
        raise BenchError(f"mkfs.ext4 on {rel(ODIRECT_HOST_DISK)} failed:\n{out.strip()}")


def part5(args):
    build_helper(ODIRECT_SRC, ODIRECT)
    base = (ASSETS / "guest-initramfs.cpio.gz").read_bytes()
    try:
        modules = guest_disk.extract_files(base, guest_disk.HOST_DISK_MODULES)
    except (guest_disk.ArchiveError, OSError, EOFError) as e:
        raise BenchError(f"cannot take the virtio modules from the guest initramfs: {e}; "
                         "rerun scripts/assets.sh") from None
    mod_dir = OUT / "odirect-host-modules"
    mod_dir.mkdir(parents=True, exist_ok=True)
    for name, data in modules.items():
        (mod_dir / name).write_bytes(data)
    initrd = OUT / "odirect-initrd"
    initrd.write_bytes(guest_disk.initrd_with_files(
        base, [(guest_disk.GUEST_PROGRAM, 0o755, ODIRECT.read_bytes())]))
    make_odirect_host_disk()

    cmds = guest_disk.inner_commands(ODIRECT_IMAGE_MIB, ODIRECT_BLOCK_KIB, ODIRECT_PASSES)
    script_path = OUT / "odirect-host-script.sh"
    script_path.write_text(guest_disk.host_script(cmds, args.odirect_runs, ODIRECT_IMAGE_MIB,
                                                  ODIRECT_TIMEOUT))
    # After kvm-ready: writing the image, then the boots (25-40 s each), with slack.
    after_ready = 2 * (args.odirect_runs + 1) * 90 + 180
    disk = (f"file={ODIRECT_HOST_DISK.resolve()},if=none,id=bench5,format=raw,cache=unsafe,"
            "aio=threads")
    cmd = [EMULATED_HOST,
           "--binary", f"{VIRTKIT}:/usr/bin/virtkit",
           "--binary", f"{QEMU}:/usr/bin/qemu-system-x86_64",
           "--file", f"{ASSETS / 'vmlinuz'}:/guest/vmlinuz",
           "--file", f"{initrd}:/guest/initrd",
           "--file", f"{mod_dir}:{guest_disk.HOST_MODULE_DIR}"]
    for f in QEMU_Q35_FILES:
        cmd += ["--file", f"{f}:{f}"]
    cmd += ["--qemu-arg", "-drive", "--qemu-arg", disk,
            "--qemu-arg", "-device", "--qemu-arg", "virtio-blk-device,drive=bench5",
            "--timeout", str(after_ready), script_path]
    outer = 2 * 90 + after_ready + 60

    boots = {name: {} for name in cmds}
    warmup = {}
    info = {"attempts": None, "boot_to_ready_s": None, "host": None, "retry_notices": []}
    failures, host_fail = [], []
    log_path = OUT / "odirect-emulated-host.log"
    logf = log_path.open("w")

    def on_line(line):
        logf.write(line + "\n")
        logf.flush()
        body = line[len("[host] "):] if line.startswith("[host] ") else line
        r = guest_disk.parse_line(body)
        if r:
            kind = boots if r["boot"] > 0 else warmup
            b = kind.setdefault(r["vmm"], {}).setdefault(
                r["boot"], {"boot": r["boot"], "write": [], "read": [], "exit": None})
            if "exit" in r:
                b["exit"] = r["exit"]
                ok = (r["exit"] == "0" and len(b["write"]) == ODIRECT_PASSES
                      and len(b["read"]) == ODIRECT_PASSES)
                b["ok"] = ok
                log(f"part 5: {r['vmm']} "
                    + (f"boot {r['boot']}" if r["boot"] else "warm-up boot (discarded)")
                    + f": write {', '.join(f'{x:.1f}' for x in b['write']) or '-'} MB/s, read "
                    f"{', '.join(f'{x:.1f}' for x in b['read']) or '-'} MB/s, exit {r['exit']}")
                if not ok:
                    failures.append(f"{r['vmm']} "
                                    + (f"boot {r['boot']}" if r["boot"] else "warm-up boot")
                                    + f": exit {r['exit']}, "
                                    f"{len(b['write'])} write and {len(b['read'])} read passes "
                                    f"of {ODIRECT_PASSES}")
            else:
                b[r["op"]].append(r["mbps"])
            return
        if body.startswith("BENCH5-LOG "):
            log(f"part 5: guest console: {body[len('BENCH5-LOG '):]}")
        elif body.startswith("BENCH5-FAIL "):
            host_fail.append(body[len("BENCH5-FAIL "):])
            log(f"part 5: emulated host: {body}")
        elif body.startswith("BENCH5-HOST "):
            info["host"] = body[len("BENCH5-HOST "):]
            log(f"part 5: emulated host ready, image written: {info['host']}")
        elif "hung before /dev/kvm was ready" in line:
            info["retry_notices"].append(line.strip())
            log(line.strip())
        m = re.search(r"boot to kvm-ready ([\d.]+) s, run ([\d.]+) s, attempts (\d+)", line)
        if m:
            info["boot_to_ready_s"] = float(m.group(1))
            info["attempts"] = int(m.group(3))

    log(f"part 5: booting the emulated KVM host; a warm-up boot and {args.odirect_runs} guest "
        f"boots per VMM, alternating, each writing and reading {ODIRECT_IMAGE_MIB} MiB "
        f"{ODIRECT_PASSES} times (about 30 s per boot)")
    t0 = time.monotonic()
    try:
        code = stream(cmd, outer, "the emulated host run (part 5)", on_line)
    finally:
        logf.close()
        ODIRECT_HOST_DISK.unlink(missing_ok=True)
    info["wall_s"] = time.monotonic() - t0
    if code != 0 or host_fail:
        tail = "\n".join(log_path.read_text().splitlines()[-30:])
        hang = "HangBeforeReady" in tail or "before /dev/kvm was ready" in tail
        what = (f"the emulated host run of part 5 failed (exit {code}"
                + (f": {'; '.join(host_fail)}" if host_fail else "") + ")")
        if hang or not any(boots.values()):
            raise BenchError(
                what + ("; it hung before /dev/kvm was ready twice (emulator hangs, not "
                        "virtkit): rerun bench/run.sh" if hang else "")
                + f"; log: {rel(log_path)}; last lines:\n{tail}")
        # After some boots: a failure of the run, reported with the boots that completed.
        failures.append(f"{what}; see {rel(log_path)}")
        log(f"part 5: {what}; reporting the boots that completed; last lines:\n{tail}")
    for name, bs in boots.items():
        if len(bs) < args.odirect_runs:
            failures.append(f"{name}: {len(bs)} of {args.odirect_runs} boots reported")
    return {"boots": {n: [bs[k] for k in sorted(bs)] for n, bs in boots.items()},
            "warmup": {n: bs.get(0) for n, bs in warmup.items()},
            "info": info, "failures": failures,
            "commands": {n: " ".join(shlex.quote(c) for c in c_) + " </dev/null"
                         for n, c_ in cmds.items()},
            "harness": " ".join(shlex.quote(rel(c)) for c in cmd)}


# ---------------------------------------------------------------------------------------------
# Part 6: the network device alone, 64 KiB frames each way

# The frame sizes of part 6: 64 KiB (the target's), then a frame of the usual MTU (1514 bytes,
# what part 7's guest sends) with more chains in flight (each takes two descriptors).
NET_FRAMES = ((65536, []), (1514, ["--frame", "1514", "--tx-depth", "128"]))


def part6(args):
    base = [NET_EXAMPLE, "--seconds", str(args.net_seconds), "--reps", str(args.net_reps)]
    results, commands = [], []

    def on_line(line):
        if line.startswith("NETTHR "):
            try:
                results.append(json.loads(line[len("NETTHR "):]))
            except ValueError:
                log(f"part 6: cannot parse: {line}")
        elif line.strip():
            log(f"part 6: {line.strip()}")

    timeout = int(4 * args.net_reps * (args.net_seconds + 0.5) + 120)
    t0 = time.monotonic()
    for frame, extra in NET_FRAMES:
        cmd = base + extra
        log(f"part 6: net_throughput, {frame}-byte frames, {args.net_reps} x {args.net_seconds} s "
            "per measurement")
        code = stream(cmd, timeout, "net_throughput", on_line)
        if code != 0:
            raise BenchError(f"`{' '.join(map(str, cmd))}` failed (exit {code}); see the lines above")
        commands.append(" ".join(shlex.quote(rel(c)) for c in cmd))
    return {"results": results, "commands": commands, "wall_s": time.monotonic() - t0}


def net_device_tables(p6):
    rows, below = [], []
    names = {"tx": "tx (guest → backend)", "rx": "rx (backend → guest, mergeable buffers)"}
    backends = {"null": "null (the device's own cost)",
                "stream": "stream socketpair, peer thread (passt's framing)"}
    for r in p6["results"]:
        runs = r["gbps_runs"]
        frame = r.get("frame", 65536)
        target = frame == 65536
        rows.append([f"{frame}", names.get(r["dir"], r["dir"]),
                     backends.get(r["backend"], r["backend"]),
                     f"**{r['gbps']:.1f}** ({min(runs):.1f}–{max(runs):.1f})",
                     f"{r['mfps']:.2f}" if "mfps" in r else "n/a",
                     f"{r['busy'] * 100:.0f} %", f"**{r['gbps_per_core']:.1f}**",
                     f"{r['us_per_frame']:.2f}",
                     f"{r['peer_busy'] * 100:.0f} %" if r["backend"] == "stream" else "-",
                     ("yes" if r["gbps"] >= NET_TARGET_GBPS else "**no**") if target else "-"])
        if target and r["gbps"] < NET_TARGET_GBPS:
            below.append(f"net device alone, {r['dir']} with the {r['backend']} backend: "
                         f"{r['gbps']:.1f} Gbit/s of 64 KiB frames (target {NET_TARGET_GBPS:g})")
    t = md_table(["frame, bytes", "direction", "backend", "Gbit/s: median (min–max)",
                  "million frames/s", "device thread busy", "Gbit/s per busy core",
                  "µs of device CPU per frame", "peer thread busy",
                  f"≥ {NET_TARGET_GBPS:g} Gbit/s (64 KiB frames)"], rows)
    return t, below


# ---------------------------------------------------------------------------------------------
# Part 7: the guest's TCP throughput and request/response rate inside the emulated KVM host

def virtkit_help():
    try:
        code, out = run([VIRTKIT, "run", "--help"], 60, "virtkit run --help")
    except (OSError, BenchError):
        return ""
    return out if code == 0 else ""


def part7(args):
    build_helper(TCPBENCH_SRC, TCPBENCH)
    skipped = guest_net.skipped_rows(virtkit_help())
    for key, why in skipped.items():
        log(f"part 7: row {key} skipped: {why}")
    rows = [r for r in guest_net.ROWS if r["key"] not in skipped]
    if not rows:
        raise BenchError("part 7: every row is skipped: " + "; ".join(skipped.values()))
    base = (ASSETS / "guest-initramfs.cpio.gz").read_bytes()
    initrd = OUT / "net-initrd"
    initrd.write_bytes(guest_disk.initrd_with_files(base, [
        (guest_net.GUEST_PROGRAM, 0o755, TCPBENCH.read_bytes()),
        (guest_net.GUEST_SCRIPT, 0o755, guest_net.guest_script().encode())]))
    passwd, group = OUT / "net-passwd", OUT / "net-group"
    passwd.write_text(PASSWD)
    group.write_text(GROUP)
    script_path = OUT / "net-host-script.sh"
    script_path.write_text(guest_net.host_script(rows, args.net_runs, args.net_guest_seconds,
                                                 args.net_passes, NET_TIMEOUT))
    per_boot = 40 + 3 * args.net_passes * (args.net_guest_seconds + 2)
    after_ready = int(len(rows) * 2 * args.net_runs * per_boot * 2 + 180)
    passt = which("passt")
    cmd = [EMULATED_HOST, "--root-on-tmpfs",
           "--binary", f"{VIRTKIT}:/usr/bin/virtkit",
           "--binary", f"{QEMU}:/usr/bin/qemu-system-x86_64",
           "--binary", f"{passt}:/usr/bin/passt",
           "--binary", f"{TCPBENCH}:{guest_net.HOST_PROGRAM}",
           "--file", f"{ASSETS / 'vmlinuz'}:/guest/vmlinuz",
           "--file", f"{initrd}:/guest/initrd",
           "--file", f"{passwd}:/etc/passwd",
           "--file", f"{group}:/etc/group"]
    # passt re-executes itself as passt.avx2 where the CPU has AVX2 (QEMU's -cpu max has).
    avx2 = Path(str(passt) + ".avx2")
    if avx2.is_file():
        cmd += ["--binary", f"{avx2}:/usr/bin/passt.avx2"]
    for f in QEMU_Q35_FILES:
        cmd += ["--file", f"{f}:{f}"]
    cmd += ["--timeout", str(after_ready), script_path]
    outer = 2 * 90 + after_ready + 60

    boots = {}
    info = {"attempts": None, "boot_to_ready_s": None, "host": None, "retry_notices": [],
            "guest_info": {}}
    failures, host_skips = [], {}
    log_path = OUT / "net-emulated-host.log"
    logf = log_path.open("w")

    def on_line(line):
        logf.write(line + "\n")
        logf.flush()
        body = line[len("[host] "):] if line.startswith("[host] ") else line
        r = guest_net.parse_line(body)
        if r:
            b = boots.setdefault(r["row"], {}).setdefault(r["vmm"], {}).setdefault(
                r["boot"], {"boot": r["boot"], "send": [], "recv": [], "rr": [], "exit": None,
                            "fails": []})
            if "exit" in r:
                b["exit"] = r["exit"]
                b["ok"] = (r["exit"] == "0" and not b["fails"]
                           and all(len(b[m]) == args.net_passes for m in guest_net.MODES))
                log(f"part 7: {r['row']}: {r['vmm']} boot {r['boot']}: "
                    + ", ".join(f"{m} " + ", ".join(f"{x:.3f}" for x in b[m])
                                for m in ("send", "recv")) + " Gbit/s; rr "
                    + ", ".join(f"{x:.0f}" for x in b["rr"]) + f"/s; exit {r['exit']}")
                if not b["ok"]:
                    failures.append(f"{r['row']}: {r['vmm']} boot {r['boot']}: exit {r['exit']}"
                                    + (f", {'; '.join(b['fails'])}" if b["fails"] else "")
                                    + ", " + ", ".join(f"{len(b[m])} {m}" for m in guest_net.MODES)
                                    + f" of {args.net_passes} passes")
            elif "info" in r:
                info["guest_info"].setdefault(f"{r['row']} {r['vmm']}", []).append(r["info"])
            elif "fail" in r:
                b["fails"].append(r["fail"])
                log(f"part 7: {r['row']}: {r['vmm']} boot {r['boot']}: {r['fail']}")
            else:
                b[r["mode"]].append(r["value"])
            return
        if body.startswith("BENCH7-SKIP "):
            m = re.match(r"BENCH7-SKIP row=(\S+) (.*)", body)
            if m:
                host_skips[m.group(1)] = m.group(2)
                log(f"part 7: row {m.group(1)} skipped in the emulated host: {m.group(2)}")
        elif body.startswith("BENCH7-LOG "):
            log(f"part 7: {body[len('BENCH7-LOG '):]}")
        elif body.startswith("BENCH7-HOST "):
            info["host"] = body[len("BENCH7-HOST "):]
            log(f"part 7: emulated host ready: {info['host']}")
        elif "hung before /dev/kvm was ready" in line:
            info["retry_notices"].append(line.strip())
            log(line.strip())
        m = re.search(r"boot to kvm-ready ([\d.]+) s, run ([\d.]+) s, attempts (\d+)", line)
        if m:
            info["boot_to_ready_s"] = float(m.group(1))
            info["attempts"] = int(m.group(3))

    log(f"part 7: booting the emulated KVM host; rows {', '.join(r['key'] for r in rows)}; "
        f"{args.net_runs} guest boots per VMM and row, alternating, each {args.net_passes} passes "
        f"of send, recv and rr for {args.net_guest_seconds} s (about {per_boot} s per boot)")
    t0 = time.monotonic()
    try:
        code = stream(cmd, outer, "the emulated host run (part 7)", on_line)
    finally:
        logf.close()
    info["wall_s"] = time.monotonic() - t0
    if code != 0:
        tail = "\n".join(log_path.read_text().splitlines()[-30:])
        hang = "HangBeforeReady" in tail or "before /dev/kvm was ready" in tail
        what = f"the emulated host run of part 7 failed (exit {code})"
        if hang or not boots:
            raise BenchError(
                what + ("; it hung before /dev/kvm was ready twice (emulator hangs, not "
                        "virtkit): rerun bench/run.sh" if hang else "")
                + f"; log: {rel(log_path)}; last lines:\n{tail}")
        failures.append(f"{what}; see {rel(log_path)}")
        log(f"part 7: {what}; reporting the boots that completed; last lines:\n{tail}")
    skipped.update(host_skips)
    for row in rows:
        if row["key"] in skipped:
            continue
        for vmm in row["vmms"]:
            n = len(boots.get(row["key"], {}).get(vmm, {}))
            if n < args.net_runs:
                failures.append(f"{row['key']}: {vmm}: {n} of {args.net_runs} boots reported")
    return {"boots": {k: {v: [bs[i] for i in sorted(bs)] for v, bs in vm.items()}
                      for k, vm in boots.items()},
            "rows": [{"key": r["key"], "label": r["label"], "vmms": list(r["vmms"])}
                     for r in guest_net.ROWS],
            "skipped": skipped, "info": info, "failures": failures,
            "commands": {r["key"]: {n: " ".join(shlex.quote(c) for c in c_) + " </dev/null"
                                    for n, c_ in guest_net.inner_commands(
                                        r, args.net_guest_seconds, args.net_passes).items()}
                         for r in rows},
            "harness": " ".join(shlex.quote(rel(c)) for c in cmd)}


def net_guest_tables(p7):
    """Per row: each VMM's medians over all passes of its good boots, and virtkit's ratio to the
    other VMM (throughput and rr: higher is better)."""
    samples = lambda boots, m: [x for b in boots for x in b[m]]
    spread = lambda xs, f: (f"**{f(med(xs))}** ({f(min(xs))}–{f(max(xs))})" if xs else "n/a")
    g = lambda x: f"{x:.3f}" if x < 10 else f"{x:.1f}"
    rr = lambda x: f"{x:.0f}"
    rows, ratios, slower = [], [], []
    for row in p7["rows"]:
        key = row["key"]
        if key in p7["skipped"]:
            rows.append([row["label"], "skipped", p7["skipped"][key], "", "", ""])
            continue
        got = p7["boots"].get(key, {})
        ok = {}
        for vmm in row["vmms"]:
            bs = got.get(vmm, [])
            good = [b for b in bs if b.get("ok")]
            ok[vmm] = good
            rows.append([row["label"], vmm, f"{len(good)}/{len(bs)}",
                         spread(samples(good, "send"), g), spread(samples(good, "recv"), g),
                         spread(samples(good, "rr"), rr)])
        vk = ok.get("virtkit")
        others = [v for v in row["vmms"] if v != "virtkit"]
        for other in others:
            qm = ok.get(other)
            if not (vk and qm):
                continue
            cells = []
            for m, what in (("send", "guest → host TCP throughput"),
                            ("recv", "host → guest TCP throughput"),
                            ("rr", "1-byte TCP request/response rate")):
                a, b = med(samples(vk, m)), med(samples(qm, m))
                lo, hi = resampled_ratio_range(vk, qm, lambda boots: med(samples(boots, m)))
                cells.append(f"**{fmt_ratio(a / b)}** ({fmt_ratio(lo)}–{fmt_ratio(hi)})")
                if a < b:
                    unit = "/s" if m == "rr" else " Gbit/s"
                    fa, fb = (rr(a), rr(b)) if m == "rr" else (g(a), g(b))
                    slower.append(f"guest network {what}, {row['label']}: virtkit {fa}{unit} vs "
                                  f"{other} {fb}{unit} (×{a / b:.2f})")
            ratios.append([f"virtkit / {other}, {row['label']}"] + cells)
    t1 = md_table(["attachment", "VMM", "boots ok", "guest → host, Gbit/s: median (min–max)",
                   "host → guest, Gbit/s: median (min–max)",
                   "1-byte request/response, per s: median (min–max)"], rows)
    t2 = md_table(["ratio (higher is better for virtkit): median (95 % range, boots resampled)",
                   "guest → host", "host → guest", "request/response"], ratios)
    return t1, t2, slower


# ---------------------------------------------------------------------------------------------
# Part 8: the guest agent (exec, cp) against ssh over the NAT network, a Debian 12 guest

def part8(args):
    build_helper()
    # The newest finished image of scripts/debian-image.sh (its recipes only add to the system;
    # the cache may be shared with other checkouts, which move to newer recipes), else the
    # script builds its own (minutes). Hard links to it are taken at once, below.
    done = sorted((p.parent for p in (ROOT / ".cache" / "debian-image").glob("v*/done")),
                  key=lambda d: int(d.name[1:]) if d.name[1:].isdigit() else -1)
    if done:
        image = done[-1]
    else:
        log("part 8: building the Debian image (scripts/debian-image.sh, minutes)")
        code, out = run([ROOT / "scripts" / "debian-image.sh"], 3600, "scripts/debian-image.sh")
        if code != 0:
            raise BenchError(f"part 8: scripts/debian-image.sh failed:\n{out[-2000:]}")
        image = ROOT / out.strip().splitlines()[-1]
    log(f"part 8: the Debian image {rel(image)}")
    if not all((image / f).is_file() for f in ("root.img", "vmlinuz", "initrd.img")):
        raise BenchError(f"part 8: {rel(image)} lacks root.img, vmlinuz or initrd.img")
    work = OUT / "agent"
    if work.exists():
        shutil.rmtree(work)
    content = work / "content"
    content.mkdir(parents=True)
    for f in ("root.img", "vmlinuz", "initrd.img"):
        try:
            os.link(image / f, content / f)
        except OSError:
            code, out = run(["cp", "--sparse=always", image / f, content / f], 600, "cp")
            if code != 0:
                raise BenchError(f"part 8: cannot copy {f}: {out}")
    payload = content / agent_bench.PAYLOAD_NAME
    h = hashlib.sha256()
    with payload.open("wb") as fh:
        for _ in range(AGENT_PAYLOAD_MIB):
            chunk = os.urandom(1 << 20)
            h.update(chunk)
            fh.write(chunk)
    payload_sum = h.hexdigest()
    disk = work / "outer.img"
    with disk.open("wb") as fh:
        fh.truncate(8 << 30)
    code, out = run([sbin_tool("mkfs.ext4"), "-q", "-F", "-d", content, disk], 900, "mkfs.ext4 -d")
    if code != 0:
        raise BenchError(f"part 8: mkfs.ext4 -d failed: {out}")
    shutil.rmtree(content)
    base = (ASSETS / "guest-initramfs.cpio.gz").read_bytes()
    try:
        modules = guest_disk.extract_files(base, guest_disk.HOST_DISK_MODULES)
    except (guest_disk.ArchiveError, OSError, EOFError) as e:
        raise BenchError(f"part 8: cannot take the virtio modules from the guest initramfs: "
                         f"{e}; rerun scripts/assets.sh") from None
    mod_dir = work / "modules"
    mod_dir.mkdir()
    for name, data in modules.items():
        (mod_dir / name).write_bytes(data)
    key = work / "key"
    code, out = run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "virtkit-bench",
                     "-f", key], 60, "ssh-keygen")
    if code != 0:
        raise BenchError(f"part 8: ssh-keygen failed: {out}")
    passwd = work / "passwd"
    passwd.write_text(PASSWD)
    group = work / "group"
    group.write_text(GROUP)
    script_path = work / "host-script.sh"
    script_path.write_text(agent_bench.script_with_vars(args.agent_round_trips,
                                                        args.agent_copies, 1500))
    after_ready = 1500 + 900 + 600 + args.agent_round_trips * 3 * 60 + args.agent_copies * 4 * 300
    passt = which("passt")
    d = agent_bench.HOST_DIR
    cmd = [EMULATED_HOST, "--root-on-tmpfs", "--mem", "4096",
           "--binary", f"{VIRTKIT}:/usr/bin/virtkit",
           "--binary", f"{HELPER}:/usr/bin/spawntime",
           "--binary", f"{passt}:/usr/bin/passt",
           "--binary", f"{which('ssh')}:/usr/bin/ssh",
           "--binary", f"{which('scp')}:/usr/bin/scp",
           "--binary", f"{AGENT}:{d}/virtkit-agent",
           "--file", f"{key}:{d}/key",
           "--file", f"{key}.pub:{d}/key.pub",
           "--file", f"{mod_dir}:{agent_bench.HOST_MODULE_DIR}",
           "--file", f"{passwd}:/etc/passwd",
           "--file", f"{group}:/etc/group"]
    avx2 = Path(str(passt) + ".avx2")
    if avx2.is_file():
        cmd += ["--binary", f"{avx2}:/usr/bin/passt.avx2"]
    cmd += ["--qemu-arg", "-drive", "--qemu-arg",
            f"file={disk.resolve()},format=raw,if=none,id=deb,cache=unsafe",
            "--qemu-arg", "-device", "--qemu-arg", "virtio-blk-device,drive=deb",
            "--timeout", str(after_ready), script_path]
    outer = 2 * 90 + after_ready + 60
    times, sums, says = {}, {}, []
    info = {"attempts": None, "boot_to_ready_s": None}
    log_path = OUT / "agent-emulated-host.log"
    logf = log_path.open("w")

    def on_line(line):
        logf.write(line + "\n")
        logf.flush()
        r = agent_bench.parse_line(line)
        if r and r["kind"] == "time":
            times.setdefault(r["label"], []).append(r)
            log(f"part 8: {r['label']}: {r['ms']:.1f} ms ({r['status']}, client cpu "
                f"{r['cpu_ms']:.0f} ms)")
        elif r and r["kind"] == "sum":
            sums[(r["label"], r["rep"])] = r["sum"]
        elif r:
            says.append(r["text"])
            log(f"part 8: {r['text']}")
        m = re.search(r"boot to kvm-ready ([\d.]+) s, run ([\d.]+) s, attempts (\d+)", line)
        if m:
            info["boot_to_ready_s"] = float(m.group(1))
            info["attempts"] = int(m.group(3))

    log(f"part 8: booting the emulated KVM host with the Debian image; {args.agent_round_trips} "
        f"round trips of each kind, {args.agent_copies} copies each way of {AGENT_PAYLOAD_MIB} MiB")
    t0 = time.monotonic()
    try:
        code = stream(cmd, outer, "the emulated host run (part 8)", on_line)
    finally:
        logf.close()
    info["wall_s"] = time.monotonic() - t0
    failures = []
    if code != 0:
        failures.append(f"the emulated host run of part 8 exited {code}; see {rel(log_path)}")
    for (label, rep), got in sorted(sums.items()):
        if got != payload_sum:
            failures.append(f"{label} copy {rep}: sha256 {got[:16]}… is not the payload's")
    for r in (x for v in times.values() for x in v):
        if r["status"] != "exit:0":
            failures.append(f"{r['label']}: {r['status']}")
    if not times.get("exec"):
        tail = "\n".join(log_path.read_text().splitlines()[-40:])
        raise BenchError(f"part 8 measured nothing; log {rel(log_path)}; last lines:\n{tail}")
    c = agent_bench.commands()
    return {"times": times, "sums": {f"{k[0]} {k[1]}": v for k, v in sums.items()},
            "payload_sum": payload_sum, "says": says + [f"image {rel(image)}"], "info": info, "failures": failures,
            "commands": c, "harness": " ".join(shlex.quote(rel(x)) for x in cmd),
            "rows": {k: [r["ms"] for r in v if r["status"] == "exit:0"]
                     for k, v in times.items()}}


def agent_section(args, p8):
    rows_ms = p8["rows"]
    mib = AGENT_PAYLOAD_MIB
    spread = lambda xs: (f"**{fmt_ms(med(xs))}** ({fmt_ms(pct(xs, 10))}–{fmt_ms(pct(xs, 90))})"
                         if xs else "n/a")
    cpu = lambda k: med([r["cpu_ms"] for r in p8["times"].get(k, []) if r["status"] == "exit:0"])
    out = [f"### Part 8: the guest agent against ssh over the NAT network, a Debian 12 guest in "
           f"the emulated KVM host ({args.agent_round_trips} round trips of each kind, "
           f"{args.agent_copies} copies of {mib} MiB each way)\n"]
    t = [["`virtkit exec deb -- true` (agent, vsock)", str(len(rows_ms.get("exec", []))),
          spread(rows_ms.get("exec", [])), fmt_ms(cpu("exec"))],
         ["`ssh -p 2222 dev@127.0.0.1 true` (network: passt, NAT card)",
          str(len(rows_ms.get("ssh-net", []))), spread(rows_ms.get("ssh-net", [])),
          fmt_ms(cpu("ssh-net"))],
         ["`virtkit ssh deb -- true` (ssh through vsock-proxy)",
          str(len(rows_ms.get("virtkit-ssh", []))), spread(rows_ms.get("virtkit-ssh", [])),
          fmt_ms(cpu("virtkit-ssh"))]]
    out.append(md_table(["round trip", "n", "wall ms: median (p10–p90)",
                         "client CPU ms (median, user+sys, incl. children waited for)"], t))
    out.append("")
    e, s, v = (med(rows_ms.get(k, [])) for k in ("exec", "ssh-net", "virtkit-ssh"))
    out.append(f"Ratios of medians: exec / ssh over the network **{fmt_ratio(e / s)}**, "
               f"exec / `virtkit ssh` **{fmt_ratio(e / v)}**, `virtkit ssh` / network ssh "
               f"**{fmt_ratio(v / s)}**.\n")
    rate = lambda k: [mib * 1.048576 / (ms / 1000) for ms in rows_ms.get(k, [])]
    fr = lambda xs: (f"**{med(xs):.1f}** ({min(xs):.1f}–{max(xs):.1f})" if xs else "n/a")
    ok = lambda lab: sum(1 for k, v in p8["sums"].items()
                         if k.startswith(lab + " ") and v == p8["payload_sum"])
    t2 = []
    for lab, what in (("cp-in", "`virtkit cp` host → guest"), ("scp-in", "`scp` host → guest"),
                      ("cp-out", "`virtkit cp` guest → host"), ("scp-out", "`scp` guest → host")):
        t2.append([what, str(len(rows_ms.get(lab, []))), fr(rate(lab)),
                   f"{ok(lab)}/{args.agent_copies}"])
    out.append(md_table(["copy of 256 MiB", "n", "MB/s (10^6 B/s): median (min–max)",
                         "sha256 matches"], t2))
    out.append("")
    ri = med(rate("cp-in")) / med(rate("scp-in")) if rate("cp-in") and rate("scp-in") else float("nan")
    ro = med(rate("cp-out")) / med(rate("scp-out")) if rate("cp-out") and rate("scp-out") else float("nan")
    out.append(f"Throughput ratios (virtkit / scp, higher is better): host → guest "
               f"**{fmt_ratio(ri)}**, guest → host **{fmt_ratio(ro)}**.\n")
    info = p8["info"]
    out.append("Times are the wall time of the whole client process, from `posix_spawn` to its "
               "exit, taken by bench/spawntime.c inside the emulated host (stdin /dev/null), the "
               "three kinds of round trip interleaved, after one warm-up each. Every ssh is a new "
               "connection (no ControlMaster; key exchange, host key and user authentication "
               "each time, `-i key -o BatchMode=yes`); `virtkit exec` is a new CLI process, a "
               "new vsock connection to the agent and a new process in the guest each time. "
               "The copies alternate which tool goes first; the guest writes to its own disk "
               "(`/home/dev`), the host reads from and writes to its tmpfs. "
               f"Emulated host (QEMU TCG, nested KVM, `-m 4096`, root on tmpfs for passt): "
               f"boot to kvm-ready {info.get('boot_to_ready_s')} s, attempts "
               f"{info.get('attempts')}, the whole run {info.get('wall_s', 0):.0f} s. "
               "The guest: 2 vCPUs, 1 GiB, the Debian 12 image of scripts/debian-image.sh with "
               "the agent installed by cloud-init from the seed.\n")
    dns = [r for r in p8["times"].get("dns-virtkit-ssh", [])]
    if dns:
        out.append(f"`virtkit ssh deb -- true` with the guest's DHCP name server (which gets no "
                   f"answer from the emulated host, which has no DNS), timed once before the "
                   f"guest's resolv.conf was emptied for the rows above: "
                   f"**{fmt_ms(dns[0]['ms'])} ms** ({dns[0]['status']}): sshd's login over a "
                   "vsock peer waits on name lookups that time out.\n")
    for x in p8["says"]:
        if x.startswith(("host ", "guest ", "agent_s", "ready_s", "cloud_init", "image ", "guest-net ")):
            out.append(f"- {x}")
    out.append("")
    out.append("Commands inside the emulated host (each under `spawntime -t SECS -l LABEL --`), "
               "booted by:\n")
    out.append("```")
    out.append(p8["harness"])
    out += [f"{k}: {v}" for k, v in p8["commands"].items()]
    out.append("```")
    if p8["failures"]:
        out.append(f"\n**Failures in part 8: {len(p8['failures'])}:** " + "; ".join(p8["failures"]))
    out.append("")
    slower = []
    if e == e and s == s and e > s:
        slower.append(f"agent: `virtkit exec` round trip {fmt_ms(e)} ms vs ssh over the network "
                      f"{fmt_ms(s)} ms (×{e / s:.2f})")
    for r, what in ((ri, "host → guest"), (ro, "guest → host")):
        if r == r and r < 1:
            slower.append(f"agent: `virtkit cp` {what} at ×{r:.2f} of scp's throughput")
    return "\n".join(out), slower


# ---------------------------------------------------------------------------------------------
# Part 9: a shared directory (virtio-fs) against QEMU's vhost-user-fs-pci, and virtio-blk

def find_virtiofsd():
    """virtiofsd's path, from scripts/build-virtiofsd.sh ($VIRTKIT_VIRTIOFSD, the Rust daemon
    on PATH, or the one it builds once into .cache/virtiofsd/)."""
    script = ROOT / "scripts" / "build-virtiofsd.sh"
    code, out = run([script], 1800, "scripts/build-virtiofsd.sh")
    lines = out.strip().splitlines()
    if code != 0 or not lines or not Path(lines[-1]).is_file():
        raise BenchError(f"part 9: scripts/build-virtiofsd.sh found no virtiofsd (exit {code}):\n"
                         + "\n".join(lines[-10:]))
    return Path(lines[-1])


def part9(args):
    build_helper(FSBENCH_SRC, FSBENCH)
    virtiofsd = find_virtiofsd()
    log(f"part 9: virtiofsd {rel(virtiofsd)} ({first_line([virtiofsd, '--version'])})")
    keys = [k.strip() for k in args.fs_configs.split(",") if k.strip()]
    by_key = {c["key"]: c for c in guest_fs.CONFIGS}
    configs = [by_key[k] for k in keys]
    base = (ASSETS / "guest-initramfs.cpio.gz").read_bytes()
    initrd = OUT / "fs-initrd"
    initrd.write_bytes(guest_disk.initrd_with_files(base, [
        (guest_fs.GUEST_PROGRAM, 0o755, FSBENCH.read_bytes()),
        (guest_fs.GUEST_SCRIPT, 0o755, guest_fs.guest_script().encode())]))
    script_path = OUT / "fs-host-script.sh"
    script_path.write_text(guest_fs.host_script(configs, args.fs_runs, FS_MIB, args.fs_files,
                                                args.fs_passes, FS_TIMEOUT))
    after_ready = len(configs) * args.fs_runs * FS_TIMEOUT // 2 + 300
    cmd = [EMULATED_HOST,
           "--binary", f"{VIRTKIT}:/usr/bin/virtkit",
           "--binary", f"{QEMU}:/usr/bin/qemu-system-x86_64",
           "--binary", f"{virtiofsd}:{guest_fs.VIRTIOFSD}",
           "--file", f"{ASSETS / 'vmlinuz'}:/guest/vmlinuz",
           "--file", f"{initrd}:/guest/initrd"]
    for f in QEMU_Q35_FILES:
        cmd += ["--file", f"{f}:{f}"]
    cmd += ["--timeout", str(after_ready), script_path]
    outer = 2 * 90 + after_ready + 60

    boots = {}
    info = {"attempts": None, "boot_to_ready_s": None, "host": None, "retry_notices": [],
            "guest_info": {}, "virtiofsd": str(virtiofsd),
            "virtiofsd_version": first_line([virtiofsd, "--version"])}
    failures, host_fail = [], []
    log_path = OUT / "fs-emulated-host.log"
    logf = log_path.open("w")

    def on_line(line):
        logf.write(line + "\n")
        logf.flush()
        body = line[len("[host] "):] if line.startswith("[host] ") else line
        r = guest_fs.parse_line(body)
        if r:
            b = boots.setdefault(r["cfg"], {}).setdefault(
                r["boot"], {"boot": r["boot"], "exit": None, "fails": [],
                            **{op: [] for op in guest_fs.OPS}})
            if "exit" in r:
                b["exit"] = r["exit"]
                b["ok"] = (r["exit"] == "0" and not b["fails"]
                           and all(len(b[op]) == args.fs_passes for op in guest_fs.OPS))
                log(f"part 9: {r['cfg']} boot {r['boot']}: "
                    + ", ".join(f"{op} " + "/".join(f"{x:.1f}" for x in b[op])
                                for op in guest_fs.OPS)
                    + f" (MB/s, files/s); exit {r['exit']}")
                if not b["ok"]:
                    failures.append(f"{r['cfg']} boot {r['boot']}: exit {r['exit']}"
                                    + (f", {'; '.join(b['fails'])}" if b["fails"] else "")
                                    + ", " + ", ".join(f"{len(b[op])} {op}" for op in guest_fs.OPS)
                                    + f" of {args.fs_passes} passes")
            elif "info" in r:
                info["guest_info"].setdefault(r["cfg"], []).append(r["info"])
                if r["info"].startswith("virtiofsd: "):
                    log(f"part 9: {r['cfg']} boot {r['boot']}: {r['info']}")
            elif "fail" in r:
                b["fails"].append(r["fail"])
                log(f"part 9: {r['cfg']} boot {r['boot']}: {r['fail']}")
            else:
                b[r["op"]].append(r["value"])
            return
        if body.startswith("BENCH9-LOG "):
            log(f"part 9: {body[len('BENCH9-LOG '):]}")
        elif body.startswith("BENCH9-FAIL "):
            host_fail.append(body[len("BENCH9-FAIL "):])
            log(f"part 9: emulated host: {body}")
        elif body.startswith("BENCH9-HOST "):
            info["host"] = body[len("BENCH9-HOST "):]
            log(f"part 9: emulated host ready: {info['host']}")
        elif "hung before /dev/kvm was ready" in line:
            info["retry_notices"].append(line.strip())
            log(line.strip())
        m = re.search(r"boot to kvm-ready ([\d.]+) s, run ([\d.]+) s, attempts (\d+)", line)
        if m:
            info["boot_to_ready_s"] = float(m.group(1))
            info["attempts"] = int(m.group(3))

    log(f"part 9: booting the emulated KVM host; {', '.join(keys)}; {args.fs_runs} guest boots "
        f"each, the order rotating, each {args.fs_passes} pass(es) of {FS_MIB} MiB written and "
        f"read and {args.fs_files} files created, statted and deleted")
    t0 = time.monotonic()
    try:
        code = stream(cmd, outer, "the emulated host run (part 9)", on_line)
    finally:
        logf.close()
    info["wall_s"] = time.monotonic() - t0
    if code != 0 or host_fail:
        tail = "\n".join(log_path.read_text().splitlines()[-30:])
        hang = "HangBeforeReady" in tail or "before /dev/kvm was ready" in tail
        what = (f"the emulated host run of part 9 failed (exit {code}"
                + (f": {'; '.join(host_fail)}" if host_fail else "") + ")")
        if hang or not boots:
            raise BenchError(
                what + ("; it hung before /dev/kvm was ready twice (emulator hangs, not "
                        "virtkit): rerun bench/run.sh" if hang else "")
                + f"; log: {rel(log_path)}; last lines:\n{tail}")
        failures.append(f"{what}; see {rel(log_path)}")
        log(f"part 9: {what}; reporting the boots that completed; last lines:\n{tail}")
    for c in configs:
        n = len(boots.get(c["key"], {}))
        if n < args.fs_runs:
            failures.append(f"{c['key']}: {n} of {args.fs_runs} boots reported")
    return {"boots": {k: [bs[i] for i in sorted(bs)] for k, bs in boots.items()},
            "configs": [dict(c) for c in configs], "info": info, "failures": failures,
            "files": args.fs_files, "passes": args.fs_passes,
            "commands": {c["key"]: " ".join(shlex.quote(x) for x in guest_fs.inner_commands(
                c, FS_MIB, args.fs_files, args.fs_passes)) + " </dev/null" for c in configs},
            "virtiofsd_command": " ".join(shlex.quote(x) for x in guest_fs.virtiofsd_command()),
            "harness": " ".join(shlex.quote(rel(c)) for c in cmd)}


FS_OP_LABELS = {"write": "sequential write", "read": "sequential read", "create": "create",
                "stat": "stat", "delete": "delete"}


def fs_tables(p9):
    """Per configuration: medians (min–max) over all passes of its good boots; then virtkit's
    virtio-fs over QEMU's (higher is better), with the boots resampled."""
    samples = lambda boots, op: [x for b in boots for x in b[op]]
    f = lambda x: f"{x:.1f}" if x < 100 else f"{x:.0f}"
    spread = lambda xs: (f"**{f(med(xs))}** ({f(min(xs))}–{f(max(xs))})" if xs else "n/a")
    rows, ok = [], {}
    for c in p9["configs"]:
        bs = p9["boots"].get(c["key"], [])
        good = [b for b in bs if b.get("ok")]
        ok[c["key"]] = good
        rows.append([c["label"], f"{len(good)}/{len(bs)}"]
                    + [spread(samples(good, op)) for op in guest_fs.OPS])
    t1 = md_table(["configuration", "boots ok", "sequential write, MB/s", "sequential read, MB/s",
                   "create, files/s", "stat, files/s", "delete, files/s"], rows)
    ratios, slower = [], []
    pairs = [("virtkit-fs", "qemu-fs", "virtkit virtio-fs / QEMU vhost-user-fs-pci"),
             ("virtkit-fs", "virtkit-blk", "virtkit virtio-fs / virtkit virtio-blk + ext4"),
             ("virtkit-blk", "qemu-blk", "virtkit virtio-blk / QEMU virtio-blk-pci")]
    for a_key, b_key, label in pairs:
        vk, qm = ok.get(a_key), ok.get(b_key)
        if not (vk and qm):
            continue
        cells = []
        for op in guest_fs.OPS:
            a, b = med(samples(vk, op)), med(samples(qm, op))
            if not (a == a and b == b and b > 0):
                cells.append("n/a")
                continue
            lo, hi = resampled_ratio_range(vk, qm, lambda boots: med(samples(boots, op)))
            cells.append(f"**{fmt_ratio(a / b)}** ({fmt_ratio(lo)}–{fmt_ratio(hi)})")
            if a < b and b_key.startswith("qemu"):
                unit = " MB/s" if op in ("write", "read") else " files/s"
                slower.append(f"shared directory {FS_OP_LABELS[op]} (emulated host): "
                              f"{label.split(' / ')[0]} {f(a)}{unit} vs "
                              f"{label.split(' / ')[1]} {f(b)}{unit} (×{a / b:.2f})")
        ratios.append([label] + cells)
    t2 = md_table(["ratio (higher is better for the first): median (95 % range, boots "
                   "resampled)"] + [FS_OP_LABELS[op] for op in guest_fs.OPS], ratios)
    return t1, t2, slower


def fs_section(args, p9):
    info = p9["info"]
    out = [f"### Part 9: a shared directory inside the emulated KVM host: virtio-fs against "
           f"QEMU's vhost-user-fs-pci, and virtio-blk, {FS_MIB} MiB file and {p9['files']} small "
           f"files, {args.fs_runs} boots each × {p9['passes']} pass(es), the order rotating\n"]
    t1, t2, slower = fs_tables(p9)
    out += [t1, "", t2, ""]
    attempts = info.get("attempts")
    notice = ("booted on the first attempt" if attempts == 1 else
              f"**hung before /dev/kvm was ready and was started again: {attempts} attempts** "
              "(an emulator hang, retried once by the harness)" if attempts else "attempts unknown")
    out.append("MB/s = 10^6 bytes/s; files/s over the whole phase; timed by the guest "
               "(`CLOCK_MONOTONIC`, bench/fsbench.c); medians (min–max) over all passes of the "
               "boots that completed. Write includes the final `fsync`, create and delete their "
               "final `syncfs`; the guest drops its caches before read, create, stat and delete. "
               f"virtiofsd: `{rel(info.get('virtiofsd', '?'))}` ({info.get('virtiofsd_version')}), "
               "the same binary for both VMMs. "
               f"Emulated host: {info.get('host') or 'unknown'}; QEMU TCG `-M microvm -cpu max "
               f"-smp 2 -m 2048`; the shared directory and the virtio-blk image on one tmpfs "
               f"(`{guest_fs.HOST_DIR}`); boot to kvm-ready {info.get('boot_to_ready_s')} s, "
               f"{notice}; the whole emulated-host run {info.get('wall_s', 0):.0f} s.\n")
    seen = {}
    for k, lines in info.get("guest_info", {}).items():
        for x in lines:
            if x.startswith(("virtiofsd: ", "mount: ")):
                seen.setdefault(k, set()).add(x.strip())
    for k in sorted(seen):
        for x in sorted(seen[k]):
            out.append(f"- {k}: `{x}`")
    out.append("")
    out.append(f"Commands inside the emulated host (each killed if still running after "
               f"{FS_TIMEOUT} s; before each QEMU virtio-fs boot the script starts "
               f"`{p9['virtiofsd_command']}` and waits for its socket), booted by:\n")
    out.append("```")
    out.append(p9["harness"])
    out += [f"{k}: {c}" for k, c in p9["commands"].items()]
    out.append("```")
    if p9["failures"]:
        out.append(f"\n**Failed boots in part 9: {len(p9['failures'])}:** "
                   + "; ".join(p9["failures"]))
    out.append("")
    return "\n".join(out), slower


# ---------------------------------------------------------------------------------------------
# Part 10: save and restore of the same small guest, direct on this host's KVM

# The guest (crates/test-guests/asm/stream.s): prints `virtkit-guest: stream N` lines as fast as
# it can and touches no other device, so a restored copy prints within microseconds of its first
# instruction on every VMM.
STREAM_MARKER = "virtkit-guest: stream"
SAVE_MEMORY_MIB = 128
SAVE_DIR = OUT / "save"
SAVE_HOME = SAVE_DIR / "home"  # VIRTKIT_HOME of the CLI rows
SAVE_BUNDLE = "sb"
SAVE_RUN_S = 0.3  # how long the guest runs before each save
RESTORE_TIMEOUT = 30  # seconds per restore run


def stream_candidates():
    return sorted(RELEASE.glob("build/virtkit-test-guests-*/out/stream.elf"),
                  key=lambda p: p.stat().st_mtime, reverse=True)


def file_sizes(*paths):
    """(apparent, allocated) bytes of the files together."""
    st = [os.stat(p) for p in paths]
    return sum(s.st_size for s in st), sum(s.st_blocks * 512 for s in st)


def fsync_ms(*paths):
    """Milliseconds to fsync the files (what a peer's save leaves unsynced)."""
    t = time.monotonic()
    for p in paths:
        fd = os.open(p, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    return (time.monotonic() - t) * 1e3


def background(cmd, env=None):
    """A VMM started for a save: its output thrown away, in its own session (killed by pid)."""
    p = subprocess.Popen([str(c) for c in cmd], cwd=ROOT, stdin=subprocess.DEVNULL,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                         start_new_session=True, env=env)
    _children.add(p)
    return p


def end_background(p):
    _kill_tree(p)
    try:
        p.wait(timeout=10)
    finally:
        _children.discard(p)


def timed_spawn(cmd, label, kill_at_marker, env=None):
    """spawntime for a restore, started in the background: (Popen, collect) where collect()
    waits for it and returns its parsed result (first_ms: the first byte of the first stream
    line)."""
    hcmd = [HELPER, "-t", str(RESTORE_TIMEOUT), "-l", label, "-m", STREAM_MARKER,
            "-f", STREAM_MARKER] + (["-k"] if kill_at_marker else []) + ["--"] + cmd
    p = subprocess.Popen([str(c) for c in hcmd], cwd=ROOT, stdin=subprocess.DEVNULL,
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                         start_new_session=True, env=env)
    _children.add(p)

    def collect():
        try:
            out, _ = p.communicate(timeout=RESTORE_TIMEOUT + 30)
        except subprocess.TimeoutExpired:
            _kill_tree(p)
            p.wait()
            raise BenchError(f"{label}: spawntime did not end")
        finally:
            _children.discard(p)
        out = out.decode(errors="replace")
        r = next((parse_spawn(l) for l in out.splitlines() if parse_spawn(l)), None)
        if r is None:
            raise BenchError(f"{label}: no result from spawntime:\n{out[-2000:]}")
        m = re.search(r"spawn_ns=(\d+)", out)
        r["spawn_ns"] = int(m.group(1)) if m else None
        r["first_ms"] = r["first_byte_ms"][0] if r["first_byte_ms"] else -1.0
        r["ok"] = r["first_ms"] >= 0
        r["tail"] = out[-1500:]
        return r

    return p, collect


def wait_path(path, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            raise BenchError(f"{path} did not appear within {timeout} s")
        time.sleep(0.0002)


class Qmp:
    """A minimal QMP client on a Unix socket."""

    def __init__(self, path, timeout=10.0):
        import socket
        deadline = time.monotonic() + timeout
        while True:
            s = socket.socket(socket.AF_UNIX)
            try:
                s.connect(str(path))
                break
            except OSError:
                s.close()
                if time.monotonic() > deadline:
                    raise BenchError(f"QMP socket {path} did not answer within {timeout} s")
                time.sleep(0.0002)
        s.settimeout(timeout)
        self.sock = s
        self.f = s.makefile("rw")
        json.loads(self.f.readline())
        self.cmd("qmp_capabilities")

    def cmd(self, name, **arguments):
        msg = {"execute": name}
        if arguments:
            msg["arguments"] = arguments
        self.f.write(json.dumps(msg) + "\n")
        self.f.flush()
        while True:
            line = self.f.readline()
            if not line:
                raise BenchError(f"QMP: QEMU closed the monitor during {name}")
            r = json.loads(line)
            if "error" in r:
                raise BenchError(f"QMP {name}: {r['error']}")
            if "return" in r:
                return r["return"]

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass


def fc_api(sock, method, url, body, timeout=30.0):
    """One Firecracker API request on its Unix socket: (status, body text)."""
    import socket

    class Conn(http.client.HTTPConnection):
        def connect(self):
            self.sock = socket.socket(socket.AF_UNIX)
            self.sock.settimeout(timeout)
            self.sock.connect(str(sock))

    c = Conn("localhost")
    try:
        c.request(method, url, body=json.dumps(body), headers={"Content-Type": "application/json"})
        r = c.getresponse()
        return r.status, r.read().decode(errors="replace")
    finally:
        c.close()


def fc_api_when_up(sock, method, url, body):
    """fc_api once the socket accepts connections (a process just started)."""
    deadline = time.monotonic() + 10
    while True:
        try:
            return fc_api(sock, method, url, body)
        except (ConnectionRefusedError, FileNotFoundError):
            if time.monotonic() > deadline:
                raise BenchError(f"Firecracker's API socket {sock} did not answer within 10 s")
            time.sleep(0.0002)


def save_commands(stream):
    """Part 10's commands, for the report and the runs."""
    st = SAVE_DIR
    q = [QEMU, "-enable-kvm", "-cpu", QEMU_DIRECT_CPU, "-M", "microvm", "-m",
         f"{SAVE_MEMORY_MIB}M", "-smp", "1", "-nodefaults", "-no-user-config", "-nographic",
         "-serial", "stdio", "-kernel", stream, "-qmp", f"unix:{st / 'qmp.sock'},server=on,wait=off"]
    lib = [SAVE_EXAMPLE, "--kernel", stream, "--memory-mib", str(SAVE_MEMORY_MIB)]
    return {
        "virtkit-lib-save": [SAVE_EXAMPLE, "save"] + lib[1:] + ["--state", st / "lib.vksave"],
        "virtkit-lib-restore": [SAVE_EXAMPLE, "restore"] + lib[1:] + [
            "--state", st / "lib.vksave", "--timings", st / "lib-timings.json", "--run-ms", "5000"],
        "virtkit-create": [VIRTKIT, "create", SAVE_BUNDLE, "--kernel", stream, "--memory",
                           f"{SAVE_MEMORY_MIB}M", "--cpus", "1", "--disk-size", "1M",
                           "--network", "none"],
        "virtkit-suspend": [VIRTKIT, "suspend", SAVE_BUNDLE],
        "virtkit-run": [VIRTKIT, "run", SAVE_BUNDLE],
        "qemu-save": q,
        "qemu-restore": q + ["-incoming", f"exec:cat {st / 'qemu.state'}"],
        "fc-save": [peer_binary("Firecracker") or "firecracker", "--api-sock", st / "fc-save.sock",
                    "--config-file", st / "fc-save.json"],
        "fc-restore": [peer_binary("Firecracker") or "firecracker", "--api-sock",
                       st / "fc-restore.sock"],
    }


def part10_virtkit_lib(args, cmds, failures):
    """The library API: saves of a booted VM and of a restored one (one process each, a warm-up
    save first), and restores, each in a new process timed from its spawn to its first output."""
    st = SAVE_DIR
    res = {"save": [], "save_restored": [], "restore": [], "phases": []}
    code, out = run(cmds["virtkit-lib-save"] + ["--saves", str(args.save_runs + 1)],
                    60 + 5 * args.save_runs, "save_restore save")
    saves = [dict((k, float(v)) for k, v in re.findall(r"(\w+)=([\d.]+)", l))
             for l in out.splitlines() if l.startswith("SAVE ")]
    if code != 0 or len(saves) != args.save_runs + 1:
        raise BenchError(f"save_restore save failed (exit {code}):\n{out[-2000:]}")
    res["save"] = saves[1:]
    res["sizes"] = file_sizes(st / "lib.vksave")
    # The first save of a restored VM, each in a new process (as `virtkit suspend` of a resumed
    # VM does): its memory is a private mapping of the state file it came from, and the save's
    # zero scan reads every page of it.
    for i in range(args.save_runs + 1):
        code, out = run(cmds["virtkit-lib-save"][:-1] + [st / "lib-restored.vksave", "--from",
                        st / "lib.vksave", "--saves", "1"], 60, "save_restore save --from")
        saves = [dict((k, float(v)) for k, v in re.findall(r"(\w+)=([\d.]+)", l))
                 for l in out.splitlines() if l.startswith("SAVE ")]
        if code != 0 or len(saves) != 1:
            raise BenchError(f"save_restore save --from failed (exit {code}):\n{out[-2000:]}")
        if i > 0:
            res["save_restored"] += saves
    for i in range(args.save_runs + 1):
        p, collect = timed_spawn(cmds["virtkit-lib-restore"], "virtkit-lib", kill_at_marker=True)
        r = collect()
        if not r["ok"]:
            failures.append(f"virtkit (library) restore: no output:\n{r['tail']}")
            continue
        try:
            t = json.loads((st / "lib-timings.json").read_text())
            (st / "lib-timings.json").unlink()
            s = r["spawn_ns"]
            r["phases"] = {"spawn → main": (t["main_ns"] - s) / 1e6,
                           "VirtualMachine::new": (t["new_ns"] - t["main_ns"]) / 1e6,
                           "restore_machine_state": (t["restored_ns"] - t["new_ns"]) / 1e6,
                           "resume": (t["resumed_ns"] - t["restored_ns"]) / 1e6,
                           "resume → first output read": r["first_ms"] - (t["resumed_ns"] - s) / 1e6}
        except (OSError, ValueError, KeyError, TypeError):
            r["phases"] = None
        if i > 0:
            res["restore"].append(r)
    return res


def part10_virtkit_cli(args, cmds, failures):
    """The CLI: a bundle booted once (`run --detach`), then N+1 times: `virtkit suspend` (timed
    by spawntime to its exit) and `virtkit run NAME` in the foreground (timed from its spawn to
    the guest's first output), which the next suspend ends. The first suspend (of the freshly
    booted VM) is a warm-up; every later one saves a VM that was itself restored."""
    env = dict(os.environ, VIRTKIT_HOME=str(SAVE_HOME))
    shutil.rmtree(SAVE_HOME, ignore_errors=True)
    SAVE_HOME.mkdir(parents=True)
    code, out = run(["env", f"VIRTKIT_HOME={SAVE_HOME}"] + cmds["virtkit-create"], 60,
                    "virtkit create")
    if code != 0:
        raise BenchError(f"virtkit create failed:\n{out}")
    code, out = run(["env", f"VIRTKIT_HOME={SAVE_HOME}", VIRTKIT, "run", SAVE_BUNDLE, "--detach"],
                    60, "virtkit run --detach")
    if code != 0:
        raise BenchError(f"virtkit run --detach failed:\n{out}")
    state = SAVE_HOME / "vms" / SAVE_BUNDLE / "state.vksave"
    res = {"suspend": [], "restore": [], "sizes": None}
    pending = None
    try:
        for i in range(args.save_runs + 1):
            time.sleep(SAVE_RUN_S)
            p = subprocess.run([str(c) for c in [HELPER, "-t", "30", "-l", "suspend", "--"]
                                + cmds["virtkit-suspend"]], cwd=ROOT, env=env,
                               stdin=subprocess.DEVNULL, capture_output=True, timeout=60)
            out = p.stdout.decode(errors="replace")
            r = next((parse_spawn(l) for l in out.splitlines() if parse_spawn(l)), None)
            if r is None or r["status"] != "exit:0" or not state.exists():
                raise BenchError(f"virtkit suspend failed:\n{out}{p.stderr.decode(errors='replace')}")
            if pending is not None:
                rr = pending()
                pending = None
                if not rr["ok"]:
                    failures.append(f"virtkit (CLI) restore: no output:\n{rr['tail']}")
                elif i > 1:  # the first restore is a warm-up
                    res["restore"].append(rr)
            if i > 0:
                res["suspend"].append(r["exit_ms"])
                res["sizes"] = file_sizes(state)
            _, pending = timed_spawn(cmds["virtkit-run"], "virtkit-cli", kill_at_marker=False,
                                     env=env)
        time.sleep(SAVE_RUN_S)
    finally:
        subprocess.run([str(VIRTKIT), "stop", SAVE_BUNDLE, "--timeout", "0"], env=env,
                       stdin=subprocess.DEVNULL, capture_output=True, timeout=60)
        if pending is not None:
            rr = pending()
            if rr["ok"]:
                res["restore"].append(rr)
    return res


def part10_qemu(args, cmds, failures):
    """QEMU: each save boots the guest, lets it run, `stop`s it and migrates it to a file
    (`migrate exec:cat > FILE`, timed to `completed`), then the file is fsynced (timed apart);
    each restore is a new QEMU with `-incoming exec:cat FILE`, `cont` once it is paused."""
    st = SAVE_DIR
    qsock = st / "qmp.sock"
    image = st / "qemu.state"
    res = {"save": [], "fsync": [], "restore": [], "sizes": None}
    for i in range(args.save_runs + 1):
        qsock.unlink(missing_ok=True)
        image.unlink(missing_ok=True)
        p = background(cmds["qemu-save"])
        try:
            m = Qmp(qsock)
            time.sleep(SAVE_RUN_S)
            m.cmd("stop")
            t = time.monotonic()
            m.cmd("migrate", uri=f"exec:cat > {image}")
            while True:
                s = m.cmd("query-migrate").get("status")
                if s in ("completed", "failed", "cancelled"):
                    break
                time.sleep(0.0002)
            save_ms = (time.monotonic() - t) * 1e3
            if s != "completed":
                raise BenchError(f"QEMU's migration to a file ended {s}")
            sync = fsync_ms(image)
            m.close()
        finally:
            end_background(p)
        if i > 0:
            res["save"].append(save_ms)
            res["fsync"].append(sync)
    res["sizes"] = file_sizes(image)
    for i in range(args.save_runs + 1):
        qsock.unlink(missing_ok=True)
        p, collect = timed_spawn(cmds["qemu-restore"], "QEMU", kill_at_marker=True)
        try:
            m = Qmp(qsock)
            while m.cmd("query-status").get("status") == "inmigrate":
                time.sleep(0.0002)
            try:
                m.cmd("cont")
            except (OSError, BenchError):
                pass  # QEMU killed at the guest's first line before its answer was read
            m.close()
        except (BenchError, OSError) as e:
            failures.append(f"QEMU restore: {e}")
        r = collect()
        if not r["ok"]:
            failures.append(f"QEMU restore: no output:\n{r['tail']}")
        elif i > 0:
            res["restore"].append(r)
    return res


def part10_firecracker(args, cmds, failures, stream):
    """Firecracker: each save boots the guest from a configuration file with the API socket on,
    `PATCH /vm` Paused, `PUT /snapshot/create` (Full; timed), then fsyncs both files (timed
    apart); each restore is a new Firecracker, `PUT /snapshot/load` with resume_vm."""
    st = SAVE_DIR
    ssock, rsock = st / "fc-save.sock", st / "fc-restore.sock"
    snap, mem = st / "fc.snap", st / "fc.mem"
    (st / "fc-save.json").write_text(json.dumps({
        "boot-source": {"kernel_image_path": str(stream), "boot_args": "console=ttyS0"},
        "drives": [],
        "machine-config": {"vcpu_count": 1, "mem_size_mib": SAVE_MEMORY_MIB},
        "logger": {"log_path": str(st / "fc-save.log")},
    }, indent=1) + "\n")
    (st / "fc-save.log").touch()
    res = {"pause": [], "save": [], "fsync": [], "restore": [], "sizes": None}
    for i in range(args.save_runs + 1):
        ssock.unlink(missing_ok=True)
        for f in (snap, mem):
            f.unlink(missing_ok=True)
        p = background(cmds["fc-save"])
        try:
            wait_path(ssock)
            time.sleep(SAVE_RUN_S)
            t = time.monotonic()
            code, body = fc_api_when_up(ssock, "PATCH", "/vm", {"state": "Paused"})
            t1 = time.monotonic()
            if code != 204:
                raise BenchError(f"Firecracker PATCH /vm Paused: {code} {body}")
            code, body = fc_api(ssock, "PUT", "/snapshot/create", {
                "snapshot_type": "Full", "snapshot_path": str(snap), "mem_file_path": str(mem)})
            t2 = time.monotonic()
            if code != 204:
                raise BenchError(f"Firecracker PUT /snapshot/create: {code} {body} "
                                 f"(its log: {rel(st / 'fc-save.log')})")
            sync = fsync_ms(snap, mem)
        finally:
            end_background(p)
        if i > 0:
            res["pause"].append((t1 - t) * 1e3)
            res["save"].append((t2 - t1) * 1e3)
            res["fsync"].append(sync)
    res["sizes"] = file_sizes(snap, mem)
    for i in range(args.save_runs + 1):
        rsock.unlink(missing_ok=True)
        p, collect = timed_spawn(cmds["fc-restore"], "Firecracker", kill_at_marker=True)
        try:
            wait_path(rsock)
            try:
                code, body = fc_api_when_up(rsock, "PUT", "/snapshot/load", {
                    "snapshot_path": str(snap),
                    "mem_backend": {"backend_type": "File", "backend_path": str(mem)},
                    "resume_vm": True})
            except (ConnectionResetError, http.client.RemoteDisconnected):
                # Killed at the guest's first line before its answer was read: the output
                # (checked below) says whether the load worked.
                code, body = 204, ""
            if code != 204:
                failures.append(f"Firecracker PUT /snapshot/load: {code} {body}")
        except (BenchError, OSError) as e:
            failures.append(f"Firecracker restore: {e}")
        r = collect()
        if not r["ok"]:
            failures.append(f"Firecracker restore: no output:\n{r['tail']}")
        elif i > 0:
            res["restore"].append(r)
    return res


def part10(args, stream):
    SAVE_DIR.mkdir(parents=True, exist_ok=True)
    cmds = save_commands(stream)
    failures = []
    out = {"commands": {k: " ".join(shlex.quote(rel(c)) for c in v) for k, v in cmds.items()},
           "failures": failures, "runs": args.save_runs, "stream": rel(stream)}
    log(f"part 10: virtkit through the library API ({args.save_runs} saves and restores)")
    out["lib"] = part10_virtkit_lib(args, cmds, failures)
    log("part 10: virtkit through the CLI (suspend, run NAME)")
    out["cli"] = part10_virtkit_cli(args, cmds, failures)
    log("part 10: QEMU (migrate to a file, -incoming)")
    out["qemu"] = part10_qemu(args, cmds, failures)
    if peer_binary("Firecracker"):
        log("part 10: Firecracker (snapshot create, snapshot load)")
        try:
            out["fc"] = part10_firecracker(args, cmds, failures, stream)
        except BenchError as e:
            out["fc"] = {"error": str(e)}
            failures.append(f"Firecracker: {e}")
    else:
        out["fc"] = {"error": "no binary (scripts/build-peers.sh builds it)"}
    for f in ("qemu.state", "fc.mem", "fc.snap", "lib.vksave", "lib-restored.vksave"):
        (SAVE_DIR / f).unlink(missing_ok=True)
    return out


def fmt_mib(b):
    return f"{b / (1 << 20):.1f} MiB" if b >= (1 << 20) else f"{b / 1024:.0f} KiB"


def med_range(xs):
    return (f"**{fmt_ms(med(xs))}** ({fmt_ms(pct(xs, 10))}–{fmt_ms(pct(xs, 90))})"
            if xs else "n/a")


def save_section(args, p10):
    slower = []
    lib, cli, qemu, fc = p10["lib"], p10["cli"], p10["qemu"], p10["fc"]
    gib = SAVE_MEMORY_MIB / 1024
    lib_save = [s["pause_ms"] + s["save_ms"] for s in lib["save"]]
    lib_save_r = [s["pause_ms"] + s["save_ms"] for s in lib["save_restored"]]
    touched = lib["save"][0]["pages"] * 4096 if lib["save"] else 0
    rows = []

    def restore_col(rs):
        return med_range([r["first_ms"] for r in rs])

    rows.append(["virtkit, library API (`save_restore` example)",
                 med_range(lib_save) + " (pause " + fmt_ms(med([s["pause_ms"] for s in lib["save"]]))
                 + " + save_machine_state)",
                 restore_col(lib["restore"]),
                 f"{fmt_mib(lib['sizes'][0])} / {fmt_mib(lib['sizes'][1])}",
                 f"{len(lib['restore'])}/{args.save_runs}"])
    rows.append(["virtkit, library API, first save of a restored VM (a new process each)",
                 med_range(lib_save_r), "(as above)", "(as above)",
                 f"{len(lib['save_restored'])}/{args.save_runs}"])
    rows.append(["virtkit CLI (`virtkit suspend` / `virtkit run NAME`, bundle)",
                 med_range(cli["suspend"]) + " (the whole `suspend` command, of a restored VM, "
                 "to its exit)",
                 restore_col(cli["restore"]),
                 f"{fmt_mib(cli['sizes'][0])} / {fmt_mib(cli['sizes'][1])}" if cli["sizes"] else "n/a",
                 f"{len(cli['restore'])}/{args.save_runs}"])
    q_total = [a + b for a, b in zip(qemu["save"], qemu["fsync"])]
    rows.append(["QEMU microvm (`migrate exec:cat > FILE` / `-incoming exec:cat FILE` + `cont`)",
                 med_range(q_total) + f" (migrate {fmt_ms(med(qemu['save']))} + fsync "
                 f"{fmt_ms(med(qemu['fsync']))})",
                 restore_col(qemu["restore"]),
                 f"{fmt_mib(qemu['sizes'][0])} / {fmt_mib(qemu['sizes'][1])}",
                 f"{len(qemu['restore'])}/{args.save_runs}"])
    peers = {"QEMU microvm": (med(q_total), med([r["first_ms"] for r in qemu["restore"]])
                              if qemu["restore"] else float("nan"))}
    if "error" in fc:
        rows.append(["Firecracker", "failed: " + fc["error"].replace("\n", " ")[:300], "", "", ""])
    else:
        f_total = [a + b for a, b in zip(fc["save"], fc["fsync"])]
        rows.append(["Firecracker (`PUT /snapshot/create` Full / `PUT /snapshot/load` resume_vm)",
                     med_range(f_total) + f" (create {fmt_ms(med(fc['save']))} + fsync "
                     f"{fmt_ms(med(fc['fsync']))}; the pause before it "
                     f"{fmt_ms(med(fc['pause']))})",
                     restore_col(fc["restore"]),
                     f"{fmt_mib(fc['sizes'][0])} / {fmt_mib(fc['sizes'][1])} (state + memory file)",
                     f"{len(fc['restore'])}/{args.save_runs}"])
        peers["Firecracker"] = (med(f_total), med([r["first_ms"] for r in fc["restore"]])
                                if fc["restore"] else float("nan"))
    t1 = md_table(["VMM", "save: paused → file synced, ms: median (p10–p90)",
                   "restore to running: process start → first guest output, ms: median (p10–p90)",
                   "state file: apparent / allocated", "restores ok"], rows)

    best_save = min(peers.items(), key=lambda kv: kv[1][0] if kv[1][0] == kv[1][0] else 1e18)
    best_restore = min(peers.items(), key=lambda kv: kv[1][1] if kv[1][1] == kv[1][1] else 1e18)
    ratios = []
    for label, save_xs, rest in [("virtkit (library API)", lib_save, lib["restore"]),
                                 ("virtkit (CLI)", cli["suspend"], cli["restore"])]:
        vs, vr = med(save_xs), med([r["first_ms"] for r in rest]) if rest else float("nan")
        ratios.append([f"{label} / best peer",
                       f"{fmt_ratio(vs / best_save[1][0])} (vs {best_save[0]})",
                       f"{fmt_ratio(vr / best_restore[1][1])} (vs {best_restore[0]})"])
        for n, (ps, pr) in peers.items():
            if vs > ps:
                slower.append(f"save/restore: {label} save {vs:.1f} ms vs {n} {ps:.1f} ms (×{vs / ps:.2f})")
            if vr > pr:
                slower.append(f"save/restore: {label} restore to first output {vr:.1f} ms vs {n} "
                              f"{pr:.1f} ms (×{vr / pr:.2f})")
        if vr > 5.0:
            slower.append(f"save/restore: {label} restore to first output {vr:.1f} ms, short of "
                          "the 5 ms target")
    t2 = md_table(["ratio (lower is better for virtkit)", "save (to synced file)",
                   "restore to first output"], ratios)

    phases = [r["phases"] for r in lib["restore"] if r.get("phases")]
    t3 = md_table(["step of a library restore (medians over the runs)", "ms"],
                  [[k, fmt_ms(med([p[k] for p in phases]))] for k in phases[0]]) if phases else ""

    out = [f"### Part 10: save and restore of a small guest, direct on this host's KVM, 1 vCPU, "
           f"{SAVE_MEMORY_MIB} MiB, {args.save_runs} runs each\n", t1, "", t2, ""]
    out.append(
        f"The guest is `stream` ({p10['stream']}, `crates/test-guests/asm/stream.s`): it prints "
        "`virtkit-guest: stream N` lines as fast as it can and touches no other device, so a "
        "restored copy prints within microseconds of its first instruction and the restore "
        "figure is the VMM's, not a tick interval's. It runs "
        f"{SAVE_RUN_S} s before each save. **Save** is from a paused VM to the state written and "
        "on disk: virtkit's `save_machine_state` syncs the file itself (its pause, "
        "under 1 ms, is included); QEMU's and Firecracker's saves do not, so the files they wrote "
        "are fsynced right after and that time is added (shown apart). **Restore to running** is "
        "bench/spawntime.c's timestamp right before `posix_spawn` of the VMM to the first byte "
        "of the first complete `stream` line read from its stdout (COM1), with whatever the "
        "orchestrator must send in between (QEMU: QMP `query-status` until `paused`, then `cont`; "
        "Firecracker: `PUT /snapshot/load` as soon as its API socket answers) sent by the "
        "Python harness as fast as it can. A warm-up save and restore of each is not counted. "
        f"The guest touches {fmt_mib(touched)} of its memory ({int(touched) // 4096} pages): virtkit "
        f"writes only those (the rest are holes), so its save costs "
        f"{fmt_ms(med(lib_save) / gib)} ms per GiB of guest memory (the zero scan and the fsync) "
        f"and, per GiB of touched memory, {fmt_ms(med(lib_save) / (touched / (1 << 30)))} ms: "
        "fixed costs, not a throughput, at this size.")
    if t3:
        out += ["", "Where a library restore's time goes (`save_restore restore --timings`: "
                "CLOCK_MONOTONIC in the process, against spawntime's spawn timestamp):\n", t3]
    out += ["", "Commands:\n", "```"]
    out += [f"{k}: {c}" for k, c in p10["commands"].items()]
    out.append("```")
    if p10["failures"]:
        out.append(f"\n**Failed runs in part 10: {len(p10['failures'])}:** "
                   + "; ".join(f.splitlines()[0] for f in p10["failures"]))
    out.append("")
    return "\n".join(out), slower


# ---------------------------------------------------------------------------------------------
# Part 11: save and restore of the stock kernel inside the emulated KVM host (bench/guest_save.py)

EMULATED_SAVE_MEM_MIB = 3072  # the emulated host's memory: the guests, and their state on a tmpfs


def part11(args):
    build_helper(SAVECTL_SRC, SAVECTL)
    fc = peer_binary("Firecracker")
    runs = args.emulated_save_runs
    script_path = OUT / "emulated-host-save-script.sh"
    script_path.write_text(guest_save.host_script(runs, bool(fc)))
    # The library rows need crates/virtkit/examples/save_restore.rs (built with part 10's step).
    fc_conf = OUT / "firecracker-emulated-save.json"
    fc_conf.write_text(guest_save.firecracker_config())
    vmms = [v for v in guest_save.VMMS if v != "Firecracker" or fc]
    with_lib = SAVE_EXAMPLE.exists()
    if not with_lib:
        vmms.remove("virtkit-lib")
        script_path.write_text(guest_save.host_script(runs, bool(fc), with_lib=False))
    # Per VMM: its boot (20-60 s under the emulator, with the 96 MiB written), then per step
    # a save, a restore and SETTLE_S, each well under a minute; plus slack.
    after_ready = len(vmms) * (300 + (runs + 1) * 90) + 120
    cmd = [EMULATED_HOST, "--mem", str(EMULATED_SAVE_MEM_MIB),
           "--binary", f"{VIRTKIT}:/usr/bin/virtkit",
           "--binary", f"{QEMU}:/usr/bin/qemu-system-x86_64",
           "--binary", f"{HELPER}:/usr/bin/spawntime",
           "--binary", f"{SAVECTL}:/usr/bin/savectl",
           "--file", f"{ASSETS / 'vmlinuz'}:{guest_save.INNER}/vmlinuz",
           "--file", f"{ASSETS / 'guest-initramfs.cpio.gz'}:{guest_save.INNER}/initrd"]
    if with_lib:
        cmd += ["--binary", f"{SAVE_EXAMPLE}:/usr/bin/save_restore"]
    if fc:
        cmd += ["--file", f"{ASSETS / 'vmlinux'}:{guest_save.INNER}/vmlinux",
                "--binary", f"{fc}:/usr/bin/firecracker",
                "--file", f"{fc_conf}:{guest_save.FC_CONFIG}"]
    else:
        log("part 11: no Firecracker binary (scripts/build-peers.sh builds it); not run")
    for f in QEMU_MICROVM_FILES:
        pth = Path("/usr/share/qemu") / f
        if pth.exists():
            cmd += ["--file", f"{pth}:/usr/share/qemu/{f}"]
    cmd += ["--timeout", str(after_ready), script_path]
    outer = 2 * 90 + after_ready + 60

    parser = guest_save.Parser(parse_spawn)
    info = {"attempts": None, "boot_to_ready_s": None, "run_s": None, "host": None}
    log_path = OUT / "emulated-host-save.log"
    logf = log_path.open("w")

    def on_line(line):
        logf.write(line + "\n")
        logf.flush()
        body = line[len("[host] "):] if line.startswith("[host] ") else line
        if body.startswith("BENCH-HOST "):
            info["host"] = body[len("BENCH-HOST "):]
        if body.startswith("SB11-VMM "):
            log(f"part 11: {body[len('SB11-VMM '):]}")
        if body.startswith(("SB11-READY", "SB11-ERROR", "SAVECTL", "SPAWNTIME label")):
            log(f"part 11: {body}")
        try:
            if parser.line(body):
                return
        except (ValueError, KeyError, IndexError) as e:
            info.setdefault("parse_errors", []).append(f"{body[:200]}: {e}")
            return
        m = re.search(r"boot to kvm-ready ([\d.]+) s, run ([\d.]+) s, attempts (\d+), "
                      r"script exit (\S+)", line)
        if m:
            info["boot_to_ready_s"] = float(m.group(1))
            info["run_s"] = float(m.group(2))
            info["attempts"] = int(m.group(3))
        if "VIRTKIT-HOST: kvm-ready" in line:
            log("part 11: emulated host is up (kvm-ready)")

    log(f"part 11: booting the emulated KVM host; {', '.join(vmms)}: one guest boot each, then "
        f"{runs + 1} saves and {runs} restores in a chain")
    t0 = time.monotonic()
    try:
        code = stream(cmd, outer, "the emulated host run (part 11)", on_line)
    finally:
        logf.close()
    info["wall_s"] = time.monotonic() - t0
    if code != 0:
        tail = "\n".join(log_path.read_text().splitlines()[-30:])
        raise BenchError(f"the emulated host run of part 11 failed (exit {code}); log: "
                         f"{rel(log_path)}; last lines:\n{tail}")
    res = {v: parser.res[v] for v in vmms}
    failures = [f"{v}: {e}" for v, r in res.items() for e in r["errors"]]
    for v, r in res.items():
        if not r["save"] or not r["restore"]:
            failures.append(f"{v}: {len(r['save'])} saves, {len(r['restore'])} restores measured")
    return {"vmms": res, "info": info, "failures": failures, "runs": runs,
            "peers": {"Firecracker": peer_version("Firecracker")} if fc else {},
            "commands": guest_save.commands(),
            "harness": " ".join(shlex.quote(rel(c)) for c in cmd)}


def emulated_save_section(args, p11):
    slower = []
    res, info, runs = p11["vmms"], p11["info"], p11["runs"]
    rows, meds = [], {}
    for v, r in res.items():
        used = r["used_kib"]
        if not used and r["pages"]:
            used = med(r["pages"]) * 4  # the library's save: the pages it wrote
        gib = used / (1 << 20) if used else None
        label = guest_save.LABELS.get(v, v)
        sv, rs = r["save"], r["restore"]
        if not sv and not rs:
            err = "; ".join(r["errors"] + r["tail"][-6:])[:600] or "no result"
            rows.append([label, "failed: " + err.replace("|", "\\|"), "", "", "", "", ""])
            continue
        meds[v] = (med(sv) if sv else float("nan"), med(rs) if rs else float("nan"))
        parts = ""
        if r["save_parts"]:
            keys = list(r["save_parts"][0])
            parts = " (" + " + ".join(f"{k} {fmt_ms(med([p[k] for p in r['save_parts']]))}"
                                      for k in keys) + ")"
        first = (f"; the booted VM's {fmt_ms(sv[0])}, the restored VMs' median "
                 f"{fmt_ms(med(sv[1:]))}" if len(sv) > 1 else "")
        sizes = (f"{fmt_mib(med([a for a, _ in r['sizes']]))} / "
                 f"{fmt_mib(med([b for _, b in r['sizes']]))}") if r["sizes"] else "n/a"
        rows.append([label,
                     (f"**{fmt_ms(med(sv))}** ({fmt_ms(min(sv))}–{fmt_ms(max(sv))}){parts}{first}"
                      if sv else "n/a"),
                     f"{med(sv) / gib:.0f}" if sv and gib else "n/a",
                     (f"**{fmt_ms(med(rs))}** ({fmt_ms(min(rs))}–{fmt_ms(max(rs))})"
                      if rs else "n/a"),
                     sizes,
                     f"{used / 1024:.0f} MiB" if used else "n/a",
                     f"{len(sv)}/{runs + 1} saves, {len(rs)}/{runs} restores"])
    t1 = md_table(["VMM", "save: running → paused → state written, ms: median (min–max)",
                   "save, ms per GiB of the guest's memory in use",
                   "restore to running: process start → the guest's next tick line, ms: median "
                   "(min–max)", "state file(s): apparent / allocated (median)",
                   "guest memory in use at ready (MemTotal − MemFree; library: the pages its "
                   "save wrote)", "measured"], rows)
    ratios = []
    peers = {n: m for n, m in meds.items() if not n.startswith("virtkit")}
    for vk, vk_label in (("virtkit", "virtkit (CLI)"), ("virtkit-lib", "virtkit (library API)")):
        if vk not in meds or not peers:
            continue
        vs, vr = meds[vk]
        ok = list(peers.items())
        bs = min((x for x in ok if x[1][0] == x[1][0]), key=lambda x: x[1][0], default=None)
        br = min((x for x in ok if x[1][1] == x[1][1]), key=lambda x: x[1][1], default=None)
        ratios.append([f"{vk_label} / best peer",
                       f"{fmt_ratio(vs / bs[1][0])} (vs {bs[0]})" if bs else "n/a",
                       f"{fmt_ratio(vr / br[1][1])} (vs {br[0]})" if br else "n/a"])
        for n, (ps, pr) in peers.items():
            if vs > ps:
                slower.append(f"stock-kernel save/restore (emulated host): {vk_label} save "
                              f"{vs:.0f} ms vs {n} {ps:.0f} ms (×{vs / ps:.2f})")
            if vr > pr:
                slower.append(f"stock-kernel save/restore (emulated host): {vk_label} restore "
                              f"to the next tick {vr:.0f} ms vs {n} {pr:.0f} ms (×{vr / pr:.2f})")
    t2 = md_table(["ratio (lower is better for virtkit)", "save", "restore to running"],
                  ratios) if ratios else ""
    out = [f"### Part 11: save and restore of the stock kernel inside the emulated KVM host, "
           f"1 vCPU, {guest_save.MEMORY_MIB} MiB, {guest_save.TOUCH_MIB} MiB written by the "
           f"guest, {runs + 1} saves and {runs} restores each\n", t1, ""]
    if t2:
        out += [t2, ""]
    phases = res.get("virtkit-lib", {}).get("phases") or []
    if phases:
        out += ["Where a library restore's time goes (`save_restore restore --timings`, against "
                "spawntime's spawn timestamp; medians):\n",
                md_table(["step", "ms"], [[k, fmt_ms(med([p[k] for p in phases]))]
                                          for k in phases[0]]), ""]
    out.append(
        f"One boot of the emulated KVM host (boot to kvm-ready {info.get('boot_to_ready_s')} s, "
        f"attempts {info.get('attempts')}, the script {info.get('run_s')} s, this part "
        f"{info.get('wall_s', 0) / 60:.1f} min in all; emulated host: {info.get('host')}). "
        "Everything runs under QEMU's software emulator (TCG, nested SVM): compare the VMMs "
        "with each other, not with part 10. Per VMM, the guest boots once; its init writes "
        f"{guest_save.TOUCH_MIB} MiB (one random MiB repeated) to its tmpfs, prints `SB-READY` "
        f"with the memory it uses, then `SB-TICK N` every {guest_save.TICK_S * 1000:.0f} ms. "
        "Then a chain: save of the booted VM, a restore in a new process, after "
        f"{guest_save.SETTLE_S} s a save of that restored VM, and so on; the save figure is "
        "the median over all saves (the first, of the booted VM, is also shown apart). **Save**: "
        "virtkit: the whole `virtkit suspend sb` command timed by spawntime from its spawn to "
        "its exit (the request to the VM process, pause, state written and synced, the VM "
        "process's stop); QEMU: QMP `stop` + `migrate exec:cat > FILE` polled with "
        "`query-migrate` until `completed` (bench/savectl.c, times shown apart); Firecracker: "
        "`PATCH /vm` Paused + `PUT /snapshot/create` Full (times shown apart). The state "
        "files are on a tmpfs of the emulated host (RAM; a sync is free), so no fsync is added. "
        "Per GiB: the median save over the guest's memory in use at ready. **Restore to "
        "running**: spawntime's timestamp before `posix_spawn` of the new VMM process to the "
        "first byte of the first `SB-TICK` line from it, with the orchestration in between "
        "(QEMU: `savectl qmp-cont`, waiting for `query-status` to leave `inmigrate`, then "
        "`cont`; Firecracker: `PUT /snapshot/load` with `resume_vm` as soon as its socket "
        "answers; virtkit: nothing, `virtkit run sb` of a suspended bundle restores it). The "
        "library rows (crates/virtkit/examples/save_restore.rs, the same guest and "
        "configuration without the CLI, manager and bundle): a save of the booted VM "
        f"{guest_save.LIB_BOOT_MS / 1000:.0f} s after its first output (it cannot see the ready "
        "line: the pages it wrote show what it held), then per run a restore of that file (a "
        "new process, killed at its first tick line) and a save of a VM restored from it (a "
        f"new process, {guest_save.LIB_RUN_MS} ms after its first output); its save is "
        "`pause` + `save_machine_state` (file synced). The "
        f"guest's tick interval ({guest_save.TICK_S * 1000:.0f} ms, its `sleep`) can add up to "
        "that much to any VMM's restore figure. The emulated host's clock advances in steps of "
        "about 4 ms here (every figure is close to a multiple of 4 ms), so differences under "
        "that are not resolved. File sizes: `stat` %s and %b×%B, state and memory files "
        "together for Firecracker.")
    out += ["", "Commands (in the emulated host; `$i` is the chain's step, `$a` its state "
            "slot), booted by:\n", "```", p11["harness"]]
    out += [f"{k}: {c}" for k, c in p11["commands"].items()]
    out.append("```")
    if p11["peers"]:
        out.append("\nPeers: " + "; ".join(f"{n}: {v}" for n, v in p11["peers"].items()))
    if p11["failures"]:
        out.append(f"\n**Failures in part 11: {len(p11['failures'])}:** "
                   + "; ".join(f.splitlines()[0] for f in p11["failures"]))
        tails = [t for r in res.values() for t in r["tail"]]
        if tails:
            out += ["", "```"] + tails[-30:] + ["```"]
    out.append("")
    return "\n".join(out), slower


# ---------------------------------------------------------------------------------------------
# Report

def busy_processes():
    """Other processes using a lot of CPU right now (they skew the figures on a shared machine)."""
    try:
        code, out = run(["ps", "-eo", "pid=,pcpu=,etimes=,comm="], 30, "ps")
    except (OSError, BenchError):
        return "unknown"
    busy = []
    mine = {os.getpid()}
    for l in out.splitlines():
        f = l.split(None, 3)
        if len(f) == 4 and int(f[0]) not in mine and float(f[1]) >= 20 and f[3] != "ps":
            busy.append(f"{f[3]} ({float(f[1]):.0f}% CPU)")
    return ", ".join(busy) or "none"


def environment():
    cpu = "unknown"
    try:
        for l in Path("/proc/cpuinfo").read_text().splitlines():
            if l.startswith("model name"):
                cpu = l.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = "unknown"
    try:
        kib = int(re.search(r"MemTotal:\s+(\d+)", Path("/proc/meminfo").read_text()).group(1))
        mem = f"{kib / 1024 / 1024:.1f} GiB"
    except (OSError, AttributeError):
        pass
    if Path("/sys/module/kvm_pvm").exists():
        kvm = "PVM (kvm_pvm: no hardware virtualization; guest ring 0 goes through its emulator)"
    elif Path("/sys/module/kvm_intel").exists():
        kvm = "hardware KVM (kvm_intel)"
    elif Path("/sys/module/kvm_amd").exists():
        kvm = "hardware KVM (kvm_amd)"
    else:
        kvm = "unknown"
    os_name = "unknown"
    try:
        os_name = re.search(r'PRETTY_NAME="([^"]*)"', Path("/etc/os-release").read_text()).group(1)
    except (OSError, AttributeError):
        pass
    manifest = {}
    try:
        manifest = json.loads((ASSETS / "manifest.json").read_text())
    except (OSError, ValueError):
        pass
    commit = first_line(["git", "-C", ROOT, "rev-parse", "--short=12", "HEAD"])
    code, dirty = run(["git", "-C", ROOT, "status", "--porcelain", "--", "crates", "Cargo.toml",
                       "Cargo.lock"], 30, "git status")
    pkgs = first_line(["sh", "-c", "dpkg-query -W -f '${Package} ${Version}, ' "
                       "qemu-system-x86 qemu-system-data seabios 2>/dev/null"])
    return {
        "host": f"{platform.node()}: {cpu}, {os.cpu_count()} CPUs, {mem} RAM; {os_name}; "
                f"Linux {platform.release()}",
        "kvm": kvm,
        "virtkit": f"{first_line([VIRTKIT, '--version'])}, commit {commit}"
                   + (" with uncommitted changes in crates/" if code == 0 and dirty.strip() else ""),
        "rustc": first_line(["rustc", "-V"]),
        "qemu": first_line([QEMU, "--version"]) + (f" ({pkgs.rstrip(', ')})" if pkgs != "unknown" else ""),
        "gcc": first_line(["gcc", "--version"]),
        "python": platform.python_version(),
        "assets": (f"{manifest.get('kernel_package', '?')} {manifest.get('kernel_package_version', '?')}, "
                   f"busybox {manifest.get('busybox_package_version', '?')} "
                   f"(recipe {manifest.get('recipe_version', '?')}, {rel(ASSETS.resolve())})")
                  if manifest else "not used",
    }


def direct_tables(p1):
    rows = []
    s = {n: summary(r) for n, r in p1["runs"].items()}
    for name, st in s.items():
        if not st["ok"]:
            rows.append([name, f"0/{st['n']}", "failed", "", "", "", ""])
            continue
        spawn = name.startswith("/bin/true")
        restarts = name in RESTARTS_ON_RESET
        rows.append([
            name, f"{st['ok']}/{st['n']}",
            "-" if spawn else f"**{fmt_ms(med(st['first']))}** ({fmt_ms(pct(st['first'], 10))}–{fmt_ms(pct(st['first'], 90))})",
            f"n/a: reboots the guest (killed at first output, gone at {fmt_ms(med(st['exit']))})"
            if restarts else
            f"**{fmt_ms(med(st['exit']))}** ({fmt_ms(pct(st['exit'], 10))}–{fmt_ms(pct(st['exit'], 90))})",
            "-" if spawn or restarts else fmt_ms(med(st["gap"])),
            f"**{med(st['rss_kib']) / 1024:.1f}** ({med(st['rss_kib']):.0f} KiB; max {max(st['rss_kib']) / 1024:.1f})"
            + (" to first output" if restarts else ""),
            fmt_ms(med(st["cpu"])) + (" to first output" if restarts else ""),
        ])
    # A peer whose binary is absent: the issue's figures (results of before the peers were run
    # here have no "absent" and got them for both).
    refs = {n: REFERENCE[n] for n in p1.get("absent", list(REFERENCE)) if n in REFERENCE}
    for ref, (f, e, r) in refs.items():
        rows.append([f"{ref}: recorded, not run here", "-", f"{f:.1f}", f"{e:.1f}", f"{e - f:.1f}",
                     f"{r:.1f}", "-"])
    t1 = md_table(["VMM", "runs ok", "first output, ms: median (p10–p90)",
                   "exit, ms: median (p10–p90)", "first output → exit, ms", "peak RSS, MiB: median",
                   "CPU (user+sys), ms"], rows)

    vk = s["virtkit"]
    ratios = []
    slower = []
    if vk["ok"]:
        vf, ve, vr = med(vk["first"]), med(vk["exit"]), med(vk["rss_kib"]) / 1024
        targets = [(n, med(st["first"]),
                    float("nan") if n in RESTARTS_ON_RESET else med(st["exit"]),
                    med(st["rss_kib"]) / 1024, False)
                   for n, st in s.items()
                   if (n.startswith("QEMU") or n in PEER_BINARIES) and st["ok"]]
        targets += [(n, f, e, r, True) for n, (f, e, r) in refs.items()]
        for n, f, e, r, is_ref in targets:
            label = f"{n} (recorded, not run here)" if is_ref else n
            ratios.append([f"virtkit / {label}", fmt_ratio(vf / f), fmt_ratio(ve / e), fmt_ratio(vr / r)])
            for what, a, b, unit in [("first output", vf, f, "ms"), ("exit", ve, e, "ms"),
                                     ("peak RSS", vr, r, "MiB")]:
                if a > b:
                    slower.append(f"{what}: virtkit {a:.1f} {unit} vs {label} {b:.1f} {unit} "
                                  f"(×{a / b:.2f})")
    t2 = md_table(["ratio (lower is better for virtkit)", "first output", "exit", "peak RSS"], ratios)
    return t1, t2, slower


def pre_clock(runs):
    """Per run: first output minus the guest's uptime at init (the time before its clock ran)."""
    return [r["marker_ms"] / 1000 - r["uptime_at_init"] for r in runs
            if r["ok"] and r.get("uptime_at_init") is not None]


def exits_table(exits):
    rows = []
    for name, runs in exits.items():
        # A boot whose VM had no debugfs directory at the marker counted nothing: left out.
        runs = [r for r in runs if r]
        if not runs:
            continue
        rows.append([name] + [
            str(int(med([r.get(c, 0) for r in runs]))) if any(c in r for r in runs) else "n/a"
            for c in EXIT_COUNTERS])
    if not rows:
        return None
    return md_table(["VMM"] + EXIT_COUNTERS, rows)


def kvmstats_table(stats):
    """KVM's other counters at the init marker (the ones exits_table does not show), one row per
    counter that is not zero for every VMM, one column per VMM: medians."""
    names = [n for n, runs in stats.items() if runs]
    if not names:
        return None
    keys = sorted({k for n in names for r in stats[n] for k in r} - set(EXIT_COUNTERS))
    rows = []
    for k in keys:
        vals = [med([r[k] for r in stats[n] if k in r]) if any(k in r for r in stats[n])
                else float("nan") for n in names]
        if all(v == 0 or v != v for v in vals):
            continue
        rows.append([k] + [f"{v:.0f}" if v == v else "n/a" for v in vals])
    return md_table(["counter"] + names, rows) if rows else None


def emulated_tables(p2):
    rows = []
    s = {n: summary(r) for n, r in p2["runs"].items()}
    ex = p2.get("exits") or {}
    exits_to_init = {n: med([r["exits"] for r in ex[n] if "exits" in r])
                     for n in ex if any("exits" in r for r in ex[n])}
    for name, st in s.items():
        nx = f"{exits_to_init[name]:.0f}" if name in exits_to_init else "n/a"
        if not st["ok"]:
            rows.append([name, f"0/{st['n']}", "failed", "", "", "", "", "", nx, ""])
            continue
        sec = lambda xs: f"{med(xs) / 1000:.2f} ({min(xs) / 1000:.2f}–{max(xs) / 1000:.2f})"
        up = st["uptime"]
        pre = pre_clock(p2["runs"][name])
        rows.append([name, f"{st['ok']}/{st['n']}", f"**{sec(st['first'])}**", f"**{sec(st['exit'])}**",
                     f"{med(st['gap']) / 1000:.2f}",
                     f"{med(up):.2f}" if up else "n/a",
                     f"{med(pre):.2f}" if pre else "n/a",
                     f"**{med(st['rss_kib']) / 1024:.1f}**", f"**{nx}**",
                     f"{med(st['cpu']) / 1000:.2f}"])
    t1 = md_table(["VMM", "runs ok", "first output (init marker), s: median (min–max)",
                   "exit (power-off; Firecracker: reboot), s: median (min–max)",
                   "first output → exit, s", "guest uptime at init, s",
                   "first output − guest uptime, s", "peak RSS, MiB",
                   "exits to init (KVM), median", "CPU (user+sys), s"], rows)
    slower = []
    ratios = []
    vk = s.get("virtkit")
    others = [n for n in s if n != "virtkit" and s[n]["ok"]]
    if vk and vk["ok"]:
        for n in others:
            o = s[n]
            r = [med(vk["first"]) / med(o["first"]), med(vk["exit"]) / med(o["exit"]),
                 med(vk["rss_kib"]) / med(o["rss_kib"]),
                 med(vk["uptime"]) / med(o["uptime"]) if vk["uptime"] and o["uptime"]
                 else float("nan"),
                 exits_to_init["virtkit"] / exits_to_init[n]
                 if "virtkit" in exits_to_init and n in exits_to_init else float("nan")]
            ratios.append([f"virtkit / {n}"] + [fmt_ratio(x) for x in r])
            for what, x, a, b, unit in [
                    ("first output", r[0], med(vk["first"]) / 1000, med(o["first"]) / 1000, "s"),
                    ("exit", r[1], med(vk["exit"]) / 1000, med(o["exit"]) / 1000, "s"),
                    ("peak RSS", r[2], med(vk["rss_kib"]) / 1024, med(o["rss_kib"]) / 1024,
                     "MiB")]:
                if x > 1:
                    slower.append(f"{what} (emulated host): virtkit {a:.2f} {unit} vs {n} "
                                  f"{b:.2f} {unit} (×{x:.2f})")
            if vk["uptime"] and o["uptime"] and med(vk["uptime"]) > med(o["uptime"]):
                a, b = med(vk["uptime"]), med(o["uptime"])
                pa, pb = pre_clock(p2["runs"]["virtkit"]), pre_clock(p2["runs"][n])
                slower.append(f"guest-side boot (emulated host): the guest kernel reaches /init "
                              f"at uptime {a:.2f} s under virtkit vs {b:.2f} s under {n} "
                              f"(×{a / b:.2f}); before the guest's clock starts (VMM setup, "
                              f"firmware, loading and decompressing the kernel) virtkit takes "
                              f"{med(pa):.2f} s and {n} {med(pb):.2f} s")
            if r[4] == r[4] and r[4] > 1:
                slower.append(f"exits to init (emulated host): virtkit "
                              f"{exits_to_init['virtkit']:.0f} vs {n} {exits_to_init[n]:.0f} "
                              f"(×{r[4]:.2f})")
    t2 = md_table(["ratio (lower is better for virtkit)", "first output", "exit", "peak RSS",
                   "guest uptime at init", "exits to init"], ratios)
    return t1, t2, slower


def disk_tables(p3):
    s = {n: summary(r) for n, r in p3["runs"].items()}
    ok = {n: [r for r in runs if r["ok"]] for n, runs in p3["runs"].items()}
    rows = []
    spread = lambda xs: f"**{fmt_ms(med(xs))}** ({fmt_ms(pct(xs, 10))}–{fmt_ms(pct(xs, 90))})"
    for name, st in s.items():
        runs = ok[name]
        if not runs:
            rows.append([name, f"0/{st['n']}", "failed", "", "", "", "", "", "", ""])
            continue
        rows.append([
            name, f"{len(runs)}/{st['n']}",
            spread([r["read_ms"] for r in runs]),
            f"**{med([r['mbps'] for r in runs]):.1f}**",
            fmt_ms(med([r["banner_ms"] for r in runs])),
            spread([r["first_ms"] for r in runs]),
            fmt_ms(med([r["first_ms"] - r["banner_ms"] - r["read_ms"] for r in runs])),
            spread([r["exit_ms"] for r in runs]),
            f"{med(st['rss_kib']) / 1024:.1f}",
            fmt_ms(med(st["cpu"])),
        ])
    t1 = md_table(["VMM", "runs ok", "guest read of 64 MiB (guest TSC), ms: median (p10–p90)",
                   "guest read, MB/s: median", "SeaBIOS banner, ms: median",
                   "first MBR output (`bench-read` line), ms: median (p10–p90)",
                   "first output − banner − guest read, ms: median",
                   "exit, ms: median (p10–p90)", "peak RSS, MiB: median",
                   "CPU (user+sys), ms"], rows)
    ratios, slower = [], []
    vk, qm = ok.get("virtkit"), ok.get("QEMU q35")
    if vk and qm:
        fig = lambda runs, k: med([r[k] for r in runs])
        rss = lambda runs: med([r["maxrss_kib"] for r in runs]) / 1024
        rest = lambda runs: med([r["first_ms"] - r["banner_ms"] - r["read_ms"] for r in runs])
        items = [("guest read time", fig(vk, "read_ms"), fig(qm, "read_ms"), "ms"),
                 ("SeaBIOS banner", fig(vk, "banner_ms"), fig(qm, "banner_ms"), "ms"),
                 ("firmware after the banner, outside the read", rest(vk), rest(qm), "ms"),
                 ("first MBR output", fig(vk, "first_ms"), fig(qm, "first_ms"), "ms"),
                 ("exit", fig(vk, "exit_ms"), fig(qm, "exit_ms"), "ms"),
                 ("peak RSS", rss(vk), rss(qm), "MiB")]
        ratios.append(["virtkit / QEMU q35"] + [fmt_ratio(a / b) for _, a, b, _ in items]
                      + [fmt_ratio(fig(vk, "mbps") / fig(qm, "mbps"))])
        for what, a, b, unit in items:
            if a > b:
                slower.append(f"{what} (disk read through SeaBIOS): virtkit {a:.1f} {unit} vs "
                              f"QEMU q35 {b:.1f} {unit} (×{a / b:.2f})")
    t2 = md_table(["ratio (lower is better for virtkit)", "guest read time", "SeaBIOS banner",
                   "first output − banner − guest read", "first MBR output", "exit", "peak RSS",
                   "guest read MB/s (higher is better)"], ratios)
    return t1, t2, slower


def odirect_tables(p5):
    ok = {n: [b for b in bs if b.get("ok")] for n, bs in p5["boots"].items()}
    samples = lambda boots, op: [x for b in boots for x in b[op]]
    spread = lambda xs: (f"**{med(xs):.1f}** ({min(xs):.1f}–{max(xs):.1f})" if xs else "n/a")
    rows = []
    for name, bs in p5["boots"].items():
        good = ok[name]
        rows.append([name, f"{len(good)}/{len(bs)}", spread(samples(good, "write")),
                     spread(samples(good, "read")), str(len(samples(good, "write")))])
    t1 = md_table(["VMM", "boots ok", "sequential write, MB/s: median (min–max)",
                   "sequential read, MB/s: median (min–max)", "passes (each op)"], rows)
    ratios, slower = [], []
    vk, qm = ok.get("virtkit"), ok.get("QEMU q35")
    if vk and qm:
        cells = []
        for op in ("write", "read"):
            a, b = med(samples(vk, op)), med(samples(qm, op))
            lo, hi = resampled_ratio_range(vk, qm, lambda boots: med(samples(boots, op)))
            cells.append(f"**{fmt_ratio(a / b)}** ({fmt_ratio(lo)}–{fmt_ratio(hi)})")
            if a < b:
                slower.append(f"guest O_DIRECT sequential {op} (emulated host): virtkit {a:.1f} MB/s "
                              f"vs QEMU q35 {b:.1f} MB/s (×{a / b:.2f})")
        ratios.append(["virtkit / QEMU q35"] + cells)
    t2 = md_table(["throughput ratio (higher is better for virtkit): median (95 % range, boots "
                   "resampled)", "sequential write", "sequential read"], ratios)
    return t1, t2, slower


def resampled_ratio_range(a, b, stat, rounds=4000):
    """The 2.5th and 97.5th percentiles of stat(a') / stat(b') over `rounds` resamplings (with
    replacement, a fixed seed) of the boots of each side: how far the ratio could move with other
    boots of the same kind. Boots, not passes, are resampled: the passes of one boot are alike."""
    rng = random.Random(5)
    ratios = sorted(stat([rng.choice(a) for _ in a]) / stat([rng.choice(b) for _ in b])
                    for _ in range(rounds))
    return pct(ratios, 2.5), pct(ratios, 97.5)


WORKLOADS = [("seq64k", "read", "sequential 64 KiB read"), ("seq64k", "write", "sequential 64 KiB write"),
             ("rand4k", "read", "random 4 KiB read"), ("rand4k", "write", "random 4 KiB write")]


def fmt_rate(r):
    if r is None:
        return "n/a"
    mbps, iops = r["mbps"], r["iops"]
    m = f"{mbps:.0f}" if mbps >= 100 else f"{mbps:.1f}"
    i = f"{iops / 1000:.0f} k" if iops >= 100000 else f"{iops / 1000:.1f} k"
    return f"{m} ({i})"


ENGINES = (("device-sync", "sync"), ("device-io_uring", "io_uring"), ("device-pool", "thread pool"))
DEFAULT_ENGINE = "device-io_uring"


def blk_tables(p4):
    by = {(r["cache"], r["pattern"], r["op"], r["who"], r["depth"]): r for r in p4["results"]}
    ratio = lambda a, b: fmt_ratio(a["mbps"] / b["mbps"]) if a and b else "n/a"
    best = lambda a, b: max((x for x in (a, b) if x), key=lambda r: r["mbps"], default=None)
    main_rows, engine_rows, mem_rows, below = [], [], [], []
    for cache in ("uncached", "cached"):
        for pattern, op, label in WORKLOADS:
            get = lambda who, depth: by.get((cache, pattern, op, who, depth))
            host1, host32 = get("host", 1), get("host", 32)
            host_best = best(host1, host32)
            dev1, dev32 = get(DEFAULT_ENGINE, 1), get(DEFAULT_ENGINE, 32)
            if not (host1 or dev1):
                continue
            main_rows.append([cache, label, fmt_rate(host1), fmt_rate(dev1), f"**{ratio(dev1, host1)}**",
                              fmt_rate(host32), fmt_rate(dev32), f"**{ratio(dev32, host_best)}**"])
            cells = []
            for depth, ref in ((1, host1), (32, host_best)):
                rates = {who: get(who, depth) for who, _ in ENGINES}
                top = max((r["mbps"] for r in rates.values() if r), default=None)
                for who, _ in ENGINES:
                    r = rates[who]
                    text = "n/a" if r is None else f"{r['mbps']:.0f} ({ratio(r, ref)})"
                    cells.append(f"**{text}**" if r and r["mbps"] == top else text)
            engine_rows.append([cache, label] + cells)
            for depth, dev, ref, what in ((1, dev1, host1, "the host at QD 1"),
                                          (32, dev32, host_best, "the host's best at QD 32")):
                if dev and ref and dev["mbps"] < BLK_TARGET * ref["mbps"]:
                    below.append(f"disk backend (io_uring), {cache} {label}, queue depth {depth}: "
                                 f"{dev['mbps'] / ref['mbps']:.2f} × {what} ({dev['mbps']:.0f} vs "
                                 f"{ref['mbps']:.0f} MB/s; target {BLK_TARGET} ×)")
    for pattern, op, label in WORKLOADS:
        m1 = by.get(("memory", pattern, op, "device", 1))
        m32 = by.get(("memory", pattern, op, "device", 32))
        if m1 or m32:
            us = lambda r: f"{1e6 / r['iops']:.2f}" if r else "n/a"
            mem_rows.append([label, fmt_rate(m1), us(m1), fmt_rate(m32), us(m32)])
    t1 = md_table(["cache", "workload", "host, QD 1, MB/s (IOPS)", "device, QD 1, MB/s (IOPS)",
                   "device / host, QD 1", "host, 32 threads, MB/s (IOPS)",
                   "device, QD 32, MB/s (IOPS)", "device / host's best, QD 32"], main_rows)
    t2 = md_table(["cache", "workload"]
                  + [f"QD 1, {name}" for _, name in ENGINES]
                  + [f"QD 32, {name}" for _, name in ENGINES], engine_rows)
    t3 = md_table(["workload", "QD 1, MB/s (IOPS)", "µs per request", "QD 32, MB/s (IOPS)",
                   "µs per request"], mem_rows)
    return t1, t2, t3, below


def report(args, env, started, p1, p2, p3, p4, p5, p6, p7, elapsed, p8=None, p9=None, p10=None,
           p11=None):
    out = []
    out.append("## Results\n")
    out.append(f"- **Command:** `{args.command_line}` (from the repository root)")
    out.append(f"- **Date:** {started} (UTC); the whole run took {elapsed / 60:.1f} min")
    out.append(f"- **Host:** {env['host']}; load average at start {args.load_start}, "
               f"at end {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    out.append("- **Load average (1 min) as each part started** (this VM's kernel, so other "
               "containers' work counts): "
               + ", ".join(f"part {k} {v:.2f}" for k, v in args.part_load.items()))
    out.append(f"- **Other busy processes** (≥ 20% CPU): at start {args.busy_start}; "
               f"at end {busy_processes()}")
    out.append(f"- **KVM:** {env['kvm']}")
    out.append(f"- **virtkit:** {env['virtkit']}, release build as `scripts/build-release.sh` makes it "
               f"(a static PIE; {env['rustc']})")
    out.append(f"- **QEMU:** {env['qemu']}")
    if p1 is not None:
        out.append("- **Peers (part 1):** " + "; ".join(
            [f"{n}: {v}" for n, v in p1.get("peers", {}).items()]
            + [f"{n}: no binary (scripts/build-peers.sh builds it), the issue's recorded figures "
               "shown" for n in p1.get("absent", [])]))
    if p2 is not None and (p2.get("peers") or p2.get("absent")):
        out.append("- **Peers (part 2, in the emulated host):** " + "; ".join(
            [f"{n}: {v}" for n, v in p2.get("peers", {}).items()]
            + [f"{n}: no binary (scripts/build-peers.sh builds it), not run"
               for n in p2.get("absent", [])]))
    if p10 is not None:
        out.append("- **Peers (part 10):** Firecracker: "
                   + (peer_version("Firecracker") or "no binary (scripts/build-peers.sh builds it), "
                      "not run"))
    out.append(f"- **Timing helper:** bench/spawntime.c, {env['gcc']}, static; Python {env['python']}")
    out.append(f"- **Guest assets (parts 2, 5, 7 and 9):** {env['assets']}")
    out.append("")
    slower = []
    if p1 is None:
        out.append("### Part 1: direct on this host's KVM\n\nNot run (`--parts`).\n")
    else:
        out.append(f"### Part 1: direct on this host's KVM, smoke guest, 1 vCPU, 128 MiB, "
                   f"{args.runs} runs each\n")
        t1, t2, s1 = direct_tables(p1)
        slower += s1
        out += [t1, "", t2, ""]
        out.append("Commands (each run as `bench/out/spawntime -t 30 -m 'virtkit-smoke: ready' -- "
                   "CMD`; with `-k` for "
                   + ", ".join(sorted(RESTARTS_ON_RESET)) + ", killed at that line):\n")
        out.append("```")
        out += [f"{n}: {c}" for n, c in p1["commands"].items() if not n.startswith("/bin/true")]
        out.append("```")
        if p1.get("firecracker_config"):
            out.append(f"\nFirecracker's `{rel(FIRECRACKER_CONFIG)}`:\n")
            out += ["```json", p1["firecracker_config"].rstrip("\n"), "```"]
        if p1["failures"]:
            out.append(f"\n**Failed runs in part 1: {len(p1['failures'])}** (see the output of "
                       "the run).")
        out.append("")
    if p2 is None:
        out.append("### Part 2: inside the emulated KVM host\n\nSkipped (`--skip-emulated` or "
                   "`--parts`).\n")
    else:
        info = p2["info"]
        out.append(f"### Part 2: inside the emulated KVM host, stock kernel to init, 1 vCPU, 256 MiB, "
                   f"{args.inner_runs} runs each, round-robin\n")
        t1, t2, s2 = emulated_tables(p2)
        slower += s2
        out += [t1, "", t2, ""]
        t3 = exits_table(p2.get("exits") or {})
        if info.get("exits_missing"):
            out.append("No KVM debugfs directory was found at the init marker in one exit-counting "
                       f"boot of: {', '.join(info['exits_missing'])}; the medians below leave it "
                       "out.\n")
        if t3:
            out.append(f"Exits to init, KVM's own counters for the VM (debugfs), read when the "
                       f"init marker appears, {EXIT_RUNS} boots each with "
                       f"`virtkit.action={EXITS_ACTION}` instead of the power-off "
                       "(median; `exits` counts every exit, the ones KVM handles itself "
                       "included; io/mmio are the ones that go to the VMM or KVM's in-kernel "
                       "devices):\n")
            out += [t3, ""]
        t4 = kvmstats_table(p2.get("kvmstats") or {})
        if t4:
            out.append("KVM's other counters for the same VMs at the same moment (median; the "
                       "ones that are not zero for every VMM; `pf_*` are the vCPUs' page faults, "
                       "`pages_*` the mappings of guest memory, `halt_*`/`*_poll_*` the halt "
                       "polling):\n")
            out += [t4, ""]
        attempts = info.get("attempts")
        notice = ("booted on the first attempt" if attempts == 1 else
                  f"**hung before /dev/kvm was ready and was started again: {attempts} attempts** "
                  "(an emulator hang, retried once by the harness)" if attempts else "attempts unknown")
        out.append(f"Emulated host: {info.get('host') or 'unknown'}; QEMU TCG `-M microvm -cpu max "
                   f"-smp 2 -m 2048`; boot to kvm-ready {info.get('boot_to_ready_s')} s, "
                   f"{notice}; the whole emulated-host run {info.get('wall_s', 0):.0f} s.\n")
        out.append("Commands inside the emulated host (each run as `spawntime -v -t "
                   f"{INNER_TIMEOUT} -m '{GUEST_MARKER}' -- CMD`), booted by:\n")
        out.append("```")
        out.append(p2["harness"])
        out += [f"{n}: {c}" for n, c in p2["commands"].items()]
        out.append("```")
        out.append("\n`rtc=on`: QEMU's microvm has no CMOS RTC under KVM by default, and without one "
                   "the guest kernel spends ~10 s probing it (docs/TESTING.md); virtkit emulates one.")
        if p2.get("cmdlines"):
            out.append("\nGuest command lines: " + "; ".join(
                f"{n}: `{c}`" for n, c in p2["cmdlines"].items())
                + " (Firecracker has no ACPI power-off: on the init's `poweroff -f` the kernel "
                "halts and Firecracker runs on; it exits 0 on the guest's i8042 reset, so its "
                "guest reboots instead, and it adds `pci=off` itself). Firecracker and "
                "cloud-hypervisor boot `vmlinux` (the same kernel as an ELF with the PVH entry), "
                "virtkit and QEMU `vmlinuz` (bzImage).")
        if p2.get("firecracker_config"):
            out.append("\nFirecracker's configuration file "
                       "(`bench/out/firecracker-emulated-poweroff.json`, copied into the emulated "
                       "host):\n")
            out += ["```json", p2["firecracker_config"].rstrip("\n"), "```"]
        for n, lines in (p2.get("errors") or {}).items():
            out.append(f"\n**{n} did not boot in the emulated host** (no run reached the init "
                       "marker and ended as expected); the last output of its last run:\n")
            out += ["```"] + lines + ["```"]
            if n == "Firecracker" and p2.get("firecracker_log"):
                out.append("\nIts log (the lines other than unhandled port accesses):\n")
                out += ["```"] + p2["firecracker_log"] + ["```"]
        if p2["failures"]:
            out.append(f"\n**Failed runs in part 2: {len(p2['failures'])}:** " + "; ".join(p2["failures"]))
        out.append("")
    if p3 is None:
        out.append("### Part 3: a disk read through SeaBIOS\n\nNot run (`--parts`).\n")
    else:
        out.append(f"### Part 3: a disk read through SeaBIOS, direct on this host's KVM, 128 MiB, "
                   f"virtio-blk with O_DIRECT, {args.disk_runs} runs each, alternating\n")
        t1, t2, s3 = disk_tables(p3)
        slower += s3
        out += [t1, "", t2, ""]
        out.append(f"Guest TSC at the host's frequency, {p3['tsc_hz'] / 1e6:.3f} MHz "
                   f"({p3['tsc_source']}); MB/s = 67108864 bytes / guest read time / 10^6. MBR "
                   f"program: `{p3['mbr']}` in sector 0 of `{rel(MBR_IMAGE)}` "
                   f"({MBR_IMAGE_BYTES >> 20} MiB, sparse). The program prints nothing before its "
                   "read, so **first MBR output** is measured to the first byte of its `bench-read` "
                   "line, after the 64 MiB; **first output − banner − guest read** is what is left "
                   "of it after the firmware's banner: SeaBIOS setting up the machine and its disks, "
                   "loading the boot sector, and the program's start.\n")
        out.append(f"Commands (each run as `bench/out/spawntime -v -t {DISK_TIMEOUT} -m '{MBR_DONE}' "
                   f"-f '{MBR_BANNER}' -f '{MBR_FIRST}' -- CMD`):\n")
        out.append("```")
        out += [f"{n}: {c}" for n, c in p3["commands"].items()]
        out.append("```")
        if p3["failures"]:
            out.append(f"\n**Failed runs in part 3: {len(p3['failures'])}:** "
                       + "; ".join(p3["failures"]))
        out.append("")
    if p4 is None:
        out.append("### Part 4: the disk backend without a VM\n\nNot run (`--parts`).\n")
    else:
        out.append(f"### Part 4: the disk backend without a VM, 1 GiB file, "
                   f"{args.blk_reps} × {args.blk_seconds:g} s per figure (median)\n")
        t1, t2, t3, below = blk_tables(p4)
        slower += below
        out.append(f"Storage: `{rel(OUT)}` on {p4['storage']}. MB/s = 10^6 bytes/s; IOPS in "
                   "thousands. Ratios are throughput ratios: **higher is better**, target "
                   f"{BLK_TARGET}.\n")
        out.append("The device as built (io_uring, the default engine) against the host file:\n")
        out += [t1, ""]
        out.append("The engine candidates: MB/s, and in brackets the ratio to the host (QD 1: the "
                   "host at QD 1; QD 32: the better host figure); the best engine in bold:\n")
        out += [t2, ""]
        out.append("The device's own cost (its request code with an in-memory disk, no file "
                   "I/O; random offsets over 256 MiB):\n")
        out += [t3, ""]
        out.append(f"Command (whole part 4 took {p4['wall_s']:.0f} s, writing the image "
                   "included):\n")
        out += ["```", p4["command"], "```", ""]
    if p5 is None:
        out.append("### Part 5: the guest's O_DIRECT disk I/O inside the emulated KVM host\n\n"
                   "Not run (`--parts`).\n")
    else:
        info = p5["info"]
        out.append(f"### Part 5: the guest's O_DIRECT disk I/O inside the emulated KVM host, "
                   f"{ODIRECT_IMAGE_MIB} MiB in {ODIRECT_BLOCK_KIB // 1024} MiB blocks, "
                   f"{args.odirect_runs} boots each × {ODIRECT_PASSES} passes, alternating\n")
        t1, t2, s5 = odirect_tables(p5)
        slower += s5
        out += [t1, "", t2, ""]
        attempts = info.get("attempts")
        notice = ("booted on the first attempt" if attempts == 1 else
                  f"**hung before /dev/kvm was ready and was started again: {attempts} attempts** "
                  "(an emulator hang, retried once by the harness)" if attempts else "attempts unknown")
        out.append(f"MB/s = 10^6 bytes/s, timed by the guest (`CLOCK_MONOTONIC`), one figure per "
                   "pass and operation; medians over all passes of the boots that completed, after "
                   "one warm-up boot per VMM (not counted; its figures are in "
                   "`bench/out/results.json`). "
                   f"Emulated host: {info.get('host') or 'unknown'}; QEMU TCG `-M microvm -cpu max "
                   f"-smp 2 -m 2048` with `-drive {rel(ODIRECT_HOST_DISK)},cache=unsafe,aio=threads "
                   "-device virtio-blk-device` as its disk (ext4, made fresh by `mkfs.ext4` each run), "
                   f"the image `{guest_disk.HOST_IMAGE}` on it; boot to kvm-ready "
                   f"{info.get('boot_to_ready_s')} s, {notice}; the whole emulated-host run "
                   f"{info.get('wall_s', 0):.0f} s.\n")
        out.append(f"In the guest (`virtkit.run`, then power-off): `{guest_disk.GUEST_PROGRAM} "
                   f"/dev/vda {ODIRECT_IMAGE_MIB} {ODIRECT_BLOCK_KIB} {ODIRECT_PASSES}` "
                   "(bench/odirect.c). Commands inside the emulated host (each killed if still "
                   f"running after {ODIRECT_TIMEOUT} s, its threads' kernel stacks printed "
                   "first), booted by:\n")
        out.append("```")
        out.append(p5["harness"])
        out += [f"{n}: {c}" for n, c in p5["commands"].items()]
        out.append("```")
        if p5["failures"]:
            out.append(f"\n**Failed boots in part 5: {len(p5['failures'])}:** "
                       + "; ".join(p5["failures"]))
        out.append("")
    if p6 is None:
        out.append("### Part 6: the network device without a VM\n\nNot run (`--parts`).\n")
    else:
        out.append(f"### Part 6: the network device without a VM, 64 KiB and 1514-byte frames, "
                   f"{args.net_reps} × {args.net_seconds:g} s per figure (median)\n")
        t, below = net_device_tables(p6)
        slower += below
        r0 = next((r for r in p6["results"] if r.get("frame") == 65536), {})
        descs, buf = r0.get("tx_descriptors", 0), r0.get("rx_buf", 0)
        per_frame = -(-(12 + 65536) // buf) if buf else 0
        out.append("Gbit/s = 10^9 bits of Ethernet frames (the frames' bytes, the virtio-net header "
                   "not counted) per second of wall time; the device runs on the measuring thread, so "
                   "**device thread busy** is its CPU time over wall time and **Gbit/s per busy "
                   f"core** the rate it would reach with a core to itself. Target: ≥ "
                   f"{NET_TARGET_GBPS:g} Gbit/s on one core. tx: each chain a 12-byte header "
                   f"descriptor and the frame in {descs - 1} descriptors, {r0.get('tx_depth', '?')} "
                   f"chains kept available; rx: the 256-entry ring full of {buf}-byte buffers "
                   f"(mergeable rx buffers), a frame over {per_frame} of them (`num_buffers` and "
                   "the lengths checked on every frame). Rings with `EVENT_IDX`; the device's "
                   "queue loop (`NetHandler::process_tx`/`process_rx`, what the `v_net` worker "
                   "runs each pass) on the measuring thread, no vCPU, epoll or interrupt. **null**: "
                   "a backend that takes every frame and gives a frame without writing it; "
                   "**stream**: the device's `StreamBackend` on a `socketpair`, the peer thread "
                   "reading and checking the length prefixes (tx) or writing prefixed frames (rx); "
                   "when the device would block the driver waits in `poll`. Before measuring, one "
                   "frame each way through the stream backend is compared byte for byte. The "
                   "1514-byte rows (a frame of the usual MTU, what part 7's guest sends; 128 tx "
                   "chains of two descriptors in flight, one 4096-byte rx buffer per frame) show "
                   "the per-frame cost; the target is for 64 KiB frames.\n")
        out += [t, ""]
        out.append(f"Commands (whole part 6 took {p6['wall_s']:.0f} s):\n")
        out += ["```"] + p6["commands"] + ["```", ""]
    if p7 is None:
        out.append("### Part 7: the guest's network inside the emulated KVM host\n\n"
                   "Not run (`--parts`).\n")
    else:
        info = p7["info"]
        out.append(f"### Part 7: the guest's network inside the emulated KVM host, TCP "
                   f"throughput and 1-byte request/response, {args.net_runs} boots each × "
                   f"{args.net_passes} passes of {args.net_guest_seconds} s, alternating\n")
        t1, t2, s7 = net_guest_tables(p7)
        slower += s7
        out += [t1, "", t2, ""]
        attempts = info.get("attempts")
        notice = ("booted on the first attempt" if attempts == 1 else
                  f"**hung before /dev/kvm was ready and was started again: {attempts} attempts** "
                  "(an emulator hang, retried once by the harness)" if attempts else "attempts unknown")
        out.append("Gbit/s = 10^9 bits of TCP payload per second, rr = round trips per second, "
                   "timed by the guest (`CLOCK_MONOTONIC`, bench/tcpbench.c); medians over all "
                   "passes of the boots that completed. "
                   f"Emulated host: {info.get('host') or 'unknown'}; QEMU TCG `-M microvm -cpu max "
                   f"-smp 2 -m 2048`, root on tmpfs (for passt); boot to kvm-ready "
                   f"{info.get('boot_to_ready_s')} s, {notice}; the whole emulated-host run "
                   f"{info.get('wall_s', 0):.0f} s.\n")
        for k, lines in info.get("guest_info", {}).items():
            feats = sorted({x for x in lines if x.startswith("card=")})
            if feats:
                out.append(f"- guest card, {k}: `{feats[0]}`")
        out.append("")
        out.append("Commands inside the emulated host (each killed if still running after "
                   f"{NET_TIMEOUT} s), booted by:\n")
        out.append("```")
        out.append(p7["harness"])
        for key, cmds in p7["commands"].items():
            out += [f"{key}, {n}: {c}" for n, c in cmds.items()]
        out.append("```")
        if p7["failures"]:
            out.append(f"\n**Failed boots in part 7: {len(p7['failures'])}:** "
                       + "; ".join(p7["failures"]))
        out.append("")
    if p8 is None:
        out.append("### Part 8: the guest agent against ssh over the NAT network\n\n"
                   "Not run (`--parts`).\n")
    else:
        t8, s8 = agent_section(args, p8)
        out.append(t8)
        slower += s8
    if p9 is None:
        out.append("### Part 9: a shared directory inside the emulated KVM host\n\n"
                   "Not run (`--parts`).\n")
    else:
        t9, s9 = fs_section(args, p9)
        out.append(t9)
        slower += s9
    if p10 is None:
        out.append("### Part 10: save and restore of a small guest\n\nNot run (`--parts`).\n")
    else:
        t10, s10 = save_section(args, p10)
        out.append(t10)
        slower += s10
    if p11 is None:
        out.append("### Part 11: save and restore of the stock kernel inside the emulated KVM host"
                   "\n\nNot run (`--parts`).\n")
    else:
        t11, s11 = emulated_save_section(args, p11)
        out.append(t11)
        slower += s11
    out.append("### Where virtkit is slower or bigger, or short of its target\n")
    if slower:
        out += [f"- {x}" for x in slower]
    else:
        out.append(f"- {NOWHERE}")
    out.append("")
    return "\n".join(out)


PART_HEADING = re.compile(r"^### Part (\d+)\b.*$", re.M)
SLOWER_HEADING = "### Where virtkit is slower or bigger, or short of its target"
KEPT_NOTE = "_Not rerun by the latest run (`--parts`): kept from"
NOWHERE = ("Nowhere in this run: virtkit's medians are at or below every other VMM's, and the "
           "disk backend reaches its target everywhere.")


def split_results(text):
    """(preamble, {part: section text}, [bullets of the slower list]) of a results text."""
    i = text.find(SLOWER_HEADING)
    body, tail = (text, "") if i < 0 else (text[:i], text[i + len(SLOWER_HEADING):])
    marks = list(PART_HEADING.finditer(body))
    pre = body[:marks[0].start()] if marks else body
    sections = {}
    for k, m in enumerate(marks):
        end = marks[k + 1].start() if k + 1 < len(marks) else len(body)
        sections[int(m.group(1))] = body[m.start():end].strip("\n") + "\n"
    bullets = [l[2:] for l in tail.splitlines() if l.startswith("- ")]
    return pre, sections, bullets


def bullet_part(bullet):
    """Which part a bullet of the slower list comes from, by the words each part's tables use."""
    if bullet.startswith("stock-kernel save/restore"):
        return 11
    if bullet.startswith("save/restore"):
        return 10
    if bullet.startswith("shared directory"):
        return 9
    if bullet.startswith("agent:"):
        return 8
    if bullet.startswith("guest network"):
        return 7
    if bullet.startswith("net device alone"):
        return 6
    if "guest O_DIRECT" in bullet:
        return 5
    if "(emulated host)" in bullet:
        return 2
    if "(disk read through SeaBIOS)" in bullet:
        return 3
    if bullet.startswith("disk backend"):
        return 4
    return 1


def merge_results(new, old, ran):
    """`new` with the sections (and slower-list bullets) of the parts that did not run taken
    from `old`, the previous results, each marked with the run it comes from."""
    pre, sections, bullets = split_results(new)
    old_pre, old_sections, old_bullets = split_results(old)
    cmd = re.search(r"- \*\*Command:\*\* `([^`]*)`", old_pre)
    date = re.search(r"- \*\*Date:\*\* (.*?) \(UTC\)", old_pre)
    vk = re.search(r"- \*\*virtkit:\*\* (.*)", old_pre)
    origin = (f"{KEPT_NOTE} the run of {date.group(1) if date else 'an unknown date'} UTC "
              f"(`{cmd.group(1) if cmd else 'unknown command'}`"
              + (f"; {vk.group(1).strip()}" if vk else "") + ")._")
    kept = set()
    for n, sec in old_sections.items():
        body = sec.split("\n", 1)[1].strip() if "\n" in sec else ""
        if n in ran or body.startswith(("Not run", "Skipped")):
            continue
        if KEPT_NOTE not in sec:
            head, rest = sec.split("\n", 1)
            sec = f"{head}\n\n{origin}\n{rest}"
        sections[n] = sec
        kept.add(n)
    bullets = [b for b in bullets if not b.startswith("Nowhere")]
    bullets += [b for b in old_bullets if not b.startswith("Nowhere") and bullet_part(b) in kept]
    bullets.sort(key=bullet_part)
    out = [pre.rstrip("\n") + "\n"]
    out += [sections[n] for n in sorted(sections)]
    out.append(SLOWER_HEADING + "\n")
    out.append("\n".join(f"- {b}" for b in bullets or [NOWHERE]) + "\n")
    return "\n".join(out)


def write_results(text, ran):
    """Writes RESULTS.md: its header as it is, then `text`, with the results of the parts that
    did not run kept from the file. Returns the results text written."""
    header = HEADER
    if RESULTS.exists():
        old = RESULTS.read_text()
        if RESULTS_MARKER in old:
            header, previous = old.split(RESULTS_MARKER, 1)
            header = header.rstrip("\n") + "\n"
            if set(ran) != set(ALL_PARTS):
                text = merge_results(text, previous, ran)
    RESULTS.write_text(header + "\n" + RESULTS_MARKER + "\n\n" + text)
    return text


def main():
    ap = argparse.ArgumentParser(
        description="virtkit vs QEMU benchmark and the disk backend's throughput "
                    "(writes bench/RESULTS.md)")
    ap.add_argument("--parts", default=DEFAULT_PARTS,
                    help="which parts to run, comma-separated: 1 boot on KVM, 2 boot in the "
                         "emulated KVM host, 3 disk read through SeaBIOS, 4 disk backend "
                         "throughput, 5 the guest's O_DIRECT disk I/O in the emulated KVM host, "
                         "6 the network device's throughput, 7 the guest's network in the "
                         "emulated KVM host, 8 the guest agent (exec, cp) against ssh in the emulated KVM host, "
                         "9 a shared directory (virtio-fs against QEMU's vhost-user-fs-pci, and "
                         "virtio-blk) in the emulated KVM host, 10 save and restore of a small "
                         "guest against QEMU and Firecracker on KVM, 11 save and restore of the "
                         "stock kernel against QEMU and Firecracker in the emulated KVM host "
                         f"(default: {DEFAULT_PARTS}: parts 9 and 11 "
                         "are run only when named); the results of parts not "
                         "run are kept from "
                         "bench/RESULTS.md")
    ap.add_argument("--runs", type=int, default=30, help="part 1 runs per VMM (at least 20; default 30)")
    ap.add_argument("--inner-runs", type=int, default=6,
                    help="part 2 boots per VMM inside the emulated host (default 6)")
    ap.add_argument("--disk-runs", type=int, default=12,
                    help="part 3 boots per VMM (at least 10; default 12)")
    ap.add_argument("--blk-seconds", type=float, default=0.4,
                    help="part 4 seconds per measurement (default 0.4)")
    ap.add_argument("--blk-reps", type=int, default=7,
                    help="part 4 repetitions of each measurement, median taken (default 7)")
    ap.add_argument("--odirect-runs", type=int, default=4,
                    help="part 5 guest boots per VMM inside the emulated host, each writing and "
                         f"reading the image {ODIRECT_PASSES} times (at least 2; default 4)")
    ap.add_argument("--net-seconds", type=float, default=0.5,
                    help="part 6 seconds per measurement (default 0.5)")
    ap.add_argument("--net-reps", type=int, default=7,
                    help="part 6 repetitions of each measurement, median taken (default 7)")
    ap.add_argument("--net-runs", type=int, default=3,
                    help="part 7 guest boots per VMM and attachment inside the emulated host "
                         "(at least 1; default 3)")
    ap.add_argument("--net-guest-seconds", type=int, default=3,
                    help="part 7 seconds of each send, recv and rr measurement (default 3)")
    ap.add_argument("--net-passes", type=int, default=2,
                    help="part 7 passes of send, recv and rr per guest boot (default 2)")
    ap.add_argument("--agent-round-trips", type=int, default=20,
                    help="part 8 round trips of each kind (exec, ssh, virtkit ssh; default 20)")
    ap.add_argument("--agent-copies", type=int, default=2,
                    help="part 8 copies of 256 MiB each way per tool (default 2)")
    ap.add_argument("--fs-runs", type=int, default=2,
                    help="part 9 guest boots per configuration (at least 1; default 2)")
    ap.add_argument("--fs-passes", type=int, default=1,
                    help="part 9 passes of the whole workload per guest boot (default 1)")
    ap.add_argument("--fs-files", type=int, default=FS_FILES,
                    help=f"part 9 small files created, statted and deleted (default {FS_FILES})")
    ap.add_argument("--fs-configs", default=guest_fs.DEFAULT_CONFIGS,
                    help="part 9 configurations, comma-separated, of "
                         + ", ".join(c["key"] for c in guest_fs.CONFIGS)
                         + f" (default {guest_fs.DEFAULT_CONFIGS})")
    ap.add_argument("--save-runs", type=int, default=10,
                    help="part 10 saves and restores per VMM, after one warm-up each (at least 3; "
                         "default 10)")
    ap.add_argument("--emulated-save-runs", type=int, default=3,
                    help="part 11 restores per VMM (each VMM saves one more time; at least 2; "
                         "default 3)")
    ap.add_argument("--skip-emulated", action="store_true", help="skip part 2")
    ap.add_argument("--no-build", action="store_true", help="use the existing release build")
    args = ap.parse_args()
    try:
        args.parts = sorted({int(x) for x in args.parts.split(",") if x.strip()})
    except ValueError:
        ap.error("--parts takes part numbers separated by commas, like 1,3")
    if not args.parts or any(x not in ALL_PARTS for x in args.parts):
        ap.error(f"--parts: the parts are {', '.join(map(str, ALL_PARTS))}")
    if args.skip_emulated and 2 in args.parts:
        args.parts.remove(2)
        if not args.parts:
            ap.error("--skip-emulated leaves no part of --parts to run")
    if args.runs < 20:
        ap.error("--runs must be at least 20")
    if args.inner_runs < 1:
        ap.error("--inner-runs must be at least 1")
    if args.disk_runs < 10:
        ap.error("--disk-runs must be at least 10")
    if args.odirect_runs < 2:
        ap.error("--odirect-runs must be at least 2")
    if args.net_seconds <= 0 or args.net_reps < 1:
        ap.error("--net-seconds must be positive and --net-reps at least 1")
    if args.net_runs < 1 or args.net_passes < 1 or args.net_guest_seconds <= 0:
        ap.error("--net-runs and --net-passes must be at least 1, --net-guest-seconds positive")
    if args.fs_runs < 1 or args.fs_passes < 1 or args.fs_files < 1:
        ap.error("--fs-runs, --fs-passes and --fs-files must be at least 1")
    fs_keys = [k.strip() for k in args.fs_configs.split(",") if k.strip()]
    if not fs_keys or any(k not in {c["key"] for c in guest_fs.CONFIGS} for k in fs_keys):
        ap.error("--fs-configs: the configurations are "
                 + ", ".join(c["key"] for c in guest_fs.CONFIGS))
    if args.emulated_save_runs < 2:
        ap.error("--emulated-save-runs must be at least 2")
    if args.save_runs < 3:
        ap.error("--save-runs must be at least 3")
    if args.blk_seconds <= 0 or args.blk_reps < 1:
        ap.error("--blk-seconds must be positive and --blk-reps at least 1")
    args.command_line = " ".join(["bench/run.sh"] + [shlex.quote(a) for a in sys.argv[1:]])
    args.load_start = " ".join(f"{x:.2f}" for x in os.getloadavg())
    args.busy_start = busy_processes()
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)

    t0 = time.monotonic()
    started = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
    env = None
    p1 = p2 = p3 = p4 = p5 = p6 = p7 = p8 = p9 = p10 = p11 = None
    try:
        check_prerequisites(args)
        build(args)
        smoke = smoke_candidates()
        if not smoke:
            raise BenchError("no smoke.elf under target/release/build/virtkit-test-guests-*/out/: "
                             "run cargo build --release -p virtkit-test-guests")
        smoke = smoke[0]
        mbr = mbr_candidates()
        if 3 in args.parts and not mbr:
            raise BenchError("no mbr_bench.mbr under target/release/build/virtkit-test-guests-*/out/: "
                             "run cargo build --release -p virtkit-test-guests")
        build_helper()
        env = environment()
        log(f"parts {', '.join(map(str, args.parts))}; smoke guest: {rel(smoke)}")
        args.part_load = {}

        def load_now(part):
            args.part_load[part] = os.getloadavg()[0]

        if 1 in args.parts:
            load_now(1)
            p1 = part1(args, smoke)
        if 2 in args.parts:
            load_now(2)
            p2 = part2(args)
        if 3 in args.parts:
            load_now(3)
            p3 = part3(args, mbr[0])
        if 4 in args.parts:
            load_now(4)
            p4 = part4(args)
        if 5 in args.parts:
            load_now(5)
            p5 = part5(args)
        if 6 in args.parts:
            load_now(6)
            p6 = part6(args)
        if 7 in args.parts:
            load_now(7)
            p7 = part7(args)
        if 8 in args.parts:
            load_now(8)
            p8 = part8(args)
        if 9 in args.parts:
            load_now(9)
            p9 = part9(args)
        if 10 in args.parts:
            stream = stream_candidates()
            if not stream:
                raise BenchError("no stream.elf under target/release/build/virtkit-test-guests-*/out/: "
                                 "run cargo build --release -p virtkit-test-guests")
            load_now(10)
            p10 = part10(args, stream[0])
        if 11 in args.parts:
            load_now(11)
            p11 = part11(args)
    except BenchError as e:
        print(f"\nbench: FAILED: {e}", file=sys.stderr)
        # The parts that finished before the failure keep their results: a part that wedges the
        # emulator (part 2 did, twice) no longer loses part 1's half hour with it.
        done = [n for n, p in zip(ALL_PARTS, (p1, p2, p3, p4, p5, p6, p7, p8, p9, p10, p11))
                if p is not None]
        if done and env is not None:
            elapsed = time.monotonic() - t0
            text = report(args, env, started, p1, p2, p3, p4, p5, p6, p7, elapsed, p8, p9, p10,
                          p11)
            text = text.replace("## Results\n", "## Results\n\n- **Incomplete:** the run failed "
                                f"after part(s) {', '.join(map(str, done))}: {e}. The other "
                                "parts' results are an earlier run's.", 1)
            write_results(text, done)
            log(f"wrote the results of part(s) {', '.join(map(str, done))} to {rel(RESULTS)}")
        return 1
    elapsed = time.monotonic() - t0
    text = report(args, env, started, p1, p2, p3, p4, p5, p6, p7, elapsed, p8, p9, p10, p11)
    raw = {"started_utc": started, "env": env, "part1": p1, "part2": p2, "part3": p3,
           "part4": p4, "part5": p5, "part6": p6, "part7": p7, "part8": p8, "part9": p9, "part10": p10,
           "part11": p11,
           "elapsed_s": elapsed}
    (OUT / "results.json").write_text(json.dumps(raw, indent=1, default=str))
    text = write_results(text, args.parts)
    print("\n" + text)
    log(f"wrote {rel(RESULTS)} and {rel(OUT / 'results.json')} in {elapsed / 60:.1f} min")
    failed = [f for p in (p1, p2, p3, p5, p7, p8, p9, p10, p11) if p for f in p["failures"]]
    if failed:
        print(f"bench: {len(failed)} run(s) failed; see above", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
