//! Guest memory in a state file: written sparsely, restored lazily.
//!
//! Saving writes each 4 KiB page that is not all zeros at its place in the memory section and
//! leaves the rest a hole, so the file is as large as the memory the guest used. Pages are
//! compared with zero rather than asked about with `mincore`: an anonymous page that was
//! swapped out is not resident either, and skipping it would lose it.
//!
//! Restoring maps the memory section over the machine's anonymous guest memory with
//! `MAP_PRIVATE | MAP_FIXED` at the same host addresses, so KVM's memory slots, the devices'
//! and the shadow RAM's views stay valid and each page is read from the file (a hole: a zero
//! page) the first time the guest touches it; the guest's writes stay private to this process
//! and never reach the file (as Firecracker restores). Memory shared with a vhost-user backend
//! (a memfd) cannot be replaced that way, since the backend maps the memfd itself: it is read
//! in instead.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;

use vm_memory::{GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion, MemoryRegionAddress};

use super::format::{MemoryRange, PAGE_SIZE};

/// How much guest memory is copied at a time while saving.
const CHUNK: usize = 1 << 20;

/// A page of zeros to compare guest pages with.
static ZERO_PAGE: [u8; PAGE_SIZE as usize] = [0; PAGE_SIZE as usize];

/// The machine's memory ranges, in the order they are saved.
pub(crate) fn ranges(memory: &GuestMemoryMmap) -> Vec<MemoryRange> {
    memory
        .iter()
        .map(|r| MemoryRange {
            guest_address: r.start_addr().0,
            size: r.len(),
        })
        .collect()
}

/// Writes every page of `memory` that is not all zeros at `offset` onwards in `file` (whose
/// length the caller set, so skipped pages are holes). Returns how many pages were written.
pub(crate) fn write_sparse(memory: &GuestMemoryMmap, file: &File, mut offset: u64) -> std::io::Result<u64> {
    let mut buffer = vec![0u8; CHUNK];
    let mut written = 0;
    for region in memory.iter() {
        let len = region.len() as usize;
        let mut at = 0usize;
        while at < len {
            let n = CHUNK.min(len - at);
            let slice = region
                .get_slice(MemoryRegionAddress(at as u64), n)
                .map_err(|e| std::io::Error::other(format!("guest memory at {at:#x}: {e}")))?;
            slice.copy_to(&mut buffer[..n]);
            written += write_nonzero_pages(&buffer[..n], file, offset + at as u64)?;
            at += n;
        }
        offset += region.len();
    }
    Ok(written)
}

/// Writes the pages of `bytes` that are not all zeros, runs of them in one write each.
fn write_nonzero_pages(bytes: &[u8], file: &File, offset: u64) -> std::io::Result<u64> {
    let page = PAGE_SIZE as usize;
    let mut written = 0;
    let mut run: Option<usize> = None;
    let pages = bytes.len().div_ceil(page);
    for index in 0..=pages {
        let start = index * page;
        let nonzero = index < pages && {
            let end = (start + page).min(bytes.len());
            // Slice equality is one memcmp, in debug builds too.
            bytes[start..end] != ZERO_PAGE[..end - start]
        };
        match (nonzero, run) {
            (true, None) => run = Some(start),
            (false, Some(from)) => {
                file.write_all_at(&bytes[from..start.min(bytes.len())], offset + from as u64)?;
                written += (start - from).div_ceil(page) as u64;
                run = None;
            }
            _ => {}
        }
    }
    Ok(written)
}

/// Why saved memory could not be put back.
#[derive(Debug, thiserror::Error)]
pub enum MemoryRestoreError {
    #[error("cannot map the state file's memory over guest memory at {guest_address:#x}")]
    Map {
        guest_address: u64,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot read the state file's memory into guest memory at {guest_address:#x}")]
    Read {
        guest_address: u64,
        #[source]
        source: std::io::Error,
    },
}

/// Puts the memory section (from `offset` in `file`) into `memory`, whose ranges the caller
/// checked equal the saved ones. Call before any vCPU runs.
pub(crate) fn restore(
    memory: &GuestMemoryMmap,
    file: &File,
    mut offset: u64,
) -> Result<(), MemoryRestoreError> {
    for region in memory.iter() {
        let guest_address = region.start_addr().0;
        if region.file_offset().is_some() || !region.len().is_multiple_of(PAGE_SIZE) {
            read_in(region, file, offset).map_err(|source| MemoryRestoreError::Read {
                guest_address,
                source,
            })?;
        } else {
            map_private(region.as_ptr(), region.len(), file, offset).map_err(|source| {
                MemoryRestoreError::Map {
                    guest_address,
                    source,
                }
            })?;
        }
        offset += region.len();
    }
    Ok(())
}

/// Replaces the anonymous mapping at `host..host + len` with a private mapping of `file` at
/// `offset`.
fn map_private(host: *mut u8, len: u64, file: &File, offset: u64) -> std::io::Result<()> {
    let offset = libc::off_t::try_from(offset).map_err(std::io::Error::other)?;
    // Why this is sound: `host..host + len` is exactly one guest memory region's mapping, owned
    // by the machine's `GuestMemoryMmap` for as long as any user of it (KVM slots, devices)
    // lives; no vCPU has run yet and nothing holds references into the old pages. MAP_FIXED
    // replaces that range with the same size, protection and address, so every pointer into it
    // stays valid and the region's eventual `munmap` of the same range still matches. `offset`
    // is page-aligned (checked by the format) and `file` is open for reading.
    // SAFETY: as above: one region's own range, replaced in place before any vCPU ran.
    let mapped = unsafe {
        libc::mmap(
            host.cast(),
            len as usize,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_FIXED | libc::MAP_NORESERVE,
            file.as_raw_fd(),
            offset,
        )
    };
    if mapped == libc::MAP_FAILED {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Copies a region's saved bytes in (for memory another process maps too).
fn read_in(region: &vm_memory::GuestRegionMmap, file: &File, offset: u64) -> std::io::Result<()> {
    let mut buffer = vec![0u8; CHUNK];
    let len = region.len() as usize;
    let mut at = 0usize;
    while at < len {
        let n = CHUNK.min(len - at);
        file.read_exact_at(&mut buffer[..n], offset + at as u64)?;
        let slice = region
            .get_slice(MemoryRegionAddress(at as u64), n)
            .map_err(|e| std::io::Error::other(format!("guest memory at {at:#x}: {e}")))?;
        slice.copy_from(&buffer[..n]);
        at += n;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_nonzero_pages_are_written_and_holes_read_back_as_zeros() {
        let page = PAGE_SIZE as usize;
        let mut bytes = vec![0u8; 8 * page];
        bytes[page + 5] = 1; // page 1
        bytes[2 * page] = 2; // page 2, one run with page 1
        bytes[7 * page + page - 1] = 3; // the last page
        let file = tempfile();
        file.set_len(8 * PAGE_SIZE).unwrap();
        assert_eq!(write_nonzero_pages(&bytes, &file, 0).unwrap(), 3);
        let mut back = vec![0u8; 8 * page];
        file.read_exact_at(&mut back, 0).unwrap();
        assert_eq!(back, bytes);
    }

    fn tempfile() -> File {
        let path = std::env::temp_dir().join(format!(
            "virtkit-sparse-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let file = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .unwrap();
        std::fs::remove_file(&path).unwrap();
        file
    }
}
