//! The process that runs a VM keeps running whatever happens to its output: standard error that
//! is `/dev/full` or a closed pipe, a bundle on a full file system, a log that grows. It holds
//! nothing it inherited, and it starts only if the host can give the VM its memory. Each test
//! reproduces a way the VM process used to die or misbehave, with the `virtkit` binary and small
//! guests on this host's KVM.

mod support;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use virtkit_test_guests::{output, Guest};

use support::home::{text, wait_until, Home};
use support::VIRTKIT;

/// A private virtkit home whose commands do not inherit the test's
/// VIRTKIT_MEMORY_OVERCOMMIT (the admission test sets its own); `robust` keeps this file's
/// directories apart from other test files'.
fn home(tag: &str) -> Home {
    Home::new("robust", tag).without_env("VIRTKIT_MEMORY_OVERCOMMIT")
}

/// A home on a file system of its own, `size` big (as root: a tmpfs).
fn on_tmpfs(tag: &str, size: &str) -> Option<Home> {
    let mut home = home(tag);
    let status = Command::new("mount")
        .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
        .arg(&home.dir)
        .stderr(Stdio::null())
        .status();
    if !status.is_ok_and(|s| s.success()) {
        virtkit_testkit::skip("cannot mount a tmpfs for a full file system (needs root)");
        return None;
    }
    home.unmount_at_drop();
    Some(home)
}

/// What these tests ask of a home beyond the shared helper.
trait RobustHome {
    /// The guest's last tick number in `console.log`.
    fn last_tick(&self, name: &str) -> u32;
}

impl RobustHome for Home {
    fn last_tick(&self, name: &str) -> u32 {
        let log = std::fs::read_to_string(self.bundle(name).join("console.log")).unwrap_or_default();
        log.lines()
            .rev()
            .find_map(|l| l.trim().strip_prefix("tick ")?.parse().ok())
            .unwrap_or(0)
    }
}

fn alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| s.contains(") Z "))
}

#[test]
fn standard_error_that_is_full_or_a_closed_pipe_never_stops_the_vm() {
    if !virtkit_testkit::require_kvm() {
        return;
    }
    // Every log line fails to write: the guest still runs to its end.
    let out = Command::new(VIRTKIT)
        .args([
            "run",
            "--kernel",
            Guest::Hello.path().to_str().unwrap(),
            "--memory",
            "64M",
        ])
        .env("VIRTKIT_LOG", "debug")
        .stdin(Stdio::null())
        .stderr(std::fs::OpenOptions::new().write(true).open("/dev/full").unwrap())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains(output::HELLO));

    // `virtkit run ... 2>&1 | head -c100`: the reader goes away while the guest keeps printing.
    // The flood guest powers off on the power button, which it notices only while its vCPU runs:
    // a vCPU thread that died on the closed pipe (a panic, unwound in a debug build, aborting the
    // process in a release one) fails this either way.
    let (mut reader, writer) = std::io::pipe().unwrap();
    let mut child = Command::new(VIRTKIT)
        .args([
            "run",
            "--kernel",
            Guest::Flood.path().to_str().unwrap(),
            "--memory",
            "64M",
        ])
        .env("VIRTKIT_LOG", "info")
        .stdin(Stdio::null())
        .stdout(writer.try_clone().unwrap())
        .stderr(writer)
        .spawn()
        .unwrap();
    let mut first = [0u8; 100];
    reader.read_exact(&mut first).unwrap();
    drop(reader);
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        child.try_wait().unwrap().is_none(),
        "the VM process ended when its output pipe closed: {:?}",
        child.wait()
    );
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the guest did not power off on the power button: its vCPU no longer runs");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(status.code(), Some(0), "the guest powered off: {status:?}");
}

#[test]
fn a_detached_vm_keeps_running_while_its_bundles_file_system_is_full() {
    if !virtkit_testkit::require_kvm() {
        return;
    }
    let Some(home) = on_tmpfs("full", "16m") else {
        return;
    };
    home.create_counter("full", &[]);
    let mut run = home.cmd(&["run", "full", "--detach"]);
    run.env("VIRTKIT_LOG", "debug");
    let out = run.output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let pid = home.pid("full");
    wait_until("ticks", Duration::from_secs(10), || home.last_tick("full") > 5);

    // Fill the file system to the last byte.
    let filler = home.dir.join("filler");
    let mut f = std::fs::File::create(&filler).unwrap();
    let block = vec![0xa5u8; 1 << 16];
    while std::io::Write::write_all(&mut f, &block).is_ok() {}
    while std::io::Write::write_all(&mut f, &block[..1]).is_ok() {}
    drop(f);

    // Commands that make the VM process log (every control request is logged) while nothing it
    // writes can land; the guest ticks on into the void.
    for _ in 0..5 {
        home.ok(&["list"]);
        assert_eq!(home.state("full"), "running");
        home.ok(&["pause", "full"]);
        home.ok(&["resume", "full"]);
    }
    std::thread::sleep(Duration::from_secs(1));
    assert!(alive(pid), "the VM process died on a full file system");

    // Space comes back: so does the console log.
    let before = home.last_tick("full");
    std::fs::remove_file(&filler).unwrap();
    wait_until("new ticks in console.log", Duration::from_secs(10), || {
        home.last_tick("full") > before
    });
    home.ok(&["stop", "full", "--timeout", "1"]);
    wait_until("the VM process to end", Duration::from_secs(10), || !alive(pid));
    for file in ["pid", "control.sock", "console.sock"] {
        assert!(!home.bundle("full").join(file).exists(), "{file} left behind");
    }
}

#[test]
fn the_detached_vm_process_holds_no_descriptor_it_inherited() {
    if !virtkit_testkit::require_kvm() {
        return;
    }
    let home = home("fds");
    home.create_counter("fds", &[]);
    let marker = home.dir.join("inherited-marker");
    // A descriptor without close-on-exec, as a shell's redirection leaves one.
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!("exec \"$0\" run fds --detach 7>>{}", marker.display()))
        .arg(VIRTKIT)
        .env("VIRTKIT_HOME", home.dir.join("home"))
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let pid = home.pid("fds");
    let held: Vec<PathBuf> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .collect();
    assert!(
        !held.contains(&marker),
        "the VM process holds {}: {held:?}",
        marker.display()
    );
    home.ok(&["stop", "fds", "--timeout", "1"]);
}

#[test]
fn vmm_log_is_rotated_by_size_and_logs_shows_both_parts() {
    if !virtkit_testkit::require_kvm() {
        return;
    }
    let home = home("rotate");
    home.create_counter("rot", &[]);
    let mut run = home.cmd(&["run", "rot", "--detach"]);
    run.env("VIRTKIT_LOG", "info").env("VIRTKIT_VMM_LOG_MAX", "16384");
    assert_eq!(run.status().unwrap().code(), Some(0));
    // Every state change is logged: 300 pauses and resumes are ~60 KiB of log.
    let socket = home.bundle("rot").join("control.sock");
    let mut stream = std::os::unix::net::UnixStream::connect(&socket).unwrap();
    let mut reader = std::io::BufReader::new(stream.try_clone().unwrap());
    for i in 0..600 {
        use std::io::{BufRead, Write};
        let command = if i % 2 == 0 { "pause" } else { "resume" };
        stream
            .write_all(format!("{{\"command\":\"{command}\"}}\n").as_bytes())
            .unwrap();
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        assert!(line.contains("\"ok\":true"), "{line}");
    }
    let size = |f: &str| std::fs::metadata(home.bundle("rot").join(f)).map(|m| m.len());
    wait_until("vmm.log.1", Duration::from_secs(5), || {
        size("vmm.log.1").is_ok() && size("vmm.log").is_ok()
    });
    assert!(
        size("vmm.log").unwrap() <= 16384,
        "vmm.log: {:?}",
        size("vmm.log")
    );
    assert!(
        size("vmm.log.1").unwrap() <= 16384,
        "vmm.log.1: {:?}",
        size("vmm.log.1")
    );
    home.ok(&["stop", "rot", "--timeout", "1"]);
    let logs = home.ok(&["logs", "rot", "--vmm"]);
    assert!(logs.contains("to=paused"), "{logs}");
    assert!(logs.contains("stopped"), "the newest part comes last: {logs}");
}

#[test]
fn a_vm_the_host_cannot_give_its_memory_is_refused_with_the_figures_unless_forced() {
    if !virtkit_testkit::require_kvm() {
        return;
    }
    let home = home("admit");
    home.create_counter("a", &[]);
    home.create_counter("b", &[]);
    // Allow 120 MiB of guest memory on this host, whatever its size: one 64 MiB VM fits, two
    // do not.
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap();
    let total_kib: f64 = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .unwrap()
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .unwrap();
    let ratio = format!("{:.9}", (120.0 * 1024.0) / total_kib);
    let vk = |args: &[&str]| {
        let out = home
            .cmd(args)
            .env("VIRTKIT_MEMORY_OVERCOMMIT", &ratio)
            .output()
            .unwrap();
        eprintln!(
            "$ virtkit {} → {:?}\n{}",
            args.join(" "),
            out.status.code(),
            text(&out)
        );
        out
    };
    assert_eq!(vk(&["run", "a", "--detach"]).status.code(), Some(0));
    let refused = vk(&["run", "b", "--detach"]);
    assert_eq!(refused.status.code(), Some(1));
    let msg = text(&refused);
    assert!(msg.contains("would commit 128 MiB of guest memory"), "{msg}");
    assert!(
        msg.contains("running VMs have 64 MiB") && msg.contains("--force"),
        "{msg}"
    );
    assert!(
        !home.bundle("b").join("pid").exists(),
        "a refused VM left a pid file"
    );
    // The same for a VM run from flags.
    let flags = vk(&[
        "run",
        "--kernel",
        Guest::Hello.path().to_str().unwrap(),
        "--memory",
        "64M",
    ]);
    assert_eq!(flags.status.code(), Some(1), "{}", text(&flags));
    assert!(text(&flags).contains("would commit 128 MiB"), "{}", text(&flags));
    // Told to, it starts; `doctor` shows what the two commit.
    assert_eq!(vk(&["run", "b", "--detach", "--force"]).status.code(), Some(0));
    let doctor = text(&vk(&["doctor"]));
    assert!(
        doctor.contains("guest memory committed:  128 MiB by 2 running VMs"),
        "{doctor}"
    );
    home.ok(&["stop", "a", "--timeout", "1"]);
    home.ok(&["stop", "b", "--timeout", "1"]);
}

#[test]
fn a_terminal_or_pipe_that_stops_reading_never_stalls_the_guest() {
    if !virtkit_testkit::require_kvm() {
        return;
    }
    // `virtkit run ... | less` left waiting: standard output is a pipe nobody reads. The flood
    // guest fills it within a second and keeps printing; it powers off on the power button,
    // which it can only notice while its vCPU runs.
    let (reader, writer) = std::io::pipe().unwrap();
    let mut child = Command::new(VIRTKIT)
        .args([
            "run",
            "--kernel",
            Guest::Flood.path().to_str().unwrap(),
            "--memory",
            "64M",
        ])
        .stdin(Stdio::null())
        .stdout(writer)
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(3));
    assert!(child.try_wait().unwrap().is_none(), "the VM ended early");
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the guest did not see the power button: its vCPU is stuck writing output");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(status.code(), Some(0), "the guest powered off: {status:?}");
    drop(reader);
}
