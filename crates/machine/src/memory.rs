//! Guest RAM: its layout around the 32-bit MMIO hole and its creation.

use std::fs::File;
use std::os::fd::FromRawFd;

use vm_memory::{FileOffset, GuestAddress, GuestMemoryMmap};

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

/// Why guest memory that a backend process can map could not be made.
#[derive(Debug, thiserror::Error)]
pub enum SharedMemoryError {
    #[error("cannot create the memfd that backs shareable guest memory")]
    Memfd(#[source] std::io::Error),
    #[error("cannot size or seal the memfd that backs shareable guest memory")]
    Size(#[source] std::io::Error),
    #[error("cannot map shareable guest memory")]
    Map(#[from] vm_memory::mmap::FromRangesError),
}

/// Creates guest memory like [`create_guest_memory`], but backed by one memfd mapped
/// `MAP_SHARED`, each range at its own offset of the file, so that a vhost-user backend can map
/// the same pages from the descriptors the regions carry (`GuestRegionMmap::file_offset`). The
/// memfd's size is sealed (no grow, no shrink): a backend holding it cannot make our mapping
/// fault by truncating it. Pages are allocated as the guest touches them, as for anonymous
/// memory; only VMs with a vhost-user device pay the difference (shmem pages, which the balloon
/// gives back with `MADV_REMOVE`, not `MADV_DONTNEED`).
pub fn create_shared_guest_memory(
    ram: &[(GuestAddress, u64)],
    extra: &[(GuestAddress, u64)],
) -> Result<GuestMemoryMmap, SharedMemoryError> {
    let mut ranges: Vec<(GuestAddress, u64)> = ram.iter().chain(extra.iter()).copied().collect();
    ranges.sort_by_key(|(a, _)| *a);
    let total: u64 = ranges.iter().map(|(_, s)| s).sum();
    let file = memfd(c"virtkit-guest-ram")?;
    file.set_len(total).map_err(SharedMemoryError::Size)?;
    // SAFETY: fcntl on a descriptor `file` owns; F_ADD_SEALS takes an int of seal flags.
    let sealed = unsafe {
        libc::fcntl(
            std::os::fd::AsRawFd::as_raw_fd(&file),
            libc::F_ADD_SEALS,
            libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_SEAL,
        )
    };
    if sealed != 0 {
        return Err(SharedMemoryError::Size(std::io::Error::last_os_error()));
    }
    let file = std::sync::Arc::new(file);
    let mut offset = 0;
    let mut with_files = Vec::with_capacity(ranges.len());
    for (address, size) in ranges {
        with_files.push((
            address,
            size as usize,
            Some(FileOffset::from_arc(file.clone(), offset)),
        ));
        offset += size;
    }
    Ok(GuestMemoryMmap::from_ranges_with_files(&with_files)?)
}

/// A new memfd (close-on-exec, sealable) named `name` for `/proc/PID/maps`.
fn memfd(name: &std::ffi::CStr) -> Result<File, SharedMemoryError> {
    // SAFETY: memfd_create reads the NUL-terminated `name` and returns a new descriptor or -1.
    let fd = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING) };
    if fd < 0 {
        return Err(SharedMemoryError::Memfd(std::io::Error::last_os_error()));
    }
    // SAFETY: `fd` was just created and is owned by nothing else.
    Ok(unsafe { File::from_raw_fd(fd) })
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
    fn shared_memory_is_one_memfd_with_each_range_at_its_own_offset() {
        use vm_memory::{Bytes, GuestMemoryBackend, GuestMemoryRegion};
        let ranges = [(GuestAddress(0), 2 << 20), (GuestAddress(1 << 32), 1 << 20)];
        let memory = create_shared_guest_memory(&ranges, &[]).unwrap();
        let offsets: Vec<u64> = memory
            .iter()
            .map(|r| r.file_offset().expect("file-backed").start())
            .collect();
        assert_eq!(offsets, vec![0, 2 << 20]);
        memory.write_obj(0xabcd_u32, GuestAddress(1 << 32)).unwrap();
        // Another mapping of the same file (as a backend's) sees the guest's write.
        let region = memory.find_region(GuestAddress(1 << 32)).unwrap();
        let file = region.file_offset().unwrap().file();
        let mut bytes = [0u8; 4];
        std::os::unix::fs::FileExt::read_exact_at(file, &mut bytes, 2 << 20).unwrap();
        assert_eq!(u32::from_le_bytes(bytes), 0xabcd);
        assert!(file.set_len(1 << 20).is_err(), "the size is sealed");
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
