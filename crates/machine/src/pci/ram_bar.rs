//! A memory BAR backed by host memory, which the guest reads and writes without exits (a
//! display's framebuffer): a KVM memory slot follows the BAR wherever the firmware or the guest
//! puts it, and the VMM reads the same memory (a screenshot, a VNC update).
//!
//! While the BAR is not decoded, or between a move and the new slot, the guest's accesses reach
//! the device through the MMIO bus like any BAR's; the device answers them from the same memory
//! ([`RamBar::read`], [`RamBar::write`]), so the slot only makes it fast.
//!
//! The slot has KVM's dirty log on, so whoever follows the memory (the VNC server) can ask
//! whether anything changed ([`RamBar::take_changed`]) with one ioctl instead of reading and
//! comparing the whole of it: an idle screen then costs nothing.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use virtkit_hypervisor::Vm;
use vm_memory::mmap::MmapRegion;
use vm_memory::VolatileMemory;

/// Why a RAM BAR could not be made.
#[derive(Debug, thiserror::Error)]
pub enum RamBarError {
    #[error("cannot allocate {size} bytes of host memory for a BAR")]
    Allocate {
        size: u64,
        #[source]
        source: vm_memory::mmap::MmapRegionError,
    },
}

/// Host memory behind a BAR, and the slot that maps it where the BAR is.
pub struct RamBar {
    region: MmapRegion,
    vm: Arc<Vm>,
    slot: Option<u32>,
    address: Option<u64>,
    /// Changed in a way KVM's dirty log does not see: a write through the MMIO bus, a new slot
    /// (the log starts clean), no slot at all.
    changed: AtomicBool,
}

impl std::fmt::Debug for RamBar {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RamBar")
            .field("size", &self.region.size())
            .field("slot", &self.slot)
            .field("address", &self.address)
            .finish()
    }
}

impl RamBar {
    /// `size` bytes of zeroed anonymous memory, not mapped into the guest yet.
    pub fn new(vm: Arc<Vm>, size: u64) -> Result<RamBar, RamBarError> {
        let region =
            MmapRegion::new(size as usize).map_err(|source| RamBarError::Allocate { size, source })?;
        Ok(RamBar {
            region,
            vm,
            slot: None,
            address: None,
            changed: AtomicBool::new(true),
        })
    }

    pub fn size(&self) -> u64 {
        self.region.size() as u64
    }

    /// Where the guest sees it now (`None`: not decoded).
    pub fn address(&self) -> Option<u64> {
        self.address
    }

    /// The BAR is now decoded at `address` (or not at all): the old slot goes, a new one maps
    /// the memory there. If KVM refuses the slot, accesses keep reaching the device through the
    /// MMIO bus (slowly, but the same memory).
    pub fn moved(&mut self, address: Option<u64>) {
        if let Some(slot) = self.slot.take() {
            if let Err(e) = self.vm.unmap_memory(slot) {
                crate::warn_ratelimited!("cannot remove a BAR's memory slot: {e}");
            }
        }
        self.address = address;
        let Some(address) = address else { return };
        // SAFETY: `region` is an anonymous mapping owned by `self`; the slot is removed before
        // the mapping is (in `moved` and in `Drop`), so the host range outlives the slot.
        let mapped = unsafe {
            self.vm
                .map_memory_logged(address, self.size(), self.region.as_ptr() as u64)
        };
        self.changed.store(true, Ordering::Relaxed);
        match mapped {
            Ok(slot) => self.slot = Some(slot),
            Err(e) => crate::warn_ratelimited!(address, "cannot map a BAR's memory; its accesses exit: {e}"),
        }
    }

    /// Copies from `offset`; bytes past the end read as all ones.
    pub fn read(&self, offset: u64, data: &mut [u8]) {
        data.fill(0xff);
        if let Ok(slice) = self.region.get_slice(offset as usize, data.len()) {
            let _ = slice.copy_to(data);
        }
    }

    /// Copies to `offset`; bytes past the end are dropped.
    pub fn write(&self, offset: u64, data: &[u8]) {
        if let Ok(slice) = self.region.get_slice(offset as usize, data.len()) {
            slice.copy_from(data);
            self.changed.store(true, Ordering::Relaxed);
        }
    }

    /// Whether the memory may have changed since the last call: the guest wrote a page of the
    /// slot (KVM's dirty log, read and cleared), or it changed where the log does not look.
    /// When the log cannot be read the answer is yes.
    pub fn take_changed(&self) -> bool {
        let other = self.changed.swap(false, Ordering::Relaxed);
        let Some(slot) = self.slot else { return true };
        match self.vm.dirty_pages(slot, self.size()) {
            Ok(pages) => other || pages.iter().any(|&w| w != 0),
            Err(e) => {
                crate::warn_ratelimited!("cannot read a BAR's dirty log: {e}");
                true
            }
        }
    }

    /// The memory, for whoever reads the whole of it (a screenshot).
    pub fn memory(&self) -> &MmapRegion {
        &self.region
    }

    /// `len` bytes from `offset`, read at once (a frame), or `None` past the end.
    pub fn copy_out(&self, offset: u64, len: usize) -> Option<Vec<u8>> {
        let mut out = vec![0u8; len];
        let slice = self.region.get_slice(usize::try_from(offset).ok()?, len).ok()?;
        slice.copy_to(&mut out[..]);
        Some(out)
    }
}

impl Drop for RamBar {
    fn drop(&mut self) {
        if let Some(slot) = self.slot.take() {
            let _ = self.vm.unmap_memory(slot);
        }
    }
}
