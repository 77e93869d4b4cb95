//! Reads the tables back from guest memory with a parser of its own, byte offsets from the ACPI
//! spec, so that a mistake in the builders (ours or the crate's) does not cancel out.

use std::collections::BTreeMap;

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::*;
use crate::layout::{ACPI_TABLES_END, ACPI_TABLES_START, RSDP_START};

const MEM_SIZE: usize = 2 << 20;
const CPU_COUNTS: [u8; 4] = [1, 2, 4, 255];

fn memory(size: usize) -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), size)]).unwrap()
}

fn read(mem: &GuestMemoryMmap, address: u64, len: usize) -> Vec<u8> {
    let mut buf = vec![0; len];
    mem.read_slice(&mut buf, GuestAddress(address)).unwrap();
    buf
}

fn le16(b: &[u8], offset: usize) -> u16 {
    u16::from_le_bytes(b[offset..offset + 2].try_into().unwrap())
}

fn le32(b: &[u8], offset: usize) -> u32 {
    u32::from_le_bytes(b[offset..offset + 4].try_into().unwrap())
}

fn le64(b: &[u8], offset: usize) -> u64 {
    u64::from_le_bytes(b[offset..offset + 8].try_into().unwrap())
}

fn sum(b: &[u8]) -> u8 {
    b.iter().fold(0u8, |acc, x| acc.wrapping_add(*x))
}

fn find_all(haystack: &[u8], needle: &[u8]) -> Vec<usize> {
    haystack
        .windows(needle.len())
        .enumerate()
        .filter(|(_, w)| *w == needle)
        .map(|(i, _)| i)
        .collect()
}

/// A table with a standard header, checked for what every table must get right.
fn sdt(mem: &GuestMemoryMmap, address: u64, signature: &[u8; 4]) -> Vec<u8> {
    assert!(
        (ACPI_TABLES_START..ACPI_TABLES_END).contains(&address),
        "{address:#x}"
    );
    let header = read(mem, address, 36);
    let table = read(mem, address, le32(&header, 4) as usize);
    assert!(address + table.len() as u64 <= ACPI_TABLES_END);
    assert_eq!(&table[0..4], signature);
    assert_eq!(sum(&table), 0, "{} checksum", String::from_utf8_lossy(signature));
    assert_eq!(&table[10..16], b"VIRTKT");
    assert_eq!(&table[16..24], b"VIRTKIT ");
    assert_eq!(le32(&table, 24), OEM_REVISION);
    table
}

/// The tables as an OS finds them: RSDP, then XSDT entries by signature, then what the FADT
/// points at.
struct Found {
    rsdp: Vec<u8>,
    xsdt: Vec<u8>,
    /// Signature -> (address, bytes), for the XSDT entries.
    listed: BTreeMap<[u8; 4], (u64, Vec<u8>)>,
    facs: (u64, Vec<u8>),
    dsdt: Vec<u8>,
}

impl Found {
    fn table(&self, signature: &[u8; 4]) -> &[u8] {
        &self.listed[signature].1
    }
}

fn find_tables(mem: &GuestMemoryMmap, rsdp_address: u64) -> Found {
    let rsdp = read(mem, rsdp_address, 36);
    assert_eq!(&rsdp[0..8], b"RSD PTR ");
    assert_eq!(sum(&rsdp[..20]), 0, "RSDP ACPI 1.0 checksum");
    assert_eq!(rsdp[15], 2, "RSDP revision");
    assert_eq!(le32(&rsdp, 20), 36, "RSDP length");
    assert_eq!(sum(&rsdp), 0, "RSDP extended checksum");
    assert_eq!(&rsdp[9..15], b"VIRTKT");

    let xsdt = sdt(mem, le64(&rsdp, 24), b"XSDT");
    let mut listed = BTreeMap::new();
    for entry in xsdt[36..].chunks(8) {
        let address = u64::from_le_bytes(entry.try_into().unwrap());
        let signature: [u8; 4] = read(mem, address, 4).try_into().unwrap();
        let table = sdt(mem, address, &signature);
        assert!(
            listed.insert(signature, (address, table)).is_none(),
            "duplicate {signature:?}"
        );
    }

    let fadt = &listed[b"FACP"].1;
    let facs_address = u64::from(le32(fadt, 36));
    let facs = read(mem, facs_address, 64);
    let dsdt = sdt(mem, le64(fadt, 140), b"DSDT");
    Found {
        rsdp,
        xsdt,
        facs: (facs_address, facs),
        dsdt,
        listed,
    }
}

fn write(num_cpus: u8) -> (GuestMemoryMmap, Found) {
    write_with(num_cpus, false)
}

/// The tables of `num_cpus` vCPUs, with the PS/2 keyboard and mouse if `ps2`.
fn write_with(num_cpus: u8, ps2: bool) -> (GuestMemoryMmap, Found) {
    let mem = memory(MEM_SIZE);
    let rsdp = write_acpi_tables(&mem, &AcpiConfig { num_cpus, ps2 }).unwrap();
    assert_eq!(rsdp, GuestAddress(RSDP_START));
    let found = find_tables(&mem, rsdp.0);
    (mem, found)
}

#[test]
fn acpi_rsdp_points_at_an_xsdt_listing_fadt_and_madt() {
    for n in [1, 4] {
        let (_, found) = write(n);
        assert_eq!(le32(&found.rsdp, 16), 0, "no RSDT");
        assert_eq!(found.xsdt[8], 1, "XSDT revision");
        let signatures: Vec<&[u8; 4]> = found.listed.keys().collect();
        assert_eq!(signatures, [b"APIC", b"FACP", b"MCFG"]);
    }
}

#[test]
fn acpi_fadt_describes_a_legacy_pc_with_a_fixed_power_button() {
    let (_, found) = write(2);
    let fadt = found.table(b"FACP");
    assert_eq!(fadt.len(), 276, "ACPI 6 FADT length");
    assert_eq!(fadt[8], 6, "FADT major revision");

    let (facs_address, facs) = &found.facs;
    assert_eq!(facs_address % 64, 0, "FACS alignment");
    assert_eq!(&facs[0..4], b"FACS");
    assert_eq!(le32(facs, 4), 64);
    assert_eq!(
        le64(fadt, 132),
        0,
        "X_FIRMWARE_CTRL unused when FIRMWARE_CTRL is set"
    );
    assert_eq!(u64::from(le32(fadt, 40)), le64(fadt, 140), "DSDT == X_DSDT");
    assert_eq!(found.dsdt[8], 2, "DSDT revision (64-bit integers)");

    assert_eq!(le16(fadt, 46), 9, "SCI_INT");
    assert_eq!(le32(fadt, 48), 0, "SMI_CMD");
    assert_eq!((fadt[52], fadt[53]), (0, 0), "ACPI_ENABLE/DISABLE");
    assert_eq!(le32(fadt, 56), 0x600, "PM1a_EVT_BLK");
    assert_eq!(le32(fadt, 60), 0, "PM1b_EVT_BLK");
    assert_eq!(le32(fadt, 64), 0x604, "PM1a_CNT_BLK");
    assert_eq!(le32(fadt, 68), 0, "PM1b_CNT_BLK");
    assert_eq!(le32(fadt, 72), 0, "PM2_CNT_BLK");
    assert_eq!(le32(fadt, 76), 0x608, "PM_TMR_BLK");
    assert_eq!((le32(fadt, 80), le32(fadt, 84)), (0, 0), "GPE blocks");
    assert_eq!(&fadt[88..94], &[4, 2, 0, 4, 0, 0], "PM1_EVT_LEN..GPE1_BLK_LEN");
    assert!(le16(fadt, 96) > 100 && le16(fadt, 98) > 1000, "no C2/C3");
    assert_eq!(fadt[108], 0x32, "CENTURY: the CMOS century register");
    assert_eq!(le16(fadt, 109), 0b01, "IAPC_BOOT_ARCH: LEGACY_DEVICES, no 8042");

    let flags = le32(fadt, 112);
    assert_ne!(flags & 1 << 0, 0, "WBINVD");
    assert_ne!(flags & 1 << 2, 0, "PROC_C1");
    assert_eq!(flags & 1 << 4, 0, "PWR_BUTTON clear: fixed-feature power button");
    assert_ne!(flags & 1 << 5, 0, "SLP_BUTTON set: no sleep button");
    assert_eq!(flags & 1 << 8, 0, "TMR_VAL_EXT clear: 24-bit timer");
    assert_eq!(flags & 1 << 10, 0, "no RESET_REG");
    assert_eq!(flags & 1 << 20, 0, "not HW_REDUCED_ACPI");
    assert_eq!(&fadt[116..128], &[0; 12], "RESET_REG");

    // GAS: space (1 = I/O), bit width, bit offset, access size, address.
    let gas = |offset: usize| {
        (
            fadt[offset],
            fadt[offset + 1],
            fadt[offset + 2],
            fadt[offset + 3],
            le64(fadt, offset + 4),
        )
    };
    assert_eq!(gas(148), (1, 32, 0, 2, 0x600), "X_PM1a_EVT_BLK");
    assert_eq!(gas(172), (1, 16, 0, 2, 0x604), "X_PM1a_CNT_BLK");
    assert_eq!(gas(208), (1, 32, 0, 3, 0x608), "X_PM_TMR_BLK");
    for (offset, name) in [
        (160, "PM1b_EVT"),
        (184, "PM1b_CNT"),
        (196, "PM2_CNT"),
        (220, "GPE0"),
        (232, "GPE1"),
    ] {
        assert_eq!(&fadt[offset..offset + 12], &[0; 12], "X_{name}_BLK");
    }
}

#[test]
fn acpi_madt_has_one_enabled_local_apic_per_cpu_an_ioapic_and_the_isa_overrides() {
    for n in CPU_COUNTS {
        let (_, found) = write(n);
        let madt = found.table(b"APIC");
        assert_eq!(le32(madt, 36), 0xfee0_0000, "local APIC address");
        assert_eq!(le32(madt, 40) & 1, 1, "PCAT_COMPAT");

        let mut lapics = Vec::new();
        let mut ioapics = Vec::new();
        let mut overrides = Vec::new();
        let mut nmis = Vec::new();
        let mut offset = 44;
        while offset < madt.len() {
            let (kind, len) = (madt[offset], usize::from(madt[offset + 1]));
            let e = &madt[offset..offset + len];
            match (kind, len) {
                (0, 8) => lapics.push((e[2], e[3], le32(e, 4))),
                (1, 12) => ioapics.push((e[2], le32(e, 4), le32(e, 8))),
                (2, 10) => overrides.push((e[2], e[3], le32(e, 4), le16(e, 8))),
                (4, 6) => nmis.push((e[2], le16(e, 3), e[5])),
                _ => panic!("unexpected MADT entry type {kind} length {len}"),
            }
            offset += len;
        }
        assert_eq!(offset, madt.len(), "entries fill the table exactly");

        assert_eq!(lapics.len(), usize::from(n));
        for (i, &(uid, apic_id, flags)) in lapics.iter().enumerate() {
            assert_eq!((usize::from(uid), usize::from(apic_id)), (i, i));
            assert_eq!(flags, 1, "enabled");
        }
        assert_eq!(ioapics, [(0, 0xfec0_0000, 0)], "I/O APIC id, address, GSI base");
        // (bus, IRQ, GSI, flags): only the SCI, active-high (01) level (11 << 2); IRQ0 stays on
        // pin 0 where KVM's default routing puts the PIT.
        assert_eq!(overrides, [(0, 9, 9, 0x000d)]);
        // (UID, flags, LINT): all processors, active-high edge, LINT1.
        assert_eq!(nmis, [(0xff, 0x0005, 1)]);
    }
}

/// Decodes an AML PkgLength at `b[0..]`: (value, bytes it took).
fn pkg_length(b: &[u8]) -> (usize, usize) {
    let follow = usize::from(b[0] >> 6);
    if follow == 0 {
        return (usize::from(b[0] & 0x3f), 1);
    }
    let mut value = usize::from(b[0] & 0x0f);
    for i in 0..follow {
        value |= usize::from(b[1 + i]) << (4 + 8 * i);
    }
    (value, 1 + follow)
}

/// Decodes an AML integer constant at `b[0..]`: (value, bytes it took).
fn aml_integer(b: &[u8]) -> (u64, usize) {
    match b[0] {
        0x00 => (0, 1),
        0x01 => (1, 1),
        0xff => (u64::MAX, 1),
        0x0a => (u64::from(b[1]), 2),
        0x0b => (u64::from(le16(b, 1)), 3),
        0x0c => (u64::from(le32(b, 1)), 5),
        0x0e => (le64(b, 1), 9),
        op => panic!("not an integer constant: {op:#x}"),
    }
}

#[test]
fn acpi_dsdt_has_s5_and_the_legacy_devices() {
    for n in CPU_COUNTS {
        let (_, found) = write(n);
        let dsdt = &found.dsdt;

        // Name (_S5_, Package (4) {5, 5, 0, 0}): NameOp, the name, PackageOp.
        let s5 = find_all(dsdt, b"\x08_S5_\x12");
        assert_eq!(s5.len(), 1);
        let package = &dsdt[s5[0] + 6..];
        let (_, len_bytes) = pkg_length(package);
        assert_eq!(package[len_bytes], 4, "NumElements");
        let mut rest = &package[len_bytes + 1..];
        let mut elements = Vec::new();
        for _ in 0..4 {
            let (value, used) = aml_integer(rest);
            elements.push(value);
            rest = &rest[used..];
        }
        assert_eq!(elements, [5, 5, 0, 0], "\\_S5 SLP_TYPa, SLP_TYPb");
        assert_eq!(elements[0], u64::from(crate::layout::pm::S5_SLP_TYP));

        // Name (_HID, EisaId ("PNP0501")): the compressed ID is 0x41d0 ("PNP") then 0x0501.
        assert_eq!(
            find_all(dsdt, b"\x08_HID\x0c\x41\xd0\x05\x01").len(),
            1,
            "PNP0501"
        );
        assert_eq!(
            find_all(dsdt, b"\x08_HID\x0c\x41\xd0\x0b\x00").len(),
            1,
            "PNP0B00"
        );
        // IO (Decode16, 0x3F8, 0x3F8, 1, 8) then IRQNoFlags () {4}.
        assert_eq!(
            find_all(dsdt, b"\x47\x01\xf8\x03\xf8\x03\x01\x08\x22\x10\x00").len(),
            1
        );
        // IO (Decode16, 0x70, 0x70, 1, 2) then IRQNoFlags () {8}.
        assert_eq!(
            find_all(dsdt, b"\x47\x01\x70\x00\x70\x00\x01\x02\x22\x00\x01").len(),
            1
        );
        // A Device (Cxxx) {Name (_HID, "ACPI0007") ...} per CPU.
        assert_eq!(find_all(dsdt, b"\x08_HID\x0dACPI0007\x00").len(), usize::from(n));
        // pvpanic: Name (_HID, "QEMU0001") with IO (Decode16, 0x505, 0x505, 1, 1).
        assert_eq!(find_all(dsdt, b"\x08_HID\x0dQEMU0001\x00").len(), 1, "pvpanic");
        assert_eq!(find_all(dsdt, b"\x47\x01\x05\x05\x05\x05\x01\x01").len(), 1);
        assert_eq!(find_all(dsdt, b"\x5b\x82").len(), usize::from(n) + 5, "devices");
    }
}

#[test]
fn acpi_dsdt_describes_the_ps2_keyboard_and_mouse_only_when_attached() {
    // Name (_HID, EisaId ("PNP0303")) and EisaId ("PNP0F13").
    let keyboard: &[u8] = b"\x08_HID\x0c\x41\xd0\x03\x03";
    let mouse: &[u8] = b"\x08_HID\x0c\x41\xd0\x0f\x13";
    let (_, without) = write_with(1, false);
    assert!(find_all(&without.dsdt, keyboard).is_empty());
    assert!(find_all(&without.dsdt, mouse).is_empty());
    let (_, with) = write_with(1, true);
    let dsdt = &with.dsdt;
    assert_eq!(find_all(dsdt, keyboard).len(), 1, "PNP0303");
    assert_eq!(find_all(dsdt, mouse).len(), 1, "PNP0F13");
    // IO (Decode16, 0x60, 0x60, 1, 1), IO (Decode16, 0x64, 0x64, 1, 1), IRQNoFlags () {1}.
    assert_eq!(
        find_all(
            dsdt,
            b"\x47\x01\x60\x00\x60\x00\x01\x01\x47\x01\x64\x00\x64\x00\x01\x01\x22\x02\x00"
        )
        .len(),
        1
    );
    // IRQNoFlags () {12}, then the end tag.
    assert_eq!(find_all(dsdt, b"\x22\x00\x10\x79").len(), 1);
}

#[test]
fn acpi_tables_for_255_cpus_fit_the_reserved_area() {
    let tables = build_tables(&AcpiConfig {
        num_cpus: 255,
        ps2: false,
    })
    .unwrap();
    let len = tables.blob(Blob::Tables).len() as u64;
    println!(
        "255 CPUs: tables blob {len} bytes of {} reserved",
        ACPI_TABLES_END - ACPI_TABLES_START
    );
    assert!(ACPI_TABLES_START + len <= ACPI_TABLES_END);
    write(255);
}

#[test]
fn acpi_too_large_tables_say_by_how_much() {
    let err = check_fits(Blob::Tables, 0x10000, ACPI_TABLES_START, ACPI_TABLES_END).unwrap_err();
    assert!(
        matches!(err, AcpiError::TooLarge { excess: 0x100, .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("256 bytes too small"), "{err}");
}

#[test]
fn acpi_too_small_guest_memory_is_an_error() {
    // No RAM at the ACPI area at all, then RAM that ends inside the tables.
    for size in [0x8_0000, ACPI_TABLES_START as usize + 100] {
        let mem = memory(size);
        let err = write_acpi_tables(
            &mem,
            &AcpiConfig {
                num_cpus: 4,
                ps2: false,
            },
        )
        .unwrap_err();
        assert!(
            matches!(err, AcpiError::GuestMemory { address, .. } if address == ACPI_TABLES_START),
            "{err:?}"
        );
    }
}

#[test]
fn acpi_zero_cpus_is_an_error() {
    let mem = memory(MEM_SIZE);
    let err = write_acpi_tables(
        &mem,
        &AcpiConfig {
            num_cpus: 0,
            ps2: false,
        },
    )
    .unwrap_err();
    assert!(matches!(err, AcpiError::NoCpus), "{err:?}");
}

/// What fw_cfg firmware will do: place the blobs elsewhere and run the loader commands.
#[test]
fn acpi_tables_link_at_any_address() {
    let tables = build_tables(&AcpiConfig {
        num_cpus: 4,
        ps2: false,
    })
    .unwrap();
    let (rsdp_address, tables_address) = (0xf_0010, 0x1_0040);
    let linked = tables.link(rsdp_address, tables_address).unwrap();
    let mem = memory(MEM_SIZE);
    mem.write_slice(linked.blob(Blob::Rsdp), GuestAddress(rsdp_address))
        .unwrap();
    mem.write_slice(linked.blob(Blob::Tables), GuestAddress(tables_address))
        .unwrap();

    // Not via find_tables: that one insists on the direct-boot area.
    let rsdp = read(&mem, rsdp_address, 36);
    assert_eq!((sum(&rsdp[..20]), sum(&rsdp)), (0, 0));
    let blob = linked.blob(Blob::Tables);
    let in_blob = |address: u64| -> &[u8] {
        let offset = (address - tables_address) as usize;
        &blob[offset..offset + le32(blob, offset + 4) as usize]
    };
    let xsdt = in_blob(le64(&rsdp, 24));
    assert_eq!(&xsdt[0..4], b"XSDT");
    for entry in xsdt[36..].chunks(8) {
        let table = in_blob(u64::from_le_bytes(entry.try_into().unwrap()));
        assert_eq!(sum(table), 0, "{}", String::from_utf8_lossy(&table[0..4]));
    }
    assert_eq!(sum(xsdt), 0);
    let fadt = in_blob(le64(xsdt, 36));
    assert_eq!(&in_blob(le64(fadt, 140))[0..4], b"DSDT");
    assert_eq!(u64::from(le32(fadt, 36)) % 64, 0, "FACS alignment");
}

#[test]
fn acpi_link_rejects_what_pointers_cannot_reach_or_misaligned_blobs() {
    let tables = build_tables(&AcpiConfig {
        num_cpus: 1,
        ps2: false,
    })
    .unwrap();
    // The DSDT, 64 bytes in, would be at 4 GiB: too high for the FADT's 32-bit DSDT field.
    let err = tables.link(RSDP_START, 0xffff_ffc0).unwrap_err();
    assert!(
        matches!(err, AcpiError::AddressTooHigh { size: 4, .. }),
        "{err:?}"
    );
    let err = tables.link(RSDP_START, ACPI_TABLES_START + 8).unwrap_err();
    assert!(matches!(err, AcpiError::Misaligned { align: 64, .. }), "{err:?}");
    let err = tables.link(RSDP_START + 4, ACPI_TABLES_START).unwrap_err();
    assert!(matches!(err, AcpiError::Misaligned { align: 16, .. }), "{err:?}");
}

/// Disassembles every table with ACPICA's `iasl` and recompiles the DSDT, as the reference check
/// that the AML is well-formed. Needs `iasl` (Debian: acpica-tools) on the PATH.
#[test]
fn acpi_tables_pass_iasl() {
    use std::process::Command;

    if Command::new("iasl").arg("-v").output().is_err() {
        virtkit_testkit::skip("iasl is not installed (Debian package acpica-tools)");
        return;
    }

    for (n, ps2) in [(1, false), (255, true)] {
        let (mem, found) = write_with(n, ps2);
        let dir = std::env::temp_dir().join(format!("virtkit-acpi-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut files = vec![
            ("dsdt", found.dsdt.clone()),
            ("xsdt", found.xsdt.clone()),
            ("facs", read(&mem, found.facs.0, 64)),
        ];
        for (signature, (_, table)) in &found.listed {
            files.push((std::str::from_utf8(signature).unwrap(), table.clone()));
        }
        for (name, bytes) in &files {
            let path = dir.join(format!("{}.dat", name.to_lowercase()));
            std::fs::write(&path, bytes).unwrap();
            let out = Command::new("iasl")
                .arg("-d")
                .arg(&path)
                .output()
                .expect("run iasl");
            let text =
                String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
            assert!(out.status.success(), "iasl -d {name}:\n{text}");
            assert!(!text.contains("Error"), "iasl -d {name}:\n{text}");
        }
        let out = Command::new("iasl")
            .arg("-p")
            .arg(dir.join("recompiled"))
            .arg(dir.join("dsdt.dsl"))
            .output()
            .expect("run iasl");
        let text = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "iasl dsdt.dsl:\n{text}");
        assert!(
            text.contains(" 0 Errors, 0 Warnings, 0 Remarks"),
            "iasl dsdt.dsl:\n{text}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

#[test]
fn acpi_mcfg_and_dsdt_describe_the_pci_host_bridge_and_its_ecam() {
    use crate::layout::{PCI_ECAM_SIZE, PCI_ECAM_START};

    let (_, found) = write(2);
    let mcfg = found.table(b"MCFG");
    assert_eq!(mcfg.len(), 44 + 16, "header, reserved, one allocation");
    assert_eq!(le64(mcfg, 44), PCI_ECAM_START);
    assert_eq!(le16(mcfg, 52), 0, "segment");
    // Bus 0 only: Linux scans every bus up to the MCFG's end through port 0xcf8.
    assert_eq!((mcfg[54], mcfg[55]), (0, 0), "buses");

    let dsdt = &found.dsdt;
    // Name (_HID, EisaId ("PNP0A03")) and the motherboard resource PNP0C02 holding the ECAM.
    assert_eq!(
        find_all(dsdt, b"\x08_HID\x0c\x41\xd0\x0a\x03").len(),
        1,
        "PNP0A03"
    );
    assert_eq!(
        find_all(dsdt, b"\x08_HID\x0c\x41\xd0\x0c\x02").len(),
        1,
        "PNP0C02"
    );
    let mut memory32_fixed = vec![0x86, 0x09, 0x00, 0x01];
    memory32_fixed.extend_from_slice(&(PCI_ECAM_START as u32).to_le_bytes());
    memory32_fixed.extend_from_slice(&(PCI_ECAM_SIZE as u32).to_le_bytes());
    assert_eq!(find_all(dsdt, &memory32_fixed).len(), 1);
    // IO (Decode16, 0xCF8, 0xCF8, 1, 8) in the host bridge's _CRS.
    assert_eq!(find_all(dsdt, b"\x47\x01\xf8\x0c\xf8\x0c\x01\x08").len(), 1);
    // Name (_PRT, Package (128) {...}): 32 slots, 4 pins each.
    let prt = find_all(dsdt, b"\x08_PRT\x12");
    assert_eq!(prt.len(), 1);
    let package = &dsdt[prt[0] + 6..];
    let (_, len_bytes) = pkg_length(package);
    assert_eq!(package[len_bytes], 128, "NumElements");
}
