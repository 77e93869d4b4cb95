//! `console.sock` clients cannot hurt the VM (issue 15): one that stops reading does not freeze
//! the guest (its output keeps going to `console.log`; pause, resume and stop keep working), and
//! connections that come and go leave the VM process's descriptors, threads and memory as they
//! were. Real guests, through the `virtkit` binary, with the default seccomp policy (`kill`), so
//! a syscall the console's thread lacks kills the VM and fails the test.

mod support;

use std::io::{Read, Seek, SeekFrom};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use virtkit_test_guests::{output, Guest};

use support::home::{assert_ok, text, Home};

/// A private virtkit home whose commands run under the default seccomp policy and must end
/// within a minute; `console` keeps this file's directories apart from other test files'.
fn home(tag: &str) -> Home {
    Home::new("console", tag)
        .without_env("VIRTKIT_SECCOMP")
        .running_with(|c, what| run_within(c, what, Duration::from_secs(60)))
}

/// Runs `c`, which must end within `limit`.
fn run_within(mut c: Command, what: &str, limit: Duration) -> Output {
    let started = Instant::now();
    let child = c.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    // Its output is read as it comes (a full pipe would stall it).
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    let Ok(out) = rx.recv_timeout(limit) else {
        let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
        panic!("virtkit {what} took over {limit:?}");
    };
    let out = out.unwrap();
    let shown = text(&out);
    eprintln!(
        "$ virtkit {what} → {:?} in {:?}\n{}",
        out.status.code(),
        started.elapsed(),
        shown.chars().take(2000).collect::<String>()
    );
    out
}

/// What these tests ask of a home beyond the shared helper.
trait ConsoleHome {
    /// Runs `virtkit args`, which must succeed within `limit`.
    fn ok_within(&self, args: &[&str], limit: Duration) -> String;
    /// A VM that boots `guest` directly (no firmware), with a small disk.
    fn create_guest(&self, name: &str, guest: Guest);
    /// The last `len` bytes of the VM's console log.
    fn log_tail(&self, name: &str, len: u64) -> String;
    /// Waits until the VM's `console.log` (its last MiB, read directly) shows `needle`.
    fn wait_console_log(&self, name: &str, needle: &str);
    /// The number of the last complete `flood <n>` line in the log.
    fn flood_count(&self, name: &str) -> u64;
}

impl ConsoleHome for Home {
    fn ok_within(&self, args: &[&str], limit: Duration) -> String {
        assert_ok(args, &run_within(self.cmd(args), &args.join(" "), limit))
    }

    fn create_guest(&self, name: &str, guest: Guest) {
        self.ok(&[
            "create",
            name,
            "--kernel",
            guest.path().to_str().unwrap(),
            "--disk-size",
            "16M",
            "--memory",
            "64M",
            "--cpus",
            "1",
        ]);
    }

    fn log_tail(&self, name: &str, len: u64) -> String {
        let Ok(mut f) = std::fs::File::open(self.bundle(name).join("console.log")) else {
            return String::new();
        };
        let size = f.metadata().unwrap().len();
        f.seek(SeekFrom::Start(size.saturating_sub(len))).unwrap();
        let mut s = Vec::new();
        f.read_to_end(&mut s).unwrap();
        String::from_utf8_lossy(&s).into_owned()
    }

    fn wait_console_log(&self, name: &str, needle: &str) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !self.log_tail(name, 1 << 20).contains(needle) {
            assert!(Instant::now() < deadline, "`{needle}` not in the log of {name}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn flood_count(&self, name: &str) -> u64 {
        let tail = self.log_tail(name, 4096);
        tail.lines()
            .rev()
            .skip(1) // the last line may be cut short
            .find_map(|l| l.strip_prefix(output::FLOOD_PREFIX)?.trim().parse().ok())
            .unwrap_or_else(|| panic!("no flood line in the log's tail:\n{tail}"))
    }
}

fn count_entries(dir: &Path) -> usize {
    std::fs::read_dir(dir).map(|d| d.count()).unwrap_or(0)
}

fn vm_rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

#[test]
fn a_console_client_that_stops_reading_does_not_freeze_the_guest() {
    if !virtkit_testkit::require_kvm() {
        return;
    }
    let home = home("stalled");
    home.create_guest("flood", Guest::Flood);
    home.ok(&["run", "flood", "--detach"]);
    home.wait_console_log("flood", output::FLOOD_PREFIX);
    let socket = home.bundle("flood").join("console.sock");
    // Two clients that read nothing, like `virtkit console flood | sleep 400`.
    let mut stalled = UnixStream::connect(&socket).unwrap();
    let still_stalled = UnixStream::connect(&socket).unwrap();

    // The guest writes on until far more than the server keeps for a client (256 KiB, plus what
    // the client's socket holds) has gone by them.
    let log_size = || {
        std::fs::metadata(home.bundle("flood").join("console.log"))
            .unwrap()
            .len()
    };
    let start = log_size();
    let deadline = Instant::now() + Duration::from_secs(120);
    while log_size() < start + (1 << 20) {
        assert!(
            Instant::now() < deadline,
            "the guest wrote {} bytes in 120 s with two stalled clients",
            log_size() - start
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    // The guest goes on: its counter keeps advancing in the log.
    let a = home.flood_count("flood");
    std::thread::sleep(Duration::from_secs(1));
    let b = home.flood_count("flood");
    assert!(
        b > a + 100,
        "the guest is stuck at flood {a} → {b} behind a stalled client"
    );

    // Pause, resume: within their timeouts; nothing runs while paused.
    home.ok_within(&["pause", "flood"], Duration::from_secs(15));
    std::thread::sleep(Duration::from_millis(300));
    let paused_at = home.flood_count("flood");
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(home.flood_count("flood"), paused_at, "the guest ran while paused");
    home.ok_within(&["resume", "flood"], Duration::from_secs(15));
    let deadline = Instant::now() + Duration::from_secs(15);
    while home.flood_count("flood") <= paused_at + 100 {
        assert!(Instant::now() < deadline, "the guest did not go on after resume");
        std::thread::sleep(Duration::from_millis(50));
    }

    // One stalled client reads again: what was buffered, then how much it missed, then live
    // output.
    stalled.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut seen = Vec::new();
    let mut buf = [0u8; 65536];
    let notice_end = "this client did not read them in time]\r\n";
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let n = stalled.read(&mut buf).expect("output within 30 s");
        assert!(n > 0, "the console closed the stalled client");
        seen.extend_from_slice(&buf[..n]);
        let s = String::from_utf8_lossy(&seen);
        if let Some(at) = s.find(notice_end) {
            if s[at + notice_end.len()..].contains(output::FLOOD_PREFIX) {
                break;
            }
        }
        assert!(Instant::now() < deadline, "no notice of dropped output");
    }
    let s = String::from_utf8_lossy(&seen);
    let at = s.find("\r\n[virtkit: ").unwrap();
    let dropped: u64 = s[at + 12..].split(' ').next().unwrap().parse().unwrap();
    assert!(dropped > 0, "{}", &s[at..]);
    assert!(
        at < 2 << 20,
        "the server kept {at} bytes for a client that read nothing"
    );

    // Stop with the other client still stalled: the guest hears the power button.
    let out = home.ok_within(&["stop", "flood", "--timeout", "30"], Duration::from_secs(45));
    assert!(out.contains("the guest shut down"), "{out}");
    // `virtkit logs`: every line the guest wrote, in order, none lost to the stalled clients.
    let logs = home.ok(&["logs", "flood"]);
    let numbers: Vec<u64> = logs
        .lines()
        .filter_map(|l| l.strip_prefix(output::FLOOD_PREFIX)?.parse().ok())
        .collect();
    assert!(numbers.len() > 10_000, "{} lines", numbers.len());
    assert!(
        numbers.iter().enumerate().all(|(i, &n)| n == i as u64),
        "console.log lost lines"
    );
    assert!(logs.trim_end().ends_with(output::FLOOD_POWER_BUTTON));
    drop(still_stalled);
}

#[test]
fn console_connections_that_come_and_go_leave_no_trace_in_the_vm_process() {
    if !virtkit_testkit::require_kvm() {
        return;
    }
    let home = home("churn");
    home.create_guest("quiet", Guest::PowerButton);
    home.ok(&["run", "quiet", "--detach"]);
    // `run --detach` returns when the control socket answers; the console's is bound before it.
    let socket = home.bundle("quiet").join("console.sock");
    assert!(socket.exists(), "no console.sock when `run --detach` returned");
    home.wait_console_log("quiet", output::POWER_BUTTON_WAITING);
    let pid = home.pid("quiet");
    let fds = PathBuf::from(format!("/proc/{pid}/fd"));
    let tasks = PathBuf::from(format!("/proc/{pid}/task"));
    // One client first, so that whatever a first client costs once is in the baseline.
    drop(UnixStream::connect(&socket).unwrap());
    std::thread::sleep(Duration::from_millis(300));
    let (fds_before, tasks_before, rss_before) =
        (count_entries(&fds), count_entries(&tasks), vm_rss_kib(pid));

    for _ in 0..2000 {
        drop(UnixStream::connect(&socket).unwrap());
    }
    // More at once than the console serves: 16 are served, the rest told and closed.
    let crowd: Vec<UnixStream> = (0..40).map(|_| UnixStream::connect(&socket).unwrap()).collect();
    let mut refused = 0;
    for mut c in crowd.iter() {
        c.set_read_timeout(Some(Duration::from_millis(500))).unwrap();
        let mut line = String::new();
        if c.read_to_string(&mut line).is_ok() {
            assert!(
                line.contains("too many console clients (16 connected)"),
                "{line:?}"
            );
            refused += 1;
        }
    }
    assert_eq!(refused, 40 - 16, "16 served, the others refused");
    drop(crowd);

    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (fds_now, tasks_now, rss_now) = (count_entries(&fds), count_entries(&tasks), vm_rss_kib(pid));
        if fds_now <= fds_before + 2 && tasks_now <= tasks_before && rss_now <= rss_before + 16 * 1024 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "after 2040 connections: {fds_now} descriptors (were {fds_before}), {tasks_now} threads \
             (were {tasks_before}), VmRSS {rss_now} KiB (was {rss_before})"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = home.ok_within(&["stop", "quiet", "--timeout", "30"], Duration::from_secs(45));
    assert!(out.contains("the guest shut down"), "{out}");
}
