//! BAR addresses for a direct kernel boot, where no firmware assigns them: memory BARs from the
//! 32-bit window below the ECAM, I/O BARs from 0xc000..0x10000.

use vm_allocator::{AddressAllocator, AllocPolicy};

use super::BarKind;
use crate::layout::{PCI_IO_SIZE, PCI_IO_START, PCI_MMIO32_SIZE, PCI_MMIO32_START};

#[derive(Debug, thiserror::Error)]
pub enum BarAllocatorError {
    #[error("no room for a {size:#x}-byte {kind:?} BAR in the PCI window")]
    Exhausted {
        kind: BarKind,
        size: u64,
        #[source]
        source: vm_allocator::Error,
    },
}

/// Hands out naturally aligned BAR addresses.
#[derive(Debug)]
pub struct BarAllocator {
    mmio: AddressAllocator,
    io: AddressAllocator,
}

impl Default for BarAllocator {
    fn default() -> Self {
        BarAllocator::new()
    }
}

impl BarAllocator {
    /// The platform's windows (see `layout`).
    pub fn new() -> BarAllocator {
        BarAllocator {
            mmio: AddressAllocator::new(PCI_MMIO32_START, PCI_MMIO32_SIZE)
                .expect("the PCI MMIO window is valid"),
            io: AddressAllocator::new(PCI_IO_START, PCI_IO_SIZE).expect("the PCI I/O window is valid"),
        }
    }

    /// An address for a BAR of `size` bytes (a power of two), aligned to its size.
    pub fn allocate(&mut self, kind: BarKind, size: u64) -> Result<u64, BarAllocatorError> {
        let allocator = match kind {
            BarKind::Io => &mut self.io,
            BarKind::Memory32 | BarKind::Memory64 => &mut self.mmio,
        };
        allocator
            .allocate(size, size, AllocPolicy::FirstMatch)
            .map(|range| range.start())
            .map_err(|source| BarAllocatorError::Exhausted { kind, size, source })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bars_are_aligned_to_their_size_and_do_not_overlap() {
        let mut a = BarAllocator::new();
        let small = a.allocate(BarKind::Memory32, 0x1000).unwrap();
        let big = a.allocate(BarKind::Memory64, 0x10_0000).unwrap();
        assert_eq!(small, PCI_MMIO32_START);
        assert_eq!(big % 0x10_0000, 0);
        assert!(big >= small + 0x1000);
        let io = a.allocate(BarKind::Io, 0x40).unwrap();
        assert_eq!(io, PCI_IO_START);
        assert!(a.allocate(BarKind::Io, 0x1_0000).is_err());
    }
}
