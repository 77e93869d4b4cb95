//! The vCPU threads a machine makes while it is built: `start` hands them their vCPUs (the
//! threads that run the guest are the ones made at build time), and a machine that never starts,
//! or whose build fails, leaves none of them behind. The VM's teardown keeper comes with
//! `start`, not before.
//!
//! One test in its own process: it counts this process's threads and child processes.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use virtkit_hypervisor::Kvm;
use virtkit_machine::{BootSource, ExitReason, Machine, MachineConfig};
use virtkit_test_guests::Guest;

/// This process's threads named `vcpu-N`: (name, thread id), sorted.
fn vcpu_threads() -> Vec<(String, u32)> {
    let mut found: Vec<(String, u32)> = std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|e| {
            let e = e.ok()?;
            let tid: u32 = e.file_name().to_str()?.parse().ok()?;
            let comm = std::fs::read_to_string(e.path().join("comm")).ok()?;
            let comm = comm.trim_end().to_owned();
            comm.starts_with("vcpu-").then_some((comm, tid))
        })
        .collect();
    found.sort();
    found
}

/// Waits up to 10 s for the threads named `vcpu-N` to be exactly `expected` (by name).
fn wait_for_vcpu_threads(expected: &[&str]) -> Vec<(String, u32)> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let now = vcpu_threads();
        let names: Vec<&str> = now.iter().map(|(n, _)| n.as_str()).collect();
        if names == expected || Instant::now() > deadline {
            return now;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// This process's teardown keepers that have not exited (`vk-vm-teardown`, our children).
fn live_teardown_keepers() -> usize {
    let me = std::process::id().to_string();
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| std::fs::read_to_string(e.ok()?.path().join("status")).ok())
        .filter(|status| {
            let field = |name: &str| {
                status
                    .lines()
                    .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
                    .map(str::trim)
            };
            field("Name") == Some("vk-vm-teardown")
                && field("PPid") == Some(me.as_str())
                && !field("State").is_some_and(|s| s.starts_with('Z'))
        })
        .count()
}

fn config(vcpus: u8, kernel: PathBuf) -> MachineConfig {
    MachineConfig {
        vcpus,
        memory_size: 64 << 20,
        boot: BootSource::Linux {
            kernel,
            initrd: None,
            command_line: String::new(),
        },
        serial_output: Box::new(std::io::sink()),
        serial_input: None,
        smbios_identity: None,
        shared_memory: false,
        ps2_input: false,
    }
}

#[test]
fn vcpu_threads_made_at_build_run_the_guest_and_never_outlive_an_unstarted_machine_and_start_makes_the_keeper(
) {
    if !virtkit_testkit::require_kvm() {
        return;
    }
    let kvm = Kvm::open().unwrap();
    assert_eq!(vcpu_threads(), vec![], "no vCPU thread before any machine");

    // Built, never started, dropped: its three waiting threads are gone when drop returns.
    let machine = Machine::new(&kvm, config(3, Guest::Counter.path().to_owned())).unwrap();
    let waiting = wait_for_vcpu_threads(&["vcpu-0", "vcpu-1", "vcpu-2"]);
    assert_eq!(
        waiting.len(),
        3,
        "a built machine has its vCPU threads waiting: {waiting:?}"
    );
    // Each under its filter already (the process's policy is the default, kill): `Seccomp: 2`.
    let deadline = Instant::now() + Duration::from_secs(10);
    for (name, tid) in &waiting {
        let seccomp = || {
            let status = std::fs::read_to_string(format!("/proc/self/task/{tid}/status")).unwrap_or_default();
            status
                .lines()
                .find_map(|l| l.strip_prefix("Seccomp:"))
                .map(|v| v.trim().to_owned())
        };
        while seccomp().as_deref() != Some("2") {
            assert!(
                Instant::now() < deadline,
                "{name} has no seccomp filter: {:?}",
                seccomp()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    drop(machine);
    assert_eq!(
        vcpu_threads(),
        vec![],
        "dropping an unstarted machine ends its vCPU threads"
    );

    // A build that fails after the threads were made (no such kernel) leaves none.
    let missing = std::env::temp_dir().join("virtkit-no-such-kernel.elf");
    assert!(Machine::new(&kvm, config(2, missing)).is_err());
    let left = wait_for_vcpu_threads(&[]);
    assert_eq!(left, vec![], "a failed build leaves no vCPU thread");

    // Started: the guest runs on the very threads made at build time.
    let mut machine = Machine::new(&kvm, config(2, Guest::Counter.path().to_owned())).unwrap();
    let before = wait_for_vcpu_threads(&["vcpu-0", "vcpu-1"]);
    assert_eq!(live_teardown_keepers(), 0, "no teardown keeper before start");
    machine.start().unwrap();
    // It names itself right after the clone.
    let deadline = Instant::now() + Duration::from_secs(10);
    while live_teardown_keepers() != 1 {
        assert!(Instant::now() < deadline, "start made no teardown keeper in 10 s");
        std::thread::sleep(Duration::from_millis(5));
    }
    let handle = machine.handle();
    let deadline = Instant::now() + Duration::from_secs(10);
    while handle.exit_stats().vcpus.iter().map(|v| v.total()).sum::<u64>() == 0 {
        assert!(Instant::now() < deadline, "the guest took no exit in 10 s");
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(
        vcpu_threads(),
        before,
        "start handed the vCPUs to the threads made at build time (same thread ids)"
    );
    handle.stop();
    assert_eq!(machine.wait(), ExitReason::Stopped);
    drop(machine);
    assert_eq!(vcpu_threads(), vec![]);
}
