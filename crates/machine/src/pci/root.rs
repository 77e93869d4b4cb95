//! The root PCI bus (bus 0): which function answers a configuration access, and keeping each
//! device's BARs on the machine's buses where its configuration space says they are.

use std::sync::{Arc, Mutex, MutexGuard};

use super::{BarAllocator, BarAllocatorError, BarRegion, PciDevice, COMMAND_IO, COMMAND_MEMORY, SLOTS};
use crate::bus::{Bus, BusDevice};

/// A PCI device shared between the root bus and its BAR handlers.
pub type SharedPciDevice = Arc<Mutex<dyn PciDevice>>;

fn lock(device: &SharedPciDevice) -> MutexGuard<'_, dyn PciDevice + 'static> {
    device.lock().unwrap_or_else(|p| p.into_inner())
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PciRootError {
    #[error("PCI slot {0} does not exist (slots are 0..32)")]
    NoSuchSlot(u8),
    #[error("PCI slot {0} is taken")]
    SlotTaken(u8),
    #[error("every PCI slot on bus 0 is taken")]
    Full,
    #[error("PCI function {slot:02x}.{function} needs a multi-function device at {slot:02x}.0 and must not be taken")]
    BadFunction { slot: u8, function: u8 },
}

struct Slot {
    device: SharedPciDevice,
    /// The BARs as they are on the machine's buses now.
    mapped: Vec<BarRegion>,
}

/// Bus 0 and its devices: function 0 of each slot, with its BARs, and a few other functions of
/// multi-function devices that have no BARs (the PIIX4's PM function).
pub struct PciRoot {
    slots: Vec<Option<Slot>>,
    /// (slot, function 1..8, device).
    functions: Vec<(u8, u8, SharedPciDevice)>,
    pio: Bus,
    mmio: Bus,
}

impl std::fmt::Debug for PciRoot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let used: Vec<usize> = (0..self.slots.len())
            .filter(|&s| self.slots[s].is_some())
            .collect();
        f.debug_struct("PciRoot").field("slots", &used).finish()
    }
}

/// Sends accesses to one BAR of a device, placed on the machine's bus by the root.
pub struct BarHandler {
    device: SharedPciDevice,
    bar: u8,
}

impl BusDevice for BarHandler {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        lock(&self.device).read_bar(self.bar, offset, data);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        lock(&self.device).write_bar(self.bar, offset, data);
    }
}

impl PciRoot {
    /// An empty bus whose devices' BARs go on `pio` and `mmio` (handles to the machine's buses).
    pub fn new(pio: Bus, mmio: Bus) -> PciRoot {
        PciRoot {
            slots: (0..SLOTS).map(|_| None).collect(),
            functions: Vec::new(),
            pio,
            mmio,
        }
    }

    /// The lowest free slot from 1 up (slot 0 is the host bridge's).
    pub fn free_slot(&self) -> Option<u8> {
        (1..SLOTS).find(|&s| self.slots[usize::from(s)].is_none())
    }

    /// Puts `device` at `slot` (function 0) and maps whatever BARs it already decodes.
    pub fn add_device(&mut self, slot: u8, device: SharedPciDevice) -> Result<(), PciRootError> {
        let entry = self
            .slots
            .get_mut(usize::from(slot))
            .ok_or(PciRootError::NoSuchSlot(slot))?;
        if entry.is_some() {
            return Err(PciRootError::SlotTaken(slot));
        }
        *entry = Some(Slot {
            device,
            mapped: Vec::new(),
        });
        self.sync_bars(slot);
        Ok(())
    }

    /// The device at `slot`.
    pub fn device(&self, slot: u8) -> Option<SharedPciDevice> {
        Some(self.slots.get(usize::from(slot))?.as_ref()?.device.clone())
    }

    /// Puts `device`, which has no BARs, at `slot`.`function` (1..8) of the multi-function
    /// device at `slot`.
    pub fn add_function(
        &mut self,
        slot: u8,
        function: u8,
        device: SharedPciDevice,
    ) -> Result<(), PciRootError> {
        let multi_function = self
            .device(slot)
            .is_some_and(|d| lock(&d).configuration().is_multi_function());
        let taken = self.functions.iter().any(|&(s, f, _)| (s, f) == (slot, function));
        if !(1..8).contains(&function) || !multi_function || taken {
            return Err(PciRootError::BadFunction { slot, function });
        }
        self.functions.push((slot, function, device));
        Ok(())
    }

    fn function(&self, bus: u8, device: u8, function: u8) -> Option<SharedPciDevice> {
        if bus != 0 {
            return None;
        }
        if function == 0 {
            return self.device(device);
        }
        self.functions
            .iter()
            .find(|&&(s, f, _)| (s, f) == (device, function))
            .map(|(_, _, d)| d.clone())
    }

    /// A configuration read; absent functions read as all ones (vendor ID 0xffff).
    pub fn read_config(&self, bus: u8, device: u8, function: u8, offset: usize, data: &mut [u8]) {
        match self.function(bus, device, function) {
            Some(d) => lock(&d).read_config(offset, data),
            None => data.fill(0xff),
        }
    }

    /// A configuration write; BARs the write moved or switched on or off move on the buses.
    pub fn write_config(&mut self, bus: u8, device: u8, function: u8, offset: usize, data: &[u8]) {
        let Some(d) = self.function(bus, device, function) else {
            return;
        };
        lock(&d).write_config(offset, data);
        if function == 0 {
            self.sync_bars(device);
        }
    }

    /// Gives every unassigned BAR an address from `allocator` and turns decoding on, as
    /// firmware does before it boots an OS. For a direct kernel boot.
    pub fn assign_bars(&mut self, allocator: &mut BarAllocator) -> Result<(), BarAllocatorError> {
        for slot in 0..SLOTS {
            let Some(device) = self.device(slot) else { continue };
            {
                let mut device = lock(&device);
                let config = device.configuration_mut();
                // Largest first keeps the window tightly packed.
                let mut bars = config.bars();
                bars.sort_by_key(|b| std::cmp::Reverse(b.size));
                let mut enable = 0;
                for bar in bars {
                    if bar.address == 0 {
                        let address = allocator.allocate(bar.kind, bar.size)?;
                        config
                            .set_bar_address(usize::from(bar.index), address)
                            .expect("the allocator hands out aligned 32-bit addresses");
                    }
                    enable |= if bar.is_io() { COMMAND_IO } else { COMMAND_MEMORY };
                }
                config.enable(enable);
            }
            self.sync_bars(slot);
        }
        Ok(())
    }

    /// Every BAR mapped now, as (bus, address, `pci 00:SS.0 VVVV:DDDD bar N`): what the exit
    /// accounting calls the ranges it counted.
    pub fn mapped_bar_labels(&self) -> Vec<(crate::exit_stats::AddressSpace, u64, String)> {
        use crate::exit_stats::AddressSpace;
        let mut labels = Vec::new();
        for (slot, entry) in self.slots.iter().enumerate() {
            let Some(entry) = entry else { continue };
            let mut ids = [0u8; 4];
            lock(&entry.device).configuration().read(0, &mut ids);
            let (vendor, device) = (
                u16::from_le_bytes([ids[0], ids[1]]),
                u16::from_le_bytes([ids[2], ids[3]]),
            );
            for bar in &entry.mapped {
                let space = if bar.is_io() {
                    AddressSpace::Port
                } else {
                    AddressSpace::Mmio
                };
                labels.push((
                    space,
                    bar.address,
                    format!("pci 00:{slot:02x}.0 {vendor:04x}:{device:04x} bar {}", bar.index),
                ));
            }
        }
        labels
    }

    fn bus_for(&self, bar: &BarRegion) -> &Bus {
        if bar.is_io() {
            &self.pio
        } else {
            &self.mmio
        }
    }

    /// Makes the buses match what the device at `slot` decodes now: after a write to its
    /// configuration, or once a restore has put a saved configuration space into it (its BARs
    /// mapped and the device told, so it registers its ioeventfds where they are).
    pub fn sync_bars(&mut self, slot: u8) {
        let Some(entry) = self.slots.get(usize::from(slot)).and_then(|s| s.as_ref()) else {
            return;
        };
        let device = entry.device.clone();
        let wanted = lock(&device).configuration().mapped_bars();
        if wanted == entry.mapped {
            return;
        }
        let old = entry.mapped.clone();
        let mut mapped = Vec::with_capacity(wanted.len());
        for bar in &old {
            if !wanted.contains(bar) {
                if let Err(e) = self.bus_for(bar).remove(bar.address, bar.size) {
                    crate::warn_ratelimited!(slot, bar = bar.index, "cannot unmap a BAR: {e}");
                }
            }
        }
        for bar in &wanted {
            if old.contains(bar) {
                mapped.push(*bar);
                continue;
            }
            let handler = Arc::new(Mutex::new(BarHandler {
                device: device.clone(),
                bar: bar.index,
            }));
            // A BAR over another device (or over itself mid-reprogramming) stays unmapped until
            // the guest moves it somewhere free; the guest sees all ones there meanwhile.
            match self.bus_for(bar).insert(bar.address, bar.size, handler) {
                Ok(()) => mapped.push(*bar),
                Err(e) => tracing::debug!(slot, bar = bar.index, "BAR not mapped: {e}"),
            }
        }
        let mut indices: Vec<u8> = old.iter().chain(mapped.iter()).map(|b| b.index).collect();
        indices.sort_unstable();
        indices.dedup();
        let mut moves: Vec<(BarRegion, Option<u64>, Option<u64>)> = Vec::new();
        for index in indices {
            let before = old.iter().find(|b| b.index == index);
            let after = mapped.iter().find(|b| b.index == index);
            if let (Some(region), true) = (after.or(before), before != after) {
                moves.push((*region, before.map(|b| b.address), after.map(|b| b.address)));
            }
        }
        if let Some(Some(entry)) = self.slots.get_mut(usize::from(slot)) {
            entry.mapped = mapped;
        }
        let mut device = lock(&device);
        for (region, before, after) in moves {
            device.bar_moved(&region, before, after);
        }
    }
}
