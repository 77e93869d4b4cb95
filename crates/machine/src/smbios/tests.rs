//! The tables are parsed back here by a reader written from the SMBIOS specification, not from
//! the builder: anchors, checksums, the structure walk, string sets and the UUID byte order.

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::*;
use crate::acpi::AcpiConfig;
use crate::boot::{e820_map, E820_RAM};
use crate::devices::fw_cfg::keys;
use crate::machine::firmware_config;

const UUID_TEXT: &str = "3f2b8a7e-1c4d-4e5f-9a6b-7c8d9e0f1a2b";

fn uuid_from_text(text: &str) -> [u8; 16] {
    let hex: String = text.chars().filter(|c| *c != '-').collect();
    let mut out = [0u8; 16];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap();
    }
    out
}

fn identity() -> SmbiosIdentity {
    SmbiosIdentity {
        uuid: uuid_from_text(UUID_TEXT),
        serial_number: "VK-3F2B8A7E1C4D".into(),
    }
}

/// The entry point's fields, read by offset from the specification's table.
#[derive(Debug)]
struct EntryPoint {
    version: (u8, u8),
    max_structure_size: u16,
    table_length: u16,
    table_address: u32,
    structure_count: u16,
}

fn checksum_ok(bytes: &[u8]) -> bool {
    bytes.iter().map(|b| u32::from(*b)).sum::<u32>() % 256 == 0
}

fn parse_entry_point(ep: &[u8]) -> EntryPoint {
    assert_eq!(&ep[0..4], b"_SM_", "anchor");
    let length = usize::from(ep[5]);
    assert_eq!(length, 31, "entry point length");
    assert_eq!(ep.len(), length);
    assert!(checksum_ok(&ep[..length]), "entry point checksum: {ep:02x?}");
    // What SeaBIOS checks: the first 16 bytes on their own.
    assert!(checksum_ok(&ep[..16]), "first 16 bytes' checksum: {ep:02x?}");
    assert_eq!(&ep[16..21], b"_DMI_", "intermediate anchor");
    assert!(checksum_ok(&ep[16..31]), "intermediate checksum: {ep:02x?}");
    assert_eq!(
        ep[30],
        (ep[6] << 4) | ep[7],
        "BCD revision agrees with the version"
    );
    EntryPoint {
        version: (ep[6], ep[7]),
        max_structure_size: u16::from_le_bytes([ep[8], ep[9]]),
        table_length: u16::from_le_bytes([ep[22], ep[23]]),
        table_address: u32::from_le_bytes([ep[24], ep[25], ep[26], ep[27]]),
        structure_count: u16::from_le_bytes([ep[28], ep[29]]),
    }
}

#[derive(Debug)]
struct Parsed {
    kind: u8,
    handle: u16,
    formatted: Vec<u8>,
    strings: Vec<String>,
    total_len: usize,
}

impl Parsed {
    /// String field at `offset` in the formatted area: None for 0.
    fn string_at(&self, offset: usize) -> Option<&str> {
        match self.formatted[offset] {
            0 => None,
            n => Some(self.strings[usize::from(n) - 1].as_str()),
        }
    }
}

/// Walks the table: header, formatted area, strings up to the double NUL; stops after type 127
/// and checks that is where the table ends.
fn walk(table: &[u8]) -> Vec<Parsed> {
    let mut out = Vec::new();
    let mut at = 0;
    loop {
        assert!(at + 4 <= table.len(), "header past the end at {at}");
        let kind = table[at];
        let len = usize::from(table[at + 1]);
        assert!(len >= 4, "structure at {at} has length {len}");
        let handle = u16::from_le_bytes([table[at + 2], table[at + 3]]);
        let formatted = table[at..at + len].to_vec();
        let mut end = at + len;
        let mut strings = Vec::new();
        if table[end] == 0 && table[end + 1] == 0 {
            end += 2;
        } else {
            loop {
                let nul = table[end..].iter().position(|b| *b == 0).expect("string NUL") + end;
                strings.push(String::from_utf8(table[end..nul].to_vec()).unwrap());
                end = nul + 1;
                if table[end] == 0 {
                    end += 1;
                    break;
                }
            }
        }
        out.push(Parsed {
            kind,
            handle,
            formatted,
            strings,
            total_len: end - at,
        });
        at = end;
        if kind == 127 {
            assert_eq!(at, table.len(), "bytes after the end-of-table structure");
            return out;
        }
    }
}

fn find(structures: &[Parsed], kind: u8) -> &Parsed {
    structures
        .iter()
        .find(|s| s.kind == kind)
        .unwrap_or_else(|| panic!("no type {kind}"))
}

/// The UUID text a 2.6+ reader (Linux's `%pUl`, dmidecode) prints from the stored bytes.
fn uuid_text_as_read(stored: &[u8]) -> String {
    let b = stored;
    format!(
        "{:02x}{:02x}{:02x}{:02x}-{:02x}{:02x}-{:02x}{:02x}-{:02x}{:02x}-{:02x}{:02x}{:02x}{:02x}{:02x}{:02x}",
        b[3], b[2], b[1], b[0], b[5], b[4], b[7], b[6], b[8], b[9], b[10], b[11], b[12], b[13], b[14], b[15]
    )
}

#[test]
fn entry_point_checksums_and_fields_match_the_table() {
    let tables = SmbiosTables::build(&identity(), BiosInformation::Virtkit, 0xf0020).unwrap();
    let ep = parse_entry_point(tables.entry_point());
    assert_eq!(ep.version, (2, 8));
    assert_eq!(ep.table_address, 0xf0020);
    assert_eq!(usize::from(ep.table_length), tables.structures().len());
    let structures = walk(tables.structures());
    assert_eq!(usize::from(ep.structure_count), structures.len());
    let largest = structures.iter().map(|s| s.total_len).max().unwrap();
    assert_eq!(usize::from(ep.max_structure_size), largest, "{ep:?}");
}

#[test]
fn direct_boot_tables_have_types_0_1_3_32_127_with_unique_handles() {
    let tables = SmbiosTables::build(&identity(), BiosInformation::Virtkit, 0).unwrap();
    let structures = walk(tables.structures());
    let kinds: Vec<u8> = structures.iter().map(|s| s.kind).collect();
    assert_eq!(kinds, [0, 1, 3, 32, 127]);
    let mut handles: Vec<u16> = structures.iter().map(|s| s.handle).collect();
    handles.sort_unstable();
    handles.dedup();
    assert_eq!(handles.len(), structures.len(), "{structures:?}");
    let lengths: Vec<usize> = structures.iter().map(|s| s.formatted.len()).collect();
    // The 2.8 formatted-area sizes: type 0 (2.4+), 1 (2.4+), 3 (2.7+, no contained elements).
    assert_eq!(lengths, [0x18, 0x1b, 0x16, 0x0b, 4]);
}

#[test]
fn bios_information_names_virtkit_its_version_and_a_release_date() {
    let tables = SmbiosTables::build(&identity(), BiosInformation::Virtkit, 0).unwrap();
    let structures = walk(tables.structures());
    let bios = find(&structures, 0);
    assert_eq!(bios.string_at(4), Some("virtkit"), "vendor");
    assert_eq!(bios.string_at(5), Some(env!("CARGO_PKG_VERSION")), "version");
    let date = bios.string_at(8).expect("release date");
    let parts: Vec<&str> = date.split('/').collect();
    assert_eq!(
        parts.iter().map(|p| p.len()).collect::<Vec<_>>(),
        [2, 2, 4],
        "mm/dd/yyyy: {date}"
    );
    assert!(
        parts.iter().all(|p| p.chars().all(|c| c.is_ascii_digit())),
        "{date}"
    );
    assert_eq!(bios.formatted[0x13] & (1 << 4), 1 << 4, "virtual machine bit");
    assert_eq!(bios.formatted[0x13] & (1 << 3), 0, "UEFI bit: there is no UEFI");
}

#[test]
fn system_information_has_names_serial_and_uuid_in_smbios_byte_order() {
    let tables = SmbiosTables::build(&identity(), BiosInformation::Virtkit, 0).unwrap();
    let structures = walk(tables.structures());
    let system = find(&structures, 1);
    assert_eq!(system.string_at(4), Some("virtkit"), "manufacturer");
    assert_eq!(system.string_at(5), Some("virtkit Virtual Machine"), "product");
    assert_eq!(system.string_at(6), Some(env!("CARGO_PKG_VERSION")), "version");
    assert_eq!(system.string_at(7), Some("VK-3F2B8A7E1C4D"), "serial number");
    assert_eq!(
        system.formatted[8..24],
        [0x7e, 0x8a, 0x2b, 0x3f, 0x4d, 0x1c, 0x5f, 0x4e, 0x9a, 0x6b, 0x7c, 0x8d, 0x9e, 0x0f, 0x1a, 0x2b],
        "first three fields little-endian, the rest as written"
    );
    assert_eq!(uuid_text_as_read(&system.formatted[8..24]), UUID_TEXT);
    assert_eq!(system.formatted[24], 0x06, "wake-up type: power switch");
    assert!(system.string_at(25).is_some(), "SKU");
    assert_eq!(system.string_at(26), Some("virtkit"), "family");
}

#[test]
fn chassis_is_other_and_boot_information_reports_no_errors() {
    let tables = SmbiosTables::build(&identity(), BiosInformation::Virtkit, 0).unwrap();
    let structures = walk(tables.structures());
    let chassis = find(&structures, 3);
    assert_eq!(chassis.string_at(4), Some("virtkit"));
    assert_eq!(chassis.formatted[5], 0x01, "chassis type: other");
    let boot = find(&structures, 32);
    assert_eq!(boot.formatted[10], 0, "boot status: no errors");
}

#[test]
fn no_identity_gives_a_zero_uuid_and_serial_0() {
    let tables = SmbiosTables::build(&SmbiosIdentity::default(), BiosInformation::Virtkit, 0).unwrap();
    let structures = walk(tables.structures());
    let system = find(&structures, 1);
    assert_eq!(system.formatted[8..24], [0; 16]);
    assert_eq!(system.string_at(7), Some("0"));
}

#[test]
fn firmware_tables_leave_type_0_and_handle_0_to_seabios() {
    let tables = SmbiosTables::build(&identity(), BiosInformation::FromFirmware, 0).unwrap();
    // SeaBIOS takes a 31-byte `_SM_` anchor whose table length is the tables file's size.
    let ep = parse_entry_point(tables.entry_point());
    assert_eq!(usize::from(ep.table_length), tables.structures().len());
    let structures = walk(tables.structures());
    assert_eq!(usize::from(ep.structure_count), structures.len());
    assert!(structures.iter().all(|s| s.kind != 0), "{structures:?}");
    assert!(
        structures.iter().all(|s| s.handle != 0),
        "SeaBIOS's type 0 has handle 0"
    );
    assert_eq!(
        uuid_text_as_read(&find(&structures, 1).formatted[8..24]),
        UUID_TEXT
    );
}

/// What a firmware boot hands SeaBIOS: the anchor and tables files it accepts, and QEMU's UUID
/// item in text order.
#[test]
fn firmware_boot_gives_seabios_the_smbios_files_and_the_uuid_item() {
    let memory = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 64 << 20)]).unwrap();
    let fw_cfg = firmware_config(
        &memory,
        64 << 20,
        1,
        &AcpiConfig {
            num_cpus: 1,
            ps2: false,
        },
        &identity(),
    )
    .unwrap();
    let anchor = fw_cfg
        .item(fw_cfg.file_key("etc/smbios/smbios-anchor").expect("anchor file"))
        .unwrap();
    let tables = fw_cfg
        .item(fw_cfg.file_key("etc/smbios/smbios-tables").expect("tables file"))
        .unwrap();
    let ep = parse_entry_point(anchor);
    assert_eq!(
        usize::from(ep.table_length),
        tables.len(),
        "SeaBIOS refuses a size mismatch"
    );
    let structures = walk(tables);
    assert!(
        structures.iter().all(|s| s.kind != 0),
        "SeaBIOS adds its own type 0"
    );
    let system = find(&structures, 1);
    assert_eq!(uuid_text_as_read(&system.formatted[8..24]), UUID_TEXT);
    assert_eq!(system.string_at(7), Some("VK-3F2B8A7E1C4D"));
    assert_eq!(fw_cfg.item(keys::UUID), Some(&uuid_from_text(UUID_TEXT)[..]));
}

#[test]
fn strings_with_nul_and_tables_too_large_are_refused() {
    let nul = SmbiosIdentity {
        serial_number: "VK-1\0".into(),
        ..identity()
    };
    let e = SmbiosTables::build(&nul, BiosInformation::Virtkit, 0).unwrap_err();
    assert!(
        matches!(
            e,
            SmbiosError::NulInString {
                field: "serial number",
                ..
            }
        ),
        "{e}"
    );
    let huge = SmbiosIdentity {
        serial_number: "9".repeat(70_000),
        ..identity()
    };
    let e = SmbiosTables::build(&huge, BiosInformation::Virtkit, 0).unwrap_err();
    assert!(matches!(e, SmbiosError::TooLarge { .. }), "{e}");
    assert!(e.to_string().contains("serial number"), "{e}");
}

#[test]
fn an_empty_serial_number_is_string_number_0() {
    let empty = SmbiosIdentity {
        serial_number: String::new(),
        ..identity()
    };
    let tables = SmbiosTables::build(&empty, BiosInformation::Virtkit, 0).unwrap();
    let structures = walk(tables.structures());
    let system = find(&structures, 1);
    assert_eq!(system.string_at(7), None);
    assert_eq!(system.string_at(6), Some(env!("CARGO_PKG_VERSION")));
}

#[test]
fn direct_boot_writes_an_entry_point_linux_finds_outside_ram_and_acpi() {
    let memory = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 2 << 20)]).unwrap();
    write_smbios_tables(&memory, &identity()).unwrap();
    // Linux's scan: every 16 bytes from 0xF0000 to 1 MiB, the first `_SM_` wins.
    let mut area = vec![0u8; (SMBIOS_END - 0xf0000) as usize];
    memory.read_slice(&mut area, GuestAddress(0xf0000)).unwrap();
    let found = (0..area.len())
        .step_by(16)
        .find(|at| &area[*at..*at + 4] == b"_SM_")
        .expect("no _SM_ anchor in 0xF0000..0x100000");
    let ep = parse_entry_point(&area[found..found + 31]);
    assert_eq!(0xf0000 + found as u64, SMBIOS_START);
    let mut table = vec![0u8; usize::from(ep.table_length)];
    memory
        .read_slice(&mut table, GuestAddress(u64::from(ep.table_address)))
        .unwrap();
    let structures = walk(&table);
    assert_eq!(find(&structures, 1).string_at(7), Some("VK-3F2B8A7E1C4D"));

    let end = u64::from(ep.table_address) + u64::from(ep.table_length);
    assert!(end <= SMBIOS_END);
    assert!(
        u64::from(ep.table_address) >= SMBIOS_START + 31,
        "table overlaps the entry point"
    );
    for size in [64u64 << 20, 4 << 30] {
        for e in e820_map(size).iter().filter(|e| e.kind == E820_RAM) {
            assert!(
                e.address + e.size <= SMBIOS_START || e.address >= SMBIOS_END,
                "e820 reports the SMBIOS area as RAM: {e:?}"
            );
        }
    }
}

/// dmidecode, when the host has it, reads a dump the way it reads `/dev/mem`: the entry point
/// at offset 0 and the table at the address it gives (here 0x20, as `--dump-bin` writes).
#[test]
fn dmidecode_reads_the_tables() {
    let Some(dmidecode) = ["/usr/sbin/dmidecode", "/sbin/dmidecode", "/usr/bin/dmidecode"]
        .into_iter()
        .map(std::path::Path::new)
        .find(|p| p.exists())
    else {
        println!("SKIPPED: dmidecode is not installed (apt-get install dmidecode)");
        return;
    };
    let tables = SmbiosTables::build(&identity(), BiosInformation::Virtkit, 0x20).unwrap();
    let mut dump = tables.entry_point().to_vec();
    dump.resize(0x20, 0);
    dump.extend_from_slice(tables.structures());
    let path = std::env::temp_dir().join(format!("virtkit-smbios-{}.bin", std::process::id()));
    std::fs::write(&path, &dump).unwrap();
    let output = std::process::Command::new(dmidecode)
        .arg("--from-dump")
        .arg(&path)
        .output()
        .unwrap();
    std::fs::remove_file(&path).ok();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stdout}\n{stderr}");
    assert!(
        stderr.trim().is_empty(),
        "dmidecode complained: {stderr}\n{stdout}"
    );
    for expected in [
        "SMBIOS 2.8 present.",
        "5 structures occupying",
        "Vendor: virtkit",
        concat!("Version: ", env!("CARGO_PKG_VERSION")),
        "Manufacturer: virtkit",
        "Product Name: virtkit Virtual Machine",
        "Serial Number: VK-3F2B8A7E1C4D",
        &format!("UUID: {UUID_TEXT}"),
        "Wake-up Type: Power Switch",
        "Family: virtkit",
        "Type: Other",
        "Status: No errors detected",
        "End Of Table",
        "System is a virtual machine",
    ] {
        assert!(stdout.contains(expected), "no `{expected}` in:\n{stdout}");
    }
    assert!(!stdout.contains("UEFI"), "{stdout}");
}
