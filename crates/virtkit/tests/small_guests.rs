//! The project's small guests (assembly in crates/test-guests) on KVM through the public API:
//! serial output and input, SMP bring-up, pause/resume, the power button, reset, triple fault
//! and the firmware reset vector. They run on any KVM, PVM included.

mod common;

use std::time::Duration;

use common::{kvm_available, pvh, start};
use virtkit::{StopReason, VirtualMachineConfiguration, VmError, VmState};
use virtkit_test_guests::Guest;

const BOOT: Duration = Duration::from_secs(20);

#[test]
fn hello_prints_and_powers_off_through_acpi() {
    if !kvm_available() {
        return;
    }
    let run = start(pvh(Guest::Hello.path(), 1));
    assert_eq!(run.vm.wait_timeout(BOOT), Some(StopReason::GuestPoweredOff));
    // The console reader may still be draining the pipe when the state changes.
    run.console.wait_for("virtkit-guest: hello from pvh", BOOT);
    assert_eq!(run.vm.state(), VmState::Stopped);
}

#[test]
fn an_elf32_pvh_kernel_prints_and_powers_off_through_acpi() {
    if !kvm_available() {
        return;
    }
    // The same boot as `hello`, from an ELFCLASS32 file (`ld -m elf_i386`, not repackaged).
    assert_eq!(&Guest::HelloElf32.bytes()[..5], b"\x7fELF\x01");
    let run = start(pvh(Guest::HelloElf32.path(), 1));
    assert_eq!(
        run.vm.wait_timeout(BOOT),
        Some(StopReason::GuestPoweredOff),
        "{}",
        run.console.text()
    );
    let text = run
        .console
        .wait_for(virtkit_test_guests::output::HELLO_ELF32, BOOT);
    assert_eq!(text, format!("{}\n", virtkit_test_guests::output::HELLO_ELF32));
    assert_eq!(run.vm.state(), VmState::Stopped);
}

#[test]
fn state_changes_are_reported_in_order() {
    if !kvm_available() {
        return;
    }
    let (out_r, out_w) = std::io::pipe().unwrap();
    let config = pvh(Guest::Hello.path(), 1).with_serial(virtkit::SerialAttachment::FileHandles {
        read: None,
        write: Some(out_w.into()),
    });
    let mut vm = virtkit::VirtualMachine::new(config).unwrap();
    let changes = vm.state_changes();
    vm.start().unwrap();
    vm.wait_timeout(BOOT).expect("stops");
    drop(out_r);
    let seen: Vec<VmState> = changes.try_iter().collect();
    assert_eq!(seen, [VmState::Starting, VmState::Running, VmState::Stopped]);
}

#[test]
fn console_input_reaches_the_guest_and_its_echo_comes_back() {
    if !kvm_available() {
        return;
    }
    let mut run = start(pvh(Guest::Echo.path(), 1));
    run.console.wait_for("virtkit-guest: echo ready", BOOT);
    // More than the 16550's 64-byte FIFO, to prove input waits instead of being dropped.
    // No `q` in it: `q` ends the echo guest.
    let line = "a brown fox jumps over the lazy dog, then sleeps; 0123456789 ABCDEFGHIJKLMNOPRSTUVWXYZ!";
    run.type_text(line);
    run.console.wait_for(line, BOOT);
    run.type_text("q");
    assert_eq!(run.vm.wait_timeout(BOOT), Some(StopReason::GuestPoweredOff));
    run.console.wait_for("virtkit-guest: echo done", BOOT);
}

fn bring_up(cpus: u32) {
    let run = start(pvh(Guest::Smp.path(), cpus));
    assert_eq!(
        run.vm.wait_timeout(BOOT),
        Some(StopReason::GuestPoweredOff),
        "{}",
        run.console.text()
    );
    // The last line is printed before the power-off; wait for the reader to drain the pipe.
    let text = run.console.wait_for(&format!("cpus-up={cpus}"), BOOT);
    assert!(text.contains("cpu apic=0 bsp"), "{text}");
    for apic in 1..cpus {
        assert!(
            text.contains(&format!("cpu apic={apic} ap")),
            "AP {apic} missing:\n{text}"
        );
    }
    assert!(
        !text.contains(&format!("cpu apic={cpus} ")),
        "an extra CPU answered:\n{text}"
    );
    assert!(!text.contains("smp timeout"), "{text}");
}

#[test]
fn init_sipi_sipi_brings_up_one_vcpu() {
    if kvm_available() {
        bring_up(1);
    }
}

#[test]
fn init_sipi_sipi_brings_up_two_vcpus() {
    if kvm_available() {
        bring_up(2);
    }
}

#[test]
fn init_sipi_sipi_brings_up_four_vcpus_on_a_two_core_host() {
    if kvm_available() {
        bring_up(4);
    }
}

#[test]
fn pause_stops_a_counting_guest_and_resume_continues_it() {
    if !kvm_available() {
        return;
    }
    let run = start(pvh(Guest::Counter.path(), 1));
    run.console.wait_for("tick 3\n", BOOT);
    run.vm.pause().unwrap();
    assert_eq!(run.vm.state(), VmState::Paused);
    let ticks_at_pause = run.console.count("tick ");
    std::thread::sleep(Duration::from_millis(500));
    // One line may have been in flight in the pipe when the vCPU stopped.
    let ticks_while_paused = run.console.count("tick ");
    assert!(
        ticks_while_paused <= ticks_at_pause + 1,
        "{ticks_at_pause} -> {ticks_while_paused}"
    );
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        run.console.count("tick "),
        ticks_while_paused,
        "the guest ran while paused"
    );
    run.vm.resume().unwrap();
    assert_eq!(run.vm.state(), VmState::Running);
    let next = format!("tick {}\n", ticks_while_paused + 3);
    run.console.wait_for(&next, BOOT);
    run.vm.stop().unwrap();
    assert_eq!(run.vm.wait_timeout(BOOT), Some(StopReason::StoppedByHost));
    assert_eq!(run.vm.state(), VmState::Stopped);
}

#[test]
fn request_stop_presses_the_power_button_the_guest_polls() {
    if !kvm_available() {
        return;
    }
    let run = start(pvh(Guest::PowerButton.path(), 1));
    run.console
        .wait_for("virtkit-guest: waiting for power button", BOOT);
    assert!(run.vm.can_request_stop(), "the guest enabled PWRBTN_EN");
    run.vm.request_stop().unwrap();
    assert_eq!(run.vm.wait_timeout(BOOT), Some(StopReason::GuestPoweredOff));
    run.console.wait_for("virtkit-guest: power button pressed", BOOT);
}

#[test]
fn i8042_reset_ends_the_run_as_a_reset() {
    if !kvm_available() {
        return;
    }
    let run = start(pvh(Guest::Reset.path(), 1));
    assert_eq!(run.vm.wait_timeout(BOOT), Some(StopReason::GuestReset));
    run.console.wait_for("virtkit-guest: resetting", BOOT);
    assert_eq!(run.vm.state(), VmState::Stopped);
}

#[test]
fn triple_fault_ends_the_run_as_a_crash() {
    if !kvm_available() {
        return;
    }
    let run = start(pvh(Guest::TripleFault.path(), 1));
    let reason = run.vm.wait_timeout(BOOT).expect("stops");
    assert!(
        matches!(reason, StopReason::GuestCrashed { ref detail } if detail.contains("triple")),
        "{reason:?}"
    );
    assert_eq!(run.vm.state(), VmState::Error);
}

#[test]
fn firmware_boot_runs_real_mode_code_at_the_reset_vector() {
    if !kvm_available() {
        return;
    }
    let run = start(VirtualMachineConfiguration::firmware(
        1,
        64 << 20,
        Guest::ResetVector.path().to_owned(),
    ));
    assert_eq!(
        run.vm.wait_timeout(BOOT),
        Some(StopReason::GuestPoweredOff),
        "{}",
        run.console.text()
    );
    run.console
        .wait_for("virtkit-guest: real mode at reset vector", BOOT);
}

#[test]
fn lifecycle_requests_that_do_not_fit_the_state_are_refused() {
    if !kvm_available() {
        return;
    }
    let vm = virtkit::VirtualMachine::new(pvh(Guest::Hello.path(), 1)).unwrap();
    assert_eq!(
        vm.pause(),
        Err(VmError::InvalidState {
            action: "pause",
            state: VmState::Stopped
        })
    );
    assert!(vm.stop().is_err());
    let run = start(pvh(Guest::Counter.path(), 1));
    run.console.wait_for("tick 1\n", BOOT);
    let err = run.vm.resume().unwrap_err();
    assert_eq!(err.to_string(), "cannot resume a virtual machine that is running");
    run.vm.stop().unwrap();
    run.vm.wait_timeout(BOOT).unwrap();
}

#[test]
fn a_second_start_without_new_console_handles_is_a_clear_error() {
    if !kvm_available() {
        return;
    }
    let mut run = start(pvh(Guest::Smp.path(), 2));
    assert_eq!(run.vm.wait_timeout(BOOT), Some(StopReason::GuestPoweredOff));
    // File handles are used up by the first start; a second start must say so, not panic.
    let err = run.vm.start().unwrap_err();
    assert!(err.to_string().contains("serial"), "{err}");
    assert_eq!(run.vm.state(), VmState::Error);
}
