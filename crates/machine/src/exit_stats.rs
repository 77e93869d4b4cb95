//! The exits that reach the VMM, counted: by reason for each vCPU, and by device range on the
//! port and MMIO buses (`Bus` keeps a counter per range). Exits KVM handles itself (ioeventfds,
//! the in-kernel irqchip and PIT) never get here: KVM's own counters (debugfs) cover those.
//!
//! Counting is a relaxed atomic add on a counter only its vCPU thread writes (per vCPU) or on the
//! range's counter (per device): a few nanoseconds against an exit's microseconds.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

use crate::bus::{Bus, RangeAccesses};
use crate::devices::fw_cfg::FW_CFG_PORT_BASE;
use crate::devices::PVPANIC_PORT;
use crate::layout::{ports, PAM_WINDOW_START, PCI_ECAM_START};
use crate::pci::PciRoot;

/// Why a vCPU came out to the VMM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ExitKind {
    IoIn,
    IoOut,
    MmioRead,
    MmioWrite,
    /// A kick (pause, stop) or another signal.
    Interrupted,
    /// Halt, shutdown, system events, errors.
    Other,
}

/// One vCPU's counters.
#[derive(Debug, Default)]
pub(crate) struct VcpuCounters {
    io_in: AtomicU64,
    io_out: AtomicU64,
    mmio_read: AtomicU64,
    mmio_write: AtomicU64,
    interrupted: AtomicU64,
    other: AtomicU64,
}

impl VcpuCounters {
    pub(crate) fn count(&self, kind: ExitKind) {
        let counter = match kind {
            ExitKind::IoIn => &self.io_in,
            ExitKind::IoOut => &self.io_out,
            ExitKind::MmioRead => &self.mmio_read,
            ExitKind::MmioWrite => &self.mmio_write,
            ExitKind::Interrupted => &self.interrupted,
            ExitKind::Other => &self.other,
        };
        counter.fetch_add(1, Relaxed);
    }

    fn read(&self) -> VcpuExits {
        VcpuExits {
            io_in: self.io_in.load(Relaxed),
            io_out: self.io_out.load(Relaxed),
            mmio_read: self.mmio_read.load(Relaxed),
            mmio_write: self.mmio_write.load(Relaxed),
            interrupted: self.interrupted.load(Relaxed),
            other: self.other.load(Relaxed),
        }
    }
}

/// One vCPU's exits to the VMM so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VcpuExits {
    pub io_in: u64,
    pub io_out: u64,
    pub mmio_read: u64,
    pub mmio_write: u64,
    /// Kicks (pause, stop) and other signals.
    pub interrupted: u64,
    /// Halt, shutdown, system events and errors.
    pub other: u64,
}

impl VcpuExits {
    pub fn total(&self) -> u64 {
        self.io_in + self.io_out + self.mmio_read + self.mmio_write + self.interrupted + self.other
    }
}

/// Which bus a range is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum AddressSpace {
    Port,
    Mmio,
}

/// The accesses to one device range (or, with `device` empty, to an address no device has).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RangeExits {
    pub space: AddressSpace,
    pub base: u64,
    pub len: u64,
    /// What is there: a legacy device's name, `pci 00:SS.0 VVVV:DDDD bar N`, or `none`.
    pub device: String,
    pub reads: u64,
    pub writes: u64,
}

impl RangeExits {
    pub fn total(&self) -> u64 {
        self.reads + self.writes
    }
}

/// Every exit counted so far.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExitStats {
    /// Per vCPU, by index.
    pub vcpus: Vec<VcpuExits>,
    /// Per device range and unclaimed address, most accessed first; ranges never accessed are
    /// left out.
    pub ranges: Vec<RangeExits>,
}

impl ExitStats {
    /// All vCPUs' exits added up.
    pub fn total(&self) -> VcpuExits {
        self.vcpus.iter().fold(VcpuExits::default(), |a, v| VcpuExits {
            io_in: a.io_in + v.io_in,
            io_out: a.io_out + v.io_out,
            mmio_read: a.mmio_read + v.mmio_read,
            mmio_write: a.mmio_write + v.mmio_write,
            interrupted: a.interrupted + v.interrupted,
            other: a.other + v.other,
        })
    }
}

/// What a [`crate::MachineHandle`] reads the counters from.
#[derive(Clone)]
pub(crate) struct ExitCounters {
    pub(crate) vcpus: Arc<[VcpuCounters]>,
    pub(crate) pio: Bus,
    pub(crate) mmio: Bus,
    pub(crate) pci: Arc<Mutex<PciRoot>>,
}

impl ExitCounters {
    pub(crate) fn new(vcpus: usize, pio: Bus, mmio: Bus, pci: Arc<Mutex<PciRoot>>) -> ExitCounters {
        ExitCounters {
            vcpus: (0..vcpus).map(|_| VcpuCounters::default()).collect(),
            pio,
            mmio,
            pci,
        }
    }

    pub(crate) fn read(&self) -> ExitStats {
        let bars = self
            .pci
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .mapped_bar_labels();
        let mut ranges: Vec<RangeExits> = Vec::new();
        for (space, bus) in [(AddressSpace::Port, &self.pio), (AddressSpace::Mmio, &self.mmio)] {
            for RangeAccesses {
                base,
                len,
                claimed,
                reads,
                writes,
            } in bus.accesses()
            {
                let device = if !claimed {
                    "none".to_owned()
                } else if let Some((_, _, label)) = bars.iter().find(|(s, b, _)| *s == space && *b == base) {
                    label.clone()
                } else {
                    legacy_name(space, base).unwrap_or("unnamed").to_owned()
                };
                ranges.push(RangeExits {
                    space,
                    base,
                    len,
                    device,
                    reads,
                    writes,
                });
            }
        }
        ranges.sort_by(|a, b| b.total().cmp(&a.total()).then(a.base.cmp(&b.base)));
        ExitStats {
            vcpus: self.vcpus.iter().map(VcpuCounters::read).collect(),
            ranges,
        }
    }
}

/// The platform's own devices, by where the machine puts them.
fn legacy_name(space: AddressSpace, base: u64) -> Option<&'static str> {
    let name = match space {
        AddressSpace::Port => match u16::try_from(base).ok()? {
            ports::COM1 => "serial (COM1)",
            ports::PM1A_EVT_BLK => "ACPI PM",
            ports::I8042_DATA => "i8042",
            ports::CMOS_INDEX => "CMOS RTC",
            PVPANIC_PORT => "pvpanic",
            ports::PCI_CONFIG_ADDRESS => "PCI config (0xcf8)",
            FW_CFG_PORT_BASE => "fw_cfg",
            _ => return None,
        },
        AddressSpace::Mmio => match base {
            PCI_ECAM_START => "PCI ECAM",
            PAM_WINDOW_START => "PAM window",
            _ => return None,
        },
    };
    Some(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn totals_add_up_every_reason_and_every_vcpu() {
        let c = VcpuCounters::default();
        for kind in [
            ExitKind::IoIn,
            ExitKind::IoOut,
            ExitKind::IoOut,
            ExitKind::MmioRead,
            ExitKind::MmioWrite,
            ExitKind::Interrupted,
            ExitKind::Other,
        ] {
            c.count(kind);
        }
        let one = c.read();
        assert_eq!(one.io_out, 2);
        assert_eq!(one.total(), 7);
        let stats = ExitStats {
            vcpus: vec![one, one],
            ranges: vec![],
        };
        assert_eq!(stats.total().total(), 14);
        assert_eq!(stats.total().io_out, 4);
    }

    #[test]
    fn legacy_devices_are_named_by_their_base() {
        assert_eq!(legacy_name(AddressSpace::Port, 0x3f8), Some("serial (COM1)"));
        assert_eq!(legacy_name(AddressSpace::Port, 0xcf8), Some("PCI config (0xcf8)"));
        assert_eq!(legacy_name(AddressSpace::Mmio, PCI_ECAM_START), Some("PCI ECAM"));
        assert_eq!(legacy_name(AddressSpace::Port, 0x1_0000), None);
        assert_eq!(legacy_name(AddressSpace::Mmio, 0x3f8), None);
    }
}
