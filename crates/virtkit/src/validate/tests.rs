use std::path::PathBuf;

use super::*;
use crate::host::HostKind;

fn host() -> HostCapabilities {
    HostCapabilities {
        kind: HostKind::HardwareKvm,
        kvm: None,
        kvm_error: None,
        memory: 8 << 30,
        cpus: 2,
    }
}

struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!("virtkit-validate-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    /// A file with a bzImage header: enough for the loader's format check.
    fn bzimage(&self) -> PathBuf {
        let mut bytes = vec![0u8; 0x400];
        bytes[0x202..0x206].copy_from_slice(b"HdrS");
        let path = self.0.join("bzImage");
        std::fs::write(&path, bytes).unwrap();
        path
    }

    fn file(&self, name: &str, bytes: &[u8]) -> PathBuf {
        let path = self.0.join(name);
        std::fs::write(&path, bytes).unwrap();
        path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn issues(config: &VirtualMachineConfiguration) -> Vec<ValidationIssue> {
    match config.validate_for(&host()) {
        Ok(()) => Vec::new(),
        Err(e) => e.issues,
    }
}

fn only_issue(config: &VirtualMachineConfiguration) -> ValidationIssue {
    let mut found = issues(config);
    assert_eq!(found.len(), 1, "{found:?}");
    found.remove(0)
}

#[test]
fn a_good_linux_configuration_passes() {
    let dir = TempDir::new("good");
    let initrd = dir.file("initrd", b"070701");
    let c = VirtualMachineConfiguration::linux(2, 512 << 20, dir.bzimage(), Some(initrd), "console=ttyS0");
    assert_eq!(issues(&c), vec![]);
}

#[test]
fn the_pvh_test_guest_is_accepted_as_a_kernel() {
    let c = VirtualMachineConfiguration::linux(
        1,
        64 << 20,
        virtkit_test_guests::Guest::Hello.path().into(),
        None,
        "",
    );
    assert_eq!(issues(&c), vec![]);
}

#[test]
fn the_elf32_pvh_test_guest_is_accepted_as_a_kernel() {
    let c = VirtualMachineConfiguration::linux(
        1,
        64 << 20,
        virtkit_test_guests::Guest::HelloElf32.path().into(),
        None,
        "",
    );
    assert_eq!(issues(&c), vec![]);
}

/// The ELF32 test guest with its PT_NOTE program header turned into PT_NULL.
fn elf32_without_its_note() -> Vec<u8> {
    let mut elf = virtkit_test_guests::Guest::HelloElf32.bytes().to_vec();
    assert_eq!(elf[4], 1, "ELFCLASS32");
    let u32_at = |b: &[u8], at: usize| u32::from_le_bytes(b[at..at + 4].try_into().unwrap());
    let phoff = u32_at(&elf, 28) as usize;
    let phnum = u16::from_le_bytes([elf[44], elf[45]]) as usize;
    let mut removed = 0;
    for i in 0..phnum {
        let at = phoff + i * 32;
        if u32_at(&elf, at) == 4 {
            elf[at..at + 4].copy_from_slice(&0u32.to_le_bytes());
            removed += 1;
        }
    }
    assert_eq!(removed, 1, "one PT_NOTE");
    elf
}

#[test]
fn an_elf32_without_a_pvh_note_is_refused() {
    let dir = TempDir::new("elf32nopvh");
    let path = dir.file("tiny.elf", &elf32_without_its_note());
    let issue = only_issue(&VirtualMachineConfiguration::linux(1, 64 << 20, path, None, ""));
    assert_eq!(issue.field, "boot_loader.kernel");
    assert!(
        issue
            .message
            .contains("is a 32-bit ELF kernel that cannot be booted"),
        "{issue}"
    );
    assert!(issue.message.contains("no Xen PHYS32_ENTRY note"), "{issue}");
}

#[test]
fn an_elf32_whose_segments_end_past_the_ram_asks_for_more_memory() {
    // The guest's second PT_LOAD (data and stack) moved to 128 MiB; the entry stays in the first.
    let mut elf = virtkit_test_guests::Guest::HelloElf32.bytes().to_vec();
    let u32_at = |b: &[u8], at: usize| u32::from_le_bytes(b[at..at + 4].try_into().unwrap());
    let phoff = u32_at(&elf, 28) as usize;
    let phnum = u16::from_le_bytes([elf[44], elf[45]]) as usize;
    let data = (0..phnum)
        .map(|i| phoff + i * 32)
        .filter(|at| u32_at(&elf, *at) == 1)
        .nth(1)
        .expect("a second PT_LOAD");
    elf[data + 12..data + 16].copy_from_slice(&(128u32 << 20).to_le_bytes());
    let dir = TempDir::new("elf32mem");
    let path = dir.file("tiny.elf", &elf);
    asks_for_more_than_64_mib(path, "too little for the 32-bit ELF kernel");
}

#[test]
fn a_bzimage_whose_decompression_ends_past_the_ram_asks_for_more_memory() {
    // pref_address 16 MiB, init_size 80 MiB: the decompressor needs RAM up to 96 MiB.
    let mut header = vec![0u8; 0x400];
    header[0x202..0x206].copy_from_slice(b"HdrS");
    header[0x258..0x260].copy_from_slice(&(16u64 << 20).to_le_bytes());
    header[0x260..0x264].copy_from_slice(&(80u32 << 20).to_le_bytes());
    let dir = TempDir::new("bzimagemem");
    let path = dir.file("bzImage", &header);
    asks_for_more_than_64_mib(path, "decompresses into memory up to 96 MiB");
}

#[test]
fn a_bzimage_header_whose_sizes_overflow_is_refused_not_a_panic() {
    // pref_address near 2^64: pref_address + init_size wrapped (a panic in a debug build, a
    // small figure that passed the check in a release build) before the sum saturated.
    let mut header = vec![0u8; 0x400];
    header[0x202..0x206].copy_from_slice(b"HdrS");
    header[0x258..0x260].copy_from_slice(&(u64::MAX - 0xfff).to_le_bytes());
    header[0x260..0x264].copy_from_slice(&(1u32 << 20).to_le_bytes());
    let dir = TempDir::new("bzimageoverflow");
    let path = dir.file("bzImage", &header);
    let issue = only_issue(&VirtualMachineConfiguration::linux(1, 256 << 20, path, None, ""));
    assert_eq!(issue.field, "memory_size");
    assert!(
        issue.message.contains("decompresses into memory up to"),
        "{issue}"
    );
}

/// The kernel at `path` is refused with 64 MiB (one `memory_size` issue saying `message`) and
/// accepted with 256 MiB.
fn asks_for_more_than_64_mib(path: PathBuf, message: &str) {
    let issue = only_issue(&VirtualMachineConfiguration::linux(
        1,
        64 << 20,
        path.clone(),
        None,
        "",
    ));
    assert_eq!(issue.field, "memory_size");
    assert!(issue.message.contains(message), "{issue}");
    assert_eq!(
        issues(&VirtualMachineConfiguration::linux(1, 256 << 20, path, None, "")),
        vec![]
    );
}

#[test]
fn a_truncated_elf32_is_refused_with_the_reason() {
    let dir = TempDir::new("elf32short");
    let path = dir.file("tiny.elf", &virtkit_test_guests::Guest::HelloElf32.bytes()[..100]);
    let issue = only_issue(&VirtualMachineConfiguration::linux(1, 64 << 20, path, None, ""));
    assert_eq!(issue.field, "boot_loader.kernel");
    assert!(
        issue
            .message
            .contains("is a 32-bit ELF kernel that cannot be booted"),
        "{issue}"
    );
    assert!(issue.message.contains("too short"), "{issue}");
}

#[test]
fn zero_cpus_names_the_field_and_the_range() {
    let dir = TempDir::new("cpus0");
    let c = VirtualMachineConfiguration::linux(0, 64 << 20, dir.bzimage(), None, "");
    let issue = only_issue(&c);
    assert_eq!(issue.field, "cpu_count");
    assert!(issue.message.contains("use 1 to 255"), "{issue}");
}

#[test]
fn too_many_cpus_for_the_host_kvm_says_its_limit() {
    let dir = TempDir::new("cpusmax");
    let c = VirtualMachineConfiguration::linux(200, 64 << 20, dir.bzimage(), None, "");
    let mut h = host();
    h.kvm = Some(virtkit_hypervisor::HostKvmInfo {
        flavor: virtkit_hypervisor::KvmFlavor::Hardware,
        api_version: 12,
        max_vcpus: 128,
        recommended_vcpus: 2,
        max_memslots: 32,
        irqchip: true,
        ioeventfd: true,
        irqfd: true,
        immediate_exit: true,
    });
    let err = c.validate_for(&h).unwrap_err();
    assert_eq!(err.issues.len(), 1);
    assert!(err.issues[0].message.contains("at most 128"), "{err}");
}

#[test]
fn memory_rules_each_give_the_fix() {
    let dir = TempDir::new("mem");
    let small = only_issue(&VirtualMachineConfiguration::linux(
        1,
        32 << 20,
        dir.bzimage(),
        None,
        "",
    ));
    assert_eq!(small.field, "memory_size");
    assert!(small.message.contains("at least 64 MiB"), "{small}");

    let odd = only_issue(&VirtualMachineConfiguration::linux(
        1,
        (64 << 20) + 100,
        dir.bzimage(),
        None,
        "",
    ));
    assert!(
        odd.message.contains("not a multiple of the 4 KiB page size"),
        "{odd}"
    );
    assert!(odd.message.contains("64 MiB"), "suggests the rounded size: {odd}");

    let huge = only_issue(&VirtualMachineConfiguration::linux(
        1,
        16 << 30,
        dir.bzimage(),
        None,
        "",
    ));
    assert!(huge.message.contains("more than this host's 8 GiB"), "{huge}");
}

#[test]
fn missing_kernel_and_initrd_are_both_reported() {
    let c = VirtualMachineConfiguration::linux(
        1,
        64 << 20,
        "/nonexistent/vmlinuz".into(),
        Some("/nonexistent/initrd".into()),
        "",
    );
    let found = issues(&c);
    assert_eq!(found.len(), 2, "{found:?}");
    assert_eq!(found[0].field, "boot_loader.kernel");
    assert!(found[0].message.contains("/nonexistent/vmlinuz does not exist"));
    assert_eq!(found[1].field, "boot_loader.initrd");
}

#[test]
fn a_file_that_is_not_a_kernel_is_refused() {
    let dir = TempDir::new("notkernel");
    let text = dir.file("notes.txt", b"just some text, not a kernel at all");
    let issue = only_issue(&VirtualMachineConfiguration::linux(1, 64 << 20, text, None, ""));
    assert_eq!(issue.field, "boot_loader.kernel");
    assert!(issue.message.contains("neither a bzImage nor an ELF"), "{issue}");
}

#[test]
fn an_elf_without_a_pvh_note_is_refused() {
    let dir = TempDir::new("elfnopvh");
    let mut elf = vec![0u8; 64];
    elf[..4].copy_from_slice(b"\x7fELF");
    elf[4] = 2;
    let path = dir.file("vmlinux", &elf);
    let issue = only_issue(&VirtualMachineConfiguration::linux(1, 64 << 20, path, None, ""));
    assert!(issue.message.contains("without a PVH entry note"), "{issue}");
}

#[test]
fn every_problem_is_reported_at_once() {
    let c = VirtualMachineConfiguration::linux(0, 1, "/nonexistent".into(), None, "");
    let err = c.validate_for(&host()).unwrap_err();
    let fields: Vec<_> = err.issues.iter().map(|i| i.field.as_str()).collect();
    assert_eq!(fields, ["cpu_count", "memory_size", "boot_loader.kernel"]);
    assert!(err.to_string().starts_with("the configuration has 3 problems:"));
}

#[test]
fn newer_format_version_says_to_upgrade() {
    let dir = TempDir::new("version");
    let mut c = VirtualMachineConfiguration::linux(1, 64 << 20, dir.bzimage(), None, "");
    c.version = CONFIG_FORMAT_VERSION + 1;
    let issue = only_issue(&c);
    assert_eq!(issue.field, "version");
    assert!(issue.message.contains("upgrade virtkit"));
}

#[test]
fn over_long_command_line_is_refused() {
    let dir = TempDir::new("cmdline");
    let c = VirtualMachineConfiguration::linux(1, 64 << 20, dir.bzimage(), None, &"x".repeat(3000));
    let issue = only_issue(&c);
    assert_eq!(issue.field, "boot_loader.command_line");
    assert!(issue.message.contains("at most 2047"), "{issue}");
}

#[test]
fn firmware_of_the_wrong_size_or_missing_is_refused() {
    let dir = TempDir::new("fw");
    let odd = dir.file("bios.bin", &[0u8; 1000]);
    let issue = only_issue(&VirtualMachineConfiguration::firmware(1, 64 << 20, odd));
    assert_eq!(issue.field, "boot_loader.path");
    assert!(issue.message.contains("multiple of 4 KiB"), "{issue}");
    let missing = only_issue(&VirtualMachineConfiguration::firmware(
        1,
        64 << 20,
        "/nonexistent/bios.bin".into(),
    ));
    assert!(missing.message.contains("does not exist"));
}

#[test]
fn serial_rules() {
    let dir = TempDir::new("serial");
    let c = VirtualMachineConfiguration::linux(1, 64 << 20, dir.bzimage(), None, "")
        .with_serial(SerialAttachment::File {
            path: "/nonexistent-dir/console.log".into(),
            append: false,
        })
        .with_serial(SerialAttachment::Stdio);
    let found = issues(&c);
    assert_eq!(found.len(), 2, "{found:?}");
    assert_eq!(found[0].field, "serial_ports");
    assert_eq!(found[1].field, "serial_ports[0].attachment.path");
    let long = dir.0.join("s".repeat(120));
    let c = VirtualMachineConfiguration::linux(1, 64 << 20, dir.bzimage(), None, "")
        .with_serial(SerialAttachment::UnixSocket { path: long });
    assert!(only_issue(&c).message.contains("at most 107 bytes"));
}

#[cfg(unix)]
#[test]
fn unreadable_kernel_is_reported_when_not_root() {
    use std::os::unix::fs::PermissionsExt;
    let dir = TempDir::new("perm");
    let k = dir.bzimage();
    std::fs::set_permissions(&k, std::fs::Permissions::from_mode(0o000)).unwrap();
    let can_read_anyway = std::fs::File::open(&k).is_ok(); // root reads everything
    let found = issues(&VirtualMachineConfiguration::linux(1, 64 << 20, k, None, ""));
    if can_read_anyway {
        assert_eq!(found, vec![]);
    } else {
        assert_eq!(found.len(), 1);
        assert!(found[0].message.contains("cannot be"), "{found:?}");
    }
}

fn fifo(dir: &TempDir, name: &str) -> PathBuf {
    let path = dir.0.join(name);
    rustix::fs::mknodat(
        rustix::fs::CWD,
        &path,
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::RUSR | rustix::fs::Mode::WUSR,
        0,
    )
    .unwrap();
    path
}

/// Validation of a configuration naming FIFOs must answer at once, not wait for a writer.
fn issues_promptly(c: VirtualMachineConfiguration) -> Vec<ValidationIssue> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(issues(&c));
    });
    rx.recv_timeout(std::time::Duration::from_secs(5))
        .expect("validation blocked on a FIFO")
}

#[test]
fn a_nul_in_the_command_line_is_refused() {
    let dir = TempDir::new("nul");
    let c = VirtualMachineConfiguration::linux(1, 64 << 20, dir.bzimage(), None, "console=ttyS0\0 init=/x");
    let issue = only_issue(&c);
    assert_eq!(issue.field, "boot_loader.command_line");
    assert!(issue.message.contains("NUL"), "{issue}");
}

#[test]
fn an_empty_disk_is_refused() {
    let dir = TempDir::new("empty-disk");
    let disk = dir.file("disk.img", b"");
    let c = VirtualMachineConfiguration::linux(1, 64 << 20, dir.bzimage(), None, "")
        .with_storage(StorageDeviceConfiguration::disk_image(disk));
    let issue = only_issue(&c);
    assert_eq!(issue.field, "storage_devices[0].path");
    assert!(issue.message.contains("is empty (0 bytes)"), "{issue}");
}

#[test]
fn fifos_and_devices_are_refused_as_kernel_initrd_firmware_disk_and_output() {
    let dir = TempDir::new("fifos");
    let kernel = fifo(&dir, "kernel");
    let initrd = fifo(&dir, "initrd");
    let c = VirtualMachineConfiguration::linux(1, 64 << 20, kernel, Some(initrd), "")
        .with_storage(StorageDeviceConfiguration::disk_image(fifo(&dir, "disk.img")))
        .with_serial(SerialAttachment::File {
            path: fifo(&dir, "serial.log"),
            append: false,
        });
    let found = issues_promptly(c);
    let fields: Vec<&str> = found.iter().map(|i| i.field.as_str()).collect();
    assert_eq!(
        fields,
        [
            "boot_loader.kernel",
            "boot_loader.initrd",
            "storage_devices[0].path",
            "serial_ports[0].attachment.path"
        ],
        "{found:?}"
    );
    assert!(found.iter().all(|i| i.message.contains("FIFO")), "{found:?}");

    let c = VirtualMachineConfiguration::firmware(1, 64 << 20, "/dev/zero".into()).with_serial(
        SerialAttachment::File {
            path: "/dev/zero".into(),
            append: false,
        },
    );
    let found = issues_promptly(c);
    assert_eq!(found.len(), 2, "{found:?}");
    assert!(
        found.iter().all(|i| i.message.contains("character device")),
        "{found:?}"
    );

    let c = VirtualMachineConfiguration::linux(1, 64 << 20, dir.bzimage(), None, "").with_serial(
        SerialAttachment::File {
            path: "/dev/null".into(),
            append: false,
        },
    );
    assert_eq!(issues(&c), vec![], "/dev/null is a fine output");
}

#[test]
fn an_output_file_that_is_a_disk_or_the_kernel_is_refused_and_left_alone() {
    let dir = TempDir::new("serial-disk");
    let disk = dir.file("victim.img", &[7u8; 4096]);
    let kernel = dir.bzimage();
    let c = VirtualMachineConfiguration::linux(1, 64 << 20, kernel.clone(), None, "")
        .with_storage(StorageDeviceConfiguration::disk_image(disk.clone()))
        .with_serial(SerialAttachment::File {
            // Another spelling of the same file.
            path: dir.0.join(".").join("victim.img"),
            append: true,
        });
    let issue = only_issue(&c);
    assert_eq!(issue.field, "serial_ports[0].attachment.path");
    assert!(issue.message.contains("is the disk"), "{issue}");
    assert!(issue.message.contains("storage_devices[0]"), "{issue}");
    assert_eq!(std::fs::read(&disk).unwrap(), vec![7u8; 4096]);

    let mut c = VirtualMachineConfiguration::linux(1, 64 << 20, kernel.clone(), None, "");
    c.console_devices
        .push(crate::devices::ConsoleDeviceConfiguration {
            ports: vec![crate::devices::ConsolePortConfiguration::console(Some(
                SerialAttachment::File {
                    path: kernel,
                    append: false,
                },
            ))],
        });
    let issue = only_issue(&c);
    assert!(issue.field.starts_with("console_devices[0].ports[0]"), "{issue}");
    assert!(issue.message.contains("is the kernel"), "{issue}");
}

#[test]
fn keyboards_and_pointing_devices_come_with_a_display_one_of_each() {
    let dir = TempDir::new("input");
    let mut c = VirtualMachineConfiguration::linux(1, 256 << 20, dir.bzimage(), None, "");
    c.keyboards.push(crate::KeyboardConfiguration::default());
    let issue = only_issue(&c);
    assert_eq!(issue.field, "keyboards");
    assert!(issue.message.contains("no display; add one"), "{}", issue.message);

    let mut c = VirtualMachineConfiguration::linux(1, 256 << 20, dir.bzimage(), None, "");
    c.add_display(crate::GraphicsDeviceConfiguration::parse_cli("800x600").unwrap());
    assert_eq!(
        (c.keyboards.len(), c.pointing_devices.len()),
        (1, 1),
        "a screen brings both"
    );
    assert!(issues(&c).is_empty(), "{:?}", issues(&c));
    c.pointing_devices
        .push(crate::PointingDeviceConfiguration::default());
    let issue = only_issue(&c);
    assert_eq!(issue.field, "pointing_devices");
    assert!(
        issue.message.contains("2 pointing devices given"),
        "{}",
        issue.message
    );

    // The JSON form: empty objects, unknown fields refused.
    let json = c.to_json();
    assert!(json.contains("\"keyboards\""), "{json}");
    assert!(serde_json::from_str::<crate::KeyboardConfiguration>(r#"{"layout": "de"}"#).is_err());
}
