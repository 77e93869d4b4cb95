//! Guest memory handed to the kernel as I/O vectors, so a read lands in the guest's buffers and a
//! write leaves from them with no copy through a host buffer.
//!
//! Why the kernel may use these addresses until the I/O completes:
//! - **in range**: every vector comes from `vm-memory`'s `get_slices` for a range the request
//!   parser already checked, so each lies inside one mapped guest memory region (a range split
//!   across regions gives one vector per region);
//! - **mapped**: a [`GuestIo`] holds a clone of the guest memory, whose regions are reference
//!   counted; a region's mapping is removed only when its last reference is dropped, and the
//!   `GuestIo` is dropped only after the kernel reported the I/O complete (the io_uring engine
//!   keeps it with the op, waits for every op before it is dropped, and leaks it if it cannot);
//! - **no Rust reference** to guest memory is made: the pointers go to the kernel only, which
//!   copies with fault handling (a read into guest memory mapped read-only fails with `EFAULT`,
//!   an I/O error for the guest). The guest may touch its buffers during the I/O, as it may with
//!   a DMA engine; it sees its own race, the VMM is not affected.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};

use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

use super::request::Segment;

/// Guest memory for one read or write, as `iovec`s, with the guest memory kept mapped.
pub struct GuestIo {
    iovecs: Vec<libc::iovec>,
    /// What is left after a short transfer, as handed to the kernel by the io_uring engine.
    rest: Vec<libc::iovec>,
    /// The same bytes as guest ranges, for copies through `vm-memory`.
    pieces: Vec<(GuestAddress, usize)>,
    len: usize,
    memory: GuestMemoryMmap,
}

impl std::fmt::Debug for GuestIo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GuestIo")
            .field("vectors", &self.iovecs.len())
            .field("len", &self.len)
            .finish()
    }
}

// SAFETY: the raw pointers in `iovecs` point into guest memory mappings that `memory` (which is
// `Send`) keeps alive; nothing in this type dereferences them, only the kernel does.
unsafe impl Send for GuestIo {}

/// Most vectors one op takes (`IOV_MAX`); a request with more is moved through a host buffer.
const MAX_VECTORS: usize = 1024;

impl GuestIo {
    /// Bytes `skip..skip + len` of `segments`, or `None` if a piece is not in guest memory, is
    /// not aligned to `align` (address and length), or there are too many pieces.
    pub fn new(
        mem: &GuestMemoryMmap,
        segments: &[Segment],
        mut skip: u64,
        len: usize,
        align: usize,
    ) -> Option<GuestIo> {
        let mut iovecs = Vec::new();
        let mut pieces = Vec::new();
        let mut left = len;
        for segment in segments {
            if left == 0 {
                break;
            }
            let seg_len = u64::from(segment.len);
            if skip >= seg_len {
                skip -= seg_len;
                continue;
            }
            let n = ((seg_len - skip) as usize).min(left);
            let addr: GuestAddress = segment.addr.checked_add(skip)?;
            pieces.push((addr, n));
            for slice in mem.get_slices(addr, n) {
                let slice = slice.ok()?;
                let ptr = slice.ptr_guard_mut().as_ptr();
                if !(ptr as usize).is_multiple_of(align) || !slice.len().is_multiple_of(align) {
                    return None;
                }
                iovecs.push(libc::iovec {
                    iov_base: ptr.cast(),
                    iov_len: slice.len(),
                });
            }
            skip = 0;
            left -= n;
        }
        if left != 0 || iovecs.is_empty() || iovecs.len() > MAX_VECTORS {
            return None;
        }
        Some(GuestIo {
            iovecs,
            rest: Vec::new(),
            pieces,
            len,
            memory: mem.clone(),
        })
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The vectors from byte `done` on (the first one trimmed): what is left after a short
    /// transfer. The result borrows `self`, which must outlive any I/O using it.
    pub(crate) fn vectors_from(&self, done: usize, out: &mut Vec<libc::iovec>) {
        out.clear();
        let mut skip = done;
        for v in &self.iovecs {
            if skip >= v.iov_len {
                skip -= v.iov_len;
                continue;
            }
            out.push(libc::iovec {
                // Inside the same vector: no overflow, no new allocation.
                iov_base: v.iov_base.cast::<u8>().wrapping_add(skip).cast(),
                iov_len: v.iov_len - skip,
            });
            skip = 0;
        }
    }

    /// The vectors from byte `done` on, kept in `self` for an asynchronous op: the pointer and
    /// count stay valid until the next call or until `self` is dropped.
    pub(crate) fn kernel_vectors(&mut self, done: usize) -> (*const libc::iovec, u32) {
        let mut rest = std::mem::take(&mut self.rest);
        self.vectors_from(done, &mut rest);
        self.rest = rest;
        (self.rest.as_ptr(), self.rest.len() as u32)
    }

    /// Reads from `fd` at `offset` into the guest memory; `flags` are `preadv2` flags.
    pub fn preadv2(&self, fd: BorrowedFd<'_>, offset: u64, done: usize, flags: i32) -> io::Result<usize> {
        let mut rest = Vec::new();
        let vectors = if done == 0 {
            &self.iovecs
        } else {
            self.vectors_from(done, &mut rest);
            &rest
        };
        // SAFETY: the vectors are guest memory kept mapped by `self` for this call (see the
        // module comment); the kernel writes at most their lengths.
        let n = unsafe {
            libc::preadv2(
                fd.as_raw_fd(),
                vectors.as_ptr(),
                vectors.len() as i32,
                (offset + done as u64) as i64,
                flags,
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(n as usize)
    }

    /// Writes the guest memory to `fd` at `offset`; `flags` are `pwritev2` flags.
    pub fn pwritev2(&self, fd: BorrowedFd<'_>, offset: u64, done: usize, flags: i32) -> io::Result<usize> {
        let mut rest = Vec::new();
        let vectors = if done == 0 {
            &self.iovecs
        } else {
            self.vectors_from(done, &mut rest);
            &rest
        };
        // SAFETY: as in `preadv2`; the kernel only reads the vectors' memory.
        let n = unsafe {
            libc::pwritev2(
                fd.as_raw_fd(),
                vectors.as_ptr(),
                vectors.len() as i32,
                (offset + done as u64) as i64,
                flags,
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(n as usize)
    }

    /// Copies the guest bytes out (for a backend that takes host buffers only).
    pub fn to_vec(&self) -> io::Result<Vec<u8>> {
        let mut out = vec![0u8; self.len];
        let mut at = 0;
        for &(addr, n) in &self.pieces {
            self.memory
                .read_slice(&mut out[at..at + n], addr)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
            at += n;
        }
        Ok(out)
    }

    /// Zeroes the guest bytes from `done` on (a read that met the end of the file).
    pub fn zero_from(&self, done: usize) -> io::Result<()> {
        let mut skip = done;
        for &(addr, n) in &self.pieces {
            if skip >= n {
                skip -= n;
                continue;
            }
            let zeros = vec![0u8; n - skip];
            self.memory
                .write_slice(&zeros, addr.unchecked_add(skip as u64))
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
            skip = 0;
        }
        Ok(())
    }

    /// Copies `data` into the guest bytes (for a backend that takes host buffers only).
    pub fn fill_from(&self, data: &[u8]) -> io::Result<()> {
        let mut at = 0;
        for &(addr, n) in &self.pieces {
            let end = (at + n).min(data.len());
            self.memory
                .write_slice(&data[at..end], addr)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
            at = end;
        }
        Ok(())
    }
}
