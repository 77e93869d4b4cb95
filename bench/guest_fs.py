"""bench/run.py part 9: the pieces that do not run anything (standard library only).

A shared directory's throughput and small-file rates as the guest sees them, inside the
emulated KVM host: virtkit's virtio-fs (`virtkit run --share`, virtkit spawning virtiofsd
itself) against QEMU's `vhost-user-fs-pci` with the same virtiofsd binary and cache mode
(started by the emulated host's script), and virtio-blk with ext4 on the same tmpfs as a
reference. This module holds the configurations (CONFIGS: data), builds the guest's script and
the emulated host's script, and parses what comes back; bench/run.py boots it.
"""

import re
import shlex

# Where things are in the guest and in the emulated host.
GUEST_PROGRAM = "/vt/fsbench"
GUEST_SCRIPT = "/vt/fs.sh"
VIRTIOFSD = "/usr/bin/virtiofsd"
# One tmpfs in the emulated host holds both the shared directory and the virtio-blk image, so
# every configuration's data ends in the same place (the emulated host's memory).
HOST_DIR = "/bench9"
HOST_TMPFS_MIB = 1200
SHARE = HOST_DIR + "/share"
BLK_IMAGE = HOST_DIR + "/blk.img"
BLK_IMAGE_MIB = 640
TAG = "bench"
SOCKET = "/tmp/vfs.sock"
# virtiofsd's options, as virtkit gives them (crates/virtkit/src/devices/directory_sharing.rs):
# `--cache auto`, the sandbox virtkit falls back to on an initramfs root where `pivot_root`
# fails (`namespace` first, then `chroot`); the one virtkit's daemon really ran with is
# reported from its command line.
VIRTIOFSD_ARGS = ["--cache", "auto", "--sandbox", "chroot", "--log-level", "info"]
# QEMU's queue size for vhost-user-fs-pci is 128 by default (7.2); virtkit's is 1024
# (crates/devices/src/fs/mod.rs QUEUE_SIZE): QEMU gets virtkit's.
QUEUE_SIZE = 1024

CONFIGS = [
    {"key": "virtkit-fs", "vmm": "virtkit", "kind": "fs",
     "label": "virtkit, virtio-fs (`--share`)"},
    {"key": "qemu-fs", "vmm": "QEMU q35", "kind": "fs",
     "label": "QEMU q35, vhost-user-fs-pci"},
    {"key": "virtkit-blk", "vmm": "virtkit", "kind": "blk",
     "label": "virtkit, virtio-blk + ext4 (reference)"},
    {"key": "qemu-blk", "vmm": "QEMU q35", "kind": "blk",
     "label": "QEMU q35, virtio-blk-pci + ext4 (reference)"},
]
DEFAULT_CONFIGS = "virtkit-fs,qemu-fs,virtkit-blk"
OPS = ("write", "read", "create", "stat", "delete")


def guest_script():
    """/vt/fs.sh in the guest: KIND MIB FILES PASSES. Mounts the share by tag (`fs`) or makes
    ext4 on /dev/vda and mounts it (`blk`; not timed), then runs the program on it."""
    return f"""#!/bin/sh
kind=$1 mib=$2 files=$3 passes=$4
mkdir -p /mnt/b
if [ "$kind" = fs ]; then
    mount -t virtiofs {TAG} /mnt/b 2>/tmp/m || {{ echo "FSBENCH error=mount-virtiofs $(cat /tmp/m)"; exit 1; }}
else
    i=0
    while [ ! -b /dev/vda ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
    mkfs.ext4 -q -F -E lazy_itable_init=0,lazy_journal_init=0 /dev/vda >/tmp/m 2>&1 ||
        {{ echo "FSBENCH error=mkfs $(cat /tmp/m | tr '\\n' ' ')"; exit 1; }}
    mount -t ext4 /dev/vda /mnt/b 2>/tmp/m || {{ echo "FSBENCH error=mount-ext4 $(cat /tmp/m)"; exit 1; }}
fi
echo "FSBENCH-INFO mount: $(grep ' /mnt/b ' /proc/mounts)"
{GUEST_PROGRAM} /mnt/b "$mib" "$files" "$passes"
rc=$?
echo "FSBENCH-INFO interrupts: $(grep -i virtio /proc/interrupts | tr -s ' ' | tr '\\n' ';')"
umount /mnt/b || echo "FSBENCH-INFO umount failed"
exit $rc
"""


def guest_cmdline(kind, mib, files, passes):
    return (f'console=ttyS0 quiet virtkit.run="sh {GUEST_SCRIPT} {kind} {mib} {files} '
            f'{passes}"')


def inner_commands(config, mib, files, passes):
    """The VMM's command line for `config`: 1 vCPU, 256 MiB, the stock kernel and initramfs,
    and the shared directory (virtio-fs, tag `bench`) or the image (virtio-blk, the page cache
    on the host side for both)."""
    k, i = "/guest/vmlinuz", "/guest/initrd"
    cmdline = guest_cmdline(config["kind"], mib, files, passes)
    if config["vmm"] == "virtkit":
        cmd = ["/usr/bin/virtkit", "run", "--kernel", k, "--initrd", i, "--cmdline", cmdline,
               "--cpus", "1", "--memory", "256M", "--serial", "stdio"]
        if config["kind"] == "fs":
            cmd += ["--share", f"{SHARE}:{TAG}"]
        else:
            cmd += ["--disk", BLK_IMAGE]
        return cmd
    cmd = ["qemu-system-x86_64", "-M", "q35", "-enable-kvm", "-cpu", "host", "-smp", "1",
           "-m", "256M", "-nodefaults", "-no-user-config", "-nographic", "-serial", "stdio",
           "-no-reboot", "-kernel", k, "-initrd", i, "-append", cmdline]
    if config["kind"] == "fs":
        cmd += ["-object", "memory-backend-memfd,id=mem,size=256M,share=on",
                "-numa", "node,memdev=mem",
                "-chardev", f"socket,id=char0,path={SOCKET}",
                "-device", f"vhost-user-fs-pci,chardev=char0,tag={TAG},queue-size={QUEUE_SIZE}"]
    else:
        cmd += ["-drive", f"file={BLK_IMAGE},if=none,id=d0,format=raw,cache=writeback,"
                "aio=threads", "-device", "virtio-blk-pci,drive=d0"]
    return cmd


def virtiofsd_command():
    """The emulated host's script starts this virtiofsd for QEMU, before each QEMU boot."""
    return [VIRTIOFSD, f"--socket-path={SOCKET}", f"--shared-dir={SHARE}"] + VIRTIOFSD_ARGS


def host_script(configs, runs, mib, files, passes, inner_timeout, touch_mib=768):
    """The emulated host's script: a tmpfs with the shared directory and a sparse image, memory
    touched once, then `runs` rounds in which each configuration boots once, the order rotating
    each round. Guest lines `FSBENCH ...` come back as `BENCH9 cfg=KEY boot=N ...`, then
    `BENCH9 cfg=KEY boot=N exit=CODE`; the command lines of the virtiofsd processes seen during
    a boot as `BENCH9 cfg=KEY boot=N FSBENCH-INFO virtiofsd: ...`; a boot without
    `FSBENCH done` sends the end of its console (and virtiofsd's log) as `BENCH9-LOG` lines."""
    fns = []
    for c in configs:
        fn = "b_" + c["key"].replace("-", "_")
        q = " ".join(shlex.quote(x) for x in inner_commands(c, mib, files, passes))
        if c["vmm"] != "virtkit" and c["kind"] == "fs":
            d = " ".join(shlex.quote(x) for x in virtiofsd_command())
            before = f"""    rm -f {SOCKET}
    {d} >/tmp/vfsd.log 2>&1 &
    side=$!
    i=0
    while [ ! -S {SOCKET} ] && [ $i -lt 300 ]; do sleep 0.1; i=$((i + 1)); done
    [ -S {SOCKET} ] || echo "BENCH9-LOG virtiofsd: no socket after 30 s"
"""
            after = "    kill $side 2>/dev/null; wait $side 2>/dev/null"
        else:
            before, after = "    : >/tmp/vfsd.log\n", "    :"
        fns.append((fn, f"""{fn}() {{
{before}    boot {c['key']} {q}
{after}
}}"""))
    k = len(fns)
    rounds = []
    for r in range(k):
        order = [fns[(r + j) % k][0] for j in range(k)]
        rounds.append(f"    {r}) {'; '.join(order)} ;;")
    body = "\n".join(f for _, f in fns)
    return f"""# generated by bench/run.py: part 9, run inside the emulated KVM host
fail() {{ echo "BENCH9-FAIL $*"; exit 1; }}
mkdir -p {HOST_DIR}
mount -t tmpfs -o size={HOST_TMPFS_MIB}m tmpfs {HOST_DIR} || fail "mount tmpfs {HOST_DIR}"
mkdir -p {SHARE}
truncate -s {BLK_IMAGE_MIB}M {BLK_IMAGE} || fail "truncate {BLK_IMAGE}"
export VIRTKIT_VIRTIOFSD={VIRTIOFSD}
{VIRTIOFSD} --version >/tmp/v 2>&1 || fail "virtiofsd does not run: $(cat /tmp/v)"
echo "BENCH9-HOST kernel=$(uname -r) cpus=$(grep -c ^processor /proc/cpuinfo) \\
memtotal_kib=$(awk '/MemTotal/ {{print $2}}' /proc/meminfo) \\
virtiofsd=\\"$(head -n 1 /tmp/v)\\" root=$(awk '$2 == "/" {{print $3}}' /proc/mounts | head -n 1) \\
data=$(awk '$2 == "{HOST_DIR}" {{print $3}}' /proc/mounts)"
# The emulated host's memory is allocated by its QEMU on first touch, slowly under TCG: touch
# it once, so that the first boots do not pay for it alone.
dd if=/dev/zero of=/tmp/touch bs=1M count={touch_mib} 2>/dev/null
rm -f /tmp/touch
# The command lines of the virtiofsd processes running now (comm is cut to 15 characters).
vfsd_seen() {{
    for p in /proc/[0-9]*; do
        [ "$(cat $p/comm 2>/dev/null)" = virtiofsd ] && tr '\\0' ' ' <$p/cmdline 2>/dev/null && echo
    done
}}
boot() {{
    key=$1; shift
    "$@" </dev/null >/tmp/boot.raw 2>&1 &
    pid=$!
    left={inner_timeout}
    : >/tmp/vfsd.seen
    while kill -0 $pid 2>/dev/null && [ $left -gt 0 ]; do
        sleep 1; left=$((left - 1))
        [ -s /tmp/vfsd.seen ] || vfsd_seen >/tmp/vfsd.seen
    done
    if kill -0 $pid 2>/dev/null; then
        echo "BENCH9-LOG $key boot $n: still running after {inner_timeout} s; killed"
        kill -9 $pid
    fi
    wait $pid
    code=$?
    tr -d '\\r' </tmp/boot.raw >/tmp/boot.log
    grep -E '^FSBENCH(-INFO)? ' /tmp/boot.log | sed "s/^/BENCH9 cfg=$key boot=$n /"
    sort -u /tmp/vfsd.seen | grep . | sed "s/^/BENCH9 cfg=$key boot=$n FSBENCH-INFO virtiofsd: /"
    echo "BENCH9 cfg=$key boot=$n exit=$code"
    if [ $code -ne 0 ] || ! grep -q '^FSBENCH done' /tmp/boot.log; then
        tail -n 40 /tmp/boot.log | sed 's/^/BENCH9-LOG /'
        tail -n 20 /tmp/vfsd.log | sed 's/^/BENCH9-LOG virtiofsd: /'
    fi
    # What a failed boot left in the share or on the disk does not reach the next one.
    rm -rf {SHARE}/* 2>/dev/null
    return 0
}}
{body}
n=1
while [ $n -le {runs} ]; do
    case $(((n - 1) % {k})) in
{chr(10).join(rounds)}
    esac
    n=$((n + 1))
done
umount {HOST_DIR}
exit 0
"""


_PREFIX = re.compile(r"BENCH9 cfg=(\S+) boot=(\d+) (.*)$")
_MEASURE = re.compile(r"FSBENCH op=(write|read|create|stat|delete) pass=(\d+) "
                      r"(bytes|files)=(\d+) ns=(\d+)")


def parse_line(line):
    """One `BENCH9 ...` line: {"cfg", "boot"} plus a measurement ("op", "pass", "value": MB/s
    for write/read, files per second for the others), "exit", "info" or "fail"; or None."""
    m = _PREFIX.search(line)
    if not m:
        return None
    r = {"cfg": m.group(1), "boot": int(m.group(2))}
    rest = m.group(3)
    if rest.startswith("exit="):
        r["exit"] = rest[len("exit="):]
        return r
    if rest.startswith("FSBENCH-INFO "):
        r["info"] = rest[len("FSBENCH-INFO "):]
        return r
    if rest.startswith("FSBENCH error="):
        r["fail"] = rest[len("FSBENCH "):]
        return r
    mm = _MEASURE.search(rest)
    if not mm:
        return None
    amount, ns = int(mm.group(4)), int(mm.group(5))
    r["op"], r["pass"] = mm.group(1), int(mm.group(2))
    if ns <= 0:
        r["value"] = float("nan")
    elif mm.group(3) == "bytes":
        r["value"] = amount * 1e3 / ns  # 10^6 bytes per second
    else:
        r["value"] = amount * 1e9 / ns
    return r
