//! A full guest on the network: `virtkit run --network nat --publish` with Debian's passt, the
//! stock kernel's `virtio_net` and busybox's DHCP client, `wget` and `httpd` in the guest.
//! One boot of the emulated KVM host (or a direct run on hardware KVM) runs every case:
//!
//! - `passt`: passt itself runs where the VMs run (a diagnosis for the cases after it).
//! - `nat`: the guest gets 10.0.2.15/24 and the gateway 10.0.2.2 by DHCP, fetches a file from
//!   a web server on the host's loopback through the gateway address, and serves one that the
//!   host fetches through the published port.
//! - `busy`: a published port that is taken is refused before the guest starts.
//!
//! The emulated host has no network card: passt takes its template interface from the default
//! route, so the script gives `lo` a MAC address and a default route; and passt sandboxes
//! itself with `pivot_root(2)`, which fails on the initramfs's root, hence
//! `EmulatedHost::root_on_tmpfs`.

mod support;

use std::path::Path;

use support::*;

/// What the host's web server on 127.0.0.1:8080 serves, and what the guest's serves.
const HOST_CONTENT: &str = "hello-from-the-host";
const GUEST_CONTENT: &str = "published-from-the-guest";

/// DHCP with busybox's udhcpc (its `-s` script sets the lease with `ip`), the address and
/// route the guest got, a fetch from the host through the gateway, then a web server on port 80
/// until the host has fetched from it through the published port.
const GUEST_NAT: &str = r#"
ifc=
for i in /sys/class/net/*; do n=${i##*/}; [ "$n" = lo ] || { ifc=$n; break; }; done
say iface=$ifc driver=$(basename "$(readlink /sys/class/net/$ifc/device/driver)")
ip link set lo up
cat >/tmp/dhcp.sh <<'EOF'
#!/bin/sh
case "$1" in
deconfig) ip -4 addr flush dev "$interface"; ip link set "$interface" up ;;
bound|renew)
    ip -4 addr flush dev "$interface"
    ip addr add "$ip/${mask:-24}" dev "$interface"
    for r in $router; do ip route add default via "$r" dev "$interface"; break; done
    : >/etc/resolv.conf
    for d in $dns; do echo "nameserver $d" >>/etc/resolv.conf; done
    echo "VT lease-ip=$ip lease-mask=$mask lease-router=$router lease-dns=$dns"
    ;;
esac
EOF
chmod +x /tmp/dhcp.sh
udhcpc -i "$ifc" -q -n -t 10 -T 3 -s /tmp/dhcp.sh; say dhcp=$?
a=$(ip -4 addr show dev "$ifc" | awk '/inet /{print $2; exit}')
say addr=${a%/*} prefix=${a#*/}
say gw=$(ip -4 route show default | awk '{print $3; exit}')
f=
for i in 1 2 3 4 5; do
    f=$(timeout 15 wget -q -O - http://10.0.2.2:8080/hello 2>/tmp/wget.err) && break
    sleep 1
done
say fetched=$f
say "wget-says: $(tr '\n' ' ' </tmp/wget.err)"
mkdir -p /tmp/www && echo "@GUEST_CONTENT@" >/tmp/www/pub
httpd -f -vv -p 80 -h /tmp/www 2>/tmp/httpd.log &
h=$!
sleep 0.5
say listening
end=$(($(cut -d. -f1 /proc/uptime) + 120))
until [ -s /tmp/httpd.log ] || [ "$(cut -d. -f1 /proc/uptime)" -ge $end ]; do sleep 0.2; done
sleep 1
say "httpd-says: $(tr '\n' ' ' </tmp/httpd.log)"
kill $h
say nat-done
"#;

/// The host's part. `busybox` serves the host's file (the emulated host's tools are busybox
/// applets; a direct run needs busybox installed). Not `wget -T`: it segfaults in Debian's
/// busybox 1.35; `timeout` instead.
const NETWORK_SCRIPT: &str = r#"
if [ -e /virtkit/on-tmpfs ]; then
    # The emulated host: passt's template interface is the default route's, with a MAC.
    ip link set lo address 02:00:00:00:00:01
    ip link set lo up
    ip route add default via 127.0.0.1 dev lo
fi

# passt itself, on a pipe for its "socket" (-F), for 2 s.
passt --version >/dev/null 2>&1; echo "CASE passt: version-exit=$?"
mkfifo $W/passt.fifo
passt -f -q -e -F 3 -a 10.0.2.15 -n 24 -g 10.0.2.2 -t 18081:80 3<>$W/passt.fifo 2>$W/passt.log &
p=$!
sleep 2
if kill -0 $p 2>/dev/null; then
    echo "CASE passt: alive=1 exe=$(readlink /proc/$p/exe) avx2=$(grep -c avx2 /proc/cpuinfo)"
    kill $p; wait $p 2>/dev/null
else
    wait $p; echo "CASE passt: alive=0 exit=$?"
fi
grep -v 'to syslog' $W/passt.log | sed "s/^/CASE passt: log: /"

mkdir -p $W/www && echo "@HOST_CONTENT@" >$W/www/hello
busybox httpd -f -p 127.0.0.1:8080 -h $W/www &
web=$!
sleep 0.5
echo "CASE nat: host-web=$(timeout 10 busybox wget -q -O - http://127.0.0.1:8080/hello)"

VM_ARGS="--network nat --publish 18080:80" run_guest nat &
vm=$!
end=$(($(date +%s) + 170))
until grep -q "VT listening" $W/nat.raw 2>/dev/null || [ $(date +%s) -ge $end ] || ! kill -0 $vm 2>/dev/null; do
    sleep 0.5
done
echo "CASE nat: published=$(timeout 30 busybox wget -q -O - http://127.0.0.1:18080/pub 2>$W/pub.err)"
echo "CASE nat: published-wget-says: $(tr '\n' ' ' <$W/pub.err)"
wait $vm
# A VMM killed by its seccomp filter (exit 159, SIGSYS): the kernel names the system call.
dmesg | grep -E 'type=1326|seccomp' | sed "s/^/CASE nat: dmesg: /"

# A published port that is taken (by the web server above) is refused before the guest runs.
timeout -s KILL 60 $VIRTKIT run --kernel $G/vmlinuz --initrd $G/initrd --memory 128M \
    --network nat --publish 8080:80 --cmdline "console=ttyS0 quiet" </dev/null >$W/busy.log 2>&1
echo "CASE busy: exit=$?"
sed "s/^/CASE busy: /" $W/busy.log
kill $web
"#;

const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n";
const GROUP: &str = "root:x:0:\nnogroup:x:65534:\n";

#[test]
fn a_guest_on_nat_reaches_the_host_and_serves_a_published_port() {
    let Some(assets) = prerequisites() else { return };
    let Some(passt) = host_tool("passt") else {
        virtkit_testkit::skip("passt is not installed (Debian package passt)");
        return;
    };
    let guest = GUEST_NAT.replace("@GUEST_CONTENT@", GUEST_CONTENT);
    let script = NETWORK_SCRIPT.replace("@HOST_CONTENT@", HOST_CONTENT);
    let out = run_guest_script_with(&assets, "network", &[("nat", &guest)], &[], &script, |run| {
        run.emulated_host(move |host| {
            // passt re-executes itself as passt.avx2 where the CPU has AVX2 (QEMU's `-cpu max`
            // has); it runs as `nobody` when started as root.
            let avx2 = passt.with_file_name("passt.avx2");
            let mut host = host
                .root_on_tmpfs()
                .binary(&passt, "/usr/bin/passt")
                .data("/etc/passwd", PASSWD, 0o644)
                .data("/etc/group", GROUP, 0o644)
                .data("/etc/resolv.conf", "nameserver 127.0.0.1\n", 0o644);
            if Path::new(&avx2).is_file() {
                host = host.binary(&avx2, "/usr/bin/passt.avx2");
            }
            host
        })
    });
    let Some(out) = out else { return };

    // passt runs where the VMs run.
    let passt_lines = case_lines(&out, "passt").join("\n");
    assert_value(&out, "passt", "version-exit", "0");
    assert_value(&out, "passt", "alive", "1");

    // DHCP through passt: the configured address and gateway.
    let nat = case_lines(&out, "nat").join("\n");
    assert_value(&out, "nat", "host-web", HOST_CONTENT);
    assert_value(&out, "nat", "driver", "virtio_net");
    assert_value(&out, "nat", "dhcp", "0");
    assert_value(&out, "nat", "addr", "10.0.2.15");
    assert_value(&out, "nat", "prefix", "24");
    assert_value(&out, "nat", "gw", "10.0.2.2");
    // The gateway address is the host's loopback.
    assert_value(&out, "nat", "fetched", HOST_CONTENT);
    // The published port reaches the guest's port 80.
    assert!(
        nat.contains("VT listening"),
        "the guest never listened:\n{nat}\npasst:\n{passt_lines}"
    );
    assert_value(&out, "nat", "published", GUEST_CONTENT);
    assert!(nat.contains("VT nat-done"), "{nat}");

    // A taken port: refused, naming it.
    let busy = case_lines(&out, "busy").join("\n");
    let code = case_value(&out, "busy", "exit");
    assert!(
        code.is_some_and(|c| c != "0" && c != "137"),
        "virtkit run with a taken published port: exit {code:?}:\n{busy}"
    );
    assert!(
        busy.contains("8080"),
        "the message does not name the port:\n{busy}"
    );

    // The VM ends cleanly once the guest powers off (159 is SIGSYS: a seccomp filter killed
    // the VMM; the script prints the kernel's audit line naming the system call).
    let code = case_value(&out, "nat", "exit");
    assert_eq!(
        code,
        Some("0"),
        "the NAT VM's virtkit run exited {code:?}:\n{nat}"
    );
}
