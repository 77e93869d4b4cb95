//! Relocatable table blobs and the commands that fix them up once they have addresses.
//!
//! This is the model of QEMU's fw_cfg table loader (`etc/table-loader`), kept to what our tables
//! need, so that handing the tables to firmware later is a matter of serialising what is here:
//! each blob becomes an ALLOCATE of its fw_cfg file, each [`LoaderCommand`] the command of the
//! same name. Pointer fields inside a blob hold offsets into the target blob until linked.

use super::AcpiError;

/// The two blobs. Two rather than one because the RSDP must sit where a BIOS-area scan finds it,
/// while the tables may go anywhere.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Blob {
    /// The RSDP alone.
    Rsdp,
    /// FACS, DSDT, FADT, MADT, XSDT, in that order.
    Tables,
}

/// Where firmware allocates a blob: the loader protocol's ALLOCATE zones.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Zone {
    /// Anywhere in RAM below 4 GiB.
    High,
    /// The F segment (0xe0000..0x100000), where OSes scan for the RSDP.
    FSeg,
}

impl Blob {
    /// Name for messages.
    pub const fn name(self) -> &'static str {
        match self {
            Blob::Rsdp => "RSDP",
            Blob::Tables => "tables",
        }
    }

    /// The fw_cfg file name SeaBIOS and OVMF expect the blob under.
    pub const fn fw_cfg_file(self) -> &'static str {
        match self {
            Blob::Rsdp => "etc/acpi/rsdp",
            Blob::Tables => "etc/acpi/tables",
        }
    }

    /// Alignment of the blob's address: the RSDP scan only looks at 16-byte boundaries, and the
    /// FACS at the start of the tables must be 64-byte aligned.
    pub const fn align(self) -> u64 {
        match self {
            Blob::Rsdp => 16,
            Blob::Tables => 64,
        }
    }

    /// Where firmware has to allocate the blob.
    pub const fn zone(self) -> Zone {
        match self {
            Blob::Rsdp => Zone::FSeg,
            Blob::Tables => Zone::High,
        }
    }
}

/// A fix-up to apply once the blobs have addresses. Order matters: a checksum must come after
/// every pointer inside the bytes it covers, as with QEMU's loader.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LoaderCommand {
    /// Adds the address of `target` to the `size`-byte little-endian value at `offset` in `blob`.
    AddPointer {
        /// Blob holding the pointer field.
        blob: Blob,
        /// Offset of the field in `blob`.
        offset: usize,
        /// Width of the field in bytes (4 or 8 here).
        size: u8,
        /// Blob the pointer points into; the field holds the offset within it until linked.
        target: Blob,
    },
    /// Adjusts the byte at `offset` in `blob` so that bytes `start..start + len` sum to zero.
    /// Like SeaBIOS, this subtracts the current sum, so it works whatever the byte held before.
    AddChecksum {
        /// Blob holding the checksum.
        blob: Blob,
        /// Offset of the checksum byte.
        offset: usize,
        /// Start of the checksummed range.
        start: usize,
        /// Length of the checksummed range.
        len: usize,
    },
}

/// The tables before placement: what [`super::build_tables`] produces.
#[derive(Clone, Debug)]
pub struct AcpiTables {
    rsdp: Vec<u8>,
    tables: Vec<u8>,
    commands: Vec<LoaderCommand>,
}

/// The tables linked for given addresses, ready to copy into guest memory.
#[derive(Clone, Debug)]
pub struct LinkedTables {
    rsdp: Vec<u8>,
    tables: Vec<u8>,
}

impl AcpiTables {
    /// The commands must only reference bytes inside the blobs; the builder guarantees it.
    pub(super) fn new(rsdp: Vec<u8>, tables: Vec<u8>, commands: Vec<LoaderCommand>) -> Self {
        Self {
            rsdp,
            tables,
            commands,
        }
    }

    /// A blob's bytes, pointers still unrelocated.
    pub fn blob(&self, blob: Blob) -> &[u8] {
        match blob {
            Blob::Rsdp => &self.rsdp,
            Blob::Tables => &self.tables,
        }
    }

    /// The fix-ups, in the order they must run.
    pub fn commands(&self) -> &[LoaderCommand] {
        &self.commands
    }

    /// Runs the commands as firmware would, for the RSDP at `rsdp_address` and the other tables
    /// at `tables_address`.
    pub fn link(&self, rsdp_address: u64, tables_address: u64) -> Result<LinkedTables, AcpiError> {
        let address = |blob| match blob {
            Blob::Rsdp => rsdp_address,
            Blob::Tables => tables_address,
        };
        for blob in [Blob::Rsdp, Blob::Tables] {
            if address(blob) % blob.align() != 0 {
                return Err(AcpiError::Misaligned {
                    what: blob.name(),
                    address: address(blob),
                    align: blob.align(),
                });
            }
        }

        let mut linked = LinkedTables {
            rsdp: self.rsdp.clone(),
            tables: self.tables.clone(),
        };
        for command in &self.commands {
            match *command {
                LoaderCommand::AddPointer {
                    blob,
                    offset,
                    size,
                    target,
                } => {
                    let field = &mut linked.blob_mut(blob)[offset..offset + usize::from(size)];
                    let mut value = [0u8; 8];
                    value[..field.len()].copy_from_slice(field);
                    let patched = u64::from_le_bytes(value)
                        .checked_add(address(target))
                        .filter(|v| size >= 8 || *v >> (8 * u32::from(size)) == 0)
                        .ok_or(AcpiError::AddressTooHigh {
                            what: target.name(),
                            address: address(target),
                            size,
                        })?;
                    field.copy_from_slice(&patched.to_le_bytes()[..field.len()]);
                }
                LoaderCommand::AddChecksum {
                    blob,
                    offset,
                    start,
                    len,
                } => {
                    let data = linked.blob_mut(blob);
                    let sum = data[start..start + len]
                        .iter()
                        .fold(0u8, |acc, b| acc.wrapping_add(*b));
                    data[offset] = data[offset].wrapping_sub(sum);
                }
            }
        }
        Ok(linked)
    }
}

impl LinkedTables {
    /// A blob's final bytes.
    pub fn blob(&self, blob: Blob) -> &[u8] {
        match blob {
            Blob::Rsdp => &self.rsdp,
            Blob::Tables => &self.tables,
        }
    }

    fn blob_mut(&mut self, blob: Blob) -> &mut [u8] {
        match blob {
            Blob::Rsdp => &mut self.rsdp,
            Blob::Tables => &mut self.tables,
        }
    }
}
