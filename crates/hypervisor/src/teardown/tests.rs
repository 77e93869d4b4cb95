use std::time::{Duration, Instant};

use super::*;
use crate::Kvm;

/// Polls `done` for up to 10 s.
fn eventually(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !done() {
        assert!(Instant::now() < deadline, "{what}: not within 10 s");
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn status_field(pid: libc::pid_t, field: &str) -> Option<String> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .map(|v| v.trim().to_string())
}

/// What the keeper's descriptors are: `anon_inode:kvm-vm`, `pipe:[…]`…
fn descriptors(pid: libc::pid_t) -> Vec<String> {
    let mut all: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| {
            d.filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
                .map(|p| p.to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    all.sort();
    all
}

fn keeper_pid(vm: &crate::Vm) -> libc::pid_t {
    vm.teardown_keeper_pid()
        .expect("the VM has no teardown keeper (clone failed?)")
}

#[test]
fn the_keeper_holds_only_the_vm_and_its_pipe_under_its_own_filter() {
    if !virtkit_testkit::require_kvm() {
        return;
    }
    let kvm = Kvm::open().unwrap();
    let vm = kvm.create_vm().unwrap();
    vm.start_teardown_keeper();
    let pid = keeper_pid(&vm);
    // It confines itself right after the clone: wait for that (Seccomp 2: a filter), then look.
    eventually("the keeper installs its filter", || {
        status_field(pid, "Seccomp").as_deref() == Some("2")
    });
    assert_eq!(status_field(pid, "NoNewPrivs").as_deref(), Some("1"));
    assert_eq!(status_field(pid, "Name").as_deref(), Some("vk-vm-teardown"));
    // Its own process, sharing our memory, not one of our threads.
    assert_ne!(
        status_field(pid, "Tgid"),
        status_field(std::process::id() as i32, "Tgid")
    );
    assert_eq!(
        status_field(pid, "PPid").as_deref(),
        Some(std::process::id().to_string().as_str())
    );
    let fds = descriptors(pid);
    assert_eq!(fds.len(), 2, "{fds:?}");
    assert_eq!(fds[0], "anon_inode:kvm-vm", "{fds:?}");
    assert!(fds[1].starts_with("pipe:["), "{fds:?}");
    // Every signal blocked but SIGKILL (bit 8) and SIGSTOP (bit 18), which cannot be.
    assert_eq!(status_field(pid, "SigBlk").as_deref(), Some("fffffffffffbfeff"));
    drop(vm);
}

#[test]
fn dropping_the_vm_lets_the_keeper_exit_and_it_is_reaped() {
    if !virtkit_testkit::require_kvm() {
        return;
    }
    let kvm = Kvm::open().unwrap();
    let vm = kvm.create_vm().unwrap();
    vm.start_teardown_keeper();
    let pid = keeper_pid(&vm);
    assert!(std::path::Path::new(&format!("/proc/{pid}")).exists());
    drop(vm);
    // Reaped when the next VM is created, or here: then its pid is gone and its memory freed.
    eventually("the keeper exits and is reaped", || {
        reap_exited();
        !std::path::Path::new(&format!("/proc/{pid}")).exists()
    });
    assert!(
        !lock_exiting().iter().any(|(p, _)| *p == pid),
        "a reaped keeper's memory is still listed"
    );
}

/// The child of `the_keeper_goes_when_the_vmm_is_killed`: creates a VM, says its keeper's pid
/// and waits to be killed.
#[test]
fn keeper_child_process() {
    if std::env::var_os("VIRTKIT_TEARDOWN_CHILD").is_none() {
        return;
    }
    let kvm = Kvm::open().unwrap();
    let vm = kvm.create_vm().unwrap();
    vm.start_teardown_keeper();
    use std::io::Write;
    let _ = writeln!(std::io::stdout().lock(), "keeper={}", keeper_pid(&vm));
    let _ = std::io::stdout().flush();
    std::thread::sleep(Duration::from_secs(60));
}

#[test]
fn the_keeper_goes_when_the_vmm_is_killed() {
    if !virtkit_testkit::require_kvm() {
        return;
    }
    use std::io::BufRead;
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "teardown::tests::keeper_child_process",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("VIRTKIT_TEARDOWN_CHILD", "1")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let pid: libc::pid_t = lines
        .by_ref()
        .map_while(Result::ok)
        // libtest's "test … ... " comes first on the same line.
        .find_map(|l| l.split_once("keeper=").map(|(_, p)| p.trim().parse().unwrap()))
        .expect("the child never said its keeper's pid");
    assert!(std::path::Path::new(&format!("/proc/{pid}")).exists());
    child.kill().unwrap();
    child.wait().unwrap();
    // The pipe's write end died with the VMM: the keeper exits, and init (or the nearest
    // subreaper) reaps it.
    eventually("the keeper of a killed VMM exits", || {
        !std::path::Path::new(&format!("/proc/{pid}")).exists()
            || status_field(pid, "State").is_some_and(|s| s.starts_with('Z'))
    });
}

/// Runs `body` in a forked child under the keeper's filter, then exits it with the `exit`
/// system call; returns the child's wait status.
fn under_the_keeper_filter(body: fn()) -> libc::c_int {
    // SAFETY: the child makes raw system calls only (it is a fork of a threaded process), on a
    // program header on its stack pointing to the static filter; the parent only waits.
    unsafe {
        let pid = libc::fork();
        assert!(pid >= 0, "fork: {}", std::io::Error::last_os_error());
        if pid == 0 {
            if !install_keeper_filter() {
                raw_syscall(libc::SYS_exit, [3, 0, 0, 0, 0]);
            }
            body();
            raw_syscall(libc::SYS_exit, [0, 0, 0, 0, 0]);
        }
        let mut status = 0;
        libc::waitpid(pid, &mut status, 0);
        status
    }
}

#[test]
fn the_keeper_filter_allows_read_close_and_exit_and_kills_anything_else() {
    let allowed = under_the_keeper_filter(|| {
        // SAFETY: reads and closes of descriptors that are not open: EBADF, nothing else.
        unsafe {
            let mut byte = 0u8;
            raw_syscall(libc::SYS_read, [9999, &mut byte as *mut u8 as u64, 1, 0, 0]);
            raw_syscall(libc::SYS_close, [9999, 0, 0, 0, 0]);
        }
    });
    assert!(
        libc::WIFEXITED(allowed) && libc::WEXITSTATUS(allowed) == 0,
        "status {allowed:#x}"
    );
    for (name, body) in [
        (
            "getpid",
            (|| {
                // SAFETY: getpid has no arguments.
                unsafe { raw_syscall(libc::SYS_getpid, [0; 5]) };
            }) as fn(),
        ),
        ("exit_group", || {
            // SAFETY: exit_group ends the child (if it is allowed, which it must not be).
            unsafe { raw_syscall(libc::SYS_exit_group, [0; 5]) };
        }),
        ("write", || {
            // SAFETY: a write of nothing to standard error.
            unsafe { raw_syscall(libc::SYS_write, [2, 0, 0, 0, 0]) };
        }),
    ] {
        let status = under_the_keeper_filter(body);
        assert!(
            libc::WIFSIGNALED(status) && libc::WTERMSIG(status) == libc::SIGSYS,
            "{name}: status {status:#x}"
        );
    }
}
