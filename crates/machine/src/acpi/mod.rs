//! ACPI tables for the guest: RSDP, XSDT, FADT (with FACS and DSDT) and MADT.
//!
//! The platform is a classic PC, not a hardware-reduced one: the fixed-feature power button, the
//! PM1 registers and the SCI are what a stock Linux uses for power-off and the power button, and
//! the legacy devices are described the way real firmware describes them, so the guest takes the
//! same code paths as on bare metal.
//!
//! Building and placing are split the way QEMU's fw_cfg table loader splits them:
//! [`build_tables`] makes two relocatable blobs (the RSDP and everything else) plus the loader
//! commands that patch their pointers and checksums once the blobs have addresses.
//! [`write_acpi_tables`] runs those commands itself for a direct kernel boot; a firmware boot can
//! later hand the same blobs and commands to the firmware over fw_cfg instead.

mod loader;
mod tables;

#[cfg(test)]
mod tests;

use tracing::debug;
use vm_memory::{Bytes, GuestAddress, GuestMemory};

use crate::layout::{ACPI_TABLES_END, ACPI_TABLES_START, RSDP_START};

pub use loader::{AcpiTables, Blob, LinkedTables, LoaderCommand, Zone};
pub use tables::build_tables;

/// OEM ID in every table header and the RSDP.
pub const OEM_ID: [u8; 6] = *b"VIRTKT";
/// OEM table ID in every table header; the space pads it to the 8 bytes the field has.
pub const OEM_TABLE_ID: [u8; 8] = *b"VIRTKIT ";
/// OEM revision in every table header; bump it when the tables change in a way a guest may notice.
pub const OEM_REVISION: u32 = 1;

/// What the tables describe that varies from one VM to the next.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AcpiConfig {
    /// Number of vCPUs, 1..=255. Their APIC IDs and ACPI processor UIDs are 0..num_cpus-1; 255 is
    /// the xAPIC limit because APIC ID 0xff is the broadcast ID (and Linux ignores it in the MADT).
    pub num_cpus: u8,
    /// The i8042's PS/2 keyboard and mouse are attached (a machine with a display): the DSDT
    /// describes them (PNP0303, PNP0F13), so a guest's i8042 driver finds them through ACPI as
    /// on a PC.
    pub ps2: bool,
}

/// Why the tables could not be built or written.
#[derive(thiserror::Error, Debug)]
pub enum AcpiError {
    /// A machine needs at least one vCPU.
    #[error("ACPI tables need at least one vCPU, got 0")]
    NoCpus,
    /// A blob does not fit the area the platform layout reserves for it.
    #[error(
        "ACPI {what} take {size} bytes but only {available} bytes are reserved at {start:#x}; \
         the area is {excess} bytes too small"
    )]
    TooLarge {
        /// Which blob ("RSDP" or "tables").
        what: &'static str,
        /// Its size in bytes.
        size: usize,
        /// Bytes reserved for it.
        available: u64,
        /// Where the reserved area starts.
        start: u64,
        /// How many bytes are missing.
        excess: u64,
    },
    /// A blob was placed so high that a pointer field cannot hold its address.
    #[error("ACPI {what} at {address:#x} cannot be reached through a {size}-byte pointer")]
    AddressTooHigh {
        /// The blob the pointer points into.
        what: &'static str,
        /// The address the pointer would hold.
        address: u64,
        /// The pointer's size in bytes.
        size: u8,
    },
    /// A blob's placement does not respect the alignment the tables inside it need.
    #[error("ACPI {what} at {address:#x} must be aligned to {align} bytes")]
    Misaligned {
        /// Which blob.
        what: &'static str,
        /// Where it was placed.
        address: u64,
        /// The alignment it needs.
        align: u64,
    },
    /// Guest memory does not cover the ACPI area (or the write failed).
    #[error("cannot write the ACPI {what} ({len} bytes) to guest memory at {address:#x}")]
    GuestMemory {
        /// Which blob.
        what: &'static str,
        /// Where it was to go.
        address: u64,
        /// Its size in bytes.
        len: usize,
        /// What guest memory said.
        #[source]
        source: vm_memory::GuestMemoryError,
    },
}

/// Writes the tables for a direct kernel boot and returns where the RSDP is.
///
/// Linux finds the RSDP through `boot_params.acpi_rsdp_addr` or the PVH start info, and failing
/// both by scanning the BIOS area, which is why [`RSDP_START`] sits there. Not for firmware boots:
/// with firmware loaded, the same area mirrors the firmware image, and the firmware gets the
/// tables from [`build_tables`] through fw_cfg instead.
pub fn write_acpi_tables<M: GuestMemory>(mem: &M, config: &AcpiConfig) -> Result<GuestAddress, AcpiError> {
    let tables = build_tables(config)?;
    check_fits(
        Blob::Rsdp,
        tables.blob(Blob::Rsdp).len(),
        RSDP_START,
        ACPI_TABLES_START,
    )?;
    check_fits(
        Blob::Tables,
        tables.blob(Blob::Tables).len(),
        ACPI_TABLES_START,
        ACPI_TABLES_END,
    )?;
    let linked = tables.link(RSDP_START, ACPI_TABLES_START)?;

    // The tables go first so that a failure never leaves an RSDP pointing at nothing.
    for (blob, address) in [(Blob::Tables, ACPI_TABLES_START), (Blob::Rsdp, RSDP_START)] {
        let data = linked.blob(blob);
        mem.write_slice(data, GuestAddress(address))
            .map_err(|source| AcpiError::GuestMemory {
                what: blob.name(),
                address,
                len: data.len(),
                source,
            })?;
    }
    debug!(
        num_cpus = config.num_cpus,
        rsdp = format_args!("{RSDP_START:#x}"),
        tables = format_args!("{ACPI_TABLES_START:#x}"),
        tables_len = linked.blob(Blob::Tables).len(),
        "ACPI tables written"
    );
    Ok(GuestAddress(RSDP_START))
}

fn check_fits(blob: Blob, size: usize, start: u64, end: u64) -> Result<(), AcpiError> {
    let available = end - start;
    let size64 = size as u64;
    if size64 > available {
        return Err(AcpiError::TooLarge {
            what: blob.name(),
            size,
            available,
            start,
            excess: size64 - available,
        });
    }
    Ok(())
}
