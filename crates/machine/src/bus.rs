//! Port I/O and MMIO buses: which device answers an access the guest makes outside RAM.
//!
//! A [`Bus`] is a handle: clones share one map, so a device inserted, moved or removed after the
//! vCPUs have started (a PCI BAR the firmware programs) is seen by every vCPU at its next access.
//! An access looks the device up under a read lock and calls it after dropping that lock, so a
//! device may change the bus from inside its own `write` (a PCI config write that moves a BAR).
//!
//! Every range counts its reads and writes, and accesses where no device is are counted by
//! address (the first `UNCLAIMED_ADDRESSES` distinct ones; the rest together): the VMM's exit
//! accounting (`exit_stats`).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};

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
    #[error("no device is at bus range {base:#x}+{len:#x}")]
    NotFound { base: u64, len: u64 },
}

/// Reads and writes of one range.
#[derive(Debug, Default)]
struct AccessCounter {
    reads: AtomicU64,
    writes: AtomicU64,
}

/// A range's device and its counter.
struct Entry {
    len: u64,
    device: SharedDevice,
    counter: Arc<AccessCounter>,
}

type DeviceMap = BTreeMap<u64, Entry>;

/// How many distinct addresses with no device are counted one by one. A guest probing every
/// address must not grow the map without bound; past this they share one entry.
const UNCLAIMED_ADDRESSES: usize = 64;

/// The accesses to one range of a bus.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RangeAccesses {
    pub base: u64,
    pub len: u64,
    /// False for an address where no device is (`len` 1), or for the entry that stands for
    /// every unclaimed address past the first `UNCLAIMED_ADDRESSES` (`base` `u64::MAX`).
    pub claimed: bool,
    pub reads: u64,
    pub writes: u64,
}

/// Counts kept when no device is in the map to hold them: ranges taken off the bus (a BAR that
/// moved), and addresses with no device.
#[derive(Default)]
struct OffBusCounts {
    /// (base, len) -> (reads, writes) of ranges removed.
    removed: BTreeMap<(u64, u64), (u64, u64)>,
    /// address -> (reads, writes) of accesses nothing answered.
    unclaimed: BTreeMap<u64, (u64, u64)>,
}

/// A set of non-overlapping address ranges, each with its device. Clones share the set.
#[derive(Default, Clone)]
pub struct Bus {
    devices: Arc<RwLock<DeviceMap>>,
    off_bus: Arc<Mutex<OffBusCounts>>,
}

impl std::fmt::Debug for Bus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.read_map().iter().map(|(b, e)| (*b, e.len)))
            .finish()
    }
}

impl Bus {
    pub fn new() -> Bus {
        Bus::default()
    }

    // A panic while holding the lock cannot leave the map half-changed (every change is one
    // BTreeMap call), so a poisoned lock is still a good map.
    fn read_map(&self) -> RwLockReadGuard<'_, DeviceMap> {
        self.devices.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write_map(&self) -> RwLockWriteGuard<'_, DeviceMap> {
        self.devices.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Puts `device` at `base..base + len`.
    pub fn insert(&self, base: u64, len: u64, device: SharedDevice) -> Result<(), BusError> {
        let end = base
            .checked_add(len)
            .filter(|_| len > 0)
            .ok_or(BusError::InvalidRange { base, len })?;
        let mut devices = self.write_map();
        if let Some((&other, e)) = devices.range(..end).next_back() {
            if other + e.len > base {
                return Err(BusError::Overlap { base, len, other });
            }
        }
        devices.insert(
            base,
            Entry {
                len,
                device,
                counter: Arc::default(),
            },
        );
        Ok(())
    }

    /// Takes the device at exactly `base..base + len` off the bus and returns it.
    pub fn remove(&self, base: u64, len: u64) -> Result<SharedDevice, BusError> {
        let mut devices = self.write_map();
        match devices.get(&base) {
            Some(e) if e.len == len => {
                let entry = devices.remove(&base).ok_or(BusError::NotFound { base, len })?;
                let (reads, writes) = (
                    entry.counter.reads.load(Relaxed),
                    entry.counter.writes.load(Relaxed),
                );
                if reads + writes > 0 {
                    let mut off = self.lock_off_bus();
                    let kept = off.removed.entry((base, len)).or_default();
                    kept.0 += reads;
                    kept.1 += writes;
                }
                Ok(entry.device)
            }
            _ => Err(BusError::NotFound { base, len }),
        }
    }

    /// Takes every device off the bus (their access counts kept, as [`Bus::remove`] keeps
    /// them). A stopped machine does this: the PCI root's configuration ports on the bus hold
    /// the root, which holds the bus, and without it that cycle would keep every device (and
    /// the disks' locked files) alive after the machine is gone.
    pub fn clear(&self) {
        let ranges: Vec<(u64, u64)> = self.write_map().iter().map(|(&base, e)| (base, e.len)).collect();
        for (base, len) in ranges {
            // Taken from the map just now; nothing else removes devices from a stopped machine.
            let _ = self.remove(base, len);
        }
    }

    fn lock_off_bus(&self) -> std::sync::MutexGuard<'_, OffBusCounts> {
        self.off_bus.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn count_unclaimed(&self, address: u64, write: bool) {
        let mut off = self.lock_off_bus();
        let key = if off.unclaimed.len() < UNCLAIMED_ADDRESSES || off.unclaimed.contains_key(&address) {
            address
        } else {
            u64::MAX
        };
        let counts = off.unclaimed.entry(key).or_default();
        if write {
            counts.1 += 1;
        } else {
            counts.0 += 1;
        }
    }

    /// Every range's accesses so far (ranges on the bus now, ranges removed since, addresses
    /// no device answered), leaving out what was never accessed.
    pub fn accesses(&self) -> Vec<RangeAccesses> {
        let mut all: BTreeMap<(u64, u64), (u64, u64)> = BTreeMap::new();
        for (&base, e) in self.read_map().iter() {
            let counts = (e.counter.reads.load(Relaxed), e.counter.writes.load(Relaxed));
            all.insert((base, e.len), counts);
        }
        let off = self.lock_off_bus();
        for (&key, &(reads, writes)) in &off.removed {
            let counts = all.entry(key).or_default();
            counts.0 += reads;
            counts.1 += writes;
        }
        let mut out: Vec<RangeAccesses> = all
            .into_iter()
            .map(|((base, len), (reads, writes))| RangeAccesses {
                base,
                len,
                claimed: true,
                reads,
                writes,
            })
            .collect();
        out.extend(
            off.unclaimed
                .iter()
                .map(|(&base, &(reads, writes))| RangeAccesses {
                    base,
                    len: if base == u64::MAX { 0 } else { 1 },
                    claimed: false,
                    reads,
                    writes,
                }),
        );
        out.retain(|r| r.reads + r.writes > 0);
        out
    }

    /// Whether any device overlaps `base..base + len`.
    pub fn is_occupied(&self, base: u64, len: u64) -> bool {
        let Some(end) = base.checked_add(len) else {
            return true;
        };
        self.read_map()
            .range(..end)
            .next_back()
            .is_some_and(|(&other, e)| other + e.len > base)
    }

    fn find(&self, address: u64, size: usize) -> Option<(u64, SharedDevice, Arc<AccessCounter>)> {
        let devices = self.read_map();
        let (&base, e) = devices.range(..=address).next_back()?;
        let offset = address - base;
        // The whole access must fall inside the device.
        (offset.checked_add(size as u64)? <= e.len).then(|| (offset, e.device.clone(), e.counter.clone()))
    }

    /// Reads from the device at `address`; returns false when no device is there.
    pub fn read(&self, address: u64, data: &mut [u8]) -> bool {
        match self.find(address, data.len()) {
            Some((offset, device, counter)) => {
                counter.reads.fetch_add(1, Relaxed);
                lock(&device).read(offset, data);
                true
            }
            None => {
                self.count_unclaimed(address, false);
                false
            }
        }
    }

    /// Writes to the device at `address` without counting it: a write KVM coalesced, which
    /// reached the VMM without an exit of its own (`Vm::coalesce_port_writes`).
    pub fn write_coalesced(&self, address: u64, data: &[u8]) -> bool {
        match self.find(address, data.len()) {
            Some((offset, device, _)) => {
                lock(&device).write(offset, data);
                true
            }
            None => false,
        }
    }

    /// Writes to the device at `address`; returns false when no device is there.
    pub fn write(&self, address: u64, data: &[u8]) -> bool {
        match self.find(address, data.len()) {
            Some((offset, device, counter)) => {
                counter.writes.fetch_add(1, Relaxed);
                lock(&device).write(offset, data);
                true
            }
            None => {
                self.count_unclaimed(address, true);
                false
            }
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

    #[test]
    fn accesses_are_counted_per_range_kept_across_a_move_and_unclaimed_ones_are_bounded() {
        let bus = Bus::new();
        bus.insert(0x100, 4, Arc::new(Mutex::new(Recorder::default())))
            .unwrap();
        let mut b = [0u8; 1];
        for _ in 0..3 {
            assert!(bus.read(0x101, &mut b));
        }
        assert!(bus.write(0x100, &[1]));
        // Moved away and back: the counts stay with (base, len).
        let dev = bus.remove(0x100, 4).unwrap();
        bus.insert(0x100, 4, dev).unwrap();
        assert!(bus.write(0x103, &[1]));
        // No device: counted by address, the first UNCLAIMED_ADDRESSES one by one.
        for a in 0..(UNCLAIMED_ADDRESSES as u64 + 10) {
            assert!(!bus.read(0x1000 + a, &mut b));
        }
        assert!(!bus.write(0x1000, &[0]));
        let got = bus.accesses();
        let dev = got.iter().find(|r| r.base == 0x100).unwrap();
        assert_eq!((dev.len, dev.claimed, dev.reads, dev.writes), (4, true, 3, 2));
        let first = got.iter().find(|r| r.base == 0x1000).unwrap();
        assert_eq!((first.claimed, first.reads, first.writes), (false, 1, 1));
        let rest = got.iter().find(|r| r.base == u64::MAX).unwrap();
        assert_eq!((rest.claimed, rest.reads), (false, 10));
        assert_eq!(got.iter().filter(|r| !r.claimed).count(), UNCLAIMED_ADDRESSES + 1);
    }

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
        let bus = Bus::new();
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
        let bus = Bus::new();
        bus.insert(0x100, 4, Arc::new(Mutex::new(Recorder::default())))
            .unwrap();
        assert!(!bus.write(0x104, &[1]));
        assert!(!bus.write(0xff, &[1]));
        assert!(!bus.write(0x102, &[1, 2, 3, 4]), "straddles the end");
        assert!(!bus.write(u64::MAX, &[1]));
    }

    #[test]
    fn overlapping_and_empty_ranges_are_refused() {
        let bus = Bus::new();
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

    #[test]
    fn removed_device_is_gone_from_every_clone_and_its_range_is_free_again() {
        let bus = Bus::new();
        let view = bus.clone();
        bus.insert(0x1000, 0x100, Arc::new(Mutex::new(Recorder::default())))
            .unwrap();
        assert!(view.write(0x1010, &[1]));
        assert!(bus.is_occupied(0x10ff, 1));
        assert_eq!(
            bus.remove(0x1000, 0x80).err(),
            Some(BusError::NotFound {
                base: 0x1000,
                len: 0x80
            })
        );
        bus.remove(0x1000, 0x100).unwrap();
        assert!(!view.write(0x1010, &[1]));
        assert!(!bus.is_occupied(0x1000, 0x100));
        bus.insert(0x1080, 0x100, Arc::new(Mutex::new(Recorder::default())))
            .unwrap();
    }

    /// A device that moves itself on the bus from inside an access, as a PCI config write that
    /// reprograms a BAR does.
    struct Mover {
        bus: Bus,
    }

    impl BusDevice for Mover {
        fn read(&mut self, _offset: u64, _data: &mut [u8]) {}
        fn write(&mut self, _offset: u64, _data: &[u8]) {
            let me = self.bus.remove(0x10, 1).unwrap();
            self.bus.insert(0x20, 1, me).unwrap();
        }
    }

    #[test]
    fn device_can_move_itself_during_an_access() {
        let bus = Bus::new();
        bus.insert(0x10, 1, Arc::new(Mutex::new(Mover { bus: bus.clone() })))
            .unwrap();
        assert!(bus.write(0x10, &[0]));
        assert!(!bus.is_occupied(0x10, 1));
        assert!(bus.is_occupied(0x20, 1));
    }
}
