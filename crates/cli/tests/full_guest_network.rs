//! A full guest on the network: `virtkit run --network nat --publish` with Debian's passt, the
//! stock kernel's `virtio_net` and busybox's DHCP client, `wget` and `httpd` in the guest.
//! One boot of the emulated KVM host (or a direct run on hardware KVM) runs every case:
//!
//! - `passt`: passt itself runs where the VMs run (a diagnosis for the cases after it).
//! - `nat`: the guest gets 10.0.2.15/24 and the gateway 10.0.2.2 by DHCP, fetches a file from
//!   a web server on the host's loopback through the gateway address, and serves one that the
//!   host fetches through the published port.
//! - `busy`: a published port that is taken is refused before the guest starts.
//! - `two`: a named VM (NAT by default, here two NAT cards): both cards get their address, each
//!   MAC is one `virtkit get` shows, and `virtkit ip` has each address from the DHCP ACK itself,
//!   before the guest configured it; no passt is left after the guest powers off.
//! - `pa`/`pb` (`pair`): two VMs joined by a socket, one listening (`listen:PATH`), one
//!   connecting (`socket:PATH`): each pings the other and 1 MiB goes over TCP with its sum
//!   checked; the listening socket is gone after.
//!
//! The emulated host has no network card: passt takes its template interface from the default
//! route, so the script gives `lo` a MAC address and a default route; and passt sandboxes
//! itself with `pivot_root(2)`, which fails on the initramfs's root, hence
//! `EmulatedHost::root_on_tmpfs`.

mod support;

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

/// Two NAT cards in a named VM: each interface's MAC, then DHCP on each. The lease script says
/// `acked` on the console the moment udhcpc has the ACK and waits 8 s before it configures the
/// address: while it waits, only the ACK itself can have told virtkit the address (the guest has
/// sent nothing from it yet), so the `virtkit ip` the host runs then shows what the card learned
/// from the ACK.
const GUEST_TWO: &str = r#"
ip link set lo up
cat >/tmp/dhcp.sh <<'EOF'
#!/bin/sh
case "$1" in
deconfig) ip -4 addr flush dev "$interface"; ip link set "$interface" up ;;
bound|renew)
    echo "VT acked iface=$interface ip=$ip"
    sleep 8
    ip addr add "$ip/${mask:-24}" dev "$interface"
    echo "VT configured iface=$interface"
    ;;
esac
EOF
chmod +x /tmp/dhcp.sh
n=0
for i in /sys/class/net/*; do
    ifc=${i##*/}; [ "$ifc" = lo ] && continue
    say mac$n=$(cat $i/address) iface$n=$ifc
    n=$((n + 1))
done
say nics=$n
for i in /sys/class/net/*; do
    ifc=${i##*/}; [ "$ifc" = lo ] && continue
    udhcpc -i "$ifc" -q -n -t 10 -T 3 -s /tmp/dhcp.sh; say dhcp-$ifc=$?
    say addr-$ifc=$(ip -4 addr show dev "$ifc" | awk '/inet /{print $2; exit}')
done
say two-done
"#;

/// Two VMs joined by a socket: `pa` listens (`--network listen:PATH`), `pb` connects to it
/// (`--network socket:PATH`). Static addresses; each pings the other and `pb` fetches 1 MiB
/// from `pa`'s web server, the sums compared.
const GUEST_PAIR_A: &str = r#"
ifc=
for i in /sys/class/net/*; do n=${i##*/}; [ "$n" = lo ] || { ifc=$n; break; }; done
ip link set lo up; ip link set "$ifc" up; ip addr add 192.168.77.1/24 dev "$ifc"
mkdir -p /tmp/www; head -c 1048576 /dev/urandom >/tmp/www/blob; echo up >/tmp/www/alive
say blob=$(sum /tmp/www/blob)
httpd -f -vv -p 80 -h /tmp/www 2>/tmp/httpd.log &
h=$!
ping -c 3 -w 120 192.168.77.2 >/tmp/ping.log 2>&1; say ping=$?
end=$(($(cut -d. -f1 /proc/uptime) + 120))
until grep -q blob /tmp/httpd.log || [ "$(cut -d. -f1 /proc/uptime)" -ge $end ]; do sleep 0.2; done
sleep 1; kill $h
say pair-a-done
"#;

const GUEST_PAIR_B: &str = r#"
ifc=
for i in /sys/class/net/*; do n=${i##*/}; [ "$n" = lo ] || { ifc=$n; break; }; done
ip link set lo up; ip link set "$ifc" up; ip addr add 192.168.77.2/24 dev "$ifc"
ping -c 3 -w 120 192.168.77.1 >/tmp/ping.log 2>&1; say ping=$?
timeout 60 wget -q -O /tmp/blob http://192.168.77.1/blob; say wget=$?
say fetched=$(sum /tmp/blob)
# Stay up until pa is done pinging this VM: it stops its web server only after its pings.
# Three failed polls in a row, not one: under TCG a single poll can miss its 2 s (CI #44 saw
# pb power off while pa was still pinging it).
end=$(($(cut -d. -f1 /proc/uptime) + 120))
missed=0
while [ $missed -lt 3 ] && [ "$(cut -d. -f1 /proc/uptime)" -lt $end ]; do
    if wget -q -T 2 -O /dev/null http://192.168.77.1/alive 2>/dev/null; then missed=0; else missed=$((missed + 1)); fi
    sleep 0.5
done
say pair-b-done
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

# A named VM with two NAT cards: both get addresses, each MAC is the one `virtkit get` shows,
# and `virtkit ip` knows each address from the DHCP ACK before the guest configures it.
export VIRTKIT_HOME=$W/home
$VIRTKIT create two --kernel $G/vmlinuz --initrd $G/initrd --memory 128M --cpus 1 --disk-size 1M \
    --network nat --network nat \
    --cmdline "console=ttyS0 quiet virtkit.run=\"sh /vt/two.sh\" virtkit.action=poweroff" >/dev/null 2>&1
echo "CASE two: create=$?"
echo "CASE two: get $($VIRTKIT get two --format json | tr -d ' \n')"
$VIRTKIT run two --detach >/dev/null; echo "CASE two: run=$?"
clog=$VIRTKIT_HOME/vms/two/console.log
for k in 1 2; do
    end=$(($(date +%s) + 150))
    until [ "$(grep -c 'VT acked' $clog 2>/dev/null)" -ge $k ] || [ $(date +%s) -ge $end ]; do sleep 0.1; done
    # At once, within the guest's 8 s pause: what the cards learned from the ACKs.
    echo "CASE two: at-ack-$k $($VIRTKIT ip two --format json | tr -d ' \n')"
    echo "CASE two: configured-before-ip-$k=$(grep -c 'VT configured' $clog)"
done
end=$(($(date +%s) + 150))
until ! $VIRTKIT list | grep -q '^two  *running' || [ $(date +%s) -ge $end ]; do sleep 0.5; done
tr -d '\r' <$clog | grep '^VT ' | sed "s/^/CASE two: /"
echo "CASE two: passt-left=$(for p in /proc/[0-9]*; do readlink $p/exe; done 2>/dev/null | grep -c passt)"

# Two VMs joined by a socket: the first listens on it, the second connects to it.
VM_ARGS="--network listen:$W/pair.sock" run_guest pa &
pa=$!
end=$(($(date +%s) + 60))
until [ -S $W/pair.sock ] || [ $(date +%s) -ge $end ]; do sleep 0.1; done
echo "CASE pair: listening=$([ -S $W/pair.sock ] && echo 1 || echo 0)"
VM_ARGS="--network socket:$W/pair.sock" run_guest pb
wait $pa
echo "CASE pair: socket-left=$([ -e $W/pair.sock ] && echo 1 || echo 0)"
"#;

#[test]
fn a_guest_on_nat_reaches_the_host_and_serves_a_published_port() {
    let Some(assets) = prerequisites() else { return };
    let Some(passt) = host_tool("passt") else {
        virtkit_testkit::skip("passt is not installed (Debian package passt)");
        return;
    };
    let guest = GUEST_NAT.replace("@GUEST_CONTENT@", GUEST_CONTENT);
    let script = NETWORK_SCRIPT.replace("@HOST_CONTENT@", HOST_CONTENT);
    let out = run_guest_script_with(
        &assets,
        "network",
        &[
            ("nat", &guest),
            ("two", GUEST_TWO),
            ("pa", GUEST_PAIR_A),
            ("pb", GUEST_PAIR_B),
        ],
        &[],
        &script,
        |run| run.emulated_host(move |host| with_passt(host, &passt)),
    );
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
    two_nat_cards_get_addresses_known_from_their_acks(&out);
    two_vms_joined_by_a_socket_talk(&out);
}

/// The `pa`/`pb` cases: two VMs on one socket.
fn two_vms_joined_by_a_socket_talk(out: &str) {
    assert_value(out, "pair", "listening", "1");
    for vm in ["pa", "pb"] {
        let lines = case_lines(out, vm).join("\n");
        assert_value(out, vm, "ping", "0");
        assert!(lines.contains(&format!("VT pair-{}-done", &vm[1..])), "{lines}");
        assert_value(out, vm, "exit", "0");
    }
    assert_value(out, "pb", "wget", "0");
    let sent = case_value(out, "pa", "blob").expect("pa's sum");
    assert_value(out, "pb", "fetched", sent);
    // The listening VM removes its socket when it stops.
    assert_value(out, "pair", "socket-left", "0");
}

/// The `two` case: a named VM with two NAT cards.
fn two_nat_cards_get_addresses_known_from_their_acks(out: &str) {
    let two = case_lines(out, "two").join("\n");
    assert_value(out, "two", "create", "0");
    assert_value(out, "two", "run", "0");
    assert_value(out, "two", "nics", "2");
    // Each interface's MAC is one of the cards' MACs `virtkit get` shows, and they differ.
    let get_line = case_lines(out, "two")
        .into_iter()
        .find_map(|l| l.strip_prefix("get "))
        .unwrap_or_else(|| panic!("no `get` output:\n{two}"));
    let get: serde_json::Value = serde_json::from_str(get_line).unwrap_or_else(|e| panic!("{e}: {get_line}"));
    let macs: Vec<&str> = get["network"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["mac"].as_str().unwrap())
        .collect();
    assert_eq!(macs.len(), 2, "{get}");
    assert_ne!(macs[0], macs[1]);
    for n in 0..2 {
        let mac = case_value(out, "two", &format!("mac{n}")).unwrap_or_else(|| panic!("{two}"));
        assert!(
            macs.contains(&mac),
            "the guest's MAC {mac} is not one `virtkit get` shows ({macs:?}):\n{two}"
        );
    }
    // Both cards got the address their passt hands out.
    for n in 0..2 {
        let iface = case_value(out, "two", &format!("iface{n}")).unwrap();
        assert_value(out, "two", &format!("dhcp-{iface}"), "0");
        assert_value(out, "two", &format!("addr-{iface}"), "10.0.2.15/24");
    }
    // Right after ACK k, before the guest configured that address, `virtkit ip` had k cards'
    // addresses confirmed (ipv4, not only the expected one).
    for k in 1..=2usize {
        assert_value(
            out,
            "two",
            &format!("configured-before-ip-{k}"),
            &(k - 1).to_string(),
        );
        let tag = format!("at-ack-{k} ");
        let line = case_lines(out, "two")
            .into_iter()
            .find_map(|l| l.strip_prefix(tag.as_str()))
            .unwrap_or_else(|| panic!("no at-ack-{k} line:\n{two}"));
        let nics: serde_json::Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        let confirmed = nics
            .as_array()
            .unwrap()
            .iter()
            .filter(|n| n["ipv4"] == "10.0.2.15")
            .count();
        assert!(
            confirmed >= k,
            "right after ACK {k}, `virtkit ip` had {confirmed} addresses confirmed:\n{line}\n{two}"
        );
    }
    assert!(two.contains("VT two-done"), "{two}");
    assert_value(out, "two", "passt-left", "0");
}
