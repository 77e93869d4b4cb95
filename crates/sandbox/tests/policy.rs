//! A filtered thread that makes a syscall outside its role's list: under `Kill` the process dies
//! by SIGSYS, under `Log` the call returns normally (and the kernel logs it), under `Off` no
//! filter is installed at all. Each case runs in a child process: this test binary run again
//! with `CHILD_ENV` naming the case, running only `child`.

use std::os::unix::process::ExitStatusExt;
use std::process::{Command, Output};
use std::sync::mpsc::channel;

mod common;
use common::seccomp_mode;
use virtkit_sandbox::{set_policy, spawn, DeviceKind, SeccompAction, ThreadRole};

const CHILD_ENV: &str = "VIRTKIT_SANDBOX_TEST_CHILD";

/// What a case does in its filtered thread.
#[derive(Clone, Copy)]
enum Forbidden {
    /// `socket(AF_INET, SOCK_STREAM)`: not in any list.
    Socket,
    /// `ioctl(fd, KVM_CREATE_VM)` from a vCPU: ioctl is listed, but not with that number.
    KvmCreateVm,
    /// `madvise(MADV_WILLNEED)` from the balloon worker: listed only for MADV_DONTNEED.
    MadviseWillNeed,
}

fn forbidden_call(what: Forbidden) -> i64 {
    match what {
        // SAFETY: socket takes no pointers; the descriptor, if any, is closed at once.
        Forbidden::Socket => unsafe {
            let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0);
            if fd >= 0 {
                libc::close(fd);
            }
            fd as i64
        },
        // SAFETY: an ioctl on standard input with no argument pointer; it fails with ENOTTY.
        Forbidden::KvmCreateVm => unsafe { libc::ioctl(0, 0xae01, 0) as i64 },
        Forbidden::MadviseWillNeed => {
            let page = vec![0u8; 8192];
            let aligned = (page.as_ptr() as usize + 4095) & !4095;
            // SAFETY: a hint on one page inside a buffer we own; WILLNEED changes no contents.
            unsafe { libc::madvise(aligned as *mut libc::c_void, 4096, libc::MADV_WILLNEED) as i64 }
        }
    }
}

/// Runs in the child: starts a filtered thread by `how`, reports its seccomp mode, makes the
/// forbidden call and reports that it returned.
fn run_case(action: SeccompAction, role: ThreadRole, what: Forbidden, via_apply: bool) {
    set_policy(action);
    let (tid_tx, tid_rx) = channel();
    let (go_tx, go_rx) = channel::<()>();
    let body = move || {
        // SAFETY: gettid has no preconditions.
        tid_tx.send(unsafe { libc::gettid() }).unwrap();
        go_rx.recv().unwrap();
        forbidden_call(what)
    };
    let thread = if via_apply {
        std::thread::spawn(move || {
            virtkit_sandbox::apply(role).unwrap();
            body()
        })
    } else {
        spawn("sandboxed", role, body).unwrap()
    };
    let tid = tid_rx.recv().unwrap();
    println!("RESULT seccomp={}", seccomp_mode(tid));
    go_tx.send(()).unwrap();
    let result = thread.join().unwrap();
    println!("RESULT returned={result}");
}

#[test]
fn child() {
    let Ok(case) = std::env::var(CHILD_ENV) else {
        return;
    };
    let (action, rest) = case.split_once(':').unwrap();
    let action: SeccompAction = action.parse().unwrap();
    let (role, what, via_apply) = match rest {
        "socket" => (ThreadRole::ConsoleInput, Forbidden::Socket, false),
        "socket-apply" => (ThreadRole::ControlSocket, Forbidden::Socket, true),
        "vcpu-ioctl" => (ThreadRole::Vcpu, Forbidden::KvmCreateVm, false),
        "balloon-madvise" => (
            ThreadRole::DeviceWorker(DeviceKind::Balloon),
            Forbidden::MadviseWillNeed,
            false,
        ),
        other => panic!("unknown case {other}"),
    };
    run_case(action, role, what, via_apply);
}

fn run_child(case: &str) -> Output {
    Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "child", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, case)
        .env_remove("VIRTKIT_SECCOMP")
        .output()
        .unwrap()
}

fn results(out: &Output) -> Vec<String> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_once("RESULT ").map(|(_, r)| r.to_owned()))
        .collect()
}

fn assert_killed_by_sigsys(case: &str) {
    let out = run_child(case);
    assert_eq!(
        out.status.signal(),
        Some(libc::SIGSYS),
        "{case}: {:?}\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // The filter was in place, and the call never returned.
    assert_eq!(results(&out), ["seccomp=2"], "{case}");
}

#[test]
fn kill_policy_kills_the_process_with_sigsys_on_an_unlisted_syscall() {
    assert_killed_by_sigsys("kill:socket");
    assert_killed_by_sigsys("kill:socket-apply");
}

#[test]
fn kill_policy_checks_arguments_too() {
    assert_killed_by_sigsys("kill:vcpu-ioctl");
    assert_killed_by_sigsys("kill:balloon-madvise");
}

#[test]
fn log_policy_lets_the_call_through_under_a_filter() {
    let out = run_child("log:socket");
    assert!(
        out.status.success(),
        "{:?}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let results = results(&out);
    assert_eq!(results[0], "seccomp=2", "a filter is installed");
    let fd: i64 = results[1].strip_prefix("returned=").unwrap().parse().unwrap();
    assert!(fd >= 0, "socket() returned {fd}");
}

#[test]
fn off_policy_installs_no_filter() {
    let out = run_child("off:socket");
    assert!(
        out.status.success(),
        "{:?}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let results = results(&out);
    assert_eq!(results[0], "seccomp=0");
    let fd: i64 = results[1].strip_prefix("returned=").unwrap().parse().unwrap();
    assert!(fd >= 0);
}

#[test]
fn policy_names_parse_and_print() {
    for (text, action) in [
        ("kill", SeccompAction::Kill),
        ("log", SeccompAction::Log),
        ("off", SeccompAction::Off),
    ] {
        assert_eq!(text.parse::<SeccompAction>().unwrap(), action);
        assert_eq!(action.to_string(), text);
    }
    assert!("allow"
        .parse::<SeccompAction>()
        .unwrap_err()
        .contains("kill, log or off"));
    assert_eq!(SeccompAction::default(), SeccompAction::Kill);
}
