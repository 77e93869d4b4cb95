//! A full guest on virtio-vsock: the stock kernel's `vmw_vsock_virtio_transport` against our
//! device, through `virtkit run --vsock PATH` (Firecracker's hybrid Unix-socket scheme). One
//! boot of the emulated KVM host (or a direct run on hardware KVM) runs every case:
//!
//! - `vs`: the guest (a) listens on vsock port 5000 and echoes one connection, (b) connects to
//!   the host's port 5001 (CID 2), which reaches `vsock.sock_5001` where the host script
//!   listens, and sends 1 MiB, (c) connects to the host's port 5002, where nothing listens: the
//!   device answers RST and the guest's `connect` fails at once.
//! - `echo`: the host sends 1 MiB through `virtkit vsock-proxy PATH 5000` and gets it back; the
//!   sums of both directions are compared with what was sent.
//! - `rst`: `virtkit vsock-proxy PATH 5003` (nothing listens in the guest) fails fast, naming it.
//!
//! A second boot runs the guest agent (`virtkit-agent`, static) in a named VM's guest:
//! `run --detach --wait` returns on its hello (the guest's connection to the host's port 1025,
//! `vsock.sock_1025`), and `exec` (output, exit code, stdin), `ip` and `stop` reach it through
//! `vsock.sock`.
//!
//! The guest's and host's peer is one static C program (`tests/guest/vsock_peer.c`, built with
//! `cc -static -O2` at test time), appended to the guest's initramfs as `/vt/vsock_peer`.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;

use support::*;
use virtkit_testkit::cpio::CpioWriter;

const GUEST: &str = r#"
P=/vt/vsock_peer
ip link set lo up
$P echo 5000 2>&1 &
echo_pid=$!
sleep 0.5
say listening
head -c 1048576 /dev/urandom >/tmp/blob
say guest-blob=$(sum /tmp/blob)
$P send 2 5001 </tmp/blob 2>&1
$P connect 2 5002 2>&1
end=$(($(cut -d. -f1 /proc/uptime) + 150))
while kill -0 $echo_pid 2>/dev/null && [ "$(cut -d. -f1 /proc/uptime)" -lt $end ]; do sleep 0.2; done
say vsock-done
"#;

/// The named VM: one echo, then power off.
const GUEST_NAMED: &str = r#"
/vt/vsock_peer echo 5000 2>&1
say named-done
"#;

const SCRIPT: &str = r#"
S=$W/vsock.sock
$PEER unix-sink ${S}_5001 >$W/from-guest 2>$W/sink.err &
sink=$!
(
    timeout -s KILL $GUEST_TIMEOUT $VIRTKIT run --kernel $G/vmlinuz --initrd $G/initrd-vs --memory 256M \
        --vsock $S --cmdline "console=ttyS0 quiet virtkit.run=\"sh /vt/vs.sh\"" </dev/null >$W/vs.raw 2>&1
    code=$?
    tr -d '\r' <$W/vs.raw | sed "s/^/CASE vs: /"
    echo "CASE vs: exit=$code"
) &
vm=$!
end=$(($(date +%s) + 170))
until grep -q "VT listening" $W/vs.raw 2>/dev/null || [ $(date +%s) -ge $end ] || ! kill -0 $vm 2>/dev/null; do
    sleep 0.2
done
echo "CASE echo: socket=$([ -S $S ] && echo 1 || echo 0) mode=$(stat -c %a $S)"
# First the refused connection (the guest's echo server ends the guest once it has served).
t0=$(date +%s)
timeout 60 $VIRTKIT vsock-proxy $S 5003 </dev/null >/dev/null 2>$W/rst.err
echo "CASE rst: proxy-exit=$? seconds=$(($(date +%s) - t0))"
sed "s/^/CASE rst: err: /" $W/rst.err
head -c 1048576 /dev/urandom >$W/to-guest
echo "CASE echo: sent=$(sha256sum <$W/to-guest | cut -d' ' -f1)"
t0=$(date +%s)
timeout 120 $VIRTKIT vsock-proxy $S 5000 <$W/to-guest >$W/echoed 2>$W/echo.err
echo "CASE echo: proxy-exit=$? seconds=$(($(date +%s) - t0))"
echo "CASE echo: got=$(sha256sum <$W/echoed | cut -d' ' -f1) bytes=$(wc -c <$W/echoed)"
sed "s/^/CASE echo: err: /" $W/echo.err
wait $vm
wait $sink
echo "CASE sink: from-guest=$(sha256sum <$W/from-guest | cut -d' ' -f1) bytes=$(wc -c <$W/from-guest)"
sed "s/^/CASE sink: err: /" $W/sink.err
echo "CASE echo: socket-left=$([ -e $S ] && echo 1 || echo 0)"
dmesg | grep -E 'type=1326|seccomp' | sed "s/^/CASE vs: dmesg: /"

# A named VM: its socket is vsock.sock in the bundle, and `vsock-proxy NAME PORT` finds it.
export VIRTKIT_HOME=$W/home
$VIRTKIT create nv --kernel $G/vmlinuz --initrd $G/initrd-vs --memory 128M --cpus 1 --disk-size 1M \
    --network none \
    --cmdline "console=ttyS0 quiet virtkit.run=\"sh /vt/nv.sh\" virtkit.action=poweroff" >/dev/null 2>&1
echo "CASE named: create=$?"
$VIRTKIT run nv --detach >/dev/null; echo "CASE named: run=$?"
echo "CASE named: get $($VIRTKIT get nv --format json | tr -d ' \n')"
clog=$VIRTKIT_HOME/vms/nv/console.log
end=$(($(date +%s) + 150))
until grep -q "VT echo-listening" $clog 2>/dev/null || [ $(date +%s) -ge $end ]; do sleep 0.2; done
head -c 65536 /dev/urandom >$W/small
echo "CASE named: sent=$(sha256sum <$W/small | cut -d' ' -f1)"
timeout 60 $VIRTKIT vsock-proxy nv 5000 <$W/small >$W/small-echoed 2>$W/named.err
echo "CASE named: proxy-exit=$?"
echo "CASE named: got=$(sha256sum <$W/small-echoed | cut -d' ' -f1)"
sed "s/^/CASE named: err: /" $W/named.err
end=$(($(date +%s) + 150))
until ! $VIRTKIT list | grep -q '^nv  *running' || [ $(date +%s) -ge $end ]; do sleep 0.5; done
tr -d '\r' <$clog | grep '^VT ' | sed "s/^/CASE named: /"
echo "CASE named: socket-left=$([ -e $VIRTKIT_HOME/vms/nv/vsock.sock ] && echo 1 || echo 0)"
"#;

/// Builds `tests/guest/vsock_peer.c` static into `dir`; `None` (after a SKIPPED line) without a
/// C compiler and static libc.
fn build_peer(dir: &Path) -> Option<PathBuf> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/guest/vsock_peer.c");
    let out = dir.join("vsock_peer");
    let built = Command::new("cc")
        .args(["-static", "-O2", "-Wall", "-o"])
        .arg(&out)
        .arg(&src)
        .output();
    match built {
        Ok(o) if o.status.success() => Some(out),
        Ok(o) => {
            virtkit_testkit::skip(&format!(
                "cannot build the guest's vsock peer with `cc -static` (apt-get install gcc libc6-dev): {}",
                String::from_utf8_lossy(&o.stderr).trim()
            ));
            None
        }
        Err(e) => {
            virtkit_testkit::skip(&format!(
                "no C compiler (`cc`: {e}); apt-get install gcc libc6-dev"
            ));
            None
        }
    }
}

/// The asset initramfs with the peer program as `/vt/vsock_peer` (appended as its own archive).
fn add_peer(initrd: &Path, peer: &Path) {
    let mut data = std::fs::read(initrd).unwrap();
    data.resize(data.len().next_multiple_of(4), 0);
    let mut w = CpioWriter::new(data);
    w.file("vt/vsock_peer", 0o755, &std::fs::read(peer).unwrap())
        .unwrap();
    std::fs::write(initrd, w.finish().unwrap()).unwrap();
}

#[test]
fn a_guest_talks_to_the_host_over_vsock_both_ways() {
    let Some(assets) = prerequisites() else { return };
    let scratch = Scratch::new("vsock-peer");
    let Some(peer) = build_peer(&scratch.0) else {
        return;
    };
    // The guest's initrd: the asset initramfs, the script, then the peer program.
    let initrd = scratch.0.join("initrd-vsock");
    initrd_with_scripts(&assets, &initrd, &[("vs", GUEST), ("nv", GUEST_NAMED)]);
    add_peer(&initrd, &peer);
    let out = run_guest_script_with(
        &assets,
        "vsock",
        &[],
        &[(initrd.as_path(), "initrd-vs")],
        SCRIPT,
        |run| run.program("PEER", &peer),
    );
    let Some(out) = out else { return };
    let vs = case_lines(&out, "vs").join("\n");
    let echo = case_lines(&out, "echo").join("\n");

    // The socket is the VM's, owner-only, and gone when it stops.
    assert_value(&out, "echo", "socket", "1");
    assert_value(&out, "echo", "mode", "600");
    // Host to guest and back: 1 MiB through vsock-proxy, echoed unchanged.
    assert!(
        vs.contains("VT echo-listening"),
        "the guest never listened:\n{vs}"
    );
    assert_value(&out, "echo", "proxy-exit", "0");
    let sent = case_value(&out, "echo", "sent").expect("the host's sum");
    assert_value(&out, "echo", "got", sent);
    assert_value(&out, "echo", "bytes", "1048576");
    assert_value(&out, "vs", "echoed", "1048576");
    // Guest to host: 1 MiB to vsock.sock_5001.
    let guest_sum = case_value(&out, "vs", "guest-blob").unwrap_or_else(|| panic!("{vs}"));
    assert_value(&out, "vs", "sent", "1048576");
    assert_value(&out, "sink", "from-guest", guest_sum);
    // Nobody listens on the host's 5002: the guest's connect fails at once (RST).
    assert_value(&out, "vs", "connect", "ECONNRESET");
    let ms: u64 = case_value(&out, "vs", "ms")
        .and_then(|v| v.parse().ok())
        .unwrap_or(u64::MAX);
    assert!(ms < 2000, "the refused connect took {ms} ms:\n{vs}");
    // Nobody listens on the guest's 5003: vsock-proxy fails fast and says why.
    let rst = case_lines(&out, "rst").join("\n");
    let code = case_value(&out, "rst", "proxy-exit");
    assert!(
        code.is_some_and(|c| c != "0" && c != "124"),
        "vsock-proxy to a closed port: {code:?}\n{rst}"
    );
    let seconds: u64 = case_value(&out, "rst", "seconds")
        .and_then(|v| v.parse().ok())
        .unwrap_or(u64::MAX);
    assert!(seconds <= 3, "the refused proxy took {seconds} s:\n{rst}");
    assert!(rst.contains("refused the connection to vsock port 5003"), "{rst}");
    assert!(vs.contains("VT vsock-done"), "{vs}");
    assert_value(&out, "vs", "exit", "0");
    assert_value(&out, "echo", "socket-left", "0");
    let _ = echo;
    a_named_vm_has_its_socket_in_the_bundle(&out);
}

/// The `named` case: `vsock.sock` in the bundle, shown by `get`, reached by `vsock-proxy NAME`.
fn a_named_vm_has_its_socket_in_the_bundle(out: &str) {
    let named = case_lines(out, "named").join("\n");
    assert_value(out, "named", "create", "0");
    assert_value(out, "named", "run", "0");
    let get_line = case_lines(out, "named")
        .into_iter()
        .find_map(|l| l.strip_prefix("get "))
        .unwrap_or_else(|| panic!("no `get` output:\n{named}"));
    let get: serde_json::Value = serde_json::from_str(get_line).unwrap_or_else(|e| panic!("{e}: {get_line}"));
    assert_eq!(get["vsock"]["guest_cid"], 3, "{get}");
    assert!(
        get["vsock"]["socket"]
            .as_str()
            .is_some_and(|s| s.ends_with("/vms/nv/vsock.sock")),
        "{get}"
    );
    assert_value(out, "named", "proxy-exit", "0");
    let sent = case_value(out, "named", "sent").expect("the host's sum");
    assert_value(out, "named", "got", sent);
    assert!(named.contains("VT named-done"), "{named}");
    assert_value(out, "named", "socket-left", "0");
}

/// The guest agent's side: started from the initramfs, it listens on vsock port 1024 and says
/// hello to the host's port 1025 (the VM process's `vsock.sock_1025`).
const GUEST_AGENT: &str = r#"
/vt/virtkit-agent 2>/tmp/agent.log &
say agent-started
wait
say agent-ended
"#;

const AGENT_SCRIPT: &str = r#"
export VIRTKIT_HOME=$W/home
$VIRTKIT create ag --kernel $G/vmlinuz --initrd $G/initrd-ag --memory 256M --cpus 1 --disk-size 1M \
    --network none --no-seed \
    --cmdline "console=ttyS0 quiet virtkit.run=\"sh /vt/ag.sh\" virtkit.action=poweroff" >$W/create.log 2>&1
echo "CASE agent: create=$?"
sed "s/^/CASE agent: create: /" $W/create.log
t0=$(date +%s)
timeout 150 $VIRTKIT run ag --detach --wait 120 >$W/run.log 2>&1
echo "CASE agent: run=$? wait-seconds=$(($(date +%s) - t0))"
sed "s/^/CASE agent: run: /" $W/run.log
echo "CASE agent: uname=$(timeout 60 $VIRTKIT exec ag -- uname -s 2>$W/e1.err)"
sed "s/^/CASE agent: exec-err: /" $W/e1.err
timeout 60 $VIRTKIT exec ag -- sh -c 'exit 7' 2>/dev/null; echo "CASE agent: exit7=$?"
echo "CASE agent: cat=$(echo through-the-agent | timeout 60 $VIRTKIT exec ag -- cat)"
if ! $VIRTKIT list | grep -q '^ag  *running'; then
    # Why the VM ended: its process's log, the guest's last words, a seccomp kill.
    $VIRTKIT logs ag --vmm 2>&1 | tail -n 20 | sed "s/^/CASE agent: vmm: /"
    dmesg | grep -E 'type=1326|seccomp|segfault|traps' | tail -n 5 | sed "s/^/CASE agent: dmesg: /"
fi
echo "CASE agent: ip $(timeout 60 $VIRTKIT ip ag --format json 2>&1 | tr -d ' \n')"
# Streamed output: each line reaches the host when the guest prints it, not at the end.
timeout 60 $VIRTKIT exec ag -- sh -c 'for i in 1 2 3; do echo tick-$i; sleep 1; done' |
    while read -r l; do echo "CASE agent: $l-at=$(cut -d' ' -f1 /proc/uptime)"; done
# A pty in the guest.
echo "CASE agent: tty=$(timeout 60 $VIRTKIT exec -t ag -- tty </dev/null | tr -d '\r')"
# A directory both ways, with a mode and a symbolic link, checked by sha256.
mkdir -p $W/tree/sub && head -c 300000 /dev/urandom >$W/tree/sub/data && echo hello >$W/tree/a.txt
chmod 750 $W/tree/sub/data && ln -s a.txt $W/tree/link
sums() { (cd $1 && find . -type f | sort | xargs sha256sum | tr -s ' ' '=' | tr '\n' ' '); }
echo "CASE agent: tree-sums $(sums $W/tree)"
timeout 120 $VIRTKIT cp $W/tree ag:/tmp/tree >$W/cp1.log 2>&1; echo "CASE agent: cp-in=$?"
echo "CASE agent: guest-sums $(timeout 60 $VIRTKIT exec ag -- sh -c 'cd /tmp/tree && find . -type f | sort | xargs sha256sum | tr -s " " "=" | tr "\n" " "')"
echo "CASE agent: guest-mode=$(timeout 60 $VIRTKIT exec ag -- stat -c %a /tmp/tree/sub/data) guest-link=$(timeout 60 $VIRTKIT exec ag -- readlink /tmp/tree/link)"
timeout 120 $VIRTKIT cp ag:/tmp/tree $W/back >$W/cp2.log 2>&1; echo "CASE agent: cp-out=$?"
echo "CASE agent: back-sums $(sums $W/back)"
echo "CASE agent: back-mode=$(stat -c %a $W/back/sub/data) back-link=$(readlink $W/back/link)"
sed "s/^/CASE agent: cp: /" $W/cp1.log $W/cp2.log
# The guest's clock, set 25 years wrong, is the host's again after a pause: the VM process
# sends set-time after every resume.
timeout 60 $VIRTKIT exec ag -- date -s '2001-09-09 01:46:40' >/dev/null 2>&1
echo "CASE agent: clock-wrong=$(timeout 60 $VIRTKIT exec ag -- date +%s)"
$VIRTKIT pause ag; sleep 5; $VIRTKIT resume ag
sleep 2
before=$(date +%s); g=$(timeout 60 $VIRTKIT exec ag -- date +%s); after=$(date +%s)
echo "CASE agent: clock-before=$before clock-guest=$g clock-after=$after"
t0=$(date +%s)
timeout 120 $VIRTKIT stop ag --timeout 60 >$W/stop.log 2>&1
echo "CASE agent: stop=$? stop-seconds=$(($(date +%s) - t0))"
sed "s/^/CASE agent: stop: /" $W/stop.log
tr -d '\r' <$VIRTKIT_HOME/vms/ag/console.log | grep -E '^VT |VIRTKIT-GUEST' | sed "s/^/CASE agent: console: /"

# The same kernel with no agent in its guest: exec says the agent is not up.
$VIRTKIT create na --kernel $G/vmlinuz --initrd $G/initrd-ag --memory 256M --cpus 1 --disk-size 1M \
    --network none --no-seed --cmdline "console=ttyS0 quiet virtkit.action=wait" >/dev/null 2>&1
$VIRTKIT run na --detach >/dev/null 2>&1
sleep 2
timeout 60 $VIRTKIT exec na -- true >$W/na.log 2>&1; echo "CASE noagent: exec-exit=$?"
sed "s/^/CASE noagent: /" $W/na.log
$VIRTKIT stop na --timeout 1 >/dev/null 2>&1
"#;

#[test]
fn the_guest_agent_answers_through_the_real_vsock_device() {
    let Some(assets) = prerequisites() else { return };
    let agent = virtkit_testkit::agent::static_agent();
    let scratch = Scratch::new("agent-initrd");
    let initrd = scratch.0.join("initrd-ag");
    initrd_with_scripts(&assets, &initrd, &[("ag", GUEST_AGENT)]);
    let mut data = std::fs::read(&initrd).unwrap();
    data.resize(data.len().next_multiple_of(4), 0);
    let mut w = CpioWriter::new(data);
    w.file("vt/virtkit-agent", 0o755, &std::fs::read(&agent).unwrap())
        .unwrap();
    std::fs::write(&initrd, w.finish().unwrap()).unwrap();
    let out = run_guest_script(
        &assets,
        "vsock-agent",
        &[],
        &[(initrd.as_path(), "initrd-ag")],
        AGENT_SCRIPT,
    );
    let Some(out) = out else { return };
    let lines = case_lines(&out, "agent").join("\n");
    assert_value(&out, "agent", "create", "0");
    assert_value(&out, "agent", "run", "0");
    assert_value(&out, "agent", "uname", "Linux");
    assert_value(&out, "agent", "exit7", "7");
    assert_value(&out, "agent", "cat", "through-the-agent");
    assert!(lines.contains("\"source\":\"agent\""), "{lines}");
    // Streamed: the first line came a second or more before the last.
    let at = |k: &str| case_value(&out, "agent", k).and_then(|v| v.parse::<f64>().ok());
    let (first, last) = (at("tick-1-at"), at("tick-3-at"));
    assert!(
        matches!((first, last), (Some(f), Some(l)) if l - f >= 1.0),
        "output was not streamed ({first:?}, {last:?}):\n{lines}"
    );
    let tty = case_value(&out, "agent", "tty").unwrap_or("");
    assert!(tty.starts_with("/dev/pts/"), "exec -t: {tty:?}\n{lines}");
    // cp both ways: the same files and bytes, the mode and the link kept.
    assert_value(&out, "agent", "cp-in", "0");
    assert_value(&out, "agent", "cp-out", "0");
    let sums = |tag: &str| {
        case_lines(&out, "agent")
            .into_iter()
            .find_map(|l| l.strip_prefix(tag).map(str::trim).map(str::to_owned))
            .unwrap_or_default()
    };
    let sent = sums("tree-sums ");
    assert!(sent.contains("sub/data") && sent.contains("a.txt"), "{lines}");
    assert_eq!(sums("guest-sums "), sent, "{lines}");
    assert_eq!(sums("back-sums "), sent, "{lines}");
    assert_value(&out, "agent", "guest-mode", "750");
    assert_value(&out, "agent", "guest-link", "a.txt");
    assert_value(&out, "agent", "back-mode", "750");
    assert_value(&out, "agent", "back-link", "a.txt");
    // After a 5 s pause the guest's clock is the host's (within a second of the exec's span),
    // though it was set to 2001 before.
    let clock = |k: &str| case_value(&out, "agent", k).and_then(|v| v.parse::<i64>().ok());
    assert!(
        clock("clock-wrong").is_some_and(|w| w < 1_100_000_000),
        "the guest's clock was not set wrong first:\n{lines}"
    );
    match (clock("clock-before"), clock("clock-guest"), clock("clock-after")) {
        (Some(b), Some(g), Some(a)) => assert!(b - 1 <= g && g <= a + 1, "guest clock {g} not in {b}..{a}"),
        other => panic!("no clock figures {other:?}:\n{lines}"),
    }
    assert_value(&out, "agent", "stop", "0");
    assert!(lines.contains("shut down through its agent"), "{lines}");
    // A VM whose guest runs no agent: exec says so, with its exit code (125).
    let none = case_lines(&out, "noagent").join("\n");
    assert_value(&out, "noagent", "exec-exit", "125");
    assert!(none.contains("is not up"), "{none}");
}
