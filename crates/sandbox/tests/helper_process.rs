//! Helper processes: descriptors, session, log, stop on drop, survival of the calling thread,
//! and death with the parent on SIGKILL (a re-executed copy of this test binary is the parent).

use std::fs;
use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use virtkit_sandbox::{HelperCommand, HelperError, HelperLog};

fn pipe() -> (fs::File, OwnedFd) {
    let mut fds = [0; 2];
    // SAFETY: pipe2 writes two new descriptors into `fds`, which we then own.
    assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
    // SAFETY: both descriptors were just created and are owned by nothing else.
    unsafe { (fs::File::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) }
}

fn alive(pid: u32) -> bool {
    // A zombie still has /proc/PID: count it as gone (it no longer runs).
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat
            .rsplit(')')
            .next()
            .unwrap_or("")
            .trim_start()
            .starts_with('Z'),
        Err(_) => false,
    }
}

fn wait_gone(pid: u32, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if !alive(pid) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

#[test]
fn passes_only_the_given_descriptors_at_their_numbers() {
    let (mut read, write) = pipe();
    // A descriptor opened without close-on-exec, as a C library might: must not leak.
    // SAFETY: F_DUPFD copies stderr to a new descriptor (7 or above, without close-on-exec)
    // that this test owns and closes at the end.
    let leaky = unsafe { OwnedFd::from_raw_fd(libc::fcntl(2, libc::F_DUPFD, 7)) };
    assert!(leaky.as_raw_fd() >= 7);
    let helper = HelperCommand::new("sh")
        .args(["-c", "ls /proc/self/fd >&5"])
        .pass_fd(write, 5)
        .spawn()
        .unwrap();
    let mut listing = String::new();
    read.read_to_string(&mut listing).unwrap();
    drop(helper);
    let fds: Vec<i32> = listing.lines().map(|l| l.parse().unwrap()).collect();
    // 0-2, 5, and the directory `ls` itself opened to list them (the lowest free number, 3).
    assert_eq!(fds, vec![0, 1, 2, 3, 5], "{listing}");
    drop(leaky);
}

#[test]
fn moves_descriptors_that_collide_with_targets() {
    // Two pipes passed crosswise: 4 → the number of the other's source and vice versa would
    // clobber one without the copy-first step. Here: targets 3 and 4, whatever the sources.
    let (mut r1, w1) = pipe();
    let (mut r2, w2) = pipe();
    let helper = HelperCommand::new("sh")
        .args(["-c", "echo one >&3; echo two >&4"])
        .pass_fd(w1, 3)
        .pass_fd(w2, 4)
        .spawn()
        .unwrap();
    let (mut a, mut b) = (String::new(), String::new());
    r1.read_to_string(&mut a).unwrap();
    r2.read_to_string(&mut b).unwrap();
    drop(helper);
    assert_eq!((a.as_str(), b.as_str()), ("one\n", "two\n"));
}

#[test]
fn runs_in_its_own_session_and_logs_stderr_to_the_file() {
    let dir = std::env::temp_dir().join(format!("virtkit-helper-{}", std::process::id()));
    fs::create_dir_all(&dir).unwrap();
    let log = dir.join("helper.log");
    let mut helper = HelperCommand::new("sh")
        .args(["-c", "echo to-the-log >&2; exec sleep 30"])
        .log(HelperLog::File(log.clone()))
        .spawn()
        .unwrap();
    let pid = helper.id();
    let deadline = Instant::now() + Duration::from_secs(5);
    while !fs::read_to_string(&log)
        .unwrap_or_default()
        .contains("to-the-log")
    {
        assert!(Instant::now() < deadline, "nothing in {}", log.display());
        std::thread::sleep(Duration::from_millis(10));
    }
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let fields: Vec<&str> = stat.rsplit(')').next().unwrap().split_whitespace().collect();
    // Fields after the name: state, ppid, pgrp, session.
    assert_eq!(fields[1], std::process::id().to_string(), "parent");
    assert_eq!(fields[2], pid.to_string(), "process group");
    assert_eq!(fields[3], pid.to_string(), "session");
    assert!(helper.try_wait().unwrap().is_none());
    let started = Instant::now();
    drop(helper);
    assert!(
        !Path::new(&format!("/proc/{pid}")).exists(),
        "dropped helper not reaped"
    );
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "sleep dies on SIGTERM at once"
    );
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_helper_ignoring_sigterm_gets_sigkill() {
    let helper = HelperCommand::new("sh")
        .args(["-c", "trap '' TERM; while :; do sleep 0.05; done"])
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(100)); // let the trap be set
    let started = Instant::now();
    let status = helper.stop().unwrap();
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(status.signal(), Some(libc::SIGKILL), "{status:?}");
    assert!(started.elapsed() >= virtkit_sandbox::HelperProcess::GRACE);
}

#[test]
fn outlives_the_thread_that_asked_for_it() {
    // PR_SET_PDEATHSIG fires when the forking *thread* exits: the spawner thread forks, so a
    // helper started from a short-lived thread keeps running.
    let helper = std::thread::spawn(|| HelperCommand::new("sleep").arg("30").spawn().unwrap())
        .join()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        alive(helper.id()),
        "the helper died with the thread that started it"
    );
}

#[test]
fn missing_program_and_bad_descriptors_are_clear_errors() {
    let err = HelperCommand::new("virtkit-no-such-helper").spawn().unwrap_err();
    assert!(matches!(err, HelperError::NotFound { .. }), "{err}");
    assert_eq!(
        err.to_string(),
        "`virtkit-no-such-helper` is not installed or not on PATH"
    );
    let err = HelperCommand::new("/nonexistent/helper").spawn().unwrap_err();
    assert!(matches!(err, HelperError::NotFound { .. }), "{err}");

    let (_r, w) = pipe();
    let err = HelperCommand::new("true").pass_fd(w, 1).spawn().unwrap_err();
    assert!(matches!(err, HelperError::StandardStream { target: 1 }), "{err}");
    let (_r1, w1) = pipe();
    let (_r2, w2) = pipe();
    let err = HelperCommand::new("true")
        .pass_fd(w1, 3)
        .pass_fd(w2, 3)
        .spawn()
        .unwrap_err();
    assert!(matches!(err, HelperError::DuplicateTarget { target: 3 }), "{err}");

    let err = HelperCommand::new("true")
        .log(HelperLog::File("/nonexistent/dir/x.log".into()))
        .spawn()
        .unwrap_err();
    assert!(
        err.to_string().contains("check that its directory exists"),
        "{err}"
    );
}

const CHILD_ENV: &str = "VIRTKIT_HELPER_TEST_PARENT";

#[test]
fn dies_when_the_parent_is_killed() {
    if std::env::var_os(CHILD_ENV).is_some() {
        // The parent: start a helper, print its pid, and wait to be killed.
        let helper = HelperCommand::new("sleep").arg("60").spawn().unwrap();
        println!("helper-pid={}", helper.id());
        std::thread::sleep(Duration::from_secs(60));
        return;
    }
    let mut parent = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "dies_when_the_parent_is_killed",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, "1")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = parent.stdout.take().unwrap();
    let mut seen = String::new();
    let mut buf = [0u8; 256];
    let pid: u32 = loop {
        let n = out.read(&mut buf).unwrap();
        assert!(n > 0, "the parent exited without starting its helper: {seen}");
        seen.push_str(&String::from_utf8_lossy(&buf[..n]));
        if let Some(rest) = seen.split("helper-pid=").nth(1) {
            if let Some(line) = rest.split('\n').next().filter(|_| rest.contains('\n')) {
                break line.trim().parse().unwrap();
            }
        }
    };
    assert!(alive(pid));
    parent.kill().unwrap(); // SIGKILL: no destructor runs in the parent
    parent.wait().unwrap();
    assert!(
        wait_gone(pid, Duration::from_secs(2)),
        "helper {pid} outlived its killed parent"
    );
}
