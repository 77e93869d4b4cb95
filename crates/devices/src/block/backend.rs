//! Where a disk's bytes live: the [`DiskBackend`] trait and its implementations, a raw image
//! file or host block device ([`FileDisk`]) and memory ([`MemoryDisk`], for tests and fuzzing).

use std::fs::{File, OpenOptions};
use std::io::{self, Seek, SeekFrom};
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::fs::{FileExt, FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, FallocateFlags, FlockOperation, StatxFlags};
use rustix::io::ReadWriteFlags;
use vmm_sys_util::eventfd::EventFd;

use super::buffer::IoBuffer;
use super::config::{CacheMode, IoEngine, SyncMode};
use super::guest_io::GuestIo;
use super::uring::Uring;

/// A read, write or flush the request layer hands a backend, which may run it in the background
/// ([`DiskBackend::start`]). The buffer belongs to the operation until it completes.
#[derive(Debug)]
pub enum DiskOp {
    /// Fill all of `buffer` from `offset` (past the end of a file reads zeros).
    Read { offset: u64, buffer: IoBuffer },
    /// Write all of `buffer` at `offset`.
    Write { offset: u64, buffer: IoBuffer },
    /// Fill the guest memory `io` names from `offset`, with no host buffer (only for a backend
    /// whose [`DiskBackend::guest_io_alignment`] is `Some`).
    ReadGuest { offset: u64, io: GuestIo },
    /// Write the guest memory `io` names at `offset`, likewise.
    WriteGuest { offset: u64, io: GuestIo },
    /// Make every write completed so far durable, as the sync mode promises.
    Flush,
}

/// A finished [`DiskOp`]: the caller's tag, the outcome, and the buffer handed back.
#[derive(Debug)]
pub struct DiskCompletion {
    pub tag: u64,
    pub result: io::Result<()>,
    /// The op's buffer (`None` for a flush).
    pub buffer: Option<IoBuffer>,
}

/// What [`DiskBackend::start`] did with an op.
#[derive(Debug)]
pub enum Started {
    /// It ran at once; here is its completion.
    Done(DiskCompletion),
    /// It runs in the background; [`DiskBackend::reap`] hands its completion back later.
    InFlight,
}

impl DiskOp {
    /// Bytes it moves.
    pub(super) fn len(&self) -> usize {
        match self {
            DiskOp::Read { buffer, .. } | DiskOp::Write { buffer, .. } => buffer.len(),
            DiskOp::ReadGuest { io, .. } | DiskOp::WriteGuest { io, .. } => io.len(),
            DiskOp::Flush => 0,
        }
    }

    /// Zeroes what a read fills from byte `from` on (it met the end of the file).
    pub(super) fn zero_from(&mut self, from: usize) -> io::Result<()> {
        match self {
            DiskOp::Read { buffer, .. } => {
                buffer.as_mut_slice()[from..].fill(0);
                Ok(())
            }
            DiskOp::ReadGuest { io, .. } => io.zero_from(from),
            _ => Ok(()),
        }
    }

    /// Its completion, with its host buffer handed back (guest memory needs nothing back).
    pub(super) fn completion(self, tag: u64, result: io::Result<()>) -> DiskCompletion {
        let buffer = match self {
            DiskOp::Read { buffer, .. } | DiskOp::Write { buffer, .. } => Some(buffer),
            _ => None,
        };
        DiskCompletion { tag, result, buffer }
    }
}

/// Runs `op` with the backend's synchronous methods (guest memory through a host copy).
pub fn run_now<B: DiskBackend + ?Sized>(disk: &mut B, tag: u64, op: DiskOp) -> DiskCompletion {
    let (result, buffer) = match op {
        DiskOp::ReadGuest { offset, io } => {
            let mut data = vec![0u8; io.len()];
            let result = disk.read_at(offset, &mut data).and_then(|()| io.fill_from(&data));
            (result, None)
        }
        DiskOp::WriteGuest { offset, io } => (
            io.to_vec().and_then(|data: Vec<u8>| disk.write_at(offset, &data)),
            None,
        ),
        DiskOp::Read { offset, mut buffer } => (disk.read_at(offset, buffer.as_mut_slice()), Some(buffer)),
        DiskOp::Write { offset, buffer } => (disk.write_at(offset, buffer.as_slice()), Some(buffer)),
        DiskOp::Flush => (disk.flush(), None),
    };
    DiskCompletion { tag, result, buffer }
}

/// A disk's storage. Offsets and lengths are in bytes; the request layer has already checked
/// them against the capacity.
///
/// Reads, writes and flushes go through [`DiskBackend::start`], which may run them in the
/// background and complete them in any order ([`DiskBackend::reap`]); its default runs them at
/// once with the synchronous methods, so a backend that is synchronous implements only those.
/// Discard and write-zeroes are always synchronous.
pub trait DiskBackend: Send {
    /// Size in bytes.
    fn capacity(&self) -> u64;
    /// Fills `buf` from `offset`.
    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> io::Result<()>;
    /// Writes all of `buf` at `offset`.
    fn write_at(&mut self, offset: u64, buf: &[u8]) -> io::Result<()>;
    /// Makes every completed write durable, as the sync mode promises.
    fn flush(&mut self) -> io::Result<()>;
    /// Says the range is no longer needed; it may read back as anything (we give zeros).
    fn discard(&mut self, offset: u64, len: u64) -> io::Result<()>;
    /// Makes the range read back as zeros, deallocating it if `may_unmap`.
    fn write_zeroes(&mut self, offset: u64, len: u64, may_unmap: bool) -> io::Result<()>;

    /// Writes what the backend caches in memory (a qcow2 image's metadata) to its file; the
    /// worker calls it before it stops. Nothing by default.
    fn write_back(&mut self) -> io::Result<()> {
        Ok(())
    }

    /// Starts `op`; its completion carries `tag`. A flush must cover every write that completed
    /// before it was started (the request layer starts it only once earlier writes completed).
    fn start(&mut self, tag: u64, op: DiskOp) -> Started {
        Started::Done(run_now(self, tag, op))
    }

    /// Hands the ops started so far to whatever runs them (they may wait for this).
    fn submit(&mut self) {}

    /// Moves the completions of finished background ops to `done`; with `wait`, blocks until
    /// at least one finished if any is in flight.
    fn reap(&mut self, _done: &mut Vec<DiskCompletion>, _wait: bool) {}

    /// Background ops started and not yet handed back by `reap`.
    fn in_flight(&self) -> usize {
        0
    }

    /// `Some(align)` if the backend moves data straight between the disk and guest memory
    /// ([`DiskOp::ReadGuest`], [`DiskOp::WriteGuest`]) when guest addresses, lengths and the
    /// disk offset are multiples of `align`; `None` (the default) if it wants host buffers.
    fn guest_io_alignment(&self) -> Option<usize> {
        None
    }

    /// An eventfd the backend signals when a background op finishes: the worker sleeps on it in
    /// epoll and reads it (clearing it) before calling `reap`. `None` for a synchronous backend.
    fn completion_event(&self) -> Option<&EventFd> {
        None
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DiskOpenError {
    #[error("cannot open the disk image {path}")]
    Open {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("the disk image {path} is in use by another process (it is locked)")]
    Locked { path: PathBuf },
    #[error("cannot find the size of the disk image {path}")]
    Size {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("the disk image {path} is neither a regular file nor a block device")]
    NotADisk { path: PathBuf },
    #[error("the disk image {path} is smaller than one 512-byte sector")]
    Empty { path: PathBuf },
    #[error("the qcow2 image {path} cannot be used: {reason}")]
    Qcow2 { path: PathBuf, reason: String },
    #[error("the backing image {backing} of {path} is missing; put it back or use another disk")]
    MissingBacking { path: PathBuf, backing: PathBuf },
}

/// Alignment of buffers, offsets and lengths for `O_DIRECT` where the kernel does not say what
/// the file needs (`statx` `STATX_DIOALIGN`, Linux 6.1): 4 KiB covers every logical block size a
/// host device has. Host buffers are always aligned to it.
pub const DIRECT_IO_ALIGN: usize = 4096;

/// What `O_DIRECT` on `file` needs offsets, lengths and buffers aligned to: the larger of the
/// kernel's offset and memory alignments, at least 512, or [`DIRECT_IO_ALIGN`] if it does not
/// say.
fn direct_io_alignment(file: &File) -> usize {
    let Ok(stat) = rustix::fs::statx(file, "", AtFlags::EMPTY_PATH, StatxFlags::DIOALIGN) else {
        return DIRECT_IO_ALIGN;
    };
    if stat.stx_mask & StatxFlags::DIOALIGN.bits() == 0 || stat.stx_dio_offset_align == 0 {
        return DIRECT_IO_ALIGN;
    }
    let align = stat.stx_dio_offset_align.max(stat.stx_dio_mem_align).max(512) as usize;
    if align.is_power_of_two() && align <= DIRECT_IO_ALIGN {
        align
    } else {
        DIRECT_IO_ALIGN
    }
}

/// A raw disk image: a regular file (sparse where the guest discards) or a host block device.
#[derive(Debug)]
pub struct FileDisk {
    /// The io_uring engine, if the disk uses one. Declared before `file` so it is dropped first:
    /// it waits there for its ops in flight, which still name the file.
    uring: Option<Uring>,
    file: File,
    capacity: u64,
    block_device: bool,
    direct: bool,
    sync: SyncMode,
    /// `O_DIRECT` bounce buffer for partial blocks (grown as needed).
    bounce: IoBuffer,
    /// The file takes `RWF_NOWAIT` buffered reads, and writes (until it says it does not).
    nowait_reads: bool,
    nowait_writes: bool,
    /// `O_DIRECT` alignment of offsets, lengths and buffers for this file.
    align: usize,
}

impl FileDisk {
    /// Opens `path` read-only or read-write, with the page cache or `O_DIRECT`, and takes an
    /// advisory lock (shared when read-only) so two VMs cannot write one image. I/O runs on the
    /// default engine, io_uring (or synchronously where the kernel refuses io_uring).
    pub fn open(
        path: &Path,
        read_only: bool,
        cache: CacheMode,
        sync: SyncMode,
    ) -> Result<FileDisk, DiskOpenError> {
        FileDisk::open_with_engine(path, read_only, cache, sync, IoEngine::default())
    }

    /// [`FileDisk::open`] with the I/O engine chosen.
    pub fn open_with_engine(
        path: &Path,
        read_only: bool,
        cache: CacheMode,
        sync: SyncMode,
        engine: IoEngine,
    ) -> Result<FileDisk, DiskOpenError> {
        let mut options = OpenOptions::new();
        options.read(true).write(!read_only);
        if cache == CacheMode::Uncached {
            options.custom_flags(libc::O_DIRECT);
        }
        let mut file = options.open(path).map_err(|source| DiskOpenError::Open {
            path: path.to_owned(),
            source,
        })?;
        let lock = if read_only {
            FlockOperation::NonBlockingLockShared
        } else {
            FlockOperation::NonBlockingLockExclusive
        };
        rustix::fs::flock(&file, lock).map_err(|_| DiskOpenError::Locked {
            path: path.to_owned(),
        })?;
        let size_error = |source| DiskOpenError::Size {
            path: path.to_owned(),
            source,
        };
        let file_type = file.metadata().map_err(size_error)?.file_type();
        let block_device = file_type.is_block_device();
        if !block_device && !file_type.is_file() {
            return Err(DiskOpenError::NotADisk {
                path: path.to_owned(),
            });
        }
        let size = file.seek(SeekFrom::End(0)).map_err(size_error)?;
        // The guest sees whole sectors; a partial last one is left out.
        let capacity = size - size % 512;
        if capacity == 0 {
            return Err(DiskOpenError::Empty {
                path: path.to_owned(),
            });
        }
        let align = direct_io_alignment(&file);
        let uring = match engine {
            IoEngine::Sync => None,
            IoEngine::IoUring => match Uring::new(file.as_raw_fd()) {
                Ok(uring) => Some(uring),
                Err(e) => {
                    tracing::warn!(
                        "virtio-blk: io_uring is not available ({e}); {} runs its I/O synchronously",
                        path.display()
                    );
                    None
                }
            },
        };
        Ok(FileDisk {
            uring,
            file,
            capacity,
            block_device,
            direct: cache == CacheMode::Uncached,
            sync,
            bounce: IoBuffer::new(0),
            nowait_reads: true,
            nowait_writes: true,
            align,
        })
    }

    /// The engine the disk's I/O actually runs on.
    pub fn engine(&self) -> IoEngine {
        if self.uring.is_some() {
            IoEngine::IoUring
        } else {
            IoEngine::Sync
        }
    }

    /// `O_DIRECT` alignment in use (512 or 4096 on most hosts).
    pub fn direct_alignment(&self) -> usize {
        self.align
    }

    /// Makes `O_DIRECT` use a coarser alignment than the file needs, so tests reach the
    /// read-modify-write path on hosts with 512-byte blocks.
    #[cfg(test)]
    pub(crate) fn force_direct_alignment(&mut self, align: usize) {
        assert!(align.is_power_of_two() && align >= self.align && align <= DIRECT_IO_ALIGN);
        self.align = align;
    }

    /// Whether `O_DIRECT` can take `offset` and `buf` as they are.
    fn direct_ready(align: usize, offset: u64, buf: &[u8]) -> bool {
        let mem_align = align;
        let align = align as u64;
        offset.is_multiple_of(align)
            && (buf.len() as u64).is_multiple_of(align)
            && (buf.as_ptr() as usize).is_multiple_of(mem_align)
    }

    /// Waits until no background op is in flight: a synchronous read-modify-write of partial
    /// `O_DIRECT` blocks must not interleave with writes to the same blocks.
    fn quiesce(&mut self) -> io::Result<()> {
        match self.uring.as_mut() {
            Some(uring) if self.direct => uring.drain(),
            _ => Ok(()),
        }
    }

    /// `len` bytes of the bounce buffer (aligned, as every `IoBuffer` is).
    fn aligned(bounce: &mut IoBuffer, len: usize) -> &mut [u8] {
        if bounce.capacity() < len {
            *bounce = IoBuffer::new(len);
        }
        bounce.set_len(len);
        bounce.as_mut_slice()
    }

    fn direct_window(&self, offset: u64, len: usize) -> (u64, usize) {
        let align = self.align as u64;
        let start = offset - offset % align;
        let end = (offset + len as u64).next_multiple_of(align);
        (start, (end - start) as usize)
    }

    /// One non-blocking transfer of `op` through the page cache (`RWF_NOWAIT`): the bytes it
    /// moved (none if it would block; all if a read met the end of the file, the rest reading as
    /// zeros), or `None` for a write the filesystem cannot take without blocking.
    fn transfer_nowait(&mut self, op: &mut DiskOp) -> Option<usize> {
        let fd = self.file.as_fd();
        let (write, result) = match op {
            DiskOp::Read { offset, buffer } if self.nowait_reads => {
                let slices = &mut [io::IoSliceMut::new(buffer.as_mut_slice())];
                let result = rustix::io::preadv2(fd, slices, *offset, ReadWriteFlags::NOWAIT);
                (false, result.map_err(io::Error::from))
            }
            DiskOp::ReadGuest { offset, io } if self.nowait_reads => {
                (false, io.preadv2(fd, *offset, 0, libc::RWF_NOWAIT))
            }
            DiskOp::Write { offset, buffer } if self.nowait_writes => {
                let slices = &[io::IoSlice::new(buffer.as_slice())];
                let result = rustix::io::pwritev2(fd, slices, *offset, ReadWriteFlags::NOWAIT);
                (true, result.map_err(io::Error::from))
            }
            DiskOp::WriteGuest { offset, io } if self.nowait_writes => {
                (true, io.pwritev2(fd, *offset, 0, libc::RWF_NOWAIT))
            }
            DiskOp::Write { .. } | DiskOp::WriteGuest { .. } => return None,
            DiskOp::Read { .. } | DiskOp::ReadGuest { .. } | DiskOp::Flush => return Some(0),
        };
        match result {
            // End of file: zeros.
            Ok(0) if !write => Some(if op.zero_from(0).is_ok() { op.len() } else { 0 }),
            Ok(n) => Some(n),
            // The file takes no `RWF_NOWAIT` this way: stop asking. Reads then go to io_uring.
            // ext4, among others, has no non-blocking buffered writes: io_uring would hand each
            // to a kernel thread, and buffered writes to one file take its inode lock one at a
            // time anyway, so the hand-off costs and buys nothing (measured: docs/BLOCK.md).
            // Writes are then done here (`write_now`).
            Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => {
                if write {
                    self.nowait_writes = false;
                    None
                } else {
                    self.nowait_reads = false;
                    Some(0)
                }
            }
            // It would block (`EAGAIN`), or it fails: io_uring tries it and reports.
            Err(_) => Some(0),
        }
    }

    /// A write through the page cache, here and now; guest memory goes straight to the file.
    fn write_now(&mut self, tag: u64, op: DiskOp) -> DiskCompletion {
        let DiskOp::WriteGuest { offset, io } = op else {
            return run_now(self, tag, op);
        };
        let mut done = 0;
        let result = loop {
            if done >= io.len() {
                break Ok(());
            }
            match io.pwritev2(self.file.as_fd(), offset, done, 0) {
                Ok(0) => break Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => break Err(e),
            }
        };
        DiskCompletion {
            tag,
            result,
            buffer: None,
        }
    }
}

/// Reads as much as there is; past the end of the file reads zeros.
fn read_full_at(file: &File, offset: u64, buf: &mut [u8]) -> io::Result<()> {
    let mut done = 0;
    while done < buf.len() {
        match file.read_at(&mut buf[done..], offset + done as u64) {
            Ok(0) => {
                buf[done..].fill(0);
                return Ok(());
            }
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

impl DiskBackend for FileDisk {
    fn capacity(&self) -> u64 {
        self.capacity
    }

    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        if !self.direct || Self::direct_ready(self.align, offset, buf) {
            return read_full_at(&self.file, offset, buf);
        }
        self.quiesce()?;
        let (start, len) = self.direct_window(offset, buf.len());
        let window = Self::aligned(&mut self.bounce, len);
        read_full_at(&self.file, start, window)?;
        let skip = (offset - start) as usize;
        buf.copy_from_slice(&window[skip..skip + buf.len()]);
        Ok(())
    }

    fn write_at(&mut self, offset: u64, buf: &[u8]) -> io::Result<()> {
        if !self.direct || Self::direct_ready(self.align, offset, buf) {
            return self.file.write_all_at(buf, offset);
        }
        self.quiesce()?;
        let (start, len) = self.direct_window(offset, buf.len());
        let window = Self::aligned(&mut self.bounce, len);
        let skip = (offset - start) as usize;
        if skip != 0 || len != buf.len() {
            // Read-modify-write of the partial blocks at either end.
            read_full_at(&self.file, start, window)?;
        }
        window[skip..skip + buf.len()].copy_from_slice(buf);
        self.file.write_all_at(window, start)?;
        if !self.block_device && start + len as u64 > self.capacity {
            // The aligned write ran past the image's end: give the file its size back.
            self.file.set_len(self.capacity)?;
        }
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        match self.sync {
            SyncMode::Full => self.file.sync_data(),
            SyncMode::None => Ok(()),
        }
    }

    fn discard(&mut self, offset: u64, len: u64) -> io::Result<()> {
        let flags = FallocateFlags::PUNCH_HOLE | FallocateFlags::KEEP_SIZE;
        match rustix::fs::fallocate(&self.file, flags, offset, len) {
            Ok(()) => Ok(()),
            // Discard is a hint: a filesystem or device that cannot punch holes just keeps
            // the data.
            Err(rustix::io::Errno::OPNOTSUPP) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    fn write_zeroes(&mut self, offset: u64, len: u64, may_unmap: bool) -> io::Result<()> {
        let flags = if may_unmap {
            FallocateFlags::PUNCH_HOLE | FallocateFlags::KEEP_SIZE
        } else {
            FallocateFlags::ZERO_RANGE | FallocateFlags::KEEP_SIZE
        };
        match rustix::fs::fallocate(&self.file, flags, offset, len) {
            Ok(()) => return Ok(()),
            Err(rustix::io::Errno::OPNOTSUPP) => {}
            Err(e) => return Err(e.into()),
        }
        // No fallocate mode for it here: write the zeros.
        const CHUNK: u64 = 1 << 20;
        let zeros = IoBuffer::new(CHUNK.min(len) as usize);
        let mut done = 0;
        while done < len {
            let n = CHUNK.min(len - done) as usize;
            self.write_at(offset + done, &zeros.as_slice()[..n])?;
            done += n as u64;
        }
        Ok(())
    }

    fn start(&mut self, tag: u64, mut op: DiskOp) -> Started {
        if self.uring.is_none() {
            return Started::Done(run_now(self, tag, op));
        }
        let done = match &op {
            DiskOp::Flush if self.sync == SyncMode::None => return Started::Done(op.completion(tag, Ok(()))),
            DiskOp::Flush => 0,
            // Partial `O_DIRECT` blocks are a read-modify-write: done here, synchronously, with
            // nothing else in flight.
            DiskOp::Read { offset, buffer } | DiskOp::Write { offset, buffer }
                if self.direct && !Self::direct_ready(self.align, *offset, buffer.as_slice()) =>
            {
                return Started::Done(run_now(self, tag, op));
            }
            // `O_DIRECT`, aligned: to the disk, in the background.
            _ if self.direct => 0,
            // Through the page cache, what does not block is cheapest done here; what would (a
            // read of pages not in the cache) goes on in the background from where it stopped.
            _ => match self.transfer_nowait(&mut op) {
                Some(done) if done == op.len() => return Started::Done(op.completion(tag, Ok(()))),
                Some(done) => done,
                None => return Started::Done(self.write_now(tag, op)),
            },
        };
        if let Some(uring) = self.uring.as_mut() {
            uring.start(tag, op, done);
        }
        Started::InFlight
    }

    fn submit(&mut self) {
        if let Some(uring) = self.uring.as_mut() {
            uring.submit();
        }
    }

    fn reap(&mut self, done: &mut Vec<DiskCompletion>, wait: bool) {
        if let Some(uring) = self.uring.as_mut() {
            uring.reap(done, wait);
        }
    }

    fn in_flight(&self) -> usize {
        self.uring.as_ref().map_or(0, Uring::in_flight)
    }

    fn guest_io_alignment(&self) -> Option<usize> {
        self.uring.as_ref()?;
        Some(if self.direct { self.align } else { 1 })
    }

    fn completion_event(&self) -> Option<&EventFd> {
        self.uring.as_ref().map(Uring::completion_event)
    }
}

/// A disk in memory, for tests and fuzzing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemoryDisk {
    pub data: Vec<u8>,
    pub flushes: u64,
}

impl MemoryDisk {
    pub fn new(size: usize) -> MemoryDisk {
        MemoryDisk {
            data: vec![0; size],
            flushes: 0,
        }
    }

    fn range(&self, offset: u64, len: u64) -> io::Result<std::ops::Range<usize>> {
        let end = offset
            .checked_add(len)
            .filter(|&end| end <= self.data.len() as u64)
            .ok_or_else(|| io::Error::from(io::ErrorKind::UnexpectedEof))?;
        Ok(offset as usize..end as usize)
    }
}

impl DiskBackend for MemoryDisk {
    fn capacity(&self) -> u64 {
        self.data.len() as u64
    }

    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        let range = self.range(offset, buf.len() as u64)?;
        buf.copy_from_slice(&self.data[range]);
        Ok(())
    }

    fn write_at(&mut self, offset: u64, buf: &[u8]) -> io::Result<()> {
        let range = self.range(offset, buf.len() as u64)?;
        self.data[range].copy_from_slice(buf);
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.flushes += 1;
        Ok(())
    }

    fn discard(&mut self, offset: u64, len: u64) -> io::Result<()> {
        self.write_zeroes(offset, len, true)
    }

    fn write_zeroes(&mut self, offset: u64, len: u64, _may_unmap: bool) -> io::Result<()> {
        let range = self.range(offset, len)?;
        self.data[range].fill(0);
        Ok(())
    }
}
