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

/// The parts of `start..start + len` outside `hole`, as (start, length): how a RAM region is
/// split into memory slots around a window that is mapped on its own (the PAM window).
pub fn ranges_around(start: u64, len: u64, hole: std::ops::Range<u64>) -> Vec<(u64, u64)> {
    let end = start + len;
    if hole.end <= start || hole.start >= end {
        return vec![(start, len)];
    }
    let mut ranges = Vec::with_capacity(2);
    if hole.start > start {
        ranges.push((start, hole.start - start));
    }
    if hole.end < end {
        ranges.push((hole.end, end - hole.end));
    }
    ranges
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_around_a_hole_leave_out_exactly_the_hole() {
        let hole = 0xc0000..0x10_0000;
        assert_eq!(
            ranges_around(0, 64 << 20, hole.clone()),
            vec![(0, 0xc0000), (0x10_0000, (64 << 20) - 0x10_0000)]
        );
        assert_eq!(
            ranges_around(1 << 32, 1 << 30, hole.clone()),
            vec![(1 << 32, 1 << 30)],
            "a region away from the hole stays whole"
        );
        assert_eq!(ranges_around(0, 0x10_0000, hole.clone()), vec![(0, 0xc0000)]);
        assert_eq!(ranges_around(0xc0000, 0x40000, hole), vec![], "all hole");
    }

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
