//! The stock Debian kernel is the real client of our boot protocol: its early boot prints what
//! it read from our boot parameters, e820 map, command line and ACPI tables. On a PVM host it
//! stops soon after (an instruction PVM cannot emulate); each test ends the VM once it has seen
//! what it checks, so the same tests run on hardware KVM, where the kernel would go on booting.

mod common;

use std::path::Path;
use std::time::Duration;

use common::start;
use virtkit::VirtualMachineConfiguration;
use virtkit_machine::layout::{HIGH_RAM_START, LOW_RAM_END};

/// Early boot to `smpboot:` takes 5-35 s of emulation on a quiet PVM host, and up to ~150 s for
/// a 4 GiB guest on a loaded one (initialising the memory map runs through PVM's emulator). This
/// is a hang guard, not a speed check.
const EARLY_BOOT: Duration = Duration::from_secs(480);

fn assets() -> Option<virtkit_testkit::Assets> {
    if !virtkit_testkit::require_kvm() {
        return None;
    }
    virtkit_testkit::require_assets()
}

/// Sums the usable ranges of the kernel's `BIOS-e820:` lines.
fn e820_usable_bytes(console: &str) -> u64 {
    console
        .lines()
        .filter(|l| l.contains("BIOS-e820: [mem ") && l.trim_end().ends_with("usable"))
        .map(|l| {
            let range = l
                .split("[mem ")
                .nth(1)
                .and_then(|r| r.split(']').next())
                .expect("range");
            let (start, end) = range.split_once('-').expect("start-end");
            let parse = |h: &str| u64::from_str_radix(h.trim_start_matches("0x"), 16).expect("hex");
            parse(end) - parse(start) + 1
        })
        .sum()
}

fn early_boot(kernel: &Path, cpus: u32, memory: u64) {
    let token = format!("virtkit.token=early-{cpus}-{}", memory >> 20);
    let command_line = format!("console=ttyS0 earlyprintk=ttyS0 {token} loglevel=8");
    let config = VirtualMachineConfiguration::linux(cpus, memory, kernel.to_owned(), None, &command_line);
    let run = start(config);
    let console = run
        .console
        .wait_for(&format!("smpboot: Allowing {cpus} CPUs"), EARLY_BOOT);
    run.vm.stop().ok();
    run.vm.wait_timeout(Duration::from_secs(30)).expect("stops");

    assert!(
        console.contains(&format!("Command line: {command_line}\r\n"))
            || console.contains(&format!("Command line: {command_line}\n")),
        "the kernel did not echo the exact command line:\n{console}"
    );
    let expected = memory - (HIGH_RAM_START - LOW_RAM_END);
    assert_eq!(
        e820_usable_bytes(&console),
        expected,
        "e820 usable RAM for {memory:#x} bytes:\n{console}"
    );
    for table in [
        "ACPI: RSDP 0x00000000000E0000",
        "ACPI: XSDT",
        "ACPI: FACP",
        "ACPI: DSDT",
        "ACPI: APIC",
    ] {
        assert!(console.contains(table), "{table} missing:\n{console}");
    }
    assert!(
        console.contains("ACPI: INT_SRC_OVR (bus 0 bus_irq 9 global_irq 9 high level)"),
        "{console}"
    );
    assert!(console.contains("Hypervisor detected: KVM"), "{console}");
}

// Each boot here takes 20-60 s of PVM's emulator, so no case boots only to count CPUs: the
// bzImage boots with 1 and 4 vCPUs, the ELF with 2 and 1 (the MADT and the kernel's count are
// the same code for both entry paths).

/// Debian's bzImage decompresses itself at 16 MiB into ~51 MiB, so it cannot run in 64 MiB
/// (QEMU fails the same way); 128 MiB is its smallest test size. The ELF runs in 64 MiB.
#[test]
fn bzimage_reads_cmdline_e820_and_acpi_with_128_mib_and_1_cpu() {
    if let Some(a) = assets() {
        early_boot(a.vmlinuz(), 1, 128 << 20);
    }
}

#[test]
fn bzimage_in_64_mib_is_refused_by_validation_with_the_size_it_needs() {
    if let Some(a) = assets() {
        let config = VirtualMachineConfiguration::linux(1, 64 << 20, a.vmlinuz().to_owned(), None, "");
        let err = config.validate().unwrap_err();
        assert_eq!(err.issues.len(), 1, "{err}");
        assert_eq!(err.issues[0].field, "memory_size");
        assert!(
            err.issues[0].message.contains("decompresses into memory up to"),
            "{err}"
        );
    }
}

#[test]
fn bzimage_reads_cmdline_e820_and_acpi_with_4_gib_and_4_cpus() {
    if let Some(a) = assets() {
        early_boot(a.vmlinuz(), 4, 4 << 30);
    }
}

#[test]
fn pvh_elf_reads_cmdline_e820_and_acpi_with_64_mib_and_2_cpus() {
    if let Some(a) = assets() {
        early_boot(a.vmlinux(), 2, 64 << 20);
    }
}

#[test]
fn pvh_elf_reads_cmdline_e820_and_acpi_with_4_gib_and_1_cpu() {
    if let Some(a) = assets() {
        early_boot(a.vmlinux(), 1, 4 << 30);
    }
}

/// The machine identifier reaches the guest as SMBIOS: Linux's `dmi_setup`, early in
/// `setup_arch` and before it looks for a hypervisor, finds our entry point at 0xF0000 and
/// prints the system vendor and product with the BIOS version and date from type 0.
#[test]
fn pvh_elf_finds_smbios_with_the_machine_identity() {
    let Some(a) = assets() else { return };
    let command_line = "console=ttyS0 earlyprintk=ttyS0 virtkit.token=smbios loglevel=8";
    let mut config =
        VirtualMachineConfiguration::linux(1, 64 << 20, a.vmlinux().to_owned(), None, command_line);
    config.platform.machine_identifier = Some(
        "3f2b8a7e-1c4d-4e5f-9a6b-7c8d9e0f1a2b"
            .parse()
            .expect("a machine identifier"),
    );
    let run = start(config);
    let console = run.console.wait_for("Hypervisor detected", EARLY_BOOT);
    run.vm.stop().ok();
    run.vm.wait_timeout(Duration::from_secs(30)).expect("stops");

    assert!(console.contains("SMBIOS 2.8 present."), "{console}");
    let expected = format!(
        "DMI: virtkit virtkit Virtual Machine, BIOS {} {}",
        env!("CARGO_PKG_VERSION"),
        virtkit_machine::smbios::BIOS_RELEASE_DATE
    );
    let line = console
        .lines()
        .find(|l| l.contains("DMI:") || l.contains("DMI not present"))
        .unwrap_or_else(|| panic!("no DMI line:\n{console}"));
    assert!(
        line.trim_end().ends_with(&expected),
        "{line:?}, expected {expected:?}"
    );
}
