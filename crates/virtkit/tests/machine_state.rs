//! Machine state files through the public API on the host's KVM, with the counting guest:
//! saved mid-count from a paused VM, restored into a new VM built from the same configuration,
//! which comes back paused and counts on from there after `resume`; and each refusal (a running
//! VM, another configuration, a damaged file, a device that cannot be saved yet) says what is
//! wrong and changes nothing.

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::{build, kvm_available, pvh, start};
use virtkit::{MachineStateError, StopReason, VirtualMachineConfiguration, VmState};
use virtkit_test_guests::Guest;

const WAIT: Duration = Duration::from_secs(20);

/// A fresh directory for this test's state files.
fn state_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("virtkit-machine-state-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The last complete `tick N` line's N.
fn last_tick(text: &str) -> u32 {
    text.split_inclusive('\n')
        .filter(|l| l.ends_with('\n'))
        .filter_map(|l| l.trim_end().strip_prefix("tick ")?.parse().ok())
        .next_back()
        .expect("a tick")
}

fn counter(cpus: u32) -> VirtualMachineConfiguration {
    pvh(Guest::Counter.path(), cpus)
}

/// Runs the counter, pauses and saves it at some count; returns the file and that count.
fn saved_counter(cpus: u32, dir: &std::path::Path) -> (PathBuf, u32) {
    let run = start(counter(cpus));
    run.console.wait_for("tick 4\n", WAIT);
    run.vm.pause().unwrap();
    let path = dir.join("state.vksave");
    let started = std::time::Instant::now();
    let summary = run.vm.save_machine_state(&path).unwrap();
    eprintln!("{cpus} vCPUs: saved in {:?}: {summary:?}", started.elapsed());
    assert!(summary.memory_pages_written > 0, "{summary:?}");
    assert_eq!(run.vm.state(), VmState::Paused, "a save leaves the VM paused");
    // A line may have been in the pipe when the vCPU parked.
    std::thread::sleep(Duration::from_millis(100));
    let count = last_tick(&run.console.text());
    run.vm.stop().unwrap();
    run.vm.wait_timeout(WAIT).unwrap();
    (path, count)
}

fn restore_continues_the_count(cpus: u32) {
    let dir = state_dir(&format!("counter-{cpus}"));
    let (path, count) = saved_counter(cpus, &dir);

    let mut run = build(counter(cpus));
    let changes = run.vm.state_changes();
    let started = std::time::Instant::now();
    run.vm.restore_machine_state(&path).unwrap();
    eprintln!("{cpus} vCPUs: built and restored in {:?}", started.elapsed());
    assert_eq!(run.vm.state(), VmState::Paused, "a restored VM comes back paused");
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(run.console.text(), "", "nothing runs before resume");
    run.vm.resume().unwrap();
    let text = run.console.wait_for(&format!("tick {}\n", count + 3), WAIT);
    assert!(!text.contains("tick 0\n"), "the count started over:\n{text}");
    let first = text
        .split_inclusive('\n')
        .find_map(|l| l.trim_end().strip_prefix("tick ")?.parse::<u32>().ok());
    assert!(first.is_some_and(|n| n <= count + 1), "from {count}:\n{text}");
    // Saved again from the restored VM, and that file restores too.
    run.vm.pause().unwrap();
    let again = dir.join("again.vksave");
    run.vm.save_machine_state(&again).unwrap();
    run.vm.stop().unwrap();
    assert_eq!(run.vm.wait_timeout(WAIT), Some(StopReason::StoppedByHost));
    let seen: Vec<VmState> = changes.try_iter().collect();
    assert_eq!(
        &seen[..3],
        [VmState::Starting, VmState::Paused, VmState::Running],
        "{seen:?}"
    );
    let mut third = build(counter(cpus));
    third.vm.restore_machine_state(&again).unwrap();
    third.vm.resume().unwrap();
    let later = last_tick(&run.console.text());
    third.console.wait_for(&format!("tick {}\n", later + 2), WAIT);
    third.vm.stop().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_counting_guest_saved_mid_count_continues_from_its_count_after_a_restore() {
    if kvm_available() {
        restore_continues_the_count(1);
    }
}

#[test]
fn a_two_vcpu_counting_guest_continues_after_a_restore() {
    if kvm_available() {
        restore_continues_the_count(2);
    }
}

#[test]
fn saving_a_vm_that_is_not_paused_is_refused() {
    if !kvm_available() {
        return;
    }
    let dir = state_dir("unpaused");
    let path = dir.join("state.vksave");
    let run = start(counter(1));
    run.console.wait_for("tick 1\n", WAIT);
    let e = run.vm.save_machine_state(&path).unwrap_err();
    assert!(
        matches!(
            e,
            MachineStateError::NotPaused {
                state: VmState::Running
            }
        ),
        "{e}"
    );
    assert_eq!(
        e.to_string(),
        "cannot save the state of a virtual machine that is running; pause it first"
    );
    assert!(!path.exists());
    assert!(
        std::fs::read_dir(&dir).unwrap().next().is_none(),
        "no temporary file left"
    );
    assert_eq!(run.vm.state(), VmState::Running);
    run.vm.stop().unwrap();
    run.vm.wait_timeout(WAIT).unwrap();
    let e = run.vm.save_machine_state(&path).unwrap_err();
    assert!(
        matches!(
            e,
            MachineStateError::NotPaused {
                state: VmState::Stopped
            }
        ),
        "{e}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn restoring_into_another_configuration_or_from_a_damaged_file_is_refused_and_changes_nothing() {
    if !kvm_available() {
        return;
    }
    let dir = state_dir("refusals");
    let (path, _) = saved_counter(1, &dir);

    // Another memory size and CPU count: both named.
    let mut other = build(VirtualMachineConfiguration::linux(
        2,
        128 << 20,
        Guest::Counter.path().to_owned(),
        None,
        "",
    ));
    let e = other.vm.restore_machine_state(&path).unwrap_err();
    let text = e.to_string();
    assert!(matches!(e, MachineStateError::State(_)), "{text}");
    assert!(text.contains("cpu_count: 1 in the file, 2 here"), "{text}");
    assert!(
        text.contains("memory_size: 67108864 in the file, 134217728 here"),
        "{text}"
    );
    assert_eq!(other.vm.state(), VmState::Stopped);
    assert_eq!(other.vm.stop_reason(), None);
    // Nothing was spent: it still boots as configured, from zero.
    other.vm.start().unwrap();
    other.console.wait_for("tick 0\n", WAIT);
    other.vm.stop().unwrap();

    // One flipped byte in the metadata.
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[4096 + 40] ^= 0x04;
    let damaged = dir.join("damaged.vksave");
    std::fs::write(&damaged, &bytes).unwrap();
    let mut fresh = build(counter(1));
    let e = fresh.vm.restore_machine_state(&damaged).unwrap_err();
    assert!(e.to_string().contains("is damaged"), "{e}");
    assert_eq!(fresh.vm.state(), VmState::Stopped);

    // A newer format version (this virtkit writes and reads up to 2).
    let mut newer = std::fs::read(&path).unwrap();
    newer[8] = 3;
    let newer_path = dir.join("newer.vksave");
    std::fs::write(&newer_path, &newer).unwrap();
    let e = fresh.vm.restore_machine_state(&newer_path).unwrap_err();
    assert!(
        e.to_string()
            .contains("has format version 3, newer than version 2"),
        "{e}"
    );

    // A file that is no state file.
    let e = fresh.vm.restore_machine_state(Guest::Counter.path()).unwrap_err();
    assert!(e.to_string().contains("not a virtkit state file"), "{e}");

    fresh.vm.start().unwrap();
    fresh.console.wait_for("tick 0\n", WAIT);
    fresh.vm.stop().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_vm_with_a_device_that_cannot_be_saved_yet_is_refused_before_trying() {
    if !kvm_available() {
        return;
    }
    let dir = state_dir("devices");
    let path = dir.join("state.vksave");
    let mut config = counter(1);
    config.directory_sharing_devices.push(
        serde_json::from_value(serde_json::json!({"tag": "t", "path": dir.to_str().unwrap()})).unwrap(),
    );
    // Said before trying, and refused before the file is even read (there is none) and before
    // anything is built.
    let mut vm = build(config);
    assert!(matches!(
        vm.vm.check_machine_state_support(),
        Err(MachineStateError::UnsaveableDevices { .. })
    ));
    assert!(build(counter(1)).vm.check_machine_state_support().is_ok());
    let e = vm.vm.restore_machine_state(&path).unwrap_err();
    assert_eq!(
        e.to_string(),
        "cannot save or restore the state of this virtual machine: directory_sharing_devices[0] \
         (virtiofsd's state is not saved) cannot be saved yet; remove them from the configuration \
         to use machine state files"
    );
    assert!(matches!(e, MachineStateError::UnsaveableDevices { .. }));
    assert!(!path.exists());
    assert_eq!(vm.vm.state(), VmState::Stopped);
    let _ = std::fs::remove_dir_all(&dir);
}

/// SeaBIOS, saved just after its banner (while it sets up PCI, reads fw_cfg and moves itself
/// into shadow RAM through PAM), goes on after a restore to its end without a second banner:
/// the PAM slots, fw_cfg's selection and the PCI bridges came back as saved.
#[test]
fn seabios_saved_after_its_banner_finishes_its_boot_after_a_restore() {
    if !virtkit_testkit::require_kvm_and_seabios() {
        return;
    }
    let dir = state_dir("seabios");
    let path = dir.join("state.vksave");
    let config =
        || VirtualMachineConfiguration::firmware(1, 64 << 20, PathBuf::from(virtkit_testkit::SEABIOS));
    let run = start(config());
    run.console.wait_for("SeaBIOS (version", WAIT);
    run.vm.pause().unwrap();
    run.vm.save_machine_state(&path).unwrap();
    let before = run.console.text();
    run.vm.stop().unwrap();
    run.vm.wait_timeout(WAIT).unwrap();

    let mut restored = build(config());
    restored.vm.restore_machine_state(&path).unwrap();
    restored.vm.resume().unwrap();
    assert_eq!(
        restored.vm.wait_timeout(Duration::from_secs(60)),
        Some(StopReason::GuestReset),
        "SeaBIOS resets once it finds nothing to boot; before the save:\n{before}\nafter:\n{}",
        restored.console.text()
    );
    let after = restored.console.text();
    eprintln!("SeaBIOS before the save:\n{before}\nafter the restore:\n{after}");
    assert!(!after.contains("SeaBIOS (version"), "it started over:\n{after}");
    if !before.contains("No bootable device") {
        assert!(
            after.contains("No bootable device"),
            "before the save:\n{before}\nafter:\n{after}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_save_that_cannot_write_says_where_and_leaves_the_vm_paused() {
    if !kvm_available() {
        return;
    }
    let dir = state_dir("unwritable");
    let run = start(counter(1));
    run.console.wait_for("tick 1\n", WAIT);
    run.vm.pause().unwrap();
    let missing = dir.join("no-such-directory").join("state.vksave");
    let e = run.vm.save_machine_state(&missing).unwrap_err().to_string();
    assert!(
        e.contains("cannot write the state file") && e.contains("no-such-directory"),
        "{e}"
    );
    assert_eq!(run.vm.state(), VmState::Paused);
    // The same VM saves fine elsewhere and leaves no temporary file behind.
    let path = dir.join("state.vksave");
    run.vm.save_machine_state(&path).unwrap();
    let names: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, ["state.vksave"]);
    run.vm.stop().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}
