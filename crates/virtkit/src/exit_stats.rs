//! The exits that reached the VMM, as the API, `virtkit run --stats` and the control socket's
//! `stats` report them: per vCPU by reason, and per device range with the device's name.

use serde::{Deserialize, Serialize};
use virtkit_machine::{AddressSpace, ExitStats, VcpuExits};

/// Exits by reason.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitCounts {
    pub total: u64,
    pub io_in: u64,
    pub io_out: u64,
    pub mmio_read: u64,
    pub mmio_write: u64,
    /// Kicks (pause, stop) and other signals.
    pub interrupted: u64,
    /// Halt, shutdown, system events and errors.
    pub other: u64,
}

impl From<VcpuExits> for ExitCounts {
    fn from(v: VcpuExits) -> ExitCounts {
        ExitCounts {
            total: v.total(),
            io_in: v.io_in,
            io_out: v.io_out,
            mmio_read: v.mmio_read,
            mmio_write: v.mmio_write,
            interrupted: v.interrupted,
            other: v.other,
        }
    }
}

/// The accesses to one device's range (or to an address no device answers: `device` `none`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceExits {
    /// `port` or `mmio`.
    pub space: String,
    pub base: u64,
    pub len: u64,
    /// A platform device's name, a configured device's (`disk0 (00:03.0) bar 4`), a PCI
    /// function's IDs, or `none`.
    pub device: String,
    pub reads: u64,
    pub writes: u64,
}

/// Every exit that reached the VMM since the machine started.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitStatistics {
    /// All vCPUs together.
    pub total: ExitCounts,
    /// Per vCPU, by index.
    pub vcpus: Vec<ExitCounts>,
    /// Per device range, most accessed first.
    pub devices: Vec<DeviceExits>,
}

impl ExitStatistics {
    /// `stats` with PCI functions named by the configured devices in `slots` (name, slot).
    pub(crate) fn new(stats: ExitStats, slots: &[(String, u8)]) -> ExitStatistics {
        let devices = stats
            .ranges
            .iter()
            .map(|r| DeviceExits {
                space: match r.space {
                    AddressSpace::Port => "port",
                    AddressSpace::Mmio => "mmio",
                }
                .to_owned(),
                base: r.base,
                len: r.len,
                device: name_pci_function(&r.device, slots),
                reads: r.reads,
                writes: r.writes,
            })
            .collect();
        ExitStatistics {
            total: stats.total().into(),
            vcpus: stats.vcpus.iter().map(|&v| v.into()).collect(),
            devices,
        }
    }

    /// A table for people: the reasons, then the `limit` most accessed devices.
    pub fn to_table(&self, limit: usize) -> String {
        use std::fmt::Write;
        let t = &self.total;
        let mut s = String::new();
        let _ = writeln!(
            s,
            "exits to the VMM: {} (port in {}, port out {}, MMIO read {}, MMIO write {}, signals {}, other {}) on {} vCPU(s)",
            t.total, t.io_in, t.io_out, t.mmio_read, t.mmio_write, t.interrupted, t.other,
            self.vcpus.len()
        );
        for d in self.devices.iter().take(limit) {
            let _ = writeln!(
                s,
                "  {:>10} {:<4} {:#010x}+{:<#7x} {} ({} reads, {} writes)",
                d.reads + d.writes,
                d.space,
                d.base,
                d.len,
                d.device,
                d.reads,
                d.writes
            );
        }
        if self.devices.len() > limit {
            let _ = writeln!(s, "  ... {} more ranges", self.devices.len() - limit);
        }
        s
    }
}

/// `pci 00:03.0 1af4:1042 bar 4` becomes `disk0 (00:03.0) bar 4` when slot 3 is `disk0`.
fn name_pci_function(label: &str, slots: &[(String, u8)]) -> String {
    let Some(rest) = label.strip_prefix("pci 00:") else {
        return label.to_owned();
    };
    let slot = rest.get(..2).and_then(|s| u8::from_str_radix(s, 16).ok());
    let bar = rest.rsplit_once(" bar ").map(|(_, b)| b);
    match (slot, bar, slot.and_then(|n| slots.iter().find(|(_, s)| *s == n))) {
        (Some(n), Some(bar), Some((name, _))) => format!("{name} (00:{n:02x}.0) bar {bar}"),
        _ => label.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use virtkit_machine::RangeExits;

    #[test]
    fn pci_functions_take_their_device_names_and_the_rest_stays() {
        let slots = vec![("disk0".to_owned(), 3u8), ("net0".to_owned(), 4u8)];
        assert_eq!(
            name_pci_function("pci 00:03.0 1af4:1042 bar 4", &slots),
            "disk0 (00:03.0) bar 4"
        );
        assert_eq!(
            name_pci_function("pci 00:05.0 1af4:1044 bar 4", &slots),
            "pci 00:05.0 1af4:1044 bar 4"
        );
        assert_eq!(name_pci_function("serial (COM1)", &slots), "serial (COM1)");
        assert_eq!(name_pci_function("pci 00:zz", &slots), "pci 00:zz");
    }

    #[test]
    fn statistics_add_up_and_print() {
        let v = VcpuExits {
            io_in: 1,
            io_out: 5,
            mmio_read: 2,
            mmio_write: 0,
            interrupted: 1,
            other: 1,
        };
        let stats = ExitStats {
            vcpus: vec![v, v],
            ranges: vec![RangeExits {
                space: AddressSpace::Port,
                base: 0x3f8,
                len: 8,
                device: "serial (COM1)".into(),
                reads: 2,
                writes: 10,
            }],
        };
        let s = ExitStatistics::new(stats, &[]);
        assert_eq!(s.total.total, 20);
        assert_eq!(s.vcpus[1].io_out, 5);
        let table = s.to_table(10);
        assert!(
            table.starts_with("exits to the VMM: 20 (port in 2, port out 10"),
            "{table}"
        );
        assert!(table.contains("serial (COM1) (2 reads, 10 writes)"), "{table}");
        let json = serde_json::to_string(&s).unwrap();
        assert_eq!(serde_json::from_str::<ExitStatistics>(&json).unwrap(), s);
    }
}
