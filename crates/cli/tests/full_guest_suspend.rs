//! Suspend and resume a stock Linux guest through the CLI (issue 12). Runs in one boot of the
//! emulated KVM host (or directly on hardware KVM); the helpers are in `support/`.
//!
//! - `susp`: the guest writes and fsyncs numbered records on its virtio-blk disk while
//!   `virtkit suspend` saves it; `virtkit run` resumes the same boot (its boot id unchanged),
//!   the records go on from where they were, every record is on the disk at the end, and the
//!   entropy device still answers.
//! - `full`: a VM with a disk, a NAT card (passt) with a published port, vsock with the guest
//!   agent (`virtkit-agent`), entropy, balloon and a shell on its console. Before the suspend
//!   the agent answers `exec`, the guest fetches from the host and the host from the guest, the
//!   console takes a command. An `exec` streams a counting loop and another runs a silent
//!   `sleep` when `virtkit suspend` runs: both clients end at once with exit 255 and a sentence
//!   saying the VM was suspended, and both commands in the guest are hung up after the resume
//!   (the silent one through the vsock transport reset) without taking anything down. The guest's
//!   clock is set 25 years wrong before the suspend: after `virtkit run` resumes it, the VM
//!   process's `set-time` through the agent brings it within a second of the host's. After the
//!   resume the guest renews its lease, a new connection from the guest reaches the host and
//!   the published port the guest, the agent, the console, a virtio-console port, the balloon
//!   (inflated by 32 MiB) and the entropy device answer, and `stop` shuts the guest down through its agent.

mod support;

use std::path::Path;

use support::*;
use virtkit_testkit::cpio::CpioWriter;

/// Numbered records, each written and fsynced to its own sector of the disk, one a tick.
const GUEST_RECORDS: &str = r#"
say boot-id=$(cat /proc/sys/kernel/random/boot_id)
i=0
while [ $i -lt 300 ]; do
    i=$((i + 1))
    printf 'vt-rec %08d\n' $i | dd of=/dev/vda bs=512 seek=$i count=1 conv=sync,fsync 2>/dev/null
    say rec=$i t=$(cut -d' ' -f1 /proc/uptime)
    sleep 0.05
done
say rng-after=$(head -c 4096 /dev/hwrng | wc -c)
say boot-id-end=$(cat /proc/sys/kernel/random/boot_id)
say recs-done
"#;

const GUEST_SCRIPTS: [(&str, &str); 1] = [("records", GUEST_RECORDS)];

/// The `full` VM's boot: DHCP with busybox's udhcpc (the lease script is kept for the renewal
/// after the resume), a web server on port 80 for the published port, then the agent; the
/// guest's init then runs a shell on the console.
const GUEST_FULL: &str = r#"
ip link set lo up
ifc=
for i in /sys/class/net/*; do n=${i##*/}; [ "$n" = lo ] || { ifc=$n; break; }; done
echo "$ifc" >/tmp/ifc
cat >/tmp/dhcp.sh <<'EOF'
#!/bin/sh
case "$1" in
deconfig) ip -4 addr flush dev "$interface"; ip link set "$interface" up ;;
bound|renew)
    ip -4 addr flush dev "$interface"
    ip addr add "$ip/${mask:-24}" dev "$interface"
    for r in $router; do ip route add default via "$r" dev "$interface"; break; done
    echo "VT lease-ip=$ip lease-router=$router"
    ;;
esac
EOF
chmod +x /tmp/dhcp.sh
udhcpc -i "$ifc" -q -n -t 10 -T 3 -s /tmp/dhcp.sh; say dhcp=$?
mkdir -p /tmp/www && echo "@GUEST_CONTENT@" >/tmp/www/pub
httpd -p 80 -h /tmp/www; say httpd=$?
port=
for p in /sys/class/virtio-ports/*; do [ "$(cat $p/name 2>/dev/null)" = vt.echo ] && port=/dev/${p##*/}; done
say port=$port
# Echoes each line the host sends on the virtio-console port, opened again whenever it ends.
[ -n "$port" ] && ( while :; do
    exec 3<>"$port" && while read -r l <&3; do echo "got-$l" >&3; done
    exec 3>&-; sleep 0.5
done ) </dev/null >/dev/null 2>&1 &
/vt/virtkit-agent >/tmp/agent.log 2>&1 &
say agent-started
"#;

/// What the host's web server on 127.0.0.1:8080 serves, and what the guest's serves.
const HOST_CONTENT: &str = "hello-from-the-host";
const GUEST_CONTENT: &str = "published-from-the-guest";

const SUSPEND_SCRIPT: &str = r#"
mkdir -p $W/s && mount -t tmpfs -o size=600m tmpfs $W/s 2>/dev/null
export VIRTKIT_HOME=$W/s/home
truncate -s 8M $W/s/root.img
$VIRTKIT create s1 --kernel $G/vmlinuz --initrd $G/initrd --from $W/s/root.img --disk-size 16M \
    --cpus 1 --memory 256M --network none \
    --cmdline "console=ttyS0 quiet virtkit.run=\"sh /vt/records.sh\" virtkit.action=wait" >/dev/null 2>&1
echo "CASE susp: create=$?"
disk=$VIRTKIT_HOME/vms/s1/disk.img
recs() { $VIRTKIT logs s1 | tr -d '\r' | grep -o 'VT rec=[0-9]*' | cut -d= -f2; }
$VIRTKIT run s1 --detach >/dev/null; echo "CASE susp: run=$?"
end=$(($(date +%s) + 170))
until [ "$(recs | tail -n1)" -ge 40 ] 2>/dev/null || [ $(date +%s) -ge $end ]; do sleep 0.5; done
$VIRTKIT suspend s1 >/dev/null; echo "CASE susp: suspend=$?"
echo "CASE susp: state-suspended=$($VIRTKIT get s1 --format json | tr -d ' \n' | grep -o '"state":"[a-z]*"' | cut -d'"' -f4)"
echo "CASE susp: last-before=$(recs | tail -n1)"
echo "CASE susp: boot-before=$($VIRTKIT logs s1 | tr -d '\r' | grep -o 'VT boot-id=[^ ]*' | cut -d= -f2)"
$VIRTKIT run s1 --detach >/dev/null; echo "CASE susp: resume=$? host-uptime=$(cut -d' ' -f1 /proc/uptime)"
end=$(($(date +%s) + 170))
until $VIRTKIT logs s1 | grep -q "VT recs-done" || [ $(date +%s) -ge $end ]; do sleep 0.5; done
echo "CASE susp: first-after=$(recs | head -n1)"
# The guest's own clock at the first and last record after the resume, and the host's now: a
# slow resumed guest shows here whether its time ran slow (timers) or it got little CPU.
echo "CASE susp: after-resume: $($VIRTKIT logs s1 | tr -d '\r' | grep -o 'VT rec=[0-9]* t=[0-9.]*' | sed -n '1p;$p' | tr '\n' ' ')host-uptime=$(cut -d' ' -f1 /proc/uptime)"
echo "CASE susp: state-file-left=$(test -e $VIRTKIT_HOME/vms/s1/state.vksave && echo yes || echo no)"
$VIRTKIT logs s1 | tr -d '\r' | grep '^VT ' | grep -v 'rec=' | sed "s/^/CASE susp: /"
$VIRTKIT stop s1 --timeout 30 >/dev/null; echo "CASE susp: stop=$?"
ok=0
for i in $(seq 1 300); do
    [ "$(dd if=$disk bs=512 skip=$i count=1 2>/dev/null | head -c 15)" = "vt-rec $(printf %08d $i)" ] && ok=$((ok + 1))
done
echo "CASE susp: records-on-disk=$ok"

# --- full: NAT (passt), vsock with the agent, entropy, balloon, console, suspended and resumed.
if [ -e /virtkit/on-tmpfs ]; then
    # The emulated host: passt's template interface is the default route's, with a MAC.
    ip link set lo address 02:00:00:00:00:01
    ip link set lo up
    ip route add default via 127.0.0.1 dev lo
fi
mkdir -p $W/www && echo "@HOST_CONTENT@" >$W/www/hello
busybox httpd -f -p 127.0.0.1:8080 -h $W/www &
web=$!
vkx() { timeout 60 $VIRTKIT exec n1 -- "$@"; }
# Types a line on the VM's console (the guest's shell on ttyS0) and keeps what came back.
console_type() { (echo "$1"; sleep 2) | timeout 5 $VIRTKIT console n1 >$W/con.out 2>&1; }
# Sends a line to the guest's echo on the virtio-console port `vt.echo`.
port_echo() { (echo "$1"; sleep 2) | timeout 5 $VIRTKIT console n1 --port vt.echo >$W/port.out 2>&1; }
$VIRTKIT create n1 --kernel $G/vmlinuz --initrd $G/initrd-full --cpus 1 --memory 256M --disk-size 16M \
    --network nat --publish 18080:80 --port vt.echo --no-seed \
    --cmdline "console=ttyS0 quiet virtkit.run=\"sh /vt/full.sh\" virtkit.action=shell" >$W/n1.log 2>&1
echo "CASE full: create=$?"
t0=$(date +%s)
timeout 150 $VIRTKIT run n1 --detach --wait 120 >>$W/n1.log 2>&1
echo "CASE full: run=$? wait-seconds=$(($(date +%s) - t0))"
if ! $VIRTKIT list | grep -q '^n1  *running'; then
    # Why the VM ended: its process's log, the guest's last words, a seccomp kill.
    $VIRTKIT logs n1 --vmm 2>&1 | tail -n 20 | sed "s/^/CASE full: first-vmm: /"
    $VIRTKIT logs n1 2>&1 | tr -d '\r' | tail -n 20 | sed "s/^/CASE full: first-console: /"
    dmesg | grep -E 'type=1326|seccomp|segfault|traps' | tail -n 5 | sed "s/^/CASE full: dmesg: /"
fi
echo "CASE full: uname-before=$(vkx uname -s 2>&1)"
echo "CASE full: fetched-before=$(vkx timeout 15 wget -q -O - http://10.0.2.2:8080/hello 2>&1)"
echo "CASE full: published-before=$(timeout 30 busybox wget -q -O - http://127.0.0.1:18080/pub 2>&1)"
console_type 'echo con-$((6*7))'
echo "CASE full: console-before=$(tr -d '\r' <$W/con.out | grep -c '^con-42')"
port_echo ping1
echo "CASE full: port-before=$(tr -d '\r' <$W/port.out | grep -c '^got-ping1$')"
echo "CASE full: rng-before=$(vkx sh -c 'head -c 4096 /dev/hwrng | wc -c')"
# The guest's clock 25 years wrong: only the set-time after the resume puts it right.
vkx date -s '2001-09-09 01:46:40' >/dev/null 2>&1
echo "CASE full: clock-wrong=$(vkx date +%s)"
# A command streaming its output when the VM is suspended.
# It ignores SIGPIPE, as many programs do: only the agent's hang-up ends it once its host is gone.
timeout 120 $VIRTKIT exec n1 -- sh -c 'trap "" PIPE; echo $$ >/tmp/loop.pid; i=0; while :; do i=$((i + 1)); echo n-$i; sleep 0.2; done' \
    >$W/stream.out 2>$W/stream.err &
ex=$!
# And one that is silent: nothing goes over its connection, so only the transport-reset event
# the restored vsock device sends the guest tells the agent that its host is gone.
timeout 120 $VIRTKIT exec n1 -- sh -c 'echo $$ >/tmp/idle.pid; exec sleep 1000' >/dev/null 2>$W/idle.err &
idle=$!
end=$(($(date +%s) + 60))
until [ "$(grep -c '^n-' $W/stream.out)" -ge 5 ] || [ $(date +%s) -ge $end ]; do sleep 0.2; done
echo "CASE full: streamed-before=$(grep -c '^n-' $W/stream.out)"
echo "CASE full: idle-pid=$(vkx cat /tmp/idle.pid)"
$VIRTKIT logs n1 | tr -d '\r' | grep '^VT ' | sed "s/^/CASE full: boot: /"
t0=$(date +%s)
$VIRTKIT suspend n1 >>$W/n1.log 2>&1; echo "CASE full: suspend=$? suspend-seconds=$(($(date +%s) - t0))"
ts=$(date +%s)
end=$((ts + 20))
while kill -0 $ex 2>/dev/null && [ $(date +%s) -lt $end ]; do sleep 0.1; done
if kill -0 $ex 2>/dev/null; then echo "CASE full: exec-ended=no"; kill $ex; else echo "CASE full: exec-ended=yes"; fi
wait $ex; echo "CASE full: exec-exit=$? exec-end-seconds=$(($(date +%s) - ts))"
echo "CASE full: streamed-total=$(grep -c '^n-' $W/stream.out)"
wait $idle; echo "CASE full: idle-exit=$?"
sed "s/^/CASE full: exec-err: /" $W/stream.err
echo "CASE full: state-suspended=$($VIRTKIT get n1 --format json | tr -d ' \n' | grep -o '"state":"[a-z]*"' | cut -d'"' -f4)"
t0=$(date +%s)
timeout 150 $VIRTKIT run n1 --detach >$W/resume.log 2>&1; echo "CASE full: resume=$?"
sed "s/^/CASE full: resume-says: /" $W/resume.log
end=$(($(date +%s) + 60)); up=no
until [ $(date +%s) -ge $end ]; do
    [ "$(timeout 20 $VIRTKIT exec n1 -- echo up 2>/dev/null)" = up ] && { up=yes; break; }
    sleep 0.5
done
echo "CASE full: agent-after=$up agent-seconds=$(($(date +%s) - t0))"
end=$(($(date +%s) + 30))
until $VIRTKIT logs n1 --vmm 2>/dev/null | grep -q "clock is set" || [ $(date +%s) -ge $end ]; do sleep 0.5; done
before=$(date +%s); g=$(vkx date +%s); after=$(date +%s)
echo "CASE full: clock-before=$before clock-guest=$g clock-after=$after"
$VIRTKIT logs n1 --vmm 2>&1 | grep -iE 'agent|clock|resumed' | tail -n 8 | sed "s/^/CASE full: vmm: /"
# The loop the suspended exec ran was hung up when the guest's vsock transport was reset.
loop=alive
end=$(($(date +%s) + 15))
until [ $(date +%s) -ge $end ]; do
    loop=$(vkx sh -c 'kill -0 $(cat /tmp/loop.pid) 2>/dev/null && echo alive || echo gone')
    [ "$loop" = gone ] && break
    sleep 1
done
echo "CASE full: loop-after=$loop"
echo "CASE full: idle-after=$(vkx sh -c 'kill -0 $(cat /tmp/idle.pid) 2>/dev/null && echo alive || echo gone')"
echo "CASE full: renew=$(vkx sh -c 'udhcpc -i $(cat /tmp/ifc) -q -n -t 10 -T 3 -s /tmp/dhcp.sh >/tmp/renew.log 2>&1; echo $?')"
echo "CASE full: renew-ip=$(vkx cat /tmp/renew.log | grep -o 'lease-ip=[0-9.]*' | cut -d= -f2)"
echo "CASE full: fetched-after=$(vkx timeout 15 wget -q -O - http://10.0.2.2:8080/hello 2>&1)"
echo "CASE full: published-after=$(timeout 30 busybox wget -q -O - http://127.0.0.1:18080/pub 2>&1)"
console_type 'echo con-$((7*8))'
echo "CASE full: console-after=$(tr -d '\r' <$W/con.out | grep -c '^con-56')"
port_echo ping2
echo "CASE full: port-after=$(tr -d '\r' <$W/port.out | grep -c '^got-ping2$')"
sed "s/^/CASE full: port-out: /" $W/port.out
echo "CASE full: rng-after=$(vkx sh -c 'head -c 4096 /dev/hwrng | wc -c')"
mem0=$(vkx awk '/^MemTotal/{print $2}' /proc/meminfo)
$VIRTKIT set n1 --balloon 32M >>$W/n1.log 2>&1; echo "CASE full: balloon-set=$?"
actual() { $VIRTKIT get n1 --format json | tr -d ' \n' | grep -o '"actual_bytes":[0-9]*' | cut -d: -f2; }
end=$(($(date +%s) + 60))
until [ "$(actual)" = 33554432 ] || [ $(date +%s) -ge $end ]; do sleep 0.5; done
echo "CASE full: balloon-actual=$(actual)"
echo "CASE full: memtotal-kib-before=$mem0 memtotal-kib-after=$(vkx awk '/^MemTotal/{print $2}' /proc/meminfo)"
echo "CASE full: state-after=$($VIRTKIT get n1 --format json | tr -d ' \n' | grep -o '"state":"[a-z]*"' | cut -d'"' -f4)"
timeout 90 $VIRTKIT stop n1 --timeout 30 >>$W/n1.log 2>&1; echo "CASE full: stop=$?"
sed "s/^/CASE full: cli: /" $W/n1.log
kill $web
"#;

fn number(out: &str, key: &str) -> u64 {
    let lines = case_lines(out, "susp").join("\n");
    case_value(out, "susp", key)
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no number {key}=:\n{lines}"))
}

fn full_number(out: &str, key: &str) -> i64 {
    let lines = case_lines(out, "full").join("\n");
    case_value(out, "full", key)
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no number {key}=:\n{lines}"))
}

/// The `full` VM's initrd: the asset initramfs with its script, then the static agent.
fn full_initrd(assets: &virtkit_testkit::Assets, dest: &Path) {
    let guest = GUEST_FULL.replace("@GUEST_CONTENT@", GUEST_CONTENT);
    initrd_with_scripts(assets, dest, &[("full", &guest)]);
    let agent = virtkit_testkit::agent::static_agent();
    let mut data = std::fs::read(dest).unwrap();
    data.resize(data.len().next_multiple_of(4), 0);
    let mut w = CpioWriter::new(data);
    w.file("vt/virtkit-agent", 0o755, &std::fs::read(&agent).unwrap())
        .unwrap();
    std::fs::write(dest, w.finish().unwrap()).unwrap();
}

#[test]
fn a_suspended_linux_guest_resumes_its_boot_and_keeps_every_fsynced_record() {
    let Some(assets) = prerequisites() else { return };
    let Some(passt) = host_tool("passt") else {
        virtkit_testkit::skip("passt is not installed (Debian package passt)");
        return;
    };
    let scratch = Scratch::new("suspend-full");
    let initrd = scratch.0.join("initrd-full");
    full_initrd(&assets, &initrd);
    let script = SUSPEND_SCRIPT.replace("@HOST_CONTENT@", HOST_CONTENT);
    let Some(out) = run_guest_script_with(
        &assets,
        "suspend",
        &GUEST_SCRIPTS,
        &[(initrd.as_path(), "initrd-full")],
        &script,
        |run| run.emulated_host(move |host| with_passt(host, &passt)),
    ) else {
        return;
    };
    for key in ["create", "run", "suspend", "resume", "stop"] {
        assert_value(&out, "susp", key, "0");
    }
    assert_value(&out, "susp", "state-suspended", "suspended");
    let (before, after) = (number(&out, "last-before"), number(&out, "first-after"));
    assert!(
        before >= 40 && after > before && after <= before + 2,
        "the records go on from {before}: the resumed run's first is {after}:\n{}",
        case_lines(&out, "susp").join("\n")
    );
    let boot = case_value(&out, "susp", "boot-before").expect("the boot id before");
    assert!(!boot.is_empty());
    assert_value(&out, "susp", "boot-id-end", boot);
    assert_value(&out, "susp", "rng-after", "4096");
    assert_value(&out, "susp", "state-file-left", "no");
    assert_value(&out, "susp", "records-on-disk", "300");
    a_full_vm_resumes_with_network_agent_clock_console_and_balloon(&out);
}

/// The `full` case: a VM with every device the bundle gives, the agent and NAT, suspended while
/// an `exec` streams.
fn a_full_vm_resumes_with_network_agent_clock_console_and_balloon(out: &str) {
    let lines = case_lines(out, "full").join("\n");
    for key in ["create", "run", "suspend", "resume", "stop"] {
        assert_value(out, "full", key, "0");
    }
    // Before the suspend: the agent, the network both ways, the console, the entropy device.
    assert!(lines.contains("VT dhcp=0"), "no DHCP lease at boot:\n{lines}");
    assert_value(out, "full", "uname-before", "Linux");
    assert_value(out, "full", "fetched-before", HOST_CONTENT);
    assert_value(out, "full", "published-before", GUEST_CONTENT);
    assert_value(out, "full", "console-before", "1");
    assert!(
        lines.contains("VT port=/dev/vport"),
        "no virtio-console port:\n{lines}"
    );
    assert_value(out, "full", "port-before", "1");
    assert_value(out, "full", "rng-before", "4096");
    // The exec that streamed when the VM was suspended ended at once, saying so.
    assert!(full_number(out, "streamed-before") >= 5, "{lines}");
    assert_value(out, "full", "exec-ended", "yes");
    assert_value(out, "full", "exec-exit", "255");
    let end = full_number(out, "exec-end-seconds");
    assert!(
        end <= 3,
        "the exec client ended {end} s after the suspend:\n{lines}"
    );
    assert!(
        lines.contains("exec-err: ") && lines.contains("was suspended"),
        "the exec client does not say the VM was suspended:\n{lines}"
    );
    assert_value(out, "full", "state-suspended", "suspended");
    // `run --detach` of the suspended VM returns once it runs again.
    assert!(
        lines.contains("resume-says: `n1`: running"),
        "the resume does not say the VM runs:\n{lines}"
    );
    // After the resume: the agent answers, and the loop it ran for the old connection was hung
    // up (the guest's vsock transport was reset) without taking the VM down.
    assert_value(out, "full", "agent-after", "yes");
    assert_value(out, "full", "loop-after", "gone");
    // So was a silent one: the guest's vsock transport was reset by the restore.
    assert!(full_number(out, "idle-pid") > 1, "{lines}");
    assert_value(out, "full", "idle-exit", "255");
    assert_value(out, "full", "idle-after", "gone");
    assert_value(out, "full", "state-after", "running");
    // set-time: the clock, 25 years wrong before the suspend, is the host's (within 1 s).
    assert!(full_number(out, "clock-wrong") < 1_100_000_000, "{lines}");
    let (b, g, a) = (
        full_number(out, "clock-before"),
        full_number(out, "clock-guest"),
        full_number(out, "clock-after"),
    );
    assert!(
        b - 1 <= g && g <= a + 1,
        "the resumed guest's clock {g} is not the host's ({b}..{a}):\n{lines}"
    );
    // The network: a new lease, a new connection from the guest, the published port.
    assert_value(out, "full", "renew", "0");
    assert_value(out, "full", "renew-ip", "10.0.2.15");
    assert_value(out, "full", "fetched-after", HOST_CONTENT);
    assert_value(out, "full", "published-after", GUEST_CONTENT);
    // The console, the entropy device and the balloon.
    assert_value(out, "full", "console-after", "1");
    assert_value(out, "full", "port-after", "1");
    assert_value(out, "full", "rng-after", "4096");
    assert_value(out, "full", "balloon-set", "0");
    assert_value(out, "full", "balloon-actual", "33554432");
    let (m0, m1) = (
        full_number(out, "memtotal-kib-before"),
        full_number(out, "memtotal-kib-after"),
    );
    assert!(
        m0 - m1 >= 32 * 1024 - 64,
        "MemTotal went from {m0} to {m1} KiB with 32 MiB in the balloon:\n{lines}"
    );
}
