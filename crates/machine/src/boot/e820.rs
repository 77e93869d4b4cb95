//! The guest's physical memory map (e820), shared by every boot path.

use crate::layout::{HIGH_RAM_START, KVM_IDENTITY_MAP_ADDRESS, KVM_TSS_ADDRESS, LOW_RAM_END};
use crate::memory::ram_ranges;

/// Usable RAM.
pub const E820_RAM: u32 = 1;
/// Reserved: the guest must not use it.
pub const E820_RESERVED: u32 = 2;

/// One e820 entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct E820Entry {
    pub address: u64,
    pub size: u64,
    pub kind: u32,
}

/// The memory map of a guest with `memory_size` bytes of RAM.
///
/// The legacy area from the EBDA to 1 MiB (VGA window, BIOS ROMs, our ACPI tables) is not
/// reported as RAM, as on a PC; the rest of RAM is, split around the 32-bit MMIO hole.
pub fn e820_map(memory_size: u64) -> Vec<E820Entry> {
    let mut map = vec![E820Entry {
        address: 0,
        size: LOW_RAM_END,
        kind: E820_RAM,
    }];
    for (start, size) in ram_ranges(memory_size) {
        let start = start.0;
        let end = start + size;
        let start = start.max(HIGH_RAM_START);
        if end > start {
            map.push(E820Entry {
                address: start,
                size: end - start,
                kind: E820_RAM,
            });
        }
    }
    map
}

/// KVM's identity-map page and the three TSS pages after it.
const KVM_PAGES_END: u64 = KVM_TSS_ADDRESS + 3 * 0x1000;

/// The memory map a firmware boot hands SeaBIOS (`etc/e820`), as QEMU gives it: all of RAM,
/// the legacy area included (SeaBIOS reserves its own pieces of it), split around the 32-bit
/// MMIO hole, and KVM's identity-map and TSS pages in the hole reserved so that the firmware
/// keeps off them.
pub fn firmware_e820_map(memory_size: u64) -> Vec<E820Entry> {
    let mut map: Vec<E820Entry> = ram_ranges(memory_size)
        .into_iter()
        .map(|(start, size)| E820Entry {
            address: start.0,
            size,
            kind: E820_RAM,
        })
        .collect();
    map.push(E820Entry {
        address: KVM_IDENTITY_MAP_ADDRESS,
        size: KVM_PAGES_END - KVM_IDENTITY_MAP_ADDRESS,
        kind: E820_RESERVED,
    });
    map
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::{HIGH_MEMORY_START, MMIO_HOLE_START};

    fn usable(map: &[E820Entry]) -> u64 {
        map.iter().filter(|e| e.kind == E820_RAM).map(|e| e.size).sum()
    }

    #[test]
    fn usable_ram_is_memory_less_the_legacy_area_for_64_mib() {
        let map = e820_map(64 << 20);
        assert_eq!(map.len(), 2);
        assert_eq!(
            map[0],
            E820Entry {
                address: 0,
                size: 0x9fc00,
                kind: E820_RAM
            }
        );
        assert_eq!(
            map[1],
            E820Entry {
                address: 0x10_0000,
                size: (64 << 20) - 0x10_0000,
                kind: E820_RAM
            }
        );
        assert_eq!(usable(&map), (64 << 20) - (HIGH_RAM_START - LOW_RAM_END));
    }

    #[test]
    fn four_gib_map_skips_the_mmio_hole_and_keeps_every_byte_above_it() {
        let map = e820_map(4 << 30);
        assert_eq!(map.len(), 3);
        assert_eq!(map[1].address + map[1].size, MMIO_HOLE_START);
        assert_eq!(map[2].address, HIGH_MEMORY_START);
        assert_eq!(map[2].size, (4 << 30) - MMIO_HOLE_START);
        assert_eq!(usable(&map), (4 << 30) - (HIGH_RAM_START - LOW_RAM_END));
    }

    #[test]
    fn firmware_map_is_all_of_ram_and_reserves_the_kvm_pages() {
        let reserved = E820Entry {
            address: 0xfffb_b000,
            size: 0x4000,
            kind: E820_RESERVED,
        };
        let ram = |address, size| E820Entry {
            address,
            size,
            kind: E820_RAM,
        };
        assert_eq!(firmware_e820_map(64 << 20), vec![ram(0, 64 << 20), reserved]);
        assert_eq!(
            firmware_e820_map(4 << 30),
            vec![
                ram(0, MMIO_HOLE_START),
                ram(HIGH_MEMORY_START, (4 << 30) - MMIO_HOLE_START),
                reserved
            ]
        );
    }

    #[test]
    fn entries_are_sorted_and_disjoint() {
        for size in [64u64 << 20, 3 << 30, (3 << 30) + 4096, 8 << 30] {
            let map = e820_map(size);
            for pair in map.windows(2) {
                assert!(
                    pair[0].address + pair[0].size <= pair[1].address,
                    "{size:#x}: {map:?}"
                );
            }
        }
    }
}
