"""Part 8 of bench/run.py: the guest agent against ssh, in one boot of the emulated KVM host.

The real Debian 12 system image (scripts/debian-image.sh) becomes a VM with a NAT card and a
published port (`--network nat --publish 2222:22`), cloud-init installs the agent from the
seed; then, alternating, `virtkit exec deb -- true`, `ssh -p 2222 dev@127.0.0.1 true` (the
network, through passt) and `virtkit ssh deb -- true` (ssh through the vsock) are each timed
by bench/spawntime.c (a new connection each, no ControlMaster), and a 256 MiB file goes both
ways with `virtkit cp` and with `scp` over the network, the sha256 of what arrived checked.
"""

import re
import shlex

# Where things are inside the emulated host.
HOST_DIR = "/bench8"
HOST_MODULE_DIR = HOST_DIR + "/modules"
MOUNT = "/mnt/d"
PAYLOAD_NAME = "payload.bin"
SSH_PORT = 2222

SSH_OPTS = ("-i /tmp/b8/key -o BatchMode=yes -o StrictHostKeyChecking=no "
            "-o UserKnownHostsFile=/dev/null -o LogLevel=ERROR")


NET_FIX = r"""# The guest's NAT card: the address cloud-init's network configuration gave it, or (when the
# image's configuration did not bring it up) a DHCP lease from passt taken by hand, said here.
virtkit exec deb -- sh -c 'ip -br -4 addr' 2>&1 | sed 's/^/BENCH8 log=guest-addr-before: /'
virtkit exec deb -- sh -c '
for i in /sys/class/net/*; do n=${i##*/}; [ "$n" = lo ] || { ifc=$n; break; }; done
if ip -4 addr show dev "$ifc" | grep -q "inet "; then echo "net=configured-by-the-image iface=$ifc"
else timeout 120 dhclient -1 "$ifc" >/dev/null 2>&1; echo "net=dhclient-by-hand exit=$? iface=$ifc"; fi
echo "addr=$(ip -4 -o addr show dev "$ifc" | awk "{print \$4}") gw=$(ip -4 route show default | awk "{print \$3}")"' 2>&1 | tr '\n' ' ' | sed 's/^/BENCH8 guest-net /'; echo"""


def commands():
    """The timed commands, by kind (as run inside the emulated host)."""
    net = f"ssh {SSH_OPTS} -p {SSH_PORT} dev@127.0.0.1"
    scp = f"scp {SSH_OPTS} -P {SSH_PORT}"
    return {
        "exec": "virtkit exec deb -- true",
        "ssh-net": f"{net} true",
        "virtkit-ssh": "virtkit ssh deb -- -o BatchMode=yes true",
        "cp-in": f"virtkit cp /tmp/{PAYLOAD_NAME} deb:/home/dev/vk-in.bin",
        "scp-in": f"{scp} /tmp/{PAYLOAD_NAME} dev@127.0.0.1:/home/dev/scp-in.bin",
        "cp-out": "virtkit cp deb:/home/dev/vk-in.bin /tmp/vk-out.bin",
        "scp-out": f"{scp} dev@127.0.0.1:/home/dev/scp-in.bin /tmp/scp-out.bin",
    }


def host_script(round_trips, copies, boot_timeout):
    c = commands()
    t = lambda label, secs: f"spawntime -t {secs} -l {label} -- {c[label]}"
    loads = "\n".join(f"insmod {HOST_MODULE_DIR}/{m} 2>/dev/null"
                      for m in ("virtio_ring.ko", "virtio.ko", "virtio_mmio.ko", "virtio_blk.ko"))
    return f"""
say() {{ echo "BENCH8 $*"; }}
fail() {{ say "fail=$*"; exit 3; }}
{loads}
for i in $(seq 50); do [ -b /dev/vda ] && break; sleep 0.1; done
[ -b /dev/vda ] || fail no-disk
mkdir -p {MOUNT} && mount -t ext4 /dev/vda {MOUNT} || fail mount
# passt's template interface is the default route's, with a MAC (no network card here).
ip link set lo address 02:00:00:00:00:01
ip link set lo up
ip route add default via 127.0.0.1 dev lo
export HOME=/root VIRTKIT_HOME={MOUNT}/home VIRTKIT_AGENT={HOST_DIR}/virtkit-agent
mkdir -p /root/.ssh /tmp/b8 && chmod 700 /root/.ssh
cp {HOST_DIR}/key {HOST_DIR}/key.pub /tmp/b8/ && chmod 600 /tmp/b8/key
say "host kernel=$(uname -r) cpus=$(nproc) mem_mib=$(($(awk '/MemTotal/{{print $2}}' /proc/meminfo) / 1024))"
rm -rf $VIRTKIT_HOME
virtkit create deb --from {MOUNT}/root.img --kernel {MOUNT}/vmlinuz --initrd {MOUNT}/initrd.img \\
    --cmdline "root=/dev/vda ro console=ttyS0" --memory 1G --cpus 2 \\
    --network nat --publish {SSH_PORT}:22 --ssh-key /tmp/b8/key.pub --user dev >/tmp/b8/create.log 2>&1 \\
    || {{ sed 's/^/BENCH8 log=create: /' /tmp/b8/create.log; fail create; }}
s=$(date +%s)
virtkit run deb --detach --wait {boot_timeout} >/tmp/b8/run.log 2>&1 || {{ sed 's/^/BENCH8 log=run: /' /tmp/b8/run.log; tail -n 40 $VIRTKIT_HOME/vms/deb/console.log | sed 's/^/BENCH8 log=console: /'; fail run; }}
say agent_s=$(($(date +%s) - s))
timeout 900 virtkit exec deb -- cloud-init status --wait >/tmp/b8/ci.log 2>&1; say "cloud_init=$(tail -n1 /tmp/b8/ci.log | tr ' ' _)"
virtkit exec deb -- cloud-init status --long 2>&1 | grep -iE 'error|fail|status|detail' | head -n 20 | sed 's/^/BENCH8 log=cloud-init: /'
{NET_FIX}
ok=0
end=$(($(date +%s) + 300))
until [ $(date +%s) -ge $end ]; do
    timeout 120 {c['ssh-net']} </dev/null >/tmp/b8/ssh.log 2>&1 && {{ ok=1; break; }}
    sleep 3
done
if [ $ok != 1 ]; then
    sed 's/^/BENCH8 log=ssh: /' /tmp/b8/ssh.log
    virtkit exec deb -- sh -c 'ip -br addr; ip route; ss -tln; cloud-init status --long; systemctl --no-pager status ssh networking; journalctl -b --no-pager -u networking -u ssh -u cloud-init -n 60' 2>&1 | sed 's/^/BENCH8 log=guest: /'
    fail ssh-net-never-answered
fi
timeout 120 {c['virtkit-ssh']} </dev/null >/tmp/b8/vssh.log 2>&1 || {{ sed 's/^/BENCH8 log=virtkit-ssh: /' /tmp/b8/vssh.log; fail virtkit-ssh; }}
say ready_s=$(($(date +%s) - s))
say "guest $(virtkit exec deb -- sh -c 'echo kernel=$(uname -r) cpus=$(nproc) sshd=$(/usr/sbin/sshd -V 2>&1 | head -n1 | tr " ," __)' 2>&1)"
# The emulated host has no DNS upstream: passt's forwarder for the lease's name server never
# answers, and sshd's login path over vsock (a peer with no IP address) waits on lookups until
# they time out. One `virtkit ssh` is timed so (label dns-virtkit-ssh), then the guest's
# resolv.conf is emptied (lookups fail at once, as on a host whose DNS answers) for the rest.
{t('virtkit-ssh', 120).replace('-l virtkit-ssh', '-l dns-virtkit-ssh')}
virtkit exec deb -- sh -c ': > /etc/resolv.conf'
# Warm-up: one of each, not counted (labels warm-*).
{t('exec', 120).replace('-l exec', '-l warm-exec')} >/dev/null
{t('ssh-net', 120).replace('-l ssh-net', '-l warm-ssh-net')} >/dev/null
{t('virtkit-ssh', 120).replace('-l virtkit-ssh', '-l warm-virtkit-ssh')} >/dev/null
i=0
while [ $i -lt {round_trips} ]; do
    i=$((i + 1))
    {t('exec', 120)}
    {t('ssh-net', 120)}
    {t('virtkit-ssh', 120)}
done
cp {MOUNT}/{PAYLOAD_NAME} /tmp/{PAYLOAD_NAME} || fail payload
say payload_sum=$(sha256sum /tmp/{PAYLOAD_NAME} | cut -d' ' -f1)
j=0
while [ $j -lt {copies} ]; do
    j=$((j + 1))
    virtkit exec deb -- rm -f /home/dev/vk-in.bin /home/dev/scp-in.bin
    virtkit exec deb -- sync
    if [ $((j % 2)) = 1 ]; then order="cp scp"; else order="scp cp"; fi
    for w in $order; do
        eval "spawntime -t 900 -l $w-in -- \\$cmd_${{w}}_in"
    done
    say "sum cp-in $j $(virtkit exec deb -- sha256sum /home/dev/vk-in.bin | cut -d' ' -f1)"
    say "sum scp-in $j $(virtkit exec deb -- sha256sum /home/dev/scp-in.bin | cut -d' ' -f1)"
    virtkit exec deb -- sync
    for w in $order; do
        rm -f /tmp/vk-out.bin /tmp/scp-out.bin
        eval "spawntime -t 900 -l $w-out -- \\$cmd_${{w}}_out"
        f=/tmp/vk-out.bin; [ $w = scp ] && f=/tmp/scp-out.bin
        say "sum $w-out $j $(sha256sum $f | cut -d' ' -f1)"
        rm -f $f
    done
done
virtkit stop deb --timeout 120 >/dev/null 2>&1; say stop=$?
say done
"""


def script_with_vars(round_trips, copies, boot_timeout):
    """The host script with the copy commands as shell variables (word-split when used)."""
    c = commands()
    head = "\n".join([
        "set -u",
        f"cmd_cp_in={shlex.quote(c['cp-in'])}",
        f"cmd_scp_in={shlex.quote(c['scp-in'])}",
        f"cmd_cp_out={shlex.quote(c['cp-out'])}",
        f"cmd_scp_out={shlex.quote(c['scp-out'])}",
    ])
    return head + "\n" + host_script(round_trips, copies, boot_timeout)


SPAWN = re.compile(r"SPAWNTIME label=(\S+) marker_ms=\S+ exit_ms=(\S+) status=(\S+) "
                   r"maxrss_kib=(\d+) utime_ms=(\S+) stime_ms=(\S+)")


def parse_line(line):
    m = SPAWN.search(line)
    if m:
        return {"kind": "time", "label": m.group(1), "ms": float(m.group(2)),
                "status": m.group(3), "rss_kib": int(m.group(4)),
                "cpu_ms": float(m.group(5)) + float(m.group(6))}
    i = line.find("BENCH8 ")
    if i < 0:
        return None
    body = line[i + len("BENCH8 "):]
    m = re.match(r"sum (\S+) (\d+) (\S*)", body)
    if m:
        return {"kind": "sum", "label": m.group(1), "rep": int(m.group(2)), "sum": m.group(3)}
    return {"kind": "say", "text": body}
