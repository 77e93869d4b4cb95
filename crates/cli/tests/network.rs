//! Network cards of named VMs on this host's KVM, without a guest network driver (the small
//! guests have none; the stock kernel's `virtio_net` runs in `full_guest_network.rs`): a NAT card
//! starts passt with the ports published, `virtkit ip` knows the address NAT will give before the
//! guest takes it, `--wait` says when it has not, and passt never outlives its VM, not even a
//! `kill -9` of the VM process.

mod support;

use std::path::Path;
use std::time::Duration;

use support::home::{wait_until, Home};
use virtkit_test_guests::Guest;

fn available() -> bool {
    if !virtkit_testkit::require_kvm() {
        return false;
    }
    if !Path::new("/usr/bin/passt").exists() {
        virtkit_testkit::skip("passt is not installed (Debian package passt)");
        return false;
    }
    true
}

/// The passt processes whose command line publishes `port`.
fn passt_publishing(port: u16) -> Vec<u32> {
    let needle = format!("/{port}:");
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            cmd.contains("passt") && cmd.contains(&needle)
        })
        .filter(|pid| !std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| s.contains(") Z ")))
        .collect()
}

fn create_nat(home: &Home, name: &str, publish: &str) {
    home.ok(&[
        "create",
        name,
        "--kernel",
        Guest::Counter.path().to_str().unwrap(),
        "--memory",
        "64M",
        "--cpus",
        "1",
        "--disk-size",
        "1M",
        "--network",
        "nat",
        "--publish",
        publish,
    ]);
}

#[test]
fn a_nat_card_publishes_its_ports_and_ip_knows_the_address_before_the_guest() {
    if !available() {
        return;
    }
    let home = Home::new("net", "nat");
    create_nat(&home, "web", "24022:22");
    home.ok(&["run", "web", "--detach"]);
    assert_eq!(home.ok(&["ip", "web"]).trim(), "10.0.2.15");
    let nics = home.json(&["ip", "web", "--format", "json"]);
    assert_eq!(nics[0]["name"], "net0");
    assert_eq!(nics[0]["expected_ipv4"], "10.0.2.15");
    // Under NAT, the JSON names the host endpoints that reach the guest.
    assert_eq!(nics[0]["published"][0]["host_port"], 24022, "{nics}");
    assert_eq!(nics[0]["published"][0]["guest_port"], 22, "{nics}");
    // The MAC the guest sees is the one derived from the machine id, as `get` would show.
    let get = home.json(&["get", "web", "--format", "json"]);
    assert_eq!(nics[0]["mac"], get["mac_address"], "{nics} / {get}");
    // The published port is passt's, on the host's loopback only.
    assert_eq!(passt_publishing(24022).len(), 1);
    assert!(std::net::TcpStream::connect("127.0.0.1:24022").is_ok());
    // The counter guest has no network driver: it never takes the address.
    home.fails(&["ip", "web", "--wait", "1"], "has no address yet after 1 s");
    home.ok(&["stop", "web", "--timeout", "1"]);
    wait_until("passt to end with its VM", Duration::from_secs(5), || {
        passt_publishing(24022).is_empty()
    });
}

#[test]
fn passt_does_not_outlive_a_killed_vm_process_and_a_taken_port_is_refused() {
    if !available() {
        return;
    }
    let home = Home::new("net", "kill");
    create_nat(&home, "k", "24023:22");
    home.ok(&["run", "k", "--detach"]);
    assert_eq!(passt_publishing(24023).len(), 1);
    let pid = home.pid("k");
    std::process::Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .unwrap();
    wait_until(
        "passt to end with its killed VM process",
        Duration::from_secs(5),
        || passt_publishing(24023).is_empty(),
    );

    // A host port already in use: one sentence, and no passt left behind.
    let _taken = std::net::TcpListener::bind("127.0.0.1:24024").unwrap();
    create_nat(&home, "busy", "24024:22");
    home.fails(
        &["run", "busy", "--detach"],
        "24024 is already in use on the host",
    );
    assert!(passt_publishing(24024).is_empty());
}

#[test]
fn a_new_bundle_has_nat_by_default_and_list_get_set_and_logs_show_it() {
    if !available() {
        return;
    }
    let home = Home::new("net", "default");
    let counter = Guest::Counter.path();
    home.ok(&[
        "create",
        "d",
        "--kernel",
        counter.to_str().unwrap(),
        "--memory",
        "64M",
        "--cpus",
        "1",
        "--disk-size",
        "1M",
    ]);
    // One NAT card, with the MAC derived from the machine id for card 0.
    let get = home.json(&["get", "d", "--format", "json"]);
    let cards = get["network"].as_array().unwrap();
    assert_eq!(cards.len(), 1, "{get}");
    assert_eq!(cards[0]["attachment"], "nat");
    assert_eq!(cards[0]["mac"], get["mac_address"]);
    assert!(home.ok(&["list"]).lines().next().unwrap().ends_with("IP"));

    // Published ports are added to that card, and `get` shows them.
    home.ok(&["set", "d", "--publish", "24025:22/udp"]);
    let text = home.ok(&["get", "d"]);
    assert!(text.contains("nat 127.0.0.1:24025->22/udp"), "{text}");

    home.ok(&["run", "d", "--detach"]);
    let row = home.ok(&["list"]);
    let line = row.lines().find(|l| l.starts_with("d ")).unwrap().to_string();
    assert!(line.ends_with("10.0.2.15"), "{row}");
    let list = home.json(&["list", "--format", "json"]);
    assert_eq!(list[0]["ip"], "10.0.2.15", "{list}");
    // passt's messages go to the bundle (as root it says it drops to nobody).
    wait_until(
        "passt.log to have passt's first message",
        Duration::from_secs(5),
        || !home.ok(&["logs", "d", "--network"]).is_empty(),
    );
    home.ok(&["stop", "d", "--timeout", "1"]);
    let row = home.ok(&["list"]);
    assert!(
        row.lines().any(|l| l.starts_with("d ") && l.ends_with(" -")),
        "{row}"
    );

    // `set --network none` takes the cards away: no passt, no address.
    home.ok(&["set", "d", "--network", "none"]);
    let get = home.json(&["get", "d", "--format", "json"]);
    assert_eq!(get["network"], serde_json::json!([]), "{get}");
    home.fails(
        &["set", "d", "--network", "socket:/tmp/x.sock"],
        "socket attachment names a path outside the bundle",
    );
    home.ok(&["run", "d", "--detach"]);
    home.fails(&["ip", "d"], "has no network card");
    assert!(passt_publishing(24025).is_empty());
    home.ok(&["stop", "d", "--timeout", "1"]);
}

#[test]
fn a_socket_handed_over_as_a_descriptor_is_the_cards_and_a_bad_one_is_refused() {
    if !virtkit_testkit::require_kvm() {
        return;
    }
    use std::io::Read;
    use std::process::{Command, Stdio};
    let virtkit = env!("CARGO_BIN_EXE_virtkit");
    let counter = Guest::Counter.path();
    let run = |network: &str| {
        let mut c = Command::new(virtkit);
        c.args([
            "run",
            "--kernel",
            counter.to_str().unwrap(),
            "--memory",
            "64M",
            "--serial",
            "none",
        ])
        .args(["--network", network]);
        c
    };
    // Standard input as the socket (a program would hand over any descriptor the same way).
    let (ours, theirs) = std::os::unix::net::UnixStream::pair().unwrap();
    let mut vm = run("fd:0")
        .stdin(Stdio::from(std::os::fd::OwnedFd::from(theirs)))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        vm.try_wait().unwrap().is_none(),
        "the VM did not start with the socket as its card"
    );
    // The VM process holds the socket: it closes (end of stream here) only when the VM ends.
    ours.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
    let mut buf = [0u8; 16];
    assert!(
        (&ours).read(&mut buf).is_err(),
        "the socket closed while the VM runs"
    );
    vm.kill().unwrap();
    vm.wait().unwrap();
    ours.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    assert_eq!((&ours).read(&mut buf).unwrap(), 0, "the socket outlived the VM");

    // Not a socket, and not open: one sentence each.
    let out = run("fd:0").stdin(Stdio::null()).output().unwrap();
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && said.contains("is not a socket"),
        "{said}"
    );
    let out = run("fd:57").stdin(Stdio::null()).output().unwrap();
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && said.contains("descriptor 57 is not open"),
        "{said}"
    );
}
