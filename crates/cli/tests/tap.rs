//! TAP and bridged network cards of VMs on this host's KVM (as root), each test in a network
//! namespace of its own (`ip netns`, which also gives the commands a sysfs of that namespace):
//! the errors (a bridge that does not exist, an interface that is not a bridge, a TAP name too
//! long, a TAP busy in another VM, no root) each one sentence with nothing left behind; a created
//! TAP on a bridge is its port while the VM runs and gone after a `stop` and after a `kill -9` of
//! the VM process. The small guests have no network driver; the stock kernel's `virtio_net` on
//! a TAP and a bridge runs in `full_guest_tap.rs`.

mod support;

use std::cell::RefCell;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use support::home::{output, wait_until, Home};
use virtkit_test_guests::Guest;

thread_local! {
    /// The test's network namespace (each test runs on a thread of its own).
    static NETNS: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// A named network namespace for one test; deleted on drop.
struct Netns(String);

impl Netns {
    fn new(tag: &str) -> Netns {
        let name = format!("vkt-{tag}-{}", std::process::id());
        let _ = Command::new("ip")
            .args(["netns", "del", &name])
            .stderr(Stdio::null())
            .status();
        let ok = Command::new("ip").args(["netns", "add", &name]).status().unwrap();
        assert!(ok.success(), "ip netns add {name}");
        NETNS.with(|n| *n.borrow_mut() = Some(name.clone()));
        let ns = Netns(name);
        ns.sh("ip link set lo up");
        ns
    }

    /// `sh -c script` in the namespace; its standard output. Must succeed.
    fn sh(&self, script: &str) -> String {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.0, "sh", "-c", script])
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{script}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The names of the namespace's interfaces.
    fn links(&self) -> Vec<String> {
        self.sh("ls /sys/class/net")
            .split_whitespace()
            .map(str::to_owned)
            .collect()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        NETNS.with(|n| *n.borrow_mut() = None);
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

/// Runs a virtkit command inside the test's namespace (`ip netns exec`), with its environment.
fn in_netns(c: Command, what: &str) -> Output {
    let ns = NETNS.with(|n| n.borrow().clone()).expect("the test's namespace");
    let mut wrapped = Command::new("ip");
    wrapped
        .args(["netns", "exec", &ns])
        .arg(c.get_program())
        .args(c.get_args())
        .stdin(Stdio::null());
    for (k, v) in c.get_envs() {
        match v {
            Some(v) => wrapped.env(k, v),
            None => wrapped.env_remove(k),
        };
    }
    output(wrapped, what)
}

fn available(test: &str) -> bool {
    if !virtkit_testkit::require_kvm() {
        return false;
    }
    if !rustix::process::geteuid().is_root() {
        virtkit_testkit::skip(&format!("{test}: TAP and bridge attachments need root"));
        return false;
    }
    if !std::path::Path::new("/dev/net/tun").exists() {
        virtkit_testkit::skip(&format!("{test}: no /dev/net/tun"));
        return false;
    }
    true
}

fn home(tag: &str) -> (Home, Netns) {
    let ns = Netns::new(tag);
    (Home::new("tap", tag).running_with(in_netns), ns)
}

/// `virtkit run` of the counter guest (runs until stopped) with `networks`.
fn run_args<'a>(networks: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec![
        "run",
        "--kernel",
        Guest::Counter.path().to_str().unwrap(),
        "--memory",
        "64M",
        "--cpus",
        "1",
    ];
    for n in networks {
        args.extend(["--network", n]);
    }
    args
}

fn create(home: &Home, name: &str, network: &str) {
    home.create_counter(name, &["--network", network]);
}

#[test]
fn bad_tap_and_bridge_attachments_are_one_sentence_and_leave_nothing() {
    if !available("bad_tap_and_bridge_attachments_are_one_sentence_and_leave_nothing") {
        return;
    }
    let (home, ns) = home("bad");
    let before = ns.links();

    home.fails(
        &run_args(&["bridge:vknobr"]),
        "bridge vknobr does not exist; create it (`ip link add vknobr type bridge",
    );
    ns.sh("ip tuntap add vktap9 mode tap");
    let before_tap = ns.links();
    home.fails(
        &run_args(&["bridge:vktap9"]),
        "vktap9 is not a bridge; name a Linux bridge",
    );
    home.fails(
        &run_args(&["tap:vknotap"]),
        "there is no TAP device vknotap; create it first (`ip tuntap add vknotap mode tap`",
    );
    home.fails(&run_args(&["tap:lo"]), "lo is not a TAP device");
    home.fails(
        &run_args(&["tap:vk0123456789abcdef"]),
        "is not a usable interface name: it must be 1 to 15 bytes (IFNAMSIZ)",
    );
    home.fails(
        &run_args(&["tap:vktap9", "tap:vktap9"]),
        "TAP vktap9 is also network_devices[0]'s; give each card its own TAP",
    );
    // A bundle is checked when it is made, too.
    home.fails(
        &[
            "create",
            "b",
            "--kernel",
            Guest::Counter.path().to_str().unwrap(),
            "--disk-size",
            "1M",
            "--network",
            "bridge:vknobr",
        ],
        "bridge vknobr does not exist",
    );
    assert_eq!(ns.links(), before_tap, "no TAP left behind");
    ns.sh("ip link del vktap9");
    assert_eq!(ns.links(), before);

    // Without root: one sentence naming the ways out (the binary re-run as nobody).
    let out = Command::new("ip")
        .args([
            "netns",
            "exec",
            &ns.0,
            "setpriv",
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
        ])
        .arg(support::VIRTKIT)
        .args(run_args(&["tap"]))
        .env("VIRTKIT_HOME", "/nonexistent")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let text = support::home::text(&out);
    if text.contains("Permission denied") && text.contains(support::VIRTKIT) {
        virtkit_testkit::skip(
            "the virtkit binary is not executable by nobody here; the no-root case was not run",
        );
    } else {
        assert_eq!(out.status.code(), Some(1), "{text}");
        assert!(
            text.contains("creating a TAP device for the VM needs root (or CAP_NET_ADMIN and access to /dev/net/tun); run virtkit as root, give an existing TAP you may open with tap:NAME, or use nat"),
            "{text}"
        );
    }
}

#[test]
fn a_tap_busy_in_another_vm_is_refused_naming_its_process() {
    if !available("a_tap_busy_in_another_vm_is_refused_naming_its_process") {
        return;
    }
    let (home, ns) = home("busy");
    for (tap, mode) in [("vkbq0", ""), ("vkbm0", "multi_queue")] {
        ns.sh(&format!("ip tuntap add {tap} mode tap {mode}"));
        let first = format!("first-{tap}");
        create(&home, &first, &format!("tap:{tap}"));
        home.ok(&["run", &first, "--detach"]);
        let pid = home.pid(&first);
        let busy = format!(
            "TAP {tap} is in use by another process (pid {pid}); stop that VM or give this one another TAP"
        );
        home.fails(&run_args(&[&format!("tap:{tap}")]), &busy);
        // A bundle for the TAP may be made meanwhile; it is its run that is refused.
        let second = format!("second-{tap}");
        create(&home, &second, &format!("tap:{tap}"));
        home.fails(&["run", &second, "--detach"], &busy);
        assert_eq!(home.state(&second), "stopped");
        home.ok(&["stop", &first, "--timeout", "1"]);
        // An existing TAP is the user's: it stays after the VM.
        assert!(ns.links().contains(&tap.to_owned()));
    }
}

#[test]
fn a_created_tap_is_a_bridge_port_while_the_vm_runs_and_gone_after_stop_or_kill() {
    if !available("a_created_tap_is_a_bridge_port_while_the_vm_runs_and_gone_after_stop_or_kill") {
        return;
    }
    let (home, ns) = home("bridge");
    // The bridge carries the namespace's default route: passt (a NAT card beside the bridged
    // one) needs an interface with one.
    ns.sh("ip link add vkbr0 type bridge && ip link set vkbr0 up && ip addr add 10.77.0.1/24 dev vkbr0 && ip route add default via 10.77.0.254");
    let before = ns.links();
    let ports = || {
        ns.sh("ls /sys/class/net/vkbr0/brif")
            .split_whitespace()
            .map(str::to_owned)
            .collect::<Vec<_>>()
    };
    let passt = std::path::Path::new("/usr/bin/passt").exists();
    let mut args = vec![
        "create",
        "br",
        "--kernel",
        Guest::Counter.path().to_str().unwrap(),
        "--memory",
        "64M",
        "--disk-size",
        "1M",
        "--network",
        "bridge:vkbr0",
    ];
    if passt {
        args.extend(["--network", "nat"]);
    } else {
        virtkit_testkit::skip("passt is not installed: the bridged VM runs without a NAT card beside it");
    }
    home.ok(&args);
    create(&home, "t", "tap");

    for stop in ["stop", "kill -9"] {
        home.ok(&["run", "br", "--detach"]);
        let pid = home.pid("br");
        let tap = format!("vk{pid:x}n0");
        assert_eq!(ports(), vec![tap.clone()], "the VM's TAP is the bridge's port");
        let state = ns.sh(&format!(
            "cat /sys/class/net/{tap}/operstate /sys/class/net/{tap}/tun_flags"
        ));
        assert!(
            state.contains("0x5102"),
            "TAP, no PI, vnet header, multi-queue: {state}"
        );
        // No other process (passt, anything forked) holds the TAP.
        if passt {
            // `virtkit ip` answers (the NAT card's address is known) and names the TAP.
            let nics = home.json(&["ip", "br", "--format", "json"]);
            assert_eq!(nics[0]["host_interface"], tap.as_str(), "{nics}");
            assert_eq!(
                nics[1]["expected_ipv4"], "10.0.2.15",
                "the NAT card beside it: {nics}"
            );
        }
        assert_eq!(holders(&tap), vec![pid], "only the VM process holds {tap}");
        if stop == "stop" {
            home.ok(&["stop", "br", "--timeout", "1"]);
        } else {
            Command::new("kill")
                .args(["-9", &pid.to_string()])
                .status()
                .unwrap();
        }
        wait_until(
            &format!("{tap} to go after {stop}"),
            Duration::from_secs(10),
            || ns.links() == before,
        );
        assert!(ports().is_empty(), "after {stop}, the bridge has no port");
    }

    // `tap` alone: a TAP of the VM's own, up, deleted when the VM process is killed.
    home.ok(&["run", "t", "--detach"]);
    let pid = home.pid("t");
    let tap = format!("vk{pid:x}n0");
    assert!(ns.links().contains(&tap), "{:?}", ns.links());
    Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .unwrap();
    wait_until(
        &format!("{tap} to go after kill -9"),
        Duration::from_secs(10),
        || ns.links() == before,
    );
}

/// The processes with a `/dev/net/tun` descriptor attached to `tap` (`iff:` in fdinfo).
fn holders(tap: &str) -> Vec<u32> {
    let wanted = format!("iff:\t{tap}\n");
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_dir(format!("/proc/{pid}/fdinfo")).is_ok_and(|fds| {
                fds.flatten()
                    .any(|fd| std::fs::read_to_string(fd.path()).is_ok_and(|i| i.contains(&wanted)))
            })
        })
        .collect()
}
