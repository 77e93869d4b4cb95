//! PCI: the devices' side ([`PciDevice`], [`PciConfiguration`], MSI-X) and the platform's side
//! (the root bus on bus 0 with the configuration mechanism #1 ports and the ECAM window, the
//! host bridge at 00:00.0, the PIIX3 ISA bridge at 00:01.0, and BAR allocation for a direct
//! kernel boot).
//!
//! How an access reaches a device:
//! - configuration space: port 0xcf8/0xcfc ([`PciConfigIo`]) or the ECAM window
//!   ([`PciConfigMmio`]) → [`PciRoot`] → [`PciDevice::write_config`]. After every write the root
//!   compares the BARs the device decodes ([`PciConfiguration::mapped_bars`]) with what it has on
//!   the machine's buses and moves them, then tells the device ([`PciDevice::bar_moved`]).
//! - a BAR: the machine's MMIO or port bus → a [`BarHandler`] for that BAR →
//!   [`PciDevice::read_bar`] / [`PciDevice::write_bar`].

mod allocator;
mod config_access;
mod configuration;
mod host_bridge;
mod isa_bridge;
pub mod msix;
mod piix4_pm;
#[allow(unsafe_code)]
mod ram_bar;
mod root;

pub use allocator::{BarAllocator, BarAllocatorError};
pub use config_access::{PciConfigIo, PciConfigMmio};
pub use configuration::{
    PciConfiguration, PciHeader, COMMAND_BUS_MASTER, COMMAND_INTX_DISABLE, COMMAND_IO, COMMAND_MEMORY,
    CONFIG_SPACE_SIZE, NUM_BARS,
};
pub use host_bridge::{HostBridge, PamHandler, PAM_COUNT, PAM_START};
pub use isa_bridge::{IsaBridge, DEVICE_PIIX3_ISA, ISA_BRIDGE_SLOT, PIRQ_COUNT, PIRQ_ROUTE_START};
pub use piix4_pm::{Piix4Pm, DEVICE_PIIX4_PM, PIIX4_PM_FUNCTION, PMBA, PMREGMISC};
pub use ram_bar::{RamBar, RamBarError};

/// Offsets of the type-0 header's registers.
pub mod header {
    pub use super::configuration::{
        BAR0, CACHE_LINE_SIZE, CAPABILITIES_POINTER, CLASS_PROG_IF, COMMAND, DEVICE_ID, FIRST_CAPABILITY,
        HEADER_TYPE, INTERRUPT_LINE, INTERRUPT_PIN, LATENCY_TIMER, REVISION_ID, STATUS, SUBSYSTEM_ID,
        SUBSYSTEM_VENDOR_ID, VENDOR_ID,
    };
}
pub use root::{BarHandler, PciRoot, PciRootError, SharedPciDevice};

use crate::layout::irqs::{PCI_INTX_COUNT, PCI_INTX_FIRST};

/// Number of device slots on a PCI bus.
pub const SLOTS: u8 = 32;
/// Slots left for devices on bus 0: slot 0 holds the host bridge and slot 1 the ISA bridge.
pub const DEVICE_SLOTS: usize = SLOTS as usize - 2;

/// The kind of address space a BAR claims.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BarKind {
    /// Port I/O.
    Io,
    /// Memory below 4 GiB.
    Memory32,
    /// Memory anywhere; the BAR takes two registers.
    Memory64,
}

/// A BAR at an address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BarRegion {
    /// Which BAR register (the lower one of a 64-bit pair).
    pub index: u8,
    pub kind: BarKind,
    pub prefetchable: bool,
    pub address: u64,
    pub size: u64,
}

impl BarRegion {
    /// Whether it is on the port bus rather than the MMIO bus.
    pub fn is_io(&self) -> bool {
        self.kind == BarKind::Io
    }
}

/// Why a configuration space could not be set up as asked. These are device-model bugs, found
/// when a device is built, never guest input.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PciConfigError {
    #[error("BAR index {0} does not exist (a type-0 header has 6, a 64-bit BAR takes two)")]
    BarIndex(usize),
    #[error("BAR {0} is already defined")]
    BarInUse(usize),
    #[error("BAR {index} cannot be {size:#x} bytes: it must be a power of two within the BAR type's limits")]
    BarSize { index: usize, size: u64 },
    #[error("BAR {index} cannot be placed at {address:#x}: it must be aligned to its size and reachable")]
    BarAddress { index: usize, address: u64 },
    #[error("capability {id:#x} of {len} bytes does not fit in configuration space")]
    CapabilitySpace { id: u8, len: usize },
}

/// A PCI function as the root bus sees it. The configuration space lives in a
/// [`PciConfiguration`]; a device overrides the accessors to give registers side effects.
///
/// Accesses come from vCPU threads with the device locked: they must be quick and must never
/// wait for a device's worker thread.
pub trait PciDevice: Send {
    fn configuration(&self) -> &PciConfiguration;
    fn configuration_mut(&mut self) -> &mut PciConfiguration;

    /// Reads `data.len()` (1, 2 or 4) bytes of configuration space at `offset` (< 4096,
    /// aligned to the size).
    fn read_config(&mut self, offset: usize, data: &mut [u8]) {
        self.configuration().read(offset, data);
    }

    /// Writes configuration space; the root then re-maps whatever BARs changed.
    fn write_config(&mut self, offset: usize, data: &[u8]) {
        self.configuration_mut().write(offset, data);
    }

    /// Reads at `offset` in BAR `bar`.
    fn read_bar(&mut self, bar: u8, offset: u64, data: &mut [u8]) {
        let _ = (bar, offset);
        data.fill(0xff);
    }

    /// Writes at `offset` in BAR `bar`.
    fn write_bar(&mut self, bar: u8, offset: u64, data: &[u8]) {
        let _ = (bar, offset, data);
    }

    /// BAR `bar` is now decoded at `new` (or no longer decoded when `None`); it was at `old`.
    /// Called by the root after it moved the BAR on the machine's bus, for devices that keep
    /// addresses elsewhere (ioeventfds).
    fn bar_moved(&mut self, bar: &BarRegion, old: Option<u64>, new: Option<u64>) {
        let _ = (bar, old, new);
    }
}

/// The GSI a slot's INTx `pin` (1 = INTA# .. 4 = INTD#) drives: the usual PCI swizzle over the
/// I/O APIC pins 16..24. The DSDT's `_PRT` says the same, for every slot and pin.
pub fn intx_gsi(slot: u8, pin: u8) -> u32 {
    let pin_index = u32::from(pin.saturating_sub(1) & 3);
    PCI_INTX_FIRST + (u32::from(slot) + pin_index) % PCI_INTX_COUNT
}

#[cfg(test)]
mod tests;
