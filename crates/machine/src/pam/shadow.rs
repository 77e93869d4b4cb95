//! Shadow RAM: the PAM window's segments as KVM memory slots that follow the PAM registers,
//! and the MMIO device that takes every access KVM does not serve itself.
//!
//! A segment is, in KVM:
//! - RAM: a read-write slot onto guest RAM;
//! - read-only RAM: a read-only slot onto guest RAM (`KVM_MEM_READONLY`); writes exit as MMIO;
//! - ROM: a read-only slot onto a separate buffer holding the firmware's last 128 KiB (the
//!   "ISA BIOS"); writes exit as MMIO;
//! - open bus: no slot; reads and writes exit as MMIO.
//!
//! Every MMIO exit in the window lands in [`ShadowRam`]'s [`BusDevice`], which answers from
//! the attributes themselves (WE writes go to RAM, others are dropped; reads see RAM, the ROM or
//! all ones). So the slots only speed things up: while a segment is being remapped, or if KVM
//! refused a slot, accesses still behave as the registers say (only running code there needs
//! the slot). The device's lock is held while the slots change, so a vCPU that exits meanwhile
//! waits for the new state.

use std::sync::Arc;

use virtkit_hypervisor::{HypervisorError, Vm};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

use super::{decode, Attributes, Backing, Segment, PAM_REGISTER_COUNT, SEGMENTS, SEGMENT_COUNT};
use crate::bus::BusDevice;
use crate::layout::{LEGACY_BIOS_SIZE, PAM_WINDOW_END, PAM_WINDOW_START};

/// What shadow RAM needs from KVM: [`Vm`]'s memory slots (a fake in unit tests).
pub(crate) trait MemorySlots: Send + Sync {
    /// Maps host memory at a guest range and returns the slot.
    ///
    /// # Safety
    ///
    /// As [`Vm::map_memory`]: the host range stays mapped until the slot is removed.
    unsafe fn map(
        &self,
        guest_address: u64,
        size: u64,
        host_address: u64,
        read_only: bool,
    ) -> Result<u32, HypervisorError>;

    /// Removes a slot `map` returned.
    fn unmap(&self, slot: u32) -> Result<(), HypervisorError>;
}

impl MemorySlots for Vm {
    unsafe fn map(
        &self,
        guest_address: u64,
        size: u64,
        host_address: u64,
        read_only: bool,
    ) -> Result<u32, HypervisorError> {
        // SAFETY: the caller keeps the host range mapped until it removes the slot.
        unsafe { self.map_memory(guest_address, size, host_address, read_only) }
    }

    fn unmap(&self, slot: u32) -> Result<(), HypervisorError> {
        self.unmap_memory(slot)
    }
}

/// Why shadow RAM could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum ShadowRamError {
    #[error(
        "guest RAM does not cover {PAM_WINDOW_START:#x}..{PAM_WINDOW_END:#x} in one region; give the guest more than 1 MiB"
    )]
    NoRam,
    #[error("the ISA BIOS ROM would be {0} bytes; it must be a non-zero multiple of 16 KiB up to 128 KiB")]
    RomSize(usize),
    #[error("cannot allocate memory for the ISA BIOS ROM")]
    RomMemory(#[source] vm_memory::mmap::FromRangesError),
    #[error("cannot copy the firmware into the ISA BIOS ROM")]
    RomCopy(#[source] vm_memory::GuestMemoryError),
    #[error("KVM refused a memory slot for the PAM window")]
    Slot(#[source] HypervisorError),
}

/// How KVM maps one segment now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct KvmMapping {
    backing: Backing,
    /// `None` for an open bus.
    slot: Option<u32>,
}

/// The PAM window 0xC0000..0x100000 of a firmware boot. Put it on the MMIO bus over the window
/// and call [`ShadowRam::set_registers`] whenever the PAM registers change.
pub(crate) struct ShadowRam {
    slots: Arc<dyn MemorySlots>,
    ram: GuestMemoryMmap,
    /// The ISA BIOS ROM at its guest addresses, ending at 1 MiB.
    rom: GuestMemoryMmap,
    rom_start: u64,
    attributes: [Attributes; SEGMENT_COUNT],
    /// `None` until mapped, and after KVM refused a change (the next change tries again).
    kvm: [Option<KvmMapping>; SEGMENT_COUNT],
}

impl std::fmt::Debug for ShadowRam {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShadowRam")
            .field("rom_start", &format_args!("{:#x}", self.rom_start))
            .field("attributes", &self.attributes)
            .field("kvm", &self.kvm)
            .finish()
    }
}

impl ShadowRam {
    /// Shadow RAM over `ram` (which must hold the whole window in one region) with `isa_bios`
    /// (the firmware's last up to 128 KiB) as the ROM that ends at 1 MiB, mapped as at
    /// power-on: every attribute 0, so the ROM is read and nothing is written.
    pub(crate) fn new(
        slots: Arc<dyn MemorySlots>,
        ram: GuestMemoryMmap,
        isa_bios: &[u8],
    ) -> Result<ShadowRam, ShadowRamError> {
        let len = isa_bios.len();
        if len == 0 || !(len as u64).is_multiple_of(SEGMENTS[1].size) || len as u64 > LEGACY_BIOS_SIZE {
            return Err(ShadowRamError::RomSize(len));
        }
        let covered = ram
            .find_region(GuestAddress(PAM_WINDOW_START))
            .is_some_and(|region| {
                region.start_addr().0 <= PAM_WINDOW_START
                    && region.start_addr().0 + region.len() >= PAM_WINDOW_END
            });
        if !covered {
            return Err(ShadowRamError::NoRam);
        }
        let rom_start = PAM_WINDOW_END - len as u64;
        let rom = GuestMemoryMmap::from_ranges(&[(GuestAddress(rom_start), len)])
            .map_err(ShadowRamError::RomMemory)?;
        rom.write_slice(isa_bios, GuestAddress(rom_start))
            .map_err(ShadowRamError::RomCopy)?;
        let mut shadow = ShadowRam {
            slots,
            ram,
            rom,
            rom_start,
            attributes: [Attributes::default(); SEGMENT_COUNT],
            kvm: [None; SEGMENT_COUNT],
        };
        for index in 0..SEGMENT_COUNT {
            shadow.sync_segment(index).map_err(ShadowRamError::Slot)?;
        }
        Ok(shadow)
    }

    /// Applies new PAM register values: segments whose backing changed are remapped.
    pub(crate) fn set_registers(&mut self, registers: &[u8; PAM_REGISTER_COUNT]) {
        let attributes = decode(registers);
        if attributes == self.attributes {
            return;
        }
        tracing::debug!(?registers, "PAM registers changed");
        self.attributes = attributes;
        for (index, segment) in SEGMENTS.iter().enumerate() {
            if let Err(e) = self.sync_segment(index) {
                // The device still serves every access the registers allow; only code in the
                // segment cannot run.
                tracing::error!(
                    start = format_args!("{:#x}", segment.start),
                    "cannot remap a PAM segment: {e}"
                );
            }
        }
    }

    /// The attributes in force, in segment order.
    #[cfg(test)]
    pub(crate) fn attributes(&self) -> [Attributes; SEGMENT_COUNT] {
        self.attributes
    }

    /// Host address of `address` in the ROM, for tests that check what a slot points at.
    #[cfg(test)]
    pub(crate) fn rom_host_address(&self, address: u64) -> u64 {
        self.rom
            .get_host_address(GuestAddress(address))
            .expect("address in the ROM") as u64
    }

    fn rom_behind(&self, segment: &Segment) -> bool {
        segment.start >= self.rom_start
    }

    /// Makes KVM map segment `index` as its attributes say.
    fn sync_segment(&mut self, index: usize) -> Result<(), HypervisorError> {
        let segment = SEGMENTS[index];
        let backing = Backing::of(self.attributes[index], self.rom_behind(&segment));
        let current = self.kvm[index];
        if current.is_some_and(|m| m.backing == backing) {
            return Ok(());
        }
        // Slots may not overlap: the old one goes first. Until the new one is in, accesses
        // exit to `BusDevice`, which answers as the new attributes say.
        if let Some(slot) = current.and_then(|m| m.slot) {
            self.slots.unmap(slot)?;
        }
        self.kvm[index] = None;
        let (memory, read_only) = match backing {
            Backing::Ram => (&self.ram, false),
            Backing::ReadOnlyRam => (&self.ram, true),
            Backing::Rom => (&self.rom, true),
            Backing::OpenBus => {
                self.kvm[index] = Some(KvmMapping { backing, slot: None });
                return Ok(());
            }
        };
        let host = memory
            .get_host_address(GuestAddress(segment.start))
            .expect("`new` checked that RAM and the ROM cover their segments") as u64;
        // SAFETY: `host` is inside `self.ram` or `self.rom`, whose mappings live as long as
        // `self` (clones of a GuestMemoryMmap share its regions); `Drop` removes every slot
        // before they go.
        let slot = unsafe { self.slots.map(segment.start, segment.size, host, read_only) }?;
        self.kvm[index] = Some(KvmMapping {
            backing,
            slot: Some(slot),
        });
        Ok(())
    }

    fn read_byte(&self, address: u64) -> u8 {
        let Some(index) = Segment::index_of(address) else {
            return 0xff;
        };
        let at = GuestAddress(address);
        if self.attributes[index].read_enable {
            self.ram.read_obj(at).unwrap_or(0xff)
        } else if address >= self.rom_start {
            self.rom.read_obj(at).unwrap_or(0xff)
        } else {
            0xff
        }
    }

    /// Writes a byte if WE allows; says whether it did.
    fn write_byte(&self, address: u64, value: u8) -> bool {
        match Segment::index_of(address) {
            Some(index) if self.attributes[index].write_enable => {
                self.ram.write_obj(value, GuestAddress(address)).is_ok()
            }
            _ => false,
        }
    }
}

impl BusDevice for ShadowRam {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        // Byte by byte: an access may straddle two segments with different attributes.
        for (address, byte) in (PAM_WINDOW_START + offset..).zip(data.iter_mut()) {
            *byte = self.read_byte(address);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let mut dropped = false;
        for (address, &value) in (PAM_WINDOW_START + offset..).zip(data) {
            dropped |= !self.write_byte(address, value);
        }
        if dropped {
            tracing::trace!(
                address = format_args!("{:#x}", PAM_WINDOW_START + offset),
                len = data.len(),
                "write to a write-protected PAM segment dropped"
            );
        }
    }
}

impl Drop for ShadowRam {
    fn drop(&mut self) {
        for slot in self.kvm.iter().flatten().filter_map(|m| m.slot) {
            if let Err(e) = self.slots.unmap(slot) {
                crate::warn_ratelimited!(slot, "cannot remove a PAM slot: {e}");
            }
        }
    }
}

#[cfg(test)]
mod tests;
