//! How `spawn` creates filtered threads: from the unfiltered main thread directly (none waited
//! for, each filtered before its body), and from a filtered thread through
//! the spawner, which the main thread's first `spawn` started. Each case runs in a child
//! process (this test binary again with `CHILD_ENV`): a mistake here kills it with SIGSYS.

use std::os::unix::process::ExitStatusExt;
use std::process::Command;
use std::sync::mpsc::{channel, Sender};

mod common;
use common::seccomp_mode;
use virtkit_sandbox::{set_policy, spawn, DeviceKind, SeccompAction, ThreadRole};

const CHILD_ENV: &str = "VIRTKIT_SANDBOX_SPAWN_CHILD";

fn tid() -> i32 {
    // SAFETY: gettid has no preconditions.
    unsafe { libc::gettid() }
}

/// A body that says its thread ID, then waits until told to end.
fn report(tx: Sender<i32>, done: std::sync::mpsc::Receiver<()>) -> impl FnOnce() + Send + 'static {
    move || {
        tx.send(tid()).unwrap();
        let _ = done.recv();
    }
}

#[test]
fn child() {
    if std::env::var_os(CHILD_ENV).is_none() {
        return;
    }
    set_policy(SeccompAction::Kill);
    // Three threads from the main thread, none waited for: each body runs only once its
    // filter is in place.
    let mut ends = Vec::new();
    for (i, role) in [
        ThreadRole::ConsoleInput,
        ThreadRole::SerialOutput,
        ThreadRole::DeviceWorker(DeviceKind::Other),
    ]
    .into_iter()
    .enumerate()
    {
        let (tx, rx) = channel();
        let (done_tx, done_rx) = channel();
        let handle = spawn(format!("direct-{i}"), role, report(tx, done_rx)).unwrap();
        let t = rx.recv().unwrap();
        println!("RESULT direct-{i} seccomp={}", seccomp_mode(t));
        ends.push((done_tx, handle));
    }
    // A filtered thread starts one of its own: through the spawner (no role may `clone`), which
    // must already be running, started by the main thread, or this process dies by SIGSYS.
    let (tx, rx) = channel();
    let (done_tx, done_rx) = channel::<()>();
    let parent = spawn(
        "filtered-parent".to_string(),
        ThreadRole::DeviceWorker(DeviceKind::Other),
        move || {
            let inner = spawn("filtered-child", ThreadRole::SerialInput, report(tx, done_rx)).unwrap();
            inner.join().unwrap();
        },
    )
    .unwrap();
    let t = rx.recv().unwrap();
    println!("RESULT grandchild seccomp={}", seccomp_mode(t));
    done_tx.send(()).unwrap();
    parent.join().unwrap();
    for (done, handle) in ends {
        done.send(()).unwrap();
        handle.join().unwrap();
    }
    println!("RESULT done");
}

#[test]
fn threads_from_the_main_thread_and_from_filtered_threads_run_filtered() {
    let out = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "child", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, "1")
        .env_remove("VIRTKIT_SECCOMP")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{:?} (signal {:?})\n{stdout}\n{}",
        out.status,
        out.status.signal(),
        String::from_utf8_lossy(&out.stderr)
    );
    let results: Vec<&str> = stdout
        .lines()
        .filter_map(|l| l.split_once("RESULT ").map(|(_, r)| r))
        .collect();
    assert_eq!(
        results,
        [
            "direct-0 seccomp=2",
            "direct-1 seccomp=2",
            "direct-2 seccomp=2",
            "grandchild seccomp=2",
            "done"
        ],
        "{stdout}"
    );
}
