//! Guest memory handed to the kernel as I/O vectors, so a read lands in the guest's buffers and a
//! write leaves from them with no copy through a host buffer.
//! Here too: the walk over a request's guest segments ([`for_each_piece`]) that both the vectors
//! and the bounds-checked copies through a host buffer ([`copy_from_guest`], [`copy_to_guest`])
//! are built on.
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
    pieces: Vec<Segment>,
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
        skip: u64,
        len: usize,
        align: usize,
    ) -> Option<GuestIo> {
        let mut iovecs = Vec::new();
        let mut pieces = Vec::new();
        for_each_piece(segments, skip, len, |addr, range| {
            pieces.push(Segment {
                addr,
                len: range.len() as u32,
            });
            for slice in mem.get_slices(addr, range.len()) {
                let slice = slice.map_err(|_| ())?;
                let ptr = slice.ptr_guard_mut().as_ptr();
                if !(ptr as usize).is_multiple_of(align) || !slice.len().is_multiple_of(align) {
                    return Err(());
                }
                iovecs.push(libc::iovec {
                    iov_base: ptr.cast(),
                    iov_len: slice.len(),
                });
            }
            Ok(())
        })
        .ok()?;
        if iovecs.is_empty() || iovecs.len() > MAX_VECTORS {
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

    /// The vectors from byte `done` on, for an asynchronous op: the pointer and count stay valid
    /// until the next call or until `self` is dropped. From the start they are the vectors
    /// themselves; after a short transfer, what is left is built in `self`.
    pub(crate) fn kernel_vectors(&mut self, done: usize) -> (*const libc::iovec, u32) {
        let vectors = if done == 0 {
            &self.iovecs
        } else {
            trim_vectors(&self.iovecs, done, &mut self.rest);
            &self.rest
        };
        (vectors.as_ptr(), vectors.len() as u32)
    }

    /// Reads from `fd` at `offset` into the guest memory from byte `done` on; `flags` are
    /// `preadv2` flags. Returns the bytes read.
    pub fn preadv2(&self, fd: BorrowedFd<'_>, offset: u64, done: usize, flags: i32) -> io::Result<usize> {
        self.vectored(false, fd, offset, done, flags)
    }

    /// Writes the guest memory from byte `done` on to `fd` at `offset`; `flags` are `pwritev2`
    /// flags. Returns the bytes written.
    pub fn pwritev2(&self, fd: BorrowedFd<'_>, offset: u64, done: usize, flags: i32) -> io::Result<usize> {
        self.vectored(true, fd, offset, done, flags)
    }

    /// One `pwritev2` (`write`) or `preadv2` of bytes `done..` at `offset + done`.
    fn vectored(
        &self,
        write: bool,
        fd: BorrowedFd<'_>,
        offset: u64,
        done: usize,
        flags: i32,
    ) -> io::Result<usize> {
        let mut rest = Vec::new();
        let vectors = if done == 0 {
            &self.iovecs
        } else {
            trim_vectors(&self.iovecs, done, &mut rest);
            &rest
        };
        let (fd, at) = (fd.as_raw_fd(), (offset + done as u64) as i64);
        let (iov, count) = (vectors.as_ptr(), vectors.len() as i32);
        // SAFETY: the vectors are guest memory kept mapped by `self` for this call (see the
        // module comment); a read writes at most their lengths there, a write only reads them.
        let n = unsafe {
            if write {
                libc::pwritev2(fd, iov, count, at, flags)
            } else {
                libc::preadv2(fd, iov, count, at, flags)
            }
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(n as usize)
    }

    /// Copies the guest bytes out (for a backend that takes host buffers only).
    pub fn to_vec(&self) -> io::Result<Vec<u8>> {
        let mut out = vec![0u8; self.len];
        copy_from_guest(&self.memory, &self.pieces, 0, &mut out).map_err(|()| not_in_memory())?;
        Ok(out)
    }

    /// Zeroes the guest bytes from `done` on (a read that met the end of the file).
    pub fn zero_from(&self, done: usize) -> io::Result<()> {
        let zeros = vec![0u8; self.len.saturating_sub(done)];
        copy_to_guest(&self.memory, &self.pieces, done as u64, &zeros).map_err(|()| not_in_memory())
    }

    /// Copies `data` into the guest bytes (for a backend that takes host buffers only).
    pub fn fill_from(&self, data: &[u8]) -> io::Result<()> {
        copy_to_guest(&self.memory, &self.pieces, 0, data).map_err(|()| not_in_memory())
    }
}

fn not_in_memory() -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, "a buffer is not in guest memory")
}

/// `iovecs` from byte `done` on, the first one trimmed, into `out`: what is left after a short
/// transfer.
fn trim_vectors(iovecs: &[libc::iovec], done: usize, out: &mut Vec<libc::iovec>) {
    out.clear();
    let mut skip = done;
    for v in iovecs {
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

/// Calls `f` with each guest piece of `segments` from byte `skip` on, `len` bytes in all, and the
/// range of those bytes counted from `skip`. Fails if `f` does or the segments hold less.
pub(crate) fn for_each_piece(
    segments: &[Segment],
    mut skip: u64,
    len: usize,
    mut f: impl FnMut(GuestAddress, std::ops::Range<usize>) -> Result<(), ()>,
) -> Result<(), ()> {
    let mut at = 0usize;
    for segment in segments {
        if at == len {
            break;
        }
        let seg_len = u64::from(segment.len);
        if skip >= seg_len {
            skip -= seg_len;
            continue;
        }
        let n = ((seg_len - skip) as usize).min(len - at);
        // The parser checked the segment is guest memory, so this cannot wrap; checked anyway.
        let addr = segment.addr.checked_add(skip).ok_or(())?;
        f(addr, at..at + n)?;
        skip = 0;
        at += n;
    }
    if at == len {
        Ok(())
    } else {
        Err(())
    }
}

/// Copies guest bytes `skip..` of `segments` into `buf` (bounds-checked by `vm-memory`).
pub(crate) fn copy_from_guest(
    mem: &GuestMemoryMmap,
    segments: &[Segment],
    skip: u64,
    buf: &mut [u8],
) -> Result<(), ()> {
    for_each_piece(segments, skip, buf.len(), |addr, range| {
        mem.read_slice(&mut buf[range], addr).map_err(|_| ())
    })
}

/// Copies `buf` into guest bytes `skip..` of `segments` (bounds-checked by `vm-memory`).
pub(crate) fn copy_to_guest(
    mem: &GuestMemoryMmap,
    segments: &[Segment],
    skip: u64,
    buf: &[u8],
) -> Result<(), ()> {
    for_each_piece(segments, skip, buf.len(), |addr, range| {
        mem.write_slice(&buf[range], addr).map_err(|_| ())
    })
}
