//! Saving a paused machine and restoring it into a new one on the host's real KVM, with the
//! counting guest: the count goes on from where it was, every vCPU's state (the APs' waiting
//! for SIPI included) comes back as saved, and the refusals change nothing.

use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use virtkit_hypervisor::Kvm;
use virtkit_machine::snapshot::{open_state_file, FormatError};
use virtkit_machine::{BootSource, CaptureError, Machine, MachineConfig, PauseOutcome, SnapshotError};
use virtkit_test_guests::Guest;
use vm_memory::{Bytes, GuestAddress};

const WAIT: Duration = Duration::from_secs(20);
const MARKER: u64 = 0x5a5a_0123_4567_89ab;
const MARKER_AT: u64 = 0x200_0000;
const ZERO_AT: u64 = 0x300_0000;

#[derive(Clone, Default)]
struct Output(Arc<Mutex<Vec<u8>>>);

impl Output {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }

    fn wait_for(&self, needle: &str) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            let text = self.text();
            if text.contains(needle) {
                return text;
            }
            assert!(Instant::now() < deadline, "no {needle:?} in:\n{text}");
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Write for Output {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn counter(kvm: &Kvm, vcpus: u8, output: &Output) -> Machine {
    counter_with(kvm, vcpus, output, false)
}

/// `shared_memory`: guest memory in one memfd, as for a vhost-user backend.
fn counter_with(kvm: &Kvm, vcpus: u8, output: &Output, shared_memory: bool) -> Machine {
    Machine::new(
        kvm,
        MachineConfig {
            vcpus,
            memory_size: 64 << 20,
            boot: BootSource::Linux {
                kernel: Guest::Counter.path().to_owned(),
                initrd: None,
                command_line: String::new(),
            },
            serial_output: Box::new(output.clone()),
            serial_input: None,
            smbios_identity: None,
            shared_memory,
            ps2_input: false,
        },
    )
    .unwrap()
}

fn configuration(vcpus: u8) -> serde_json::Value {
    serde_json::json!({ "cpu_count": vcpus, "memory_size": 64 << 20, "guest": "counter" })
}

/// A fresh path in a directory of its own for this test.
fn state_path(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("virtkit-save-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join("state.vksave")
}

/// The last complete `tick N` line's N.
fn last_tick(text: &str) -> u32 {
    text.lines()
        .filter(|l| text.contains(&format!("{l}\n")))
        .filter_map(|l| l.strip_prefix("tick ")?.parse().ok())
        .next_back()
        .expect("a tick")
}

/// Runs the counter on `vcpus` vCPUs, saves it mid-count, restores it into a new machine and
/// checks that the count continues and that every vCPU's state is what was saved.
fn save_and_restore(vcpus: u8, shared_memory: bool) {
    let kvm = Kvm::open().unwrap();
    let path = state_path(&format!("counter-{vcpus}-{shared_memory}"));
    let first_output = Output::default();
    let mut first = counter_with(&kvm, vcpus, &first_output, shared_memory);
    first.start().unwrap();
    first_output.wait_for("tick 5\n");
    let handle = first.handle();
    assert_eq!(handle.pause(WAIT), PauseOutcome::Paused);
    // Guest memory the counter never touches: a marker that must come back.
    first.memory().write_obj(MARKER, GuestAddress(MARKER_AT)).unwrap();
    let summary = handle
        .save_state(&path, &configuration(vcpus), &serde_json::Value::Null)
        .unwrap();
    eprintln!("{vcpus} vCPUs: {summary:?}");
    assert!(summary.memory_pages_written > 0);
    assert!(
        summary.memory_pages_written < (64 << 20) / 4096 / 4,
        "untouched pages are not written: {summary:?}"
    );
    let saved_at = last_tick(&first_output.text());
    handle.stop();
    first.wait();
    drop(first);

    let output = Output::default();
    let mut restored = counter_with(&kvm, vcpus, &output, shared_memory);
    // What the new machine had where the saved one had zeros must be gone after the restore.
    restored
        .memory()
        .write_obj(0xdead_beef_u64, GuestAddress(ZERO_AT))
        .unwrap();
    restored.restore_state(&path, &configuration(vcpus)).unwrap();
    assert_eq!(
        restored
            .memory()
            .read_obj::<u64>(GuestAddress(MARKER_AT))
            .unwrap(),
        MARKER
    );
    assert_eq!(
        restored.memory().read_obj::<u64>(GuestAddress(ZERO_AT)).unwrap(),
        0
    );
    restored.start().unwrap();
    let handle = restored.handle();
    // It comes back paused: every vCPU parks before running guest code.
    assert_eq!(handle.pause(WAIT), PauseOutcome::Paused);
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(output.text(), "", "a restored machine runs nothing until resumed");

    let again = state_path(&format!("counter-{vcpus}-{shared_memory}-again"));
    handle
        .save_state(&again, &configuration(vcpus), &serde_json::Value::Null)
        .unwrap();
    let (_, _, before) = open_state_file(&path).unwrap();
    let (_, _, after) = open_state_file(&again).unwrap();
    assert_eq!(after.machine.vcpus.len(), usize::from(vcpus));
    for (index, (b, a)) in before.machine.vcpus.iter().zip(&after.machine.vcpus).enumerate() {
        assert_eq!(a.mp_state, b.mp_state, "vCPU {index}'s MP state");
        assert_eq!(a.lapic, b.lapic, "vCPU {index}'s local APIC");
        assert_eq!(a.regs, b.regs, "vCPU {index}'s registers");
        assert_eq!(a.sregs, b.sregs, "vCPU {index}'s special registers");
        assert_eq!(a.fpu, b.fpu, "vCPU {index}'s FPU");
        assert_eq!(a.events, b.events, "vCPU {index}'s events");
    }
    let (b, a) = (&before.machine.platform, &after.machine.platform);
    assert_eq!(a.serial, b.serial, "COM1");
    assert_eq!(a.i8042, b.i8042);
    assert_eq!(a.cmos, b.cmos);
    assert_eq!(a.pci, b.pci, "the host and ISA bridges' configuration");
    assert_eq!(
        (a.pm.status, a.pm.enable, a.pm.control),
        (b.pm.status, b.pm.enable, b.pm.control)
    );
    assert!(
        a.pm.timer_elapsed_ns >= b.pm.timer_elapsed_ns,
        "the PM timer goes on"
    );
    assert_eq!(after.machine.vm.ioapic, before.machine.vm.ioapic);
    assert_eq!(after.machine.vm.pic_master, before.machine.vm.pic_master);

    handle.resume();
    let text = output.wait_for(&format!("tick {}\n", saved_at + 3));
    assert!(!text.contains("tick 0\n"), "the count started again:\n{text}");
    let first_line = text
        .lines()
        .find_map(|l| l.strip_prefix("tick ")?.parse::<u32>().ok());
    assert!(
        first_line.is_some_and(|n| n <= saved_at + 1),
        "the count skipped ahead from {saved_at}:\n{text}"
    );
    handle.stop();
    restored.wait();
    let _ = std::fs::remove_dir_all(path.parent().unwrap());
    let _ = std::fs::remove_dir_all(again.parent().unwrap());
}

#[test]
fn a_counting_guest_on_one_vcpu_continues_its_count_after_a_restore() {
    if virtkit_testkit::require_kvm() {
        save_and_restore(1, false);
    }
}

#[test]
fn two_vcpus_come_back_with_their_apic_state() {
    if virtkit_testkit::require_kvm() {
        save_and_restore(2, false);
    }
}

#[test]
fn four_vcpus_come_back_with_their_apic_state() {
    if virtkit_testkit::require_kvm() {
        save_and_restore(4, false);
    }
}

/// Memory a vhost-user backend could map (one memfd) cannot be replaced by a mapping of the
/// file: it is read in, and the guest goes on the same.
#[test]
fn shared_guest_memory_is_read_in_and_the_count_goes_on() {
    if virtkit_testkit::require_kvm() {
        save_and_restore(1, true);
    }
}

#[test]
fn refused_saves_and_restores_change_nothing() {
    if !virtkit_testkit::require_kvm() {
        return;
    }
    let kvm = Kvm::open().unwrap();
    let path = state_path("refusals");
    let output = Output::default();
    let mut machine = counter(&kvm, 1, &output);
    machine.start().unwrap();
    output.wait_for("tick 1\n");
    let handle = machine.handle();
    let e = handle
        .save_state(&path, &configuration(1), &serde_json::Value::Null)
        .unwrap_err();
    assert!(
        matches!(e, SnapshotError::Capture(CaptureError::NotPaused)),
        "{e}"
    );
    assert!(e.to_string().contains("pause it"), "{e}");
    assert!(!path.exists(), "a refused save writes nothing");
    assert_eq!(handle.pause(WAIT), PauseOutcome::Paused);
    handle
        .save_state(&path, &configuration(1), &serde_json::Value::Null)
        .unwrap();
    handle.stop();
    machine.wait();

    // Another configuration: named, and the machine still boots as built.
    let other_output = Output::default();
    let mut other = counter(&kvm, 2, &other_output);
    let e = other.restore_state(&path, &configuration(2)).unwrap_err();
    let text = e.to_string();
    assert!(matches!(e, SnapshotError::ConfigurationMismatch { .. }), "{text}");
    assert!(text.contains("cpu_count: 1 in the file, 2 here"), "{text}");
    assert!(text.contains("vCPUs: 1 in the file, 2 here"), "{text}");
    other.start().unwrap();
    other_output.wait_for("tick 0\n");
    other.handle().stop();
    other.wait();

    // A flipped byte in the metadata: damaged, and the machine still boots as built.
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[4096 + 10] ^= 0x20;
    let damaged = path.with_file_name("damaged.vksave");
    std::fs::write(&damaged, &bytes).unwrap();
    let fresh_output = Output::default();
    let mut fresh = counter(&kvm, 1, &fresh_output);
    let e = fresh.restore_state(&damaged, &configuration(1)).unwrap_err();
    assert!(
        matches!(e, SnapshotError::Format(FormatError::Damaged { .. })),
        "{e}"
    );
    fresh.start().unwrap();
    fresh_output.wait_for("tick 0\n");
    fresh.handle().stop();
    fresh.wait();
    let _ = std::fs::remove_dir_all(path.parent().unwrap());
}
