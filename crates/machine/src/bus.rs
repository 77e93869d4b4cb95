//! Port I/O and MMIO buses: which device answers an access the guest makes outside RAM.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

/// A device on a bus. Offsets are relative to where the device was inserted.
pub trait BusDevice: Send {
    fn read(&mut self, offset: u64, data: &mut [u8]);
    fn write(&mut self, offset: u64, data: &[u8]);
}

/// A shared bus device.
pub type SharedDevice = Arc<Mutex<dyn BusDevice>>;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BusError {
    #[error("bus range {base:#x}+{len:#x} overlaps a device already at {other:#x}")]
    Overlap { base: u64, len: u64, other: u64 },
    #[error("bus range {base:#x}+{len:#x} is empty or wraps around")]
    InvalidRange { base: u64, len: u64 },
}

/// A set of non-overlapping address ranges, each with its device.
#[derive(Default, Clone)]
pub struct Bus {
    devices: BTreeMap<u64, (u64, SharedDevice)>,
}

impl std::fmt::Debug for Bus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.devices.iter().map(|(b, (l, _))| (*b, *l)))
            .finish()
    }
}

impl Bus {
    pub fn new() -> Bus {
        Bus::default()
    }

    /// Puts `device` at `base..base + len`.
    pub fn insert(&mut self, base: u64, len: u64, device: SharedDevice) -> Result<(), BusError> {
        let end = base
            .checked_add(len)
            .filter(|_| len > 0)
            .ok_or(BusError::InvalidRange { base, len })?;
        if let Some((&other, &(other_len, _))) = self.devices.range(..end).next_back() {
            if other + other_len > base {
                return Err(BusError::Overlap { base, len, other });
            }
        }
        self.devices.insert(base, (len, device));
        Ok(())
    }

    fn find(&self, address: u64, size: usize) -> Option<(u64, &SharedDevice)> {
        let (&base, (len, device)) = self.devices.range(..=address).next_back()?;
        let offset = address - base;
        // The whole access must fall inside the device.
        (offset + size as u64 <= *len).then_some((offset, device))
    }

    /// Reads from the device at `address`; returns false when no device is there.
    pub fn read(&self, address: u64, data: &mut [u8]) -> bool {
        match self.find(address, data.len()) {
            Some((offset, device)) => {
                lock(device).read(offset, data);
                true
            }
            None => false,
        }
    }

    /// Writes to the device at `address`; returns false when no device is there.
    pub fn write(&self, address: u64, data: &[u8]) -> bool {
        match self.find(address, data.len()) {
            Some((offset, device)) => {
                lock(device).write(offset, data);
                true
            }
            None => false,
        }
    }
}

/// Locks a device, carrying on if another vCPU panicked while holding it: a device's state is
/// plain registers, and one vCPU thread's panic must not take every other one down.
pub fn lock(device: &SharedDevice) -> std::sync::MutexGuard<'_, dyn BusDevice + 'static> {
    device.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Recorder {
        writes: Vec<(u64, Vec<u8>)>,
    }

    impl BusDevice for Recorder {
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            data.fill(offset as u8);
        }
        fn write(&mut self, offset: u64, data: &[u8]) {
            self.writes.push((offset, data.to_vec()));
        }
    }

    #[test]
    fn access_reaches_the_device_at_its_offset() {
        let mut bus = Bus::new();
        let dev = Arc::new(Mutex::new(Recorder::default()));
        bus.insert(0x3f8, 8, dev.clone()).unwrap();
        assert!(bus.write(0x3fb, &[0x80]));
        let mut data = [0u8; 1];
        assert!(bus.read(0x3fd, &mut data));
        assert_eq!(data, [5]);
        assert_eq!(dev.lock().unwrap().writes, vec![(3, vec![0x80])]);
    }

    #[test]
    fn access_outside_or_straddling_the_end_finds_nothing() {
        let mut bus = Bus::new();
        bus.insert(0x100, 4, Arc::new(Mutex::new(Recorder::default())))
            .unwrap();
        assert!(!bus.write(0x104, &[1]));
        assert!(!bus.write(0xff, &[1]));
        assert!(!bus.write(0x102, &[1, 2, 3, 4]), "straddles the end");
        assert!(!bus.write(u64::MAX, &[1]));
    }

    #[test]
    fn overlapping_and_empty_ranges_are_refused() {
        let mut bus = Bus::new();
        bus.insert(0x100, 0x10, Arc::new(Mutex::new(Recorder::default())))
            .unwrap();
        let d = || Arc::new(Mutex::new(Recorder::default()));
        assert_eq!(
            bus.insert(0x108, 0x10, d()),
            Err(BusError::Overlap {
                base: 0x108,
                len: 0x10,
                other: 0x100
            })
        );
        assert!(matches!(
            bus.insert(0xf8, 0x10, d()),
            Err(BusError::Overlap { .. })
        ));
        assert!(matches!(
            bus.insert(0x200, 0, d()),
            Err(BusError::InvalidRange { .. })
        ));
        bus.insert(0x110, 0x10, d()).unwrap();
    }
}
