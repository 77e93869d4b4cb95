//! Giving guest pages back to the host: [`MemoryDiscard`], with [`MadviseDiscard`] (the real
//! one, `madvise(MADV_DONTNEED)`) and [`RecordingDiscard`] (tests and the fuzzer).
//!
//! This module holds the balloon's only `unsafe`: one `madvise` call on a range of a mapping
//! vm-memory owns.
//!
//! Guest memory here is anonymous private memory (`machine::memory`, `GuestMemoryMmap::
//! from_ranges`): after `MADV_DONTNEED` its pages read as zero and no longer count in the
//! process's RSS. A VM with a vhost-user device (a shared directory) has its memory in one memfd
//! mapped shared (`machine::memory::create_shared_guest_memory`), where `MADV_DONTNEED` would
//! free nothing: there `MADV_REMOVE` punches the range out of the memfd (for the backend's
//! mapping too), after which it reads as zero. virtkit maps no other file as guest RAM.

#![allow(unsafe_code)]

use std::sync::{Arc, Mutex};

use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

/// Granule of every discard: the balloon's page size, and the host's on x86_64.
pub const DISCARD_ALIGN: u64 = 4096;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DiscardError {
    #[error("{len:#x} bytes at {addr:#x} do not lie inside one region of guest memory")]
    OutOfRange { addr: u64, len: u64 },
    #[error("{len:#x} bytes at {addr:#x} are not aligned to {DISCARD_ALIGN:#x}")]
    Unaligned { addr: u64, len: u64 },
    #[error("madvise (MADV_DONTNEED or MADV_REMOVE) failed: {0}")]
    Madvise(String),
}

/// Discards guest memory the guest gave up. Called with 4 KiB-aligned ranges that lie inside
/// one region of `mem` (the balloon checks them first); an implementation checks again.
pub trait MemoryDiscard: Send {
    fn discard(&mut self, mem: &GuestMemoryMmap, addr: GuestAddress, len: u64) -> Result<(), DiscardError>;
}

/// Checks that `len` bytes at `addr` are 4 KiB-aligned and lie inside one region of `mem`.
pub fn check_discard(mem: &GuestMemoryMmap, addr: GuestAddress, len: u64) -> Result<(), DiscardError> {
    let raw = addr.0;
    if len == 0 || !raw.is_multiple_of(DISCARD_ALIGN) || !len.is_multiple_of(DISCARD_ALIGN) {
        return Err(DiscardError::Unaligned { addr: raw, len });
    }
    let region = mem
        .find_region(addr)
        .ok_or(DiscardError::OutOfRange { addr: raw, len })?;
    let last = raw
        .checked_add(len - 1)
        .ok_or(DiscardError::OutOfRange { addr: raw, len })?;
    if last > region.last_addr().0 {
        return Err(DiscardError::OutOfRange { addr: raw, len });
    }
    Ok(())
}

/// The real discard: `madvise(MADV_DONTNEED)` on the range's host mapping.
#[derive(Debug, Default, Clone, Copy)]
pub struct MadviseDiscard;

impl MemoryDiscard for MadviseDiscard {
    fn discard(&mut self, mem: &GuestMemoryMmap, addr: GuestAddress, len: u64) -> Result<(), DiscardError> {
        check_discard(mem, addr, len)?;
        let out_of_range = DiscardError::OutOfRange { addr: addr.0, len };
        let (region, offset) = mem.to_region_addr(addr).ok_or(out_of_range)?;
        // The only file-backed guest memory virtkit makes is the shared memfd (no other file
        // is ever mapped as guest RAM, so MADV_REMOVE cannot punch holes into a user's file).
        // The worker's seccomp filter leaves no way to look at the descriptor here.
        let advice = if region.file_offset().is_some() {
            libc::MADV_REMOVE
        } else {
            libc::MADV_DONTNEED
        };
        let count = usize::try_from(len).map_err(|_| DiscardError::OutOfRange { addr: addr.0, len })?;
        // A bounds-checked slice of the region: the whole range lies inside its mapping.
        let slice = region
            .get_slice(offset, count)
            .map_err(|_| DiscardError::OutOfRange { addr: addr.0, len })?;
        let guard = slice.ptr_guard_mut();
        let host = guard.as_ptr();
        if !(host as u64).is_multiple_of(DISCARD_ALIGN) {
            return Err(DiscardError::Unaligned {
                addr: host as u64,
                len,
            });
        }
        // Why this is sound: `host..host + count` lies inside one mapping of `mem` (checked by `get_slice`
        // above), which vm-memory created and keeps mapped for as long as the
        // `GuestMemoryMmap` lives (we hold a reference to it for the whole call). It is private
        // anonymous memory, on which MADV_DONTNEED only drops the pages, or a shared mapping of
        // the guest-memory memfd, on which MADV_REMOVE frees them from the file (other
        // file-backed regions were refused above): either way later accesses read zeros,
        // nothing is unmapped, no Rust object lives there (guest memory is only ever reached
        // through volatile accesses). The guest gave these pages up (inflate, free page
        // report), so their contents are no-one's. The start is page-aligned (checked) and the
        // length a multiple of 4 KiB.
        // SAFETY: a checked range of guest memory the guest gave up, in a mapping `mem` keeps
        // alive; the advice only drops its pages (see above).
        let ret = unsafe { libc::madvise(host.cast::<libc::c_void>(), count, advice) };
        if ret != 0 {
            return Err(DiscardError::Madvise(std::io::Error::last_os_error().to_string()));
        }
        Ok(())
    }
}

/// Records each discard (guest address, length) instead of doing it; after checking it as the
/// real one does. Clones share the record.
#[derive(Debug, Default, Clone)]
pub struct RecordingDiscard {
    ranges: Arc<Mutex<Vec<(u64, u64)>>>,
}

impl RecordingDiscard {
    /// The discards so far, in order.
    pub fn ranges(&self) -> Vec<(u64, u64)> {
        self.ranges.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

impl MemoryDiscard for RecordingDiscard {
    fn discard(&mut self, mem: &GuestMemoryMmap, addr: GuestAddress, len: u64) -> Result<(), DiscardError> {
        check_discard(mem, addr, len)?;
        self.ranges
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((addr.0, len));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use vm_memory::Bytes;

    use super::*;

    #[test]
    fn madvise_discard_zeroes_the_pages_and_only_them() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        let fill = vec![0x5au8; 4 * 4096];
        mem.write_slice(&fill, GuestAddress(0x8000)).unwrap();
        MadviseDiscard
            .discard(&mem, GuestAddress(0x9000), 0x2000)
            .unwrap();
        let mut back = vec![0u8; 4 * 4096];
        mem.read_slice(&mut back, GuestAddress(0x8000)).unwrap();
        assert!(back[..0x1000].iter().all(|&b| b == 0x5a), "page before kept");
        assert!(
            back[0x1000..0x3000].iter().all(|&b| b == 0),
            "discarded pages read zero"
        );
        assert!(back[0x3000..].iter().all(|&b| b == 0x5a), "page after kept");
        // The memory is still usable.
        mem.write_obj(7u32, GuestAddress(0x9000)).unwrap();
        assert_eq!(mem.read_obj::<u32>(GuestAddress(0x9000)).unwrap(), 7);
    }

    #[test]
    fn in_shared_memfd_memory_the_pages_leave_the_file_too() {
        use std::os::unix::fs::MetadataExt;
        let mem =
            virtkit_machine::memory::create_shared_guest_memory(&[(GuestAddress(0), 1 << 20)], &[]).unwrap();
        let fill = vec![0x5au8; 64 * 4096];
        mem.write_slice(&fill, GuestAddress(0x10000)).unwrap();
        let file = mem
            .find_region(GuestAddress(0))
            .unwrap()
            .file_offset()
            .unwrap()
            .file();
        let blocks_before = file.metadata().unwrap().blocks();
        MadviseDiscard
            .discard(&mem, GuestAddress(0x10000), 64 * 4096)
            .unwrap();
        let blocks_after = file.metadata().unwrap().blocks();
        // 256 KiB are 512 blocks of 512 bytes: they left the memfd (what MADV_DONTNEED on a
        // shared mapping would not do). Measured before reading back: a read of a hole in
        // shmem allocates a page again.
        assert!(
            blocks_after + 512 <= blocks_before,
            "{blocks_before} -> {blocks_after} blocks"
        );
        let mut back = vec![0xffu8; 64 * 4096];
        mem.read_slice(&mut back, GuestAddress(0x10000)).unwrap();
        assert!(back.iter().all(|&b| b == 0), "discarded pages read zero");
    }

    #[test]
    fn bad_ranges_are_refused_by_both() {
        let mem =
            GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10000), (GuestAddress(0x20000), 0x10000)])
                .unwrap();
        let bad = [
            (0x1000u64, 0u64),
            (0x800, 0x1000),
            (0x1000, 0x800),
            (0xf000, 0x2000),  // runs past the first region into the hole
            (0x10000, 0x1000), // in the hole
            (0x2f000, 0x2000), // past the end
            (!0xfffu64, 0x1000),
            (0x1000, !0xfffu64),
        ];
        let recording = RecordingDiscard::default();
        for (addr, len) in bad {
            assert!(
                MadviseDiscard.discard(&mem, GuestAddress(addr), len).is_err(),
                "{addr:#x}+{len:#x}"
            );
            assert!(recording.clone().discard(&mem, GuestAddress(addr), len).is_err());
        }
        assert!(recording.ranges().is_empty());
        MadviseDiscard
            .discard(&mem, GuestAddress(0x2f000), 0x1000)
            .unwrap();
    }
}
