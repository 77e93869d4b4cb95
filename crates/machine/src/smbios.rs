//! SMBIOS tables: how the guest learns who made the machine, its product name, serial number and
//! UUID (Linux's `/sys/class/dmi/id/*`, `dmidecode`, cloud-init's instance checks).
//!
//! We build an SMBIOS 2.8 structure table and its 32-bit (`_SM_` / `_DMI_`) entry point:
//!
//! | type | what | notes |
//! |---|---|---|
//! | 0 | BIOS information | vendor `virtkit`, version = crate version; only when no firmware describes itself |
//! | 1 | system information | `virtkit` / `virtkit Virtual Machine`, serial number, UUID, wake-up by power switch |
//! | 3 | chassis | type "Other" |
//! | 32 | system boot information | "no errors detected" |
//! | 127 | end of table | |
//!
//! Where they go depends on the boot:
//!
//! - a direct kernel boot gets the entry point at [`SMBIOS_START`] and the structures right
//!   after it ([`write_smbios_tables`]); Linux finds them by scanning 0xF0000..0x100000 on
//!   16-byte boundaries for `_SM_`. The e820 map leaves that range out of RAM.
//! - a firmware boot hands the unplaced entry point and structures to SeaBIOS as the fw_cfg files
//!   [`FW_CFG_ANCHOR_FILE`] and [`FW_CFG_TABLES_FILE`], as QEMU does. SeaBIOS (1.16,
//!   `smbios_romfile_setup`) accepts an anchor of exactly 31 bytes starting with `_SM_`, refuses
//!   a tables file whose size differs from the anchor's structure table length, places the
//!   structures itself, fills in the table address and both checksums, and adds its own type 0
//!   when the tables have none: so the firmware path leaves type 0 out
//!   ([`BiosInformation::FromFirmware`]) and the guest sees SeaBIOS as its BIOS.
//!
//! The UUID is stored the way SMBIOS 2.6 and later define it: the first three fields
//! (`time_low`, `time_mid`, `time_hi_and_version`) little-endian, the rest in text order, so a
//! guest that reads a 2.6+ table (Linux, dmidecode, SeaBIOS) prints the same text we were given.

use vm_memory::{Bytes, GuestAddress, GuestMemory};

use crate::layout::{ACPI_TABLES_END, SMBIOS_END, SMBIOS_START, SMBIOS_TABLES_START};

#[cfg(test)]
mod tests;

/// The fw_cfg file that carries the entry point to the firmware.
pub const FW_CFG_ANCHOR_FILE: &str = "etc/smbios/smbios-anchor";
/// The fw_cfg file that carries the structure table to the firmware.
pub const FW_CFG_TABLES_FILE: &str = "etc/smbios/smbios-tables";

/// Size of the 32-bit entry point structure (SMBIOS 2.1 to 2.8).
pub const ENTRY_POINT_SIZE: usize = 0x1f;

// The layout: a 16-byte-aligned entry point where Linux scans, after the ACPI tables, and the
// structures after the entry point.
const _: () = assert!(
    SMBIOS_START & 0xf == 0
        && SMBIOS_START >= ACPI_TABLES_END
        && SMBIOS_TABLES_START >= SMBIOS_START + ENTRY_POINT_SIZE as u64
        && SMBIOS_TABLES_START < SMBIOS_END
        && SMBIOS_END <= 0x10_0000
);

/// The SMBIOS version the tables claim: 2.8, the newest before 3.0's 64-bit entry point, and
/// the one whose structure layouts we use in full. Linux, dmidecode and SeaBIOS all read it.
pub const SMBIOS_MAJOR: u8 = 2;
pub const SMBIOS_MINOR: u8 = 8;

/// Vendor of the BIOS (type 0), and manufacturer of the system (type 1) and chassis (type 3).
pub const MANUFACTURER: &str = "virtkit";
/// Product name (type 1).
pub const PRODUCT_NAME: &str = "virtkit Virtual Machine";
/// Product family (type 1).
pub const FAMILY: &str = "virtkit";
/// SKU number (type 1): the one machine type virtkit builds.
pub const SKU: &str = "x86_64";
/// Version strings (BIOS, system, chassis): the machine crate's version.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
/// BIOS release date (type 0), `mm/dd/yyyy` as SMBIOS wants it. Fixed, not the build date, so
/// that a guest sees the same tables from every build of one version; bump it with the tables.
pub const BIOS_RELEASE_DATE: &str = "11/22/2026";

/// Structure types we emit.
pub mod types {
    pub const BIOS_INFORMATION: u8 = 0;
    pub const SYSTEM_INFORMATION: u8 = 1;
    pub const CHASSIS: u8 = 3;
    pub const SYSTEM_BOOT_INFORMATION: u8 = 32;
    pub const END_OF_TABLE: u8 = 127;
}

/// Type 1 wake-up type: power switch.
pub const WAKE_UP_POWER_SWITCH: u8 = 0x06;
/// Type 3 chassis type: other.
pub const CHASSIS_OTHER: u8 = 0x01;
/// Type 3 boot-up, power supply and thermal state: safe.
const STATE_SAFE: u8 = 0x03;
/// Type 3 security status: unknown.
const SECURITY_UNKNOWN: u8 = 0x02;
/// Type 0 characteristics bit 3: "BIOS characteristics are not supported".
const CHARACTERISTICS_NOT_SUPPORTED: u64 = 1 << 3;
/// Type 0 extension byte 2: bit 2 "targeted content distribution" (as SeaBIOS and QEMU set
/// it; Windows' SVVP wants it), bit 4 "the SMBIOS table describes a virtual machine". Bit 3,
/// "UEFI is supported", stays clear: there is no UEFI.
const EXTENSION_2: u8 = (1 << 2) | (1 << 4);

/// What identifies this machine to its guest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SmbiosIdentity {
    /// The system UUID in text order (the bytes of `3f2b8a7e-1c4d-...` read left to right).
    pub uuid: [u8; 16],
    /// The system serial number.
    pub serial_number: String,
}

impl Default for SmbiosIdentity {
    /// A machine without an identity: an all-zero UUID (SMBIOS: "not present") and serial "0".
    fn default() -> Self {
        SmbiosIdentity {
            uuid: [0; 16],
            serial_number: "0".into(),
        }
    }
}

/// Who describes the BIOS (type 0).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BiosInformation {
    /// We do: a direct kernel boot has no firmware of its own.
    Virtkit,
    /// The firmware does (SeaBIOS adds its own type 0 to tables that have none).
    FromFirmware,
}

/// Why the tables could not be built or written.
#[derive(Debug, thiserror::Error)]
pub enum SmbiosError {
    #[error("the SMBIOS {field} {value:?} contains a NUL byte; SMBIOS strings end at NUL, so remove it")]
    NulInString { field: &'static str, value: String },
    #[error(
        "the SMBIOS structure table is {size} bytes; it must fit in {available} bytes (a shorter serial number would fit)"
    )]
    TooLarge { size: usize, available: usize },
    #[error("cannot write the SMBIOS {what} to guest memory at {address:#x}")]
    GuestMemory {
        what: &'static str,
        address: u64,
        #[source]
        source: vm_memory::GuestMemoryError,
    },
}

/// An entry point and the structure table it points to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SmbiosTables {
    entry_point: [u8; ENTRY_POINT_SIZE],
    structures: Vec<u8>,
}

impl SmbiosTables {
    /// Builds the tables for `identity`, with the entry point saying the structures are at
    /// `table_address` (firmware that places them itself overwrites it).
    pub fn build(
        identity: &SmbiosIdentity,
        bios: BiosInformation,
        table_address: u32,
    ) -> Result<SmbiosTables, SmbiosError> {
        let mut structures = Vec::new();
        if bios == BiosInformation::Virtkit {
            structures.push(bios_information()?);
        }
        structures.push(system_information(identity)?);
        structures.push(chassis()?);
        structures.push(system_boot_information()?);
        structures.push(Structure::new(types::END_OF_TABLE).finish());

        let table: Vec<u8> = structures.concat();
        let available = usize::from(u16::MAX).min((SMBIOS_END - SMBIOS_TABLES_START) as usize);
        let too_large = || SmbiosError::TooLarge {
            size: table.len(),
            available,
        };
        if table.len() > available {
            return Err(too_large());
        }
        let table_length = u16::try_from(table.len()).map_err(|_| too_large())?;
        let max_structure_size = structures.iter().map(Vec::len).max().unwrap_or(0);
        let entry_point = entry_point(
            table_length,
            table_address,
            structures.len() as u16,
            u16::try_from(max_structure_size).map_err(|_| too_large())?,
        );
        Ok(SmbiosTables {
            entry_point,
            structures: table,
        })
    }

    /// The 31-byte `_SM_` entry point.
    pub fn entry_point(&self) -> &[u8; ENTRY_POINT_SIZE] {
        &self.entry_point
    }

    /// The structure table.
    pub fn structures(&self) -> &[u8] {
        &self.structures
    }
}

/// Writes the tables for a direct kernel boot: the entry point at [`SMBIOS_START`], the
/// structures at [`SMBIOS_TABLES_START`]. The structures go first so that a failure never leaves
/// an entry point pointing at nothing.
pub fn write_smbios_tables<M: GuestMemory>(mem: &M, identity: &SmbiosIdentity) -> Result<(), SmbiosError> {
    let tables = SmbiosTables::build(identity, BiosInformation::Virtkit, SMBIOS_TABLES_START as u32)?;
    for (what, data, address) in [
        ("structure table", tables.structures(), SMBIOS_TABLES_START),
        ("entry point", &tables.entry_point()[..], SMBIOS_START),
    ] {
        mem.write_slice(data, GuestAddress(address))
            .map_err(|source| SmbiosError::GuestMemory {
                what,
                address,
                source,
            })?;
    }
    tracing::debug!(
        entry_point = format_args!("{SMBIOS_START:#x}"),
        table_len = tables.structures().len(),
        "SMBIOS tables written"
    );
    Ok(())
}

/// The UUID as SMBIOS 2.6+ stores it: `time_low`, `time_mid` and `time_hi_and_version`
/// byte-swapped (little-endian), the clock sequence and node as in the text.
pub fn smbios_uuid_bytes(uuid: &[u8; 16]) -> [u8; 16] {
    let mut out = *uuid;
    out[0..4].reverse();
    out[4..6].reverse();
    out[6..8].reverse();
    out
}

/// The 8-bit sum of `bytes`; a valid checksummed range sums to 0.
fn sum(bytes: &[u8]) -> u8 {
    bytes.iter().fold(0u8, |acc, b| acc.wrapping_add(*b))
}

/// The 32-bit entry point: anchor, checksum over all 31 bytes, length, version, largest
/// structure, the `_DMI_` intermediate anchor with its checksum over bytes 0x10..0x1f, the
/// table's length and address, the structure count and the BCD version.
fn entry_point(
    table_length: u16,
    table_address: u32,
    structure_count: u16,
    max_structure_size: u16,
) -> [u8; ENTRY_POINT_SIZE] {
    let mut ep = [0u8; ENTRY_POINT_SIZE];
    ep[0x00..0x04].copy_from_slice(b"_SM_");
    ep[0x05] = ENTRY_POINT_SIZE as u8;
    ep[0x06] = SMBIOS_MAJOR;
    ep[0x07] = SMBIOS_MINOR;
    ep[0x08..0x0a].copy_from_slice(&max_structure_size.to_le_bytes());
    // 0x0a: entry point revision 0 (the 2.1 layout); 0x0b..0x10: formatted area, zeros.
    ep[0x10..0x15].copy_from_slice(b"_DMI_");
    ep[0x16..0x18].copy_from_slice(&table_length.to_le_bytes());
    ep[0x18..0x1c].copy_from_slice(&table_address.to_le_bytes());
    ep[0x1c..0x1e].copy_from_slice(&structure_count.to_le_bytes());
    ep[0x1e] = (SMBIOS_MAJOR << 4) | SMBIOS_MINOR;
    // The intermediate checksum first: the whole-structure checksum covers it.
    ep[0x15] = sum(&ep[0x10..]).wrapping_neg();
    ep[0x04] = sum(&ep).wrapping_neg();
    ep
}

/// One structure being built: the formatted area, then its strings.
struct Structure {
    formatted: Vec<u8>,
    strings: Vec<u8>,
    string_count: u8,
}

impl Structure {
    /// A structure of type `kind`; its handle is `kind << 8`, QEMU's convention, which keeps
    /// handle 0 free for the type 0 SeaBIOS adds.
    fn new(kind: u8) -> Structure {
        let mut formatted = vec![kind, 0];
        formatted.extend_from_slice(&(u16::from(kind) << 8).to_le_bytes());
        Structure {
            formatted,
            strings: Vec::new(),
            string_count: 0,
        }
    }

    fn u8(&mut self, value: u8) -> &mut Self {
        self.formatted.push(value);
        self
    }

    fn u16(&mut self, value: u16) -> &mut Self {
        self.formatted.extend_from_slice(&value.to_le_bytes());
        self
    }

    fn u32(&mut self, value: u32) -> &mut Self {
        self.formatted.extend_from_slice(&value.to_le_bytes());
        self
    }

    fn u64(&mut self, value: u64) -> &mut Self {
        self.formatted.extend_from_slice(&value.to_le_bytes());
        self
    }

    fn bytes(&mut self, value: &[u8]) -> &mut Self {
        self.formatted.extend_from_slice(value);
        self
    }

    /// A string field: the string's 1-based number in the set, or 0 ("none") when empty.
    fn string(&mut self, field: &'static str, value: &str) -> Result<&mut Self, SmbiosError> {
        if value.contains('\0') {
            return Err(SmbiosError::NulInString {
                field,
                value: value.into(),
            });
        }
        if value.is_empty() {
            return Ok(self.u8(0));
        }
        self.string_count += 1;
        self.strings.extend_from_slice(value.as_bytes());
        self.strings.push(0);
        let number = self.string_count;
        Ok(self.u8(number))
    }

    /// The bytes: the formatted area with its length, each string NUL-terminated, then the
    /// terminating NUL (two NULs when there are no strings).
    fn finish(mut self) -> Vec<u8> {
        self.formatted[1] = self.formatted.len() as u8;
        let mut out = self.formatted;
        if self.strings.is_empty() {
            out.extend_from_slice(&[0, 0]);
        } else {
            out.extend_from_slice(&self.strings);
            out.push(0);
        }
        out
    }
}

/// The crate version's major and minor numbers, for type 0's "system BIOS release".
fn version_numbers() -> (u8, u8) {
    let number = |s: &str| s.parse().unwrap_or(0);
    (
        number(env!("CARGO_PKG_VERSION_MAJOR")),
        number(env!("CARGO_PKG_VERSION_MINOR")),
    )
}

/// Type 0, 2.4+ layout (24 bytes): no BIOS image in memory (segment 0), no characteristics.
fn bios_information() -> Result<Vec<u8>, SmbiosError> {
    let (major, minor) = version_numbers();
    let mut s = Structure::new(types::BIOS_INFORMATION);
    s.string("BIOS vendor", MANUFACTURER)?
        .string("BIOS version", VERSION)?
        .u16(0) // starting address segment: no runtime BIOS image
        .string("BIOS release date", BIOS_RELEASE_DATE)?
        .u8(0) // ROM size (n + 1) * 64 KiB: 64 KiB
        .u64(CHARACTERISTICS_NOT_SUPPORTED)
        .u8(0) // extension byte 1
        .u8(EXTENSION_2)
        .u8(major)
        .u8(minor)
        .u8(0xff) // no embedded controller
        .u8(0xff);
    Ok(s.finish())
}

/// Type 1, 2.4+ layout (27 bytes).
fn system_information(identity: &SmbiosIdentity) -> Result<Vec<u8>, SmbiosError> {
    let mut s = Structure::new(types::SYSTEM_INFORMATION);
    s.string("manufacturer", MANUFACTURER)?
        .string("product name", PRODUCT_NAME)?
        .string("version", VERSION)?
        .string("serial number", &identity.serial_number)?
        .bytes(&smbios_uuid_bytes(&identity.uuid))
        .u8(WAKE_UP_POWER_SWITCH)
        .string("SKU number", SKU)?
        .string("family", FAMILY)?;
    Ok(s.finish())
}

/// Type 3, 2.7+ layout (22 bytes): no contained elements, no SKU.
fn chassis() -> Result<Vec<u8>, SmbiosError> {
    let mut s = Structure::new(types::CHASSIS);
    s.string("chassis manufacturer", MANUFACTURER)?
        .u8(CHASSIS_OTHER)
        .string("chassis version", VERSION)?
        .string("chassis serial number", "")?
        .string("chassis asset tag", "")?
        .u8(STATE_SAFE) // boot-up state
        .u8(STATE_SAFE) // power supply state
        .u8(STATE_SAFE) // thermal state
        .u8(SECURITY_UNKNOWN)
        .u32(0) // OEM-defined
        .u8(0) // height: unspecified
        .u8(0) // power cords: unspecified
        .u8(0) // contained element count
        .u8(0) // contained element record length
        .string("chassis SKU number", "")?;
    Ok(s.finish())
}

/// Type 32 (11 bytes): six reserved bytes, then boot status 0, "no errors detected".
fn system_boot_information() -> Result<Vec<u8>, SmbiosError> {
    let mut s = Structure::new(types::SYSTEM_BOOT_INFORMATION);
    s.bytes(&[0; 6]).u8(0);
    Ok(s.finish())
}
