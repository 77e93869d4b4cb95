"""bench/run.py part 7: the pieces that do not run anything (standard library only).

The guest's TCP throughput each way and its 1-byte request/response rate under virtkit and
under QEMU, inside the emulated KVM host, on the same kind of network attachment. This module
holds the attachments (ROWS: data, so that a row is a few lines), builds the guest's script and
the emulated host's script, and parses what comes back; bench/run.py boots it.

A row is one attachment: how the emulated host sets it up (and checks it can), what the guest's
address, gateway and server are, and each VMM's arguments for it. A VMM whose `needs` text is
not in `virtkit run --help` (an attachment virtkit does not have yet) makes the row skipped with
that reason: no figure is ever made up for it.
"""

import re
import shlex

# Where things are in the guest and in the emulated host.
GUEST_PROGRAM = "/vt/tcpbench"
GUEST_SCRIPT = "/vt/net.sh"
HOST_PROGRAM = "/usr/bin/tcpbench"
PORT = 5201
# passt started as root switches to nobody before it binds its socket: the directory is
# nobody's.
PASST_DIR = "/run/passt-bench"
PASST_SOCK = PASST_DIR + "/passt.sock"
TAP = "vkbench0"

# passt: a fresh one per guest boot (`-1`: it ends when its one client goes), listening on a
# Unix socket both VMMs connect to; the guest's address and gateway as virtkit's NAT chooses
# them. Connections to the gateway reach the emulated host's loopback (passt maps the gateway
# address to the host), where the server listens.
PASST_SETUP_ONCE = f"""command -v passt >/dev/null || {{ skip 'passt is not in the emulated host'; return 1; }}
    mkdir -p {PASST_DIR} && chown 65534:65534 {PASST_DIR} || {{ skip 'cannot make {PASST_DIR}'; return 1; }}"""
PASST_BEFORE_BOOT = f"""rm -f {PASST_SOCK}
    passt -f -q -e -1 -s {PASST_SOCK} -a 10.0.2.15 -n 24 -g 10.0.2.2 >/tmp/passt.log 2>&1 &
    side=$!
    i=0
    while [ ! -S {PASST_SOCK} ] && [ $i -lt 300 ]; do sleep 0.1; i=$((i + 1)); done
    [ -S {PASST_SOCK} ] || {{ echo "BENCH7-LOG passt: no socket after 30 s"; sed 's/^/BENCH7-LOG passt: /' /tmp/passt.log; }}"""
PASST_AFTER_BOOT = "kill $side 2>/dev/null; wait $side 2>/dev/null"

# TAP: one persistent TAP for the row, the emulated host's end of the guest's link; both VMMs
# attach to it by name. The emulated host needs /dev/net/tun (the tun module in its assets).
# busybox's `ip` has no `tuntap`; its `tunctl -t` makes a persistent TAP.
TAP_SETUP_ONCE = f"""[ -c /dev/net/tun ] || {{ skip 'no /dev/net/tun in the emulated host (tun module)'; return 1; }}
    tunctl -t {TAP} >/tmp/tap.err 2>&1 || {{ skip "tunctl -t {TAP}: $(cat /tmp/tap.err)"; return 1; }}
    ip addr add 10.0.3.1/24 dev {TAP} && ip link set {TAP} up || {{ skip 'cannot configure {TAP}'; return 1; }}"""
TAP_TEARDOWN = f"tunctl -d {TAP} >/dev/null 2>&1"
VHOST_SETUP_ONCE = ("[ -c /dev/vhost-net ] || { skip 'no /dev/vhost-net in the emulated host "
                    "(vhost_net module)'; return 1; }\n    " + TAP_SETUP_ONCE)

QEMU_NIC = ["-device", "virtio-net-pci,netdev=n0,romfile="]

ROWS = [
    {
        "key": "passt",
        "label": "passt, Unix stream socket",
        "guest": ("10.0.2.15/24", "10.0.2.2", "10.0.2.2"),
        "setup_once": PASST_SETUP_ONCE,
        "before_boot": PASST_BEFORE_BOOT,
        "after_boot": PASST_AFTER_BOOT,
        "teardown": "",
        "vmms": {
            "virtkit": {"args": ["--network", f"socket:{PASST_SOCK}"], "needs": "socket:"},
            "QEMU q35": {"args": ["-netdev", "stream,id=n0,server=off,addr.type=unix,"
                                  f"addr.path={PASST_SOCK}"] + QEMU_NIC},
        },
    },
    {
        "key": "tap",
        "label": "TAP, user-space data path (QEMU vhost=off)",
        "guest": ("10.0.3.15/24", "10.0.3.1", "10.0.3.1"),
        "setup_once": TAP_SETUP_ONCE,
        "before_boot": "",
        "after_boot": "",
        "teardown": TAP_TEARDOWN,
        "vmms": {
            "virtkit": {"args": ["--network", f"tap:{TAP}"], "needs": "tap:"},
            "QEMU q35": {"args": ["-netdev", f"tap,id=n0,ifname={TAP},script=no,downscript=no,"
                                  "vhost=off"] + QEMU_NIC},
        },
    },
    {
        "key": "tap-vhost",
        "label": "TAP, QEMU with vhost-net (kernel data path), against virtkit on TAP",
        "guest": ("10.0.3.15/24", "10.0.3.1", "10.0.3.1"),
        "setup_once": VHOST_SETUP_ONCE,
        "before_boot": "",
        "after_boot": "",
        "teardown": TAP_TEARDOWN,
        "vmms": {
            "virtkit": {"args": ["--network", f"tap:{TAP}"], "needs": "tap:"},
            "QEMU q35 vhost-net": {"args": ["-netdev", f"tap,id=n0,ifname={TAP},script=no,"
                                            "downscript=no,vhost=on"] + QEMU_NIC},
        },
    },
]

MODES = ("send", "recv", "rr")


def skipped_rows(virtkit_help):
    """{row key: reason} for the rows a VMM cannot run (virtkit's help lacks the attachment)."""
    out = {}
    for row in ROWS:
        for vmm, spec in row["vmms"].items():
            need = spec.get("needs")
            if need and need not in virtkit_help:
                out[row["key"]] = (f"`virtkit run --help` has no `{need}` attachment yet "
                                   f"({vmm} cannot run this row)")
    return out


def guest_script():
    """/vt/net.sh in the guest: ADDR/PREFIX GW SERVER PORT SECONDS PASSES. Configures the first
    card statically (no DHCP: the same for every attachment), waits until the server answers,
    then runs send, recv and rr PASSES times, each for SECONDS, and prints the card's negotiated
    virtio features and its interrupt counts."""
    return f"""#!/bin/sh
addr=$1 gw=$2 server=$3 port=$4 secs=$5 passes=$6
ifc=
for i in /sys/class/net/*; do n=${{i##*/}}; [ "$n" = lo ] || {{ ifc=$n; break; }}; done
[ -n "$ifc" ] || {{ echo "NETBENCH-FAIL no network card"; exit 1; }}
ip link set lo up
ip link set "$ifc" up
ip addr add "$addr" dev "$ifc"
ip route add default via "$gw" dev "$ifc"
echo "NETBENCH-INFO card=$ifc mtu=$(cat /sys/class/net/$ifc/mtu) \\
features=$(cat /sys/class/net/$ifc/device/features 2>/dev/null) \
clocksource=$(cat /sys/devices/system/clocksource/clocksource0/current_clocksource)"
i=0
until timeout 5 {GUEST_PROGRAM} client "$server" "$port" rr 0.1 >/dev/null 2>&1; do
    i=$((i + 1))
    if [ $i -ge 30 ]; then
        echo "NETBENCH-FAIL the server $server:$port did not answer: $(timeout 5 {GUEST_PROGRAM} client "$server" "$port" rr 0.1 2>&1 | tr '\n' ' ')"
        echo "NETBENCH-INFO $(ip addr show dev "$ifc" | tr -s ' ' | tr '\n' ';') $(ip route | tr '\n' ';') $(ip neigh | tr '\n' ';')"
        exit 1
    fi
    sleep 0.5
done
p=1
while [ $p -le "$passes" ]; do
    for m in send recv rr; do
        timeout $((secs * 3 + 30)) {GUEST_PROGRAM} client "$server" "$port" $m "$secs" >/tmp/r 2>&1 || echo "NETBENCH-FAIL $m: $(cat /tmp/r)"
        sed -n "s/^NETBENCH /NETBENCH pass=$p /p" /tmp/r
    done
    p=$((p + 1))
done
echo "NETBENCH-INFO interrupts: $(grep -i virtio /proc/interrupts | tr -s ' ' | tr '\\n' ';')"
# Losses on the way show as retransmissions (guest to host) and out-of-order segments (host to
# guest): the TCP counters of the guest, and its card's.
echo "NETBENCH-INFO tcp: $(awk '/^Tcp:/ {{ if (h) {{ print "OutSegs=" $12, "InSegs=" $11, "RetransSegs=" $13 }} else h = 1 }}' /proc/net/snmp) \
$(awk '/^TcpExt:/ {{ if (h) {{ for (i = 2; i <= NF; i++) if (n[i] ~ /^(TCPOFOQueue|TCPOFODrop|TCPRcvQDrop|TCPLostRetransmit|TCPSackRecovery|TCPDSACKRecv|TCPDSACKOldSent|TCPTimeouts|DelayedACKs|TCPRcvCollapsed|PruneCalled)$/) printf "%s=%s ", n[i], $i }} else {{ h = 1; for (i = 2; i <= NF; i++) n[i] = $i }} }}' /proc/net/netstat) \
card: $(grep "$ifc:" /proc/net/dev | tr -s ' ')"
echo "NETBENCH done"
"""


def guest_cmdline(row, seconds, passes):
    addr, gw, server = row["guest"]
    return (f'console=ttyS0 quiet virtkit.run="sh {GUEST_SCRIPT} {addr} {gw} {server} {PORT} '
            f'{seconds} {passes}"')


def inner_commands(row, seconds, passes):
    """Each VMM's command line for `row`, with equivalent settings: 1 vCPU, 256 MiB, the stock
    kernel and initramfs, one virtio-net PCI card on the row's attachment."""
    k, i, cmdline = "/guest/vmlinuz", "/guest/initrd", guest_cmdline(row, seconds, passes)
    out = {}
    for vmm, spec in row["vmms"].items():
        if vmm == "virtkit":
            out[vmm] = ["/usr/bin/virtkit", "run", "--kernel", k, "--initrd", i, "--cmdline",
                        cmdline, "--cpus", "1", "--memory", "256M", "--serial", "stdio"] + spec["args"]
        else:
            out[vmm] = ["qemu-system-x86_64", "-M", "q35", "-enable-kvm", "-cpu", "host",
                        "-smp", "1", "-m", "256M", "-nodefaults", "-no-user-config",
                        "-nographic", "-serial", "stdio", "-no-reboot", "-kernel", k,
                        "-initrd", i, "-append", cmdline] + spec["args"]
    return out


def host_script(rows, runs, seconds, passes, inner_timeout, touch_mib=768):
    """The emulated host's script: the loopback made passt's template interface, the server
    started, memory touched once, then for each row: its one-time set-up (a failure skips the
    row: `BENCH7-SKIP row=KEY reason`), then `runs` boots with each VMM, alternating which goes
    first. Guest lines `NETBENCH ...` come back as `BENCH7 row=KEY vmm=NAME boot=N ...`, then
    `BENCH7 row=KEY vmm=NAME boot=N exit=CODE`; a boot without `NETBENCH done` sends the end of
    its console as `BENCH7-LOG` lines."""
    parts = []
    for row in rows:
        cmds = inner_commands(row, seconds, passes)
        fns = []
        for k, (name, cmd) in enumerate(cmds.items()):
            fn = f"b_{row['key'].replace('-', '_')}_{k}"
            q = " ".join(shlex.quote(c) for c in cmd)
            fns.append(fn)
            parts.append(f"""{fn}() {{
    {row['before_boot'] or ':'}
    boot {row['key']} {shlex.quote(name.replace(' ', '_'))} {q}
    {row['after_boot'] or ':'}
}}""")
        a, b = fns[0], fns[1]
        key = row['key'].replace('-', '_')
        parts.append(f"""setup_{key}() {{
    skip() {{ echo "BENCH7-SKIP row={row['key']} $*"; }}
    {row['setup_once']}
}}
row_{key}() {{
    setup_{key} || return 0
    n=1
    while [ $n -le {runs} ]; do
        if [ $((n % 2)) -eq 1 ]; then {a}; {b}; else {b}; {a}; fi
        n=$((n + 1))
    done
    {row['teardown'] or ':'}
}}
row_{row['key'].replace('-', '_')}""")
    body = "\n".join(parts)
    return f"""# generated by bench/run.py: part 7, run inside the emulated KVM host
if [ -e /virtkit/on-tmpfs ]; then
    # passt takes its template interface from the default route: the loopback, with a MAC.
    ip link set lo address 02:00:00:00:00:01
    ip link set lo up
    ip route add default via 127.0.0.1 dev lo
fi
{HOST_PROGRAM} server {PORT} >/tmp/server.log 2>&1 &
echo "BENCH7-HOST kernel=$(uname -r) cpus=$(grep -c ^processor /proc/cpuinfo) \\
memtotal_kib=$(awk '/MemTotal/ {{print $2}}' /proc/meminfo) \\
passt=$(command -v passt >/dev/null && echo yes || echo no) \\
tun=$([ -c /dev/net/tun ] && echo yes || echo no) vhost_net=$([ -c /dev/vhost-net ] && echo yes || echo no)"
# The emulated host's memory is allocated by its QEMU on first touch, slowly under TCG: touch
# it once, so that the first boots do not pay for it alone.
dd if=/dev/zero of=/tmp/touch bs=1M count={touch_mib} 2>/dev/null
rm -f /tmp/touch
# KVM's counters of the running VM (debugfs, one directory per VM named after its VMM's pid):
# sampled each second while it runs, the last sample reported after it exits.
grep -q ' /sys/kernel/debug ' /proc/mounts || mount -t debugfs none /sys/kernel/debug 2>/dev/null
kvm_sample() {{
    for d in /sys/kernel/debug/kvm/$1-*; do
        [ -d "$d" ] || continue
        for f in exits io_exits mmio_exits halt_exits halt_wakeup irq_exits irq_injections \
                 nmi_window_exits irq_window_exits request_irq_exits signal_exits \
                 insn_emulation directed_yield_attempted; do
            [ -r $d/$f ] && printf '%s=%s ' $f "$(cat $d/$f)"
        done
    done
}}
boot() {{
    row=$1 name=$2; shift 2
    "$@" </dev/null >/tmp/boot.raw 2>&1 &
    pid=$!
    left={inner_timeout}
    : >/tmp/kvm.last
    while kill -0 $pid 2>/dev/null && [ $left -gt 0 ]; do
        sleep 1; left=$((left - 1))
        s=$(kvm_sample $pid)
        # A sample the VM's exit cut short (its directory went) is not kept.
        case "$s" in *directed_yield_attempted=[0-9]*) echo "$s" >/tmp/kvm.last ;; esac
    done
    if kill -0 $pid 2>/dev/null; then
        echo "BENCH7-LOG $row $name boot $n: still running after {inner_timeout} s; killed"
        kill -9 $pid
    fi
    wait $pid
    code=$?
    tr -d '\\r' </tmp/boot.raw >/tmp/boot.log
    grep -E '^NETBENCH(-INFO|-FAIL)? ' /tmp/boot.log | sed "s/^/BENCH7 row=$row vmm=$name boot=$n /"
    echo "BENCH7 row=$row vmm=$name boot=$n NETBENCH-INFO kvm: $(cat /tmp/kvm.last)"
    echo "BENCH7 row=$row vmm=$name boot=$n exit=$code"
    if [ $code -ne 0 ] || ! grep -q '^NETBENCH done' /tmp/boot.log; then
        tail -n 40 /tmp/boot.log | sed 's/^/BENCH7-LOG /'
        sed 's/^/BENCH7-LOG passt: /' /tmp/passt.log 2>/dev/null
    fi
    return 0
}}
{body}
exit 0
"""


_PREFIX = re.compile(r"BENCH7 row=(\S+) vmm=(\S+) boot=(\d+) (.*)$")
_MEASURE = re.compile(r"NETBENCH pass=(\d+) mode=(send|recv|rr) (bytes|count)=(\d+) ns=(\d+)")


def parse_line(line):
    """One `BENCH7 ...` line: {"row", "vmm", "boot"} plus a measurement ("pass", "mode",
    "value": Gbit/s for send/recv, round trips per second for rr), "exit", "info" or "fail"; or
    None."""
    m = _PREFIX.search(line)
    if not m:
        return None
    r = {"row": m.group(1), "vmm": m.group(2).replace("_", " "), "boot": int(m.group(3))}
    rest = m.group(4)
    if rest.startswith("exit="):
        r["exit"] = rest[len("exit="):]
        return r
    if rest.startswith("NETBENCH-INFO "):
        r["info"] = rest[len("NETBENCH-INFO "):]
        return r
    if rest.startswith("NETBENCH-FAIL "):
        r["fail"] = rest[len("NETBENCH-FAIL "):]
        return r
    mm = _MEASURE.search(rest)
    if not mm:
        return None
    amount, ns = int(mm.group(4)), int(mm.group(5))
    r["pass"], r["mode"] = int(mm.group(1)), mm.group(2)
    if ns <= 0:
        r["value"] = float("nan")
    elif r["mode"] == "rr":
        r["value"] = amount * 1e9 / ns
    else:
        r["value"] = amount * 8 / ns  # bits per ns = Gbit/s
    return r
