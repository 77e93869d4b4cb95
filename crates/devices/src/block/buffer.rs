//! Host buffers a request's data passes through on its way between guest memory and the disk:
//! [`IoBuffer`] (owned, aligned for `O_DIRECT`) and the per-disk [`BufferPool`] that reuses them
//! and caps how much memory a guest's requests can make the device hold.

use super::backend::DIRECT_IO_ALIGN;

/// Smallest buffer the pool hands out (and the step of its size classes).
const MIN_CLASS: usize = 4096;

/// An owned byte buffer whose start is aligned to [`DIRECT_IO_ALIGN`], so `O_DIRECT` can use it
/// when the offset and length are aligned too. Its heap storage never moves while it lives, which
/// is what lets a backend hand its address to the kernel until the I/O completes.
pub struct IoBuffer {
    storage: Vec<u8>,
    start: usize,
    len: usize,
}

impl std::fmt::Debug for IoBuffer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IoBuffer")
            .field("len", &self.len)
            .field("capacity", &self.capacity())
            .finish()
    }
}

impl IoBuffer {
    /// A zeroed buffer of `len` bytes with room for `capacity` (at least `len`).
    pub fn with_capacity(len: usize, capacity: usize) -> IoBuffer {
        let capacity = capacity.max(len);
        let storage = vec![0u8; capacity + DIRECT_IO_ALIGN];
        let start = storage.as_ptr().align_offset(DIRECT_IO_ALIGN);
        IoBuffer { storage, start, len }
    }

    /// A zeroed buffer of exactly `len` bytes.
    pub fn new(len: usize) -> IoBuffer {
        IoBuffer::with_capacity(len, len)
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Bytes it can hold without reallocating.
    pub fn capacity(&self) -> usize {
        self.storage.len() - DIRECT_IO_ALIGN
    }

    /// Changes the length within the capacity (new bytes keep whatever they held).
    pub fn set_len(&mut self, len: usize) {
        assert!(len <= self.capacity(), "IoBuffer::set_len beyond the capacity");
        self.len = len;
    }

    pub fn as_slice(&self) -> &[u8] {
        &self.storage[self.start..self.start + self.len]
    }

    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        &mut self.storage[self.start..self.start + self.len]
    }
}

/// Buffers for one disk's requests in flight, by power-of-two size class. It counts the bytes
/// lent out (so the request layer can stop starting requests past a budget) and keeps at most
/// `keep` bytes of returned buffers for reuse.
#[derive(Debug)]
pub(crate) struct BufferPool {
    /// Free buffers; class `i` holds buffers of capacity `MIN_CLASS << i`.
    free: Vec<Vec<IoBuffer>>,
    kept: usize,
    keep: usize,
    lent: usize,
}

impl BufferPool {
    pub fn new(keep: usize) -> BufferPool {
        BufferPool {
            free: Vec::new(),
            kept: 0,
            keep,
            lent: 0,
        }
    }

    fn class(len: usize) -> (usize, usize) {
        let size = len.max(MIN_CLASS).next_power_of_two();
        let class = (size / MIN_CLASS).trailing_zeros() as usize;
        (class, size)
    }

    /// A buffer of `len` bytes (contents unspecified).
    pub fn take(&mut self, len: usize) -> IoBuffer {
        let (class, size) = Self::class(len);
        let mut buffer = match self.free.get_mut(class).and_then(Vec::pop) {
            Some(buffer) => {
                self.kept -= buffer.capacity();
                buffer
            }
            None => IoBuffer::with_capacity(len, size),
        };
        buffer.set_len(len);
        self.lent += buffer.capacity();
        buffer
    }

    /// Takes a buffer back from [`BufferPool::take`].
    pub fn give(&mut self, buffer: IoBuffer) {
        let capacity = buffer.capacity();
        self.lent = self.lent.saturating_sub(capacity);
        let (class, size) = Self::class(capacity);
        if size != capacity || self.kept + capacity > self.keep {
            return;
        }
        if self.free.len() <= class {
            self.free.resize_with(class + 1, Vec::new);
        }
        self.kept += capacity;
        self.free[class].push(buffer);
    }

    /// Bytes of buffers lent out and not yet given back.
    pub fn lent(&self) -> usize {
        self.lent
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_are_aligned_and_reused_within_the_limit() {
        let mut pool = BufferPool::new(16 << 10);
        let mut a = pool.take(512);
        assert_eq!(a.len(), 512);
        assert_eq!(a.as_mut_slice().as_ptr() as usize % DIRECT_IO_ALIGN, 0);
        assert_eq!(pool.lent(), 4096);
        let b = pool.take(9000);
        assert_eq!(b.capacity(), 16384);
        assert_eq!(pool.lent(), 4096 + 16384);
        let a_storage = a.as_slice().as_ptr();
        pool.give(a);
        // Over the 16 KiB kept: dropped, not kept.
        pool.give(b);
        assert_eq!(pool.lent(), 0);
        let c = pool.take(4096);
        assert_eq!(c.as_slice().as_ptr(), a_storage, "the 4 KiB buffer came back");
        let d = pool.take(16384);
        assert_eq!(d.len(), 16384);
    }
}
