//! Where a disk's bytes live: the [`DiskBackend`] trait and its implementations, a raw image
//! file or host block device ([`FileDisk`]) and memory ([`MemoryDisk`], for tests and fuzzing).

use std::fs::{File, OpenOptions};
use std::io::{self, Seek, SeekFrom};
use std::os::unix::fs::{FileExt, FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use rustix::fs::{FallocateFlags, FlockOperation};

use super::config::{CacheMode, SyncMode};

/// A disk's storage. Offsets and lengths are in bytes; the request layer has already checked
/// them against the capacity.
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
}

/// Alignment of buffers, offsets and lengths for `O_DIRECT`: 4 KiB covers every logical block
/// size a host device has.
pub const DIRECT_IO_ALIGN: usize = 4096;

/// A raw disk image: a regular file (sparse where the guest discards) or a host block device.
#[derive(Debug)]
pub struct FileDisk {
    file: File,
    capacity: u64,
    block_device: bool,
    direct: bool,
    sync: SyncMode,
    /// `O_DIRECT` bounce buffer, over-allocated so an aligned window fits.
    bounce: Vec<u8>,
}

impl FileDisk {
    /// Opens `path` read-only or read-write, with the page cache or `O_DIRECT`, and takes an
    /// advisory lock (shared when read-only) so two VMs cannot write one image.
    pub fn open(
        path: &Path,
        read_only: bool,
        cache: CacheMode,
        sync: SyncMode,
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
        Ok(FileDisk {
            file,
            capacity,
            block_device,
            direct: cache == CacheMode::Uncached,
            sync,
            bounce: Vec::new(),
        })
    }

    /// An aligned window of `len` bytes in the bounce buffer.
    fn aligned(bounce: &mut Vec<u8>, len: usize) -> &mut [u8] {
        if bounce.len() < len + DIRECT_IO_ALIGN {
            bounce.resize(len + DIRECT_IO_ALIGN, 0);
        }
        let start = bounce.as_ptr().align_offset(DIRECT_IO_ALIGN);
        &mut bounce[start..start + len]
    }

    fn direct_window(offset: u64, len: usize) -> (u64, usize) {
        let align = DIRECT_IO_ALIGN as u64;
        let start = offset - offset % align;
        let end = (offset + len as u64).next_multiple_of(align);
        (start, (end - start) as usize)
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
        if !self.direct {
            return read_full_at(&self.file, offset, buf);
        }
        let (start, len) = Self::direct_window(offset, buf.len());
        let window = Self::aligned(&mut self.bounce, len);
        read_full_at(&self.file, start, window)?;
        let skip = (offset - start) as usize;
        buf.copy_from_slice(&window[skip..skip + buf.len()]);
        Ok(())
    }

    fn write_at(&mut self, offset: u64, buf: &[u8]) -> io::Result<()> {
        if !self.direct {
            return self.file.write_all_at(buf, offset);
        }
        let (start, len) = Self::direct_window(offset, buf.len());
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
        let zeros = vec![0u8; CHUNK.min(len) as usize];
        let mut done = 0;
        while done < len {
            let n = CHUNK.min(len - done) as usize;
            self.write_at(offset + done, &zeros[..n])?;
            done += n as u64;
        }
        Ok(())
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
