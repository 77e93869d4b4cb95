//! A qcow2 disk image as a [`DiskBackend`], through imago (synchronous build): reads, writes,
//! flushes, discard and write-zeroes on the image, with its backing chain opened read-only.
//!
//! Layered disks are what make a snapshot or a clone O(1) on any file system: a new, empty
//! qcow2 image whose backing file is the old disk takes every write, and the old disk is never
//! written again. The format of a disk is always given by its configuration, never guessed from
//! its first bytes: a raw disk whose guest wrote a qcow2 header into sector 0 stays raw.
//!
//! Every image of the chain is locked (`flock`) as [`FileDisk`](super::FileDisk) locks a raw
//! one: the top image exclusively when writable, shared otherwise, and every backing image
//! shared, so no VM writes an image another VM reads through its chain.

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};

use imago::file::File as ImagoFile;
use imago::qcow2::Qcow2;
use imago::{FormatAccess, Storage, StorageOpenOptions};
use rustix::fs::FlockOperation;

use super::backend::{DiskBackend, DiskOpenError};
use super::config::{CacheMode, SyncMode};

/// How many backing images a chain may have: deeper chains are refused as damaged (a loop of
/// backing files would otherwise open files until descriptors run out).
pub const MAX_BACKING_CHAIN: usize = 64;

/// A qcow2 image with its backing chain.
pub struct Qcow2Disk {
    image: FormatAccess<ImagoFile>,
    capacity: u64,
    sync: SyncMode,
    /// Held for their `flock`s: the top image first, then each backing image.
    _locks: Vec<File>,
}

impl std::fmt::Debug for Qcow2Disk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Qcow2Disk")
            .field("capacity", &self.capacity)
            .field("sync", &self.sync)
            .finish_non_exhaustive()
    }
}

impl Qcow2Disk {
    /// Opens the qcow2 image at `path` (read-only or read-write) and its backing chain
    /// (read-only), each through the page cache or with `O_DIRECT` as `cache` says.
    pub fn open(
        path: &Path,
        read_only: bool,
        cache: CacheMode,
        sync: SyncMode,
    ) -> Result<Qcow2Disk, DiskOpenError> {
        let locks = lock_chain(path, read_only)?;
        let qcow2_error = |source: io::Error| DiskOpenError::Qcow2 {
            path: path.to_owned(),
            reason: source.to_string(),
        };
        let storage = ImagoFile::open(
            StorageOpenOptions::new()
                .filename(path)
                .write(!read_only)
                .direct(cache == CacheMode::Uncached),
        )
        .map_err(|source| DiskOpenError::Open {
            path: path.to_owned(),
            source,
        })?;
        let mut qcow2 = Qcow2::<ImagoFile>::open_image(storage, !read_only).map_err(qcow2_error)?;
        if qcow2.requires_external_data_file() {
            return Err(DiskOpenError::Qcow2 {
                path: path.to_owned(),
                reason: "it keeps its data in an external data file, which virtkit does not open".into(),
            });
        }
        qcow2.open_implicit_dependencies().map_err(qcow2_error)?;
        let image = FormatAccess::new(qcow2);
        let capacity = image.size() - image.size() % 512;
        if capacity == 0 {
            return Err(DiskOpenError::Empty {
                path: path.to_owned(),
            });
        }
        Ok(Qcow2Disk {
            image,
            capacity,
            sync,
            _locks: locks,
        })
    }
}

/// Locks `path` (exclusively when writable) and every backing image of its chain (shared), read
/// from each image's header; a missing backing image is an error naming it.
fn lock_chain(path: &Path, read_only: bool) -> Result<Vec<File>, DiskOpenError> {
    let mut locks = Vec::new();
    let mut current = path.to_owned();
    let mut exclusive = !read_only;
    loop {
        let file = File::open(&current).map_err(|source| match current.as_path() == path {
            true => DiskOpenError::Open {
                path: current.clone(),
                source,
            },
            false => DiskOpenError::MissingBacking {
                path: path.to_owned(),
                backing: current.clone(),
            },
        })?;
        let operation = if exclusive {
            FlockOperation::NonBlockingLockExclusive
        } else {
            FlockOperation::NonBlockingLockShared
        };
        rustix::fs::flock(&file, operation).map_err(|_| DiskOpenError::Locked {
            path: current.clone(),
        })?;
        let top = locks.is_empty();
        if !top && !is_qcow2(&file) {
            // A raw backing image ends the chain.
            locks.push(file);
            return Ok(locks);
        }
        let backing = backing_file_name(&file).map_err(|reason| DiskOpenError::Qcow2 {
            path: current.clone(),
            reason,
        })?;
        locks.push(file);
        let Some(name) = backing else { return Ok(locks) };
        if locks.len() > MAX_BACKING_CHAIN {
            return Err(DiskOpenError::Qcow2 {
                path: path.to_owned(),
                reason: format!("its backing chain is longer than {MAX_BACKING_CHAIN} images (a loop?)"),
            });
        }
        current = resolve_backing(&current, &name);
        exclusive = false;
    }
}

/// A backing file name as qemu-img and imago resolve it: relative to the image's directory.
pub fn resolve_backing(image: &Path, name: &str) -> PathBuf {
    let name = Path::new(name);
    if name.is_absolute() {
        name.to_owned()
    } else {
        image.parent().unwrap_or(Path::new(".")).join(name)
    }
}

pub use virtkit_disk::is_qcow2;

/// The backing file name in a qcow2 header (`None` without one), or why it cannot be read.
pub fn backing_file_name(file: &File) -> Result<Option<String>, String> {
    virtkit_disk::read_qcow2_header(file)
        .map(|h| h.backing)
        .map_err(|e| e.to_string())
}

impl DiskBackend for Qcow2Disk {
    fn capacity(&self) -> u64 {
        self.capacity
    }

    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.image.read(buf, offset)
    }

    fn write_at(&mut self, offset: u64, buf: &[u8]) -> io::Result<()> {
        self.image.write(buf, offset)
    }

    fn flush(&mut self) -> io::Result<()> {
        // Metadata (L2 tables, refcounts) is cached by imago: written out on every flush, and
        // synced to stable storage as the sync mode promises.
        self.image.flush()?;
        match self.sync {
            SyncMode::Full => self.image.sync(),
            SyncMode::None => Ok(()),
        }
    }

    fn write_back(&mut self) -> io::Result<()> {
        // Without it the clusters written since the last guest flush would be in the file but
        // not in its L2 tables: lost at close.
        self.image.flush()
    }

    fn discard(&mut self, offset: u64, len: u64) -> io::Result<()> {
        // Zeros, not the backing image's data: what the trait promises a discard reads back as.
        self.image.discard_to_zero(offset, len)
    }

    fn write_zeroes(&mut self, offset: u64, len: u64, _may_unmap: bool) -> io::Result<()> {
        self.image.write_zeroes(offset, len)
    }
}

#[cfg(test)]
mod tests;
