//! The control socket against hostile and careless clients, and the lifecycle commands against
//! a VM whose vCPU does not answer, end to end through the `virtkit` binary: SeaBIOS boots the
//! `mbr_session` guest from the VM's disk, detached, and the tests talk to its `control.sock`
//! and watch the VM process in /proc.

mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::home::{text, Home};
use support::VIRTKIT;

/// The uid the other-user client runs as (`nobody`).
const OTHER_UID: u32 = 65534;

/// Set in the environment of this test binary re-run as another user: the socket to try.
const PEER_HELPER_ENV: &str = "VIRTKIT_TEST_PEER_SOCKET";

fn available() -> bool {
    virtkit_testkit::require_kvm_and_seabios()
}

/// A private virtkit home; `ctl` keeps this file's directories apart from other test files'.
fn home(tag: &str) -> Home {
    Home::new("ctl", tag)
}

/// What these tests ask of a home beyond the shared helper.
trait ControlHome {
    /// Creates the VM `name` from the session program and runs it detached until it is ready;
    /// returns its process ID.
    fn run_ready(&self, name: &str) -> u32;
    /// The VM's state as `virtkit list` reports it.
    fn listed_state(&self, name: &str) -> String;
    fn vmm_log_len(&self, name: &str) -> u64;
    fn wait_stopped(&self, name: &str, within: Duration);
}

impl ControlHome for Home {
    fn run_ready(&self, name: &str) -> u32 {
        self.create(name, &self.session_image());
        self.ok(&["run", name, "--detach"]);
        self.wait_log(name, "session: ready", 1);
        self.pid(name)
    }

    fn listed_state(&self, name: &str) -> String {
        let v: serde_json::Value = serde_json::from_str(&self.ok(&["list", "--format", "json"])).unwrap();
        v.as_array()
            .unwrap()
            .iter()
            .find(|r| r["name"] == name)
            .map(|r| r["state"].as_str().unwrap().to_owned())
            .unwrap()
    }

    fn vmm_log_len(&self, name: &str) -> u64 {
        std::fs::metadata(self.bundle(name).join("vmm.log"))
            .map(|m| m.len())
            .unwrap_or(0)
    }

    fn wait_stopped(&self, name: &str, within: Duration) {
        let deadline = Instant::now() + within;
        while self.state(name) != "stopped" {
            assert!(Instant::now() < deadline, "`{name}` not stopped after {within:?}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// A line from /proc/PID/status, in kB (`VmRSS`).
fn status_kb(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}

fn count_entries(path: &str) -> usize {
    std::fs::read_dir(path).map(|d| d.count()).unwrap_or(0)
}

fn threads(pid: u32) -> usize {
    count_entries(&format!("/proc/{pid}/task"))
}

fn fds(pid: u32) -> usize {
    count_entries(&format!("/proc/{pid}/fd"))
}

fn connect(bundle: &Path) -> UnixStream {
    let s = UnixStream::connect(bundle.join("control.sock")).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s
}

/// One request on a new connection; the parsed answer.
fn control(bundle: &Path, request: &str) -> serde_json::Value {
    let mut s = connect(bundle);
    s.write_all(format!("{request}\n").as_bytes()).unwrap();
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line).unwrap();
    serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line:?}"))
}

/// Reads what is left on `s` until the server closes it (end of file or reset).
fn read_until_closed(s: &mut UnixStream) -> Vec<u8> {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return got,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return got,
            Err(e) => panic!("the server did not close the connection: {e} (after {got:?})"),
        }
    }
}

#[test]
fn a_100_mib_request_without_newline_gets_one_error_and_costs_no_memory_or_log() {
    if !available() {
        return;
    }
    let home = home("long");
    let pid = home.run_ready("l");
    let bundle = home.bundle("l");
    assert_eq!(control(&bundle, r#"{"command":"state"}"#)["state"], "running");
    let rss_before = status_kb(pid, "VmRSS");
    let log_before = home.vmm_log_len("l");

    let mut s = connect(&bundle);
    let mut writer = s.try_clone().unwrap();
    // Sent from a thread: the server stops reading after its bound, so the writer blocks until
    // the close turns into an error.
    let sender = std::thread::spawn(move || {
        let chunk = vec![b'{'; 1 << 20];
        let mut sent = 0usize;
        while sent < 100 << 20 {
            match writer.write(&chunk) {
                Ok(n) => sent += n,
                Err(_) => break,
            }
        }
        sent
    });
    let answer = read_until_closed(&mut s);
    let sent = sender.join().unwrap();
    let answer = String::from_utf8_lossy(&answer);
    let r: serde_json::Value =
        serde_json::from_str(answer.trim()).unwrap_or_else(|e| panic!("{e}: {answer}"));
    assert_eq!(r["ok"], false);
    assert_eq!(
        r["error"],
        "request longer than 65536 bytes; send one JSON object per line"
    );
    assert!(sent < 100 << 20, "the VM process read all {sent} bytes");

    let rss_after = status_kb(pid, "VmRSS");
    let log_growth = home.vmm_log_len("l") - log_before;
    eprintln!("VmRSS {rss_before} → {rss_after} kB; vmm.log +{log_growth} bytes; client sent {sent} bytes");
    // The server holds at most 64 KiB plus one 4 KiB read of a client's line.
    assert!(
        rss_after < rss_before + 16 * 1024,
        "VmRSS grew from {rss_before} to {rss_after} kB"
    );
    assert!(log_growth < 4096, "vmm.log grew by {log_growth} bytes");
    assert_eq!(control(&bundle, r#"{"command":"state"}"#)["state"], "running");
    home.ok(&["stop", "l"]);
}

#[test]
fn five_thousand_held_connections_cost_no_threads_and_stop_still_works() {
    if !available() {
        return;
    }
    let home = home("many");
    let pid = home.run_ready("m");
    let bundle = home.bundle("m");
    assert_eq!(control(&bundle, r#"{"command":"state"}"#)["state"], "running");
    let (threads_before, fds_before) = (threads(pid), fds(pid));

    let mut held = Vec::with_capacity(5000);
    let opening = Instant::now();
    for i in 0..5000 {
        let s = connect(&bundle);
        if i == 64 {
            // The one after the cap is told why and closed (the 64 before it are new: none has
            // been quiet long enough to make room).
            let mut s = s.try_clone().unwrap();
            let answer = String::from_utf8_lossy(&read_until_closed(&mut s)).into_owned();
            assert!(
                answer
                    .contains(r#""error":"too many control connections (64 open); close one and try again""#),
                "{answer}"
            );
        }
        held.push(s);
    }
    eprintln!("5000 connections opened in {:?}", opening.elapsed());
    let (threads_held, fds_held) = (threads(pid), fds(pid));
    eprintln!("threads {threads_before} → {threads_held}; fds {fds_before} → {fds_held}");
    assert!(
        threads_held <= threads_before,
        "threads {threads_before} → {threads_held}"
    );
    assert!(fds_held <= fds_before + 64 + 4, "fds {fds_before} → {fds_held}");

    // The VM's process still answers and stops, with every connection still held.
    let started = Instant::now();
    let out = home.ok(&["stop", "m", "--timeout", "30"]);
    assert!(
        out.contains("the guest shut down"),
        "{out}\nvmm.log:\n{}",
        std::fs::read_to_string(bundle.join("vmm.log")).unwrap_or_default()
    );
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(home.state("m"), "stopped");
    drop(held);
}

#[test]
fn half_open_clients_block_nobody_and_cost_no_threads() {
    if !available() {
        return;
    }
    let home = home("half");
    let pid = home.run_ready("h");
    let bundle = home.bundle("h");
    assert_eq!(control(&bundle, r#"{"command":"state"}"#)["state"], "running");
    let threads_before = threads(pid);
    let mut half = Vec::new();
    for _ in 0..60 {
        let mut s = connect(&bundle);
        s.write_all(br#"{"command":"pau"#).unwrap();
        half.push(s);
    }
    let started = Instant::now();
    assert_eq!(control(&bundle, r#"{"command":"pause"}"#)["state"], "paused");
    assert_eq!(home.state("h"), "paused");
    assert_eq!(control(&bundle, r#"{"command":"resume"}"#)["state"], "running");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert!(threads(pid) <= threads_before, "{} threads", threads(pid));
    home.ok(&["stop", "h"]);
}

/// The client as another user: this test binary run again as `nobody`, in helper mode (see
/// `peer_helper`). Prints what it got.
fn run_peer_helper(socket: &Path, uid: u32) -> String {
    let out = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "peer_helper", "--nocapture", "--test-threads=1"])
        .env(PEER_HELPER_ENV, socket)
        .uid(uid)
        .gid(uid)
        .output()
        .unwrap();
    let t = text(&out);
    eprintln!("peer helper as uid {uid}: {t}");
    t
}

/// Not a test of its own: the other-user client of
/// `the_socket_is_owner_only_and_serves_no_other_user`, when that test runs it.
#[test]
fn peer_helper() {
    let Some(path) = std::env::var_os(PEER_HELPER_ENV) else {
        return;
    };
    let mut s = match UnixStream::connect(&path) {
        Ok(s) => s,
        Err(e) => {
            println!("PEER: cannot connect: {e}");
            return;
        }
    };
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    if Path::new(&path).ends_with("console.sock") {
        // A console client sends nothing; a served one gets the guest's next line (the UART
        // sends it a byte at a time).
        let mut line = String::new();
        let mut reader = BufReader::new(s);
        loop {
            match reader.read_line(&mut line) {
                Ok(0) if line.trim().is_empty() => println!("PEER: closed"),
                // An empty line (the guest's `\r\n` pairs): wait for one with text.
                Ok(n) if n > 0 && line.trim().is_empty() => {
                    line.clear();
                    continue;
                }
                Ok(_) => println!("PEER: answered {}", line.trim()),
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => println!("PEER: closed"),
                Err(e) => println!("PEER: error {e}"),
            }
            return;
        }
    }
    let _ = s.write_all(b"{\"command\":\"state\"}\n");
    let mut answer = String::new();
    match BufReader::new(s).read_line(&mut answer) {
        Ok(0) => println!("PEER: closed"),
        Ok(_) => println!("PEER: answered {}", answer.trim()),
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => println!("PEER: closed"),
        Err(e) => println!("PEER: error {e}"),
    }
}

#[test]
fn the_socket_is_owner_only_and_serves_no_other_user() {
    if !available() {
        return;
    }
    if rustix::process::geteuid().as_raw() != 0 {
        virtkit_testkit::skip("needs root, to run a client as another user");
        return;
    }
    let home = home("owner");
    home.create("o", &home.session_image());
    // Under umask 000 the socket would be 0777 if its mode followed the umask.
    let out = Command::new("sh")
        .args(["-c", r#"umask 000; exec "$0" run o --detach"#, VIRTKIT])
        .env("VIRTKIT_HOME", home.dir.join("home"))
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    home.wait_log("o", "session: ready", 1);
    let bundle = home.bundle("o");
    let socket = bundle.join("control.sock");
    let mode = std::fs::metadata(&socket).unwrap().mode() & 0o777;
    assert_eq!(mode, 0o600, "control.sock has mode {mode:o} under umask 000");

    // Let the other user reach the socket, so the server's own check is what refuses it.
    let mut dir = bundle.clone();
    while dir != home.dir.parent().unwrap() {
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        dir.pop();
    }
    std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o666)).unwrap();
    let as_root = run_peer_helper(&socket, 0);
    assert!(as_root.contains(r#"PEER: answered {"ok":true"#), "{as_root}");
    let log_before = home.vmm_log_len("o");
    let as_other = run_peer_helper(&socket, OTHER_UID);
    assert!(as_other.contains("PEER: closed"), "{as_other}");
    // Nothing was served to it.
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(home.state("o"), "running");
    let log = std::fs::read_to_string(bundle.join("vmm.log")).unwrap();
    assert!(
        log[log_before as usize..].contains("refused a client of another user"),
        "{log}"
    );

    // The console socket likewise: owner-only, and another user's client gets nothing.
    let console = bundle.join("console.sock");
    let mode = std::fs::metadata(&console).unwrap().mode() & 0o777;
    assert_eq!(mode, 0o600, "console.sock has mode {mode:o} under umask 000");
    std::fs::set_permissions(&console, std::fs::Permissions::from_mode(0o666)).unwrap();
    let as_root = run_peer_helper(&console, 0);
    assert!(as_root.contains("PEER: answered session: tick"), "{as_root}");
    let as_other = run_peer_helper(&console, OTHER_UID);
    assert!(as_other.contains("PEER: closed"), "{as_other}");
    let log = std::fs::read_to_string(bundle.join("vmm.log")).unwrap();
    assert!(log.contains("refused a console client"), "{log}");
    home.ok(&["stop", "o"]);
}

/// Makes the VM process's vCPU thread stop answering, as one blocked in a host write would:
/// stopped under ptrace, it never leaves the kernel for the kick signal. The calling thread is
/// the tracer and must stay the same until [`FrozenVcpu::reap`].
struct FrozenVcpu {
    tid: i32,
}

impl FrozenVcpu {
    fn freeze(pid: u32) -> Option<FrozenVcpu> {
        let tid = std::fs::read_dir(format!("/proc/{pid}/task"))
            .ok()?
            .filter_map(|e| e.ok())
            .find(|e| std::fs::read_to_string(e.path().join("comm")).is_ok_and(|c| c.trim() == "vcpu-0"))?
            .file_name()
            .to_str()?
            .parse::<i32>()
            .ok()?;
        // SAFETY: ptrace requests on a thread ID with no pointers passed (addr and data 0).
        let seized = unsafe { libc::ptrace(libc::PTRACE_SEIZE, tid, 0, 0) };
        if seized != 0 {
            virtkit_testkit::skip(&format!(
                "cannot ptrace the vCPU thread to make it stuck: {}",
                std::io::Error::last_os_error()
            ));
            return None;
        }
        // SAFETY: as above.
        let interrupted = unsafe { libc::ptrace(libc::PTRACE_INTERRUPT, tid, 0, 0) };
        assert_eq!(interrupted, 0, "{}", std::io::Error::last_os_error());
        let mut status = 0;
        // SAFETY: `status` is a valid place for waitpid to write.
        let waited = unsafe { libc::waitpid(tid, &mut status, libc::__WALL) };
        assert_eq!(waited, tid, "{}", std::io::Error::last_os_error());
        Some(FrozenVcpu { tid })
    }

    /// Collects the thread once its process is gone (a traced thread waits for its tracer).
    fn reap(self) {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let mut status = 0;
            // SAFETY: `status` is a valid place for waitpid to write.
            let r = unsafe { libc::waitpid(self.tid, &mut status, libc::__WALL | libc::WNOHANG) };
            if r == self.tid && (libc::WIFEXITED(status) || libc::WIFSIGNALED(status)) || r < 0 {
                return;
            }
            if Instant::now() > deadline {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

#[test]
fn a_stop_ends_a_vm_whose_vcpu_is_stuck_even_while_a_pause_waits() {
    if !available() {
        return;
    }
    let home = home("stuck");
    let pid = home.run_ready("s");
    let Some(frozen) = FrozenVcpu::freeze(pid) else {
        return;
    };
    let pause = home
        .cmd(&["pause", "s"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    // The pause waits for the vCPU; the VM is not paused, and the state says so at once.
    let started = Instant::now();
    assert_eq!(home.state("s"), "running");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );

    let started = Instant::now();
    let out = home.ok(&["stop", "s", "--timeout", "2"]);
    let took = started.elapsed();
    assert!(out.contains("`s`: stopped (forced"), "{out}");
    assert!(took < Duration::from_secs(25), "stop took {took:?}");
    let pause = pause.wait_with_output().unwrap();
    assert_eq!(pause.status.code(), Some(1), "{}", text(&pause));
    assert!(!text(&pause).contains("paused"), "{}", text(&pause));

    home.wait_stopped("s", Duration::from_secs(5));
    assert_eq!(home.listed_state("s"), "stopped");
    let bundle = home.bundle("s");
    for leftover in ["control.sock", "console.sock", "pid"] {
        assert!(!bundle.join(leftover).exists(), "{leftover} left behind");
    }
    let log = std::fs::read_to_string(bundle.join("vmm.log")).unwrap();
    assert!(
        !log.contains("to=paused"),
        "the late pause changed the state:\n{log}"
    );
    assert!(log.contains("did not end within"), "{log}");
    frozen.reap();
}

#[test]
fn a_vm_process_killed_during_stop_is_reported_as_killed() {
    if !available() {
        return;
    }
    let home = home("killed");
    let pid = home.run_ready("k");
    // The guest cannot answer the power button: the stop waits its full timeout.
    let Some(frozen) = FrozenVcpu::freeze(pid) else {
        return;
    };
    let stop = home
        .cmd(&["stop", "k", "--timeout", "30"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(1));
    Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .unwrap();
    let started = Instant::now();
    let out = stop.wait_with_output().unwrap();
    let t = text(&out);
    assert_eq!(out.status.code(), Some(0), "{t}");
    assert!(
        t.contains(&format!("`k`: stopped: its process {pid} was killed")),
        "{t}"
    );
    assert!(!t.contains("the guest shut down"), "{t}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(home.state("k"), "stopped");
    for leftover in ["control.sock", "pid"] {
        assert!(
            !home.bundle("k").join(leftover).exists(),
            "{leftover} left behind"
        );
    }
    frozen.reap();
}
