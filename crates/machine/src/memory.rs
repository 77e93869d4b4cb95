//! Guest RAM: its layout around the 32-bit MMIO hole and its creation.

use vm_memory::{GuestAddress, GuestMemoryMmap};

use crate::layout::{HIGH_MEMORY_START, MMIO_HOLE_START};

/// The RAM ranges of a guest with `size` bytes: below the MMIO hole, then above 4 GiB.
pub fn ram_ranges(size: u64) -> Vec<(GuestAddress, u64)> {
    if size <= MMIO_HOLE_START {
        vec![(GuestAddress(0), size)]
    } else {
        vec![
            (GuestAddress(0), MMIO_HOLE_START),
            (GuestAddress(HIGH_MEMORY_START), size - MMIO_HOLE_START),
        ]
    }
}

/// End of the RAM below 4 GiB (exclusive).
pub fn low_ram_end(size: u64) -> u64 {
    size.min(MMIO_HOLE_START)
}

/// Creates anonymous, lazily-populated guest memory for `ram` plus any extra ranges (such as a
/// firmware ROM at the top of 4 GiB).
pub fn create_guest_memory(
    ram: &[(GuestAddress, u64)],
    extra: &[(GuestAddress, u64)],
) -> Result<GuestMemoryMmap, vm_memory::mmap::FromRangesError> {
    let mut ranges: Vec<(GuestAddress, usize)> = ram
        .iter()
        .chain(extra.iter())
        .map(|(a, s)| (*a, *s as usize))
        .collect();
    ranges.sort_by_key(|(a, _)| *a);
    GuestMemoryMmap::from_ranges(&ranges)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_guest_is_one_range_from_zero() {
        assert_eq!(ram_ranges(64 << 20), vec![(GuestAddress(0), 64 << 20)]);
    }

    #[test]
    fn four_gib_guest_is_split_around_the_hole_without_losing_bytes() {
        let ranges = ram_ranges(4 << 30);
        assert_eq!(ranges.len(), 2);
        assert_eq!(ranges[0], (GuestAddress(0), MMIO_HOLE_START));
        assert_eq!(ranges[1].0, GuestAddress(HIGH_MEMORY_START));
        assert_eq!(ranges.iter().map(|r| r.1).sum::<u64>(), 4 << 30);
    }
}
