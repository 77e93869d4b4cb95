//! EFI's platform on this host's KVM. `virtkit create --efi`: the bundle's `aux.img` starts as
//! the firmware's variable store, the configuration names it, a clone keeps its own copy, and
//! bad firmware files are one sentence with nothing left behind. The variable store as a CFI
//! flash: the `flash_probe` firmware drives it with OVMF's command sequences (OVMF itself does
//! not run on this host: PVM stops at its first x87 instruction), a second run finds what the
//! first programmed, the file holds it, and the PIIX4 PM function and OVMF's power-off port
//! answer as OVMF expects.

mod support;

use std::path::Path;
use std::process::{Command, Stdio};

use support::home::Home;
use virtkit_test_guests::{Guest, FLASH_PROBE_COUNTER, FLASH_PROBE_STORE_SIZE};

const VIRTKIT: &str = env!("CARGO_BIN_EXE_virtkit");

const OVMF_CODE: &str = "/usr/share/OVMF/OVMF_CODE_4M.fd";
const OVMF_VARS: &str = "/usr/share/OVMF/OVMF_VARS_4M.fd";

fn ovmf_installed() -> bool {
    if Path::new(OVMF_CODE).is_file() && Path::new(OVMF_VARS).is_file() {
        return true;
    }
    virtkit_testkit::skip("Debian's OVMF is not installed (apt-get install ovmf)");
    false
}

fn config(home: &Home, name: &str) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(home.bundle(name).join("config.json")).unwrap()).unwrap()
}

#[test]
fn an_efi_vm_keeps_its_variables_in_aux_img_and_a_clone_gets_its_own() {
    if !ovmf_installed() {
        return;
    }
    let home = Home::new("efi", "create");
    home.ok(&[
        "create",
        "e",
        "--efi",
        "--disk-size",
        "1M",
        "--memory",
        "128M",
        "--cpus",
        "1",
    ]);
    let aux = home.bundle("e").join("aux.img");
    assert_eq!(std::fs::read(&aux).unwrap(), std::fs::read(OVMF_VARS).unwrap());
    let boot = &config(&home, "e")["boot_loader"];
    assert_eq!(boot["type"], "firmware", "{boot}");
    assert_eq!(boot["path"], OVMF_CODE, "{boot}");
    assert_eq!(boot["variable_store"], "aux.img", "{boot}");
    assert_eq!(home.json(&["get", "e", "--format", "json"])["boot"], "efi");

    // What the firmware writes stays the VM's own: a clone starts from the source's store, and
    // a change to one is not in the other.
    let mut changed = std::fs::read(&aux).unwrap();
    changed[0x100] ^= 0xff;
    std::fs::write(&aux, &changed).unwrap();
    home.ok(&["clone", "e", "e2"]);
    let cloned = home.bundle("e2").join("aux.img");
    assert_eq!(std::fs::read(&cloned).unwrap(), changed);
    changed[0x100] ^= 0xff;
    std::fs::write(&aux, &changed).unwrap();
    assert_ne!(std::fs::read(&cloned).unwrap(), changed);
}

#[test]
fn bad_efi_firmware_files_are_one_sentence_and_leave_no_bundle() {
    if !ovmf_installed() {
        return;
    }
    let home = Home::new("efi", "bad");
    let base = ["--disk-size", "1M", "--memory", "128M", "--cpus", "1"];
    let with = |name: &str, more: &[&str]| -> Vec<String> {
        ["create", name, "--efi"]
            .iter()
            .chain(more)
            .chain(base.iter())
            .map(|s| s.to_string())
            .collect()
    };
    let fails = |args: Vec<String>, expect: &str| {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        home.fails(&args, expect);
        assert!(!home.bundle(args[1]).exists(), "a bundle was left behind");
    };
    fails(
        with("a", &["--firmware", "/nonexistent/CODE.fd"]),
        "the EFI firmware file /nonexistent/CODE.fd does not exist; install Debian's ovmf package",
    );
    let zeros = home.dir.join("zeros.fd");
    std::fs::write(&zeros, vec![0u8; 0x84000]).unwrap();
    fails(
        with("b", &["--efi-vars", zeros.to_str().unwrap()]),
        "is not an EFI variable store (no firmware volume of non-volatile data at its start)",
    );
    // The 2 MiB build's store with the 4 MiB build's code.
    let small = Path::new("/usr/share/OVMF/OVMF_VARS.fd");
    if small.is_file() {
        fails(
            with("c", &["--efi-vars", small.to_str().unwrap()]),
            "use the VARS file built with this CODE file",
        );
    }
    // A store cut short.
    let cut = home.dir.join("cut.fd");
    std::fs::write(&cut, &std::fs::read(OVMF_VARS).unwrap()[..0x40000]).unwrap();
    fails(
        with("d", &["--efi-vars", cut.to_str().unwrap()]),
        "it is cut short or damaged",
    );
    // --efi-vars means nothing without --efi.
    let out = home.vk(&["create", "x", "--efi-vars", OVMF_VARS]);
    assert_eq!(out.status.code(), Some(2), "{}", support::home::text(&out));
}

/// A variable store as a firmware's VARS file begins (a firmware volume of non-volatile data:
/// zero vector, `EFI_SYSTEM_NV_DATA_FV_GUID`, its length, `_FVH`), erased (0xff) after that.
fn empty_store(size: u64) -> Vec<u8> {
    let mut b = vec![0xff; size as usize];
    b[..16].fill(0);
    b[16..32].copy_from_slice(&[
        0x8d, 0x2b, 0xf1, 0xff, 0x96, 0x76, 0x8b, 0x4c, 0xa9, 0x85, 0x27, 0x47, 0x07, 0x5b, 0x4f, 0x50,
    ]);
    b[0x20..0x28].copy_from_slice(&size.to_le_bytes());
    b[0x28..0x2c].copy_from_slice(b"_FVH");
    b
}

fn flash_probe_run(firmware: &Path, store: &Path) -> (Option<i32>, String) {
    let out = Command::new(VIRTKIT)
        .args([
            "run",
            "--firmware",
            firmware.to_str().unwrap(),
            "--efi-vars",
            store.to_str().unwrap(),
        ])
        .args(["--memory", "64M"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.code(), text)
}

#[test]
fn the_variable_store_is_a_cfi_flash_that_keeps_what_the_firmware_programs() {
    if !virtkit_testkit::require_kvm() {
        return;
    }
    let home = Home::new("efi", "flash");
    let firmware = home.dir.join("flash_probe.bin");
    std::fs::write(&firmware, Guest::FlashProbe.bytes()).unwrap();
    let store = home.dir.join("aux.img");
    let original = empty_store(FLASH_PROBE_STORE_SIZE);
    std::fs::write(&store, &original).unwrap();

    let mut counts = Vec::new();
    for (run, (found, programmed)) in [("ff", "01"), ("01", "02")].into_iter().enumerate() {
        let (code, out) = flash_probe_run(&firmware, &store);
        // OVMF's power-off port (SLP_EN at 0xb004) ends the run as a power-off.
        assert_eq!(code, Some(0), "run {run}:\n{out}");
        assert!(!out.contains("no power-off"), "run {run}:\n{out}");
        // OVMF's probe: after clear status the array byte (the GUID's first, 0x8d), after read
        // status a cleared status: flash, not RAM or ROM.
        assert!(
            out.contains("virtkit-guest: flash probe clear=8d status=00\n"),
            "run {run}:\n{out}"
        );
        assert!(
            out.contains(&format!("virtkit-guest: flash count={found}\n")),
            "run {run}:\n{out}"
        );
        assert!(
            out.contains("virtkit-guest: flash erase-status=80 erased=ff\n"),
            "run {run}:\n{out}"
        );
        assert!(
            out.contains(&format!("virtkit-guest: flash programmed={programmed}\n")),
            "run {run}:\n{out}"
        );
        // The PIIX4 PM function at 00:01.3, its PM block already on at 0x600.
        assert!(
            out.contains("virtkit-guest: pm id=71138086 pmba=00000601 misc=01\n"),
            "run {run}:\n{out}"
        );
        counts.push(std::fs::read(&store).unwrap()[FLASH_PROBE_COUNTER as usize]);
    }
    // The file has each run's count as the run ended, and nothing else changed.
    assert_eq!(counts, [0x01, 0x02]);
    let after = std::fs::read(&store).unwrap();
    assert_eq!(after.len(), original.len());
    let changed: Vec<usize> = (0..after.len()).filter(|&i| after[i] != original[i]).collect();
    assert_eq!(changed, [FLASH_PROBE_COUNTER as usize]);
}
