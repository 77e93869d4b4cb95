"""bench/run.py part 5: the pieces that do not run anything (standard library only).

The guest's sequential O_DIRECT write and read MB/s with virtkit and with QEMU, inside the
emulated KVM host, on one image file. This module builds what goes into the emulated host (the
guest initramfs with bench/odirect.c's program appended, the virtio modules the emulated host
needs for its own disk, the script it runs) and parses what comes back; bench/run.py boots it.
"""

import gzip
import re
import shlex

# The guest program's place in its initramfs, and the kernel modules the emulated host loads
# for its disk (virtio-blk on the microvm's virtio-mmio), in load order.
GUEST_PROGRAM = "/vt/odirect"
HOST_DISK_MODULES = ("virtio_ring.ko", "virtio.ko", "virtio_mmio.ko", "virtio_blk.ko")
# Where things are inside the emulated host.
HOST_MODULE_DIR = "/guest/modules"
HOST_MOUNT = "/mnt/bench"
HOST_IMAGE = HOST_MOUNT + "/guest-disk.img"
# What the guest's init prints last before it powers off.
GUEST_DONE = "VIRTKIT-GUEST: poweroff"

_NEWC_MAGIC = b"070701"
_NEWC_HEADER = 110


class ArchiveError(Exception):
    """The guest initramfs is not what the asset recipe makes."""


def _pad4(n):
    return -n % 4


def newc_archive(entries):
    """A newc cpio archive of (name, mode, data) entries (mode with its file-type bits), with
    inode numbers from 1, owner root, mtime 0, and the trailer."""
    out = bytearray()
    for ino, (name, mode, data) in enumerate(list(entries) + [("TRAILER!!!", 0, b"")], start=1):
        raw = name.encode() + b"\0"
        fields = (ino, mode, 0, 0, 1, 0, len(data), 0, 0, 0, 0, len(raw), 0)
        out += _NEWC_MAGIC + "".join(f"{x:08x}" for x in fields).encode() + raw
        out += b"\0" * _pad4(_NEWC_HEADER + len(raw))
        out += data + b"\0" * _pad4(len(data))
    return bytes(out)


def initrd_with_files(base, files):
    """`base` (the asset initramfs, gzip-compressed) padded to 4 bytes, then an uncompressed newc
    archive with `files` ((absolute path, mode, data)) and their parent directories: the kernel
    unpacks concatenated archives one after the other, so the guest sees both."""
    entries, dirs = [], set()
    for path, mode, data in files:
        parts = path.strip("/").split("/")
        for i in range(1, len(parts)):
            d = "/".join(parts[:i])
            if d not in dirs:
                dirs.add(d)
                entries.append((d, 0o040755, b""))
        entries.append(("/".join(parts), 0o100000 | mode, data))
    return base + b"\0" * _pad4(len(base)) + newc_archive(entries)


def extract_files(initramfs_gz, basenames):
    """From a gzip-compressed stream of concatenated newc archives (the asset guest initramfs):
    {basename: data} for the regular files whose base names are in `basenames`. Raises
    ArchiveError if one is missing or the archive is malformed."""
    data = gzip.decompress(initramfs_gz)
    found, off = {}, 0
    while off + _NEWC_HEADER <= len(data):
        if data[off:off + 6] != _NEWC_MAGIC:
            # Between archives: zero padding.
            if data[off] == 0:
                off += 1
                continue
            raise ArchiveError(f"no newc header at byte {off} of the decompressed initramfs")
        try:
            fields = [int(data[off + 6 + 8 * i:off + 14 + 8 * i], 16) for i in range(13)]
        except ValueError:
            raise ArchiveError(f"bad newc header at byte {off}") from None
        mode, size, namesize = fields[1], fields[6], fields[11]
        name = data[off + _NEWC_HEADER:off + _NEWC_HEADER + namesize - 1].decode(errors="replace")
        off += _NEWC_HEADER + namesize
        off += _pad4(off)
        body = data[off:off + size]
        off += size + _pad4(size)
        base = name.rsplit("/", 1)[-1]
        if mode & 0o170000 == 0o100000 and base in basenames:
            found[base] = body
    missing = sorted(set(basenames) - set(found))
    if missing:
        raise ArchiveError(f"not in the guest initramfs: {', '.join(missing)}")
    return found


def guest_cmdline(mib, block_kib, passes):
    """The guest's kernel command line: the init runs the program on the first disk, then powers
    off."""
    return (f'console=ttyS0 quiet virtkit.run="{GUEST_PROGRAM} /dev/vda {mib} {block_kib} '
            f'{passes}"')


def inner_commands(mib, block_kib, passes):
    """The two VMMs' command lines inside the emulated host, with equivalent settings: 1 vCPU,
    256 MiB, the stock kernel and the initramfs, the image as a virtio-blk-pci disk opened with
    O_DIRECT (virtkit `cache=uncached`, QEMU `cache=none` with a thread pool)."""
    k, i, cmdline = "/guest/vmlinuz", "/guest/initrd", guest_cmdline(mib, block_kib, passes)
    virtkit = ["/usr/bin/virtkit", "run", "--kernel", k, "--initrd", i, "--cmdline", cmdline,
               "--cpus", "1", "--memory", "256M", "--serial", "stdio",
               "--disk", f"{HOST_IMAGE},cache=uncached"]
    qemu = ["qemu-system-x86_64", "-M", "q35", "-enable-kvm", "-cpu", "host", "-smp", "1",
            "-m", "256M", "-nodefaults", "-no-user-config", "-nographic", "-serial", "stdio",
            "-no-reboot", "-kernel", k, "-initrd", i, "-append", cmdline,
            "-drive", f"file={HOST_IMAGE},if=none,id=d0,format=raw,cache=none,aio=threads",
            "-device", "virtio-blk-pci,drive=d0"]
    return {"virtkit": virtkit, "QEMU q35": qemu}


def host_script(cmds, runs, image_mib, inner_timeout, touch_mib=768):
    """The emulated host's script: load the disk modules, mount the file system on its disk,
    write the image in full (no holes), touch `touch_mib` MiB of its free memory once, boot the
    guest once with each VMM as a warm-up (boot 0), then `runs` times with each, alternating
    which goes first. Every guest line `ODIRECT ...` comes back as
    `BENCH5 vmm=NAME boot=N ODIRECT ...`, then `BENCH5 vmm=NAME boot=N exit=CODE`; a boot that
    printed no `ODIRECT done` also sends the end of its console as `BENCH5-LOG ...` lines. A VMM
    still running after `inner_timeout` seconds is killed after its threads' kernel stacks are
    printed (`BENCH5-LOG`); one that survives SIGKILL ends the script (`BENCH5-FAIL`)."""
    q = {name: " ".join(shlex.quote(c) for c in cmd) for name, cmd in cmds.items()}
    loads = "\n".join(f"insmod {HOST_MODULE_DIR}/{m} || fail 'insmod {m}'"
                      for m in HOST_DISK_MODULES)
    boots = []
    for name, cmd in q.items():
        fn = "vk" if name == "virtkit" else "qm"
        boots.append(f"{fn}() {{ boot {shlex.quote(name.replace(' ', '_'))} {cmd}; }}")
    return f"""# generated by bench/run.py: part 5, run inside the emulated KVM host
fail() {{ echo "BENCH5-FAIL $*"; exit 1; }}
{loads}
i=0
while [ ! -b /dev/vda ] && [ $i -lt 50 ]; do sleep 0.1; i=$((i + 1)); done
[ -b /dev/vda ] || fail "no /dev/vda: the emulated host's disk did not appear"
mkdir -p {HOST_MOUNT}
mount -t ext4 /dev/vda {HOST_MOUNT} || fail "mount /dev/vda"
t0=$(cut -d' ' -f1 /proc/uptime)
dd if=/dev/zero of={HOST_IMAGE} bs=1M count={image_mib} oflag=direct conv=fsync 2>/dev/null ||
    fail "writing the image"
echo "BENCH5-HOST kernel=$(uname -r) cpus=$(grep -c ^processor /proc/cpuinfo) \\
memtotal_kib=$(awk '/MemTotal/ {{print $2}}' /proc/meminfo) \\
disk=vda:$(cat /sys/block/vda/size)sectors,$(cat /sys/block/vda/queue/logical_block_size)B \\
fs=$(awk '$2 == "{HOST_MOUNT}" {{print $3}}' /proc/mounts) \\
image_bytes=$(stat -c %s {HOST_IMAGE}) image_blocks=$(stat -c %b {HOST_IMAGE}) \\
fill_s=$(awk -v a=$t0 '{{printf "%.1f", $1 - a}}' /proc/uptime)"
# The emulated host's memory is allocated by its QEMU on first touch, which is slow under TCG:
# touch it once (through tmpfs, then freed), so that the guests' memory does not pay for it
# during the first boots only.
dd if=/dev/zero of=/tmp/touch bs=1M count={touch_mib} 2>/dev/null
rm -f /tmp/touch
# state PID: what each thread of PID is doing (for a VMM that did not finish in time).
state() {{
    for t in /proc/$1/task/*; do
        echo "BENCH5-LOG thread ${{t##*/}} $(cut -d' ' -f2,3 $t/stat) wchan=$(cat $t/wchan 2>/dev/null)"
        sed 's/^/BENCH5-LOG     /' $t/stack 2>/dev/null
    done
    dmesg | tail -n 20 | sed 's/^/BENCH5-LOG dmesg: /'
}}
boot() {{
    name=$1; shift
    "$@" </dev/null >/tmp/boot.raw 2>&1 &
    pid=$!
    left={inner_timeout}
    while kill -0 $pid 2>/dev/null && [ $left -gt 0 ]; do sleep 1; left=$((left - 1)); done
    if kill -0 $pid 2>/dev/null; then
        echo "BENCH5-LOG $name boot $n: still running after {inner_timeout} s; its threads:"
        state $pid
        kill -9 $pid
        sleep 5
        if kill -0 $pid 2>/dev/null; then
            echo "BENCH5-LOG $name boot $n: alive 5 s after SIGKILL; its threads:"
            state $pid
            echo "BENCH5 vmm=$name boot=$n exit=unkillable"
            tr -d '\\r' </tmp/boot.raw | tail -n 40 | sed 's/^/BENCH5-LOG /'
            fail "$name boot $n: the VMM did not finish in {inner_timeout} s and survived SIGKILL"
        fi
    fi
    wait $pid
    code=$?
    tr -d '\\r' </tmp/boot.raw >/tmp/boot.log
    grep '^ODIRECT ' /tmp/boot.log | sed "s/^/BENCH5 vmm=$name boot=$n /"
    echo "BENCH5 vmm=$name boot=$n exit=$code"
    if [ $code -ne 0 ] || ! grep -q '^ODIRECT done' /tmp/boot.log; then
        tail -n 40 /tmp/boot.log | sed 's/^/BENCH5-LOG /'
    fi
    return 0
}}
{chr(10).join(boots)}
n=0
vk; qm
n=1
while [ $n -le {runs} ]; do
    if [ $((n % 2)) -eq 1 ]; then vk; qm; else qm; vk; fi
    n=$((n + 1))
done
umount {HOST_MOUNT}
exit 0
"""


_LINE = re.compile(r"BENCH5 vmm=(\S+) boot=(\d+) (?:ODIRECT op=(write|read) pass=(\d+) "
                   r"bytes=(\d+) ns=(\d+) mbps=\S+|exit=(\S+))")


def parse_line(line):
    """One `BENCH5 ...` line of the host script: a measurement
    {"vmm", "boot", "op", "pass", "bytes", "ns", "mbps"}, a boot's end {"vmm", "boot", "exit"},
    or None."""
    m = _LINE.search(line)
    if not m:
        return None
    vmm, boot = m.group(1).replace("_", " "), int(m.group(2))
    if m.group(7) is not None:
        return {"vmm": vmm, "boot": boot, "exit": m.group(7)}
    nbytes, ns = int(m.group(5)), int(m.group(6))
    return {"vmm": vmm, "boot": boot, "op": m.group(3), "pass": int(m.group(4)),
            "bytes": nbytes, "ns": ns, "mbps": nbytes * 1e3 / ns if ns > 0 else float("nan")}
