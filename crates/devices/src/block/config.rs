//! How a disk is attached: the image, read-only or not, caching and sync modes, its serial.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Whether the host page cache sits between the guest and the image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CacheMode {
    /// Through the host page cache (the default). Safe together with `sync = full`: a guest
    /// flush becomes an `fdatasync`.
    #[default]
    Cached,
    /// `O_DIRECT`: no host page cache; needs an image on a filesystem that supports it.
    Uncached,
}

/// What a guest flush does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SyncMode {
    /// A flush completes only once the data is on stable storage (`fdatasync`). The default:
    /// a guest filesystem's journal depends on it.
    #[default]
    Full,
    /// Flushes complete at once and nothing is synced: a host crash loses recent writes and can
    /// corrupt the guest's filesystem. For scratch disks only.
    None,
}

/// What runs a disk's reads, writes and flushes. The default was chosen by measurement
/// (docs/BLOCK.md, "The I/O backend, and why").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IoEngine {
    /// io_uring: many requests in flight per disk, completed in any order, on the disk's worker
    /// thread with no hand-off between threads. The default; where the kernel refuses io_uring
    /// (`kernel.io_uring_disabled`, a seccomp filter) the disk falls back to `Sync` with a
    /// warning.
    #[default]
    IoUring,
    /// `pread`/`pwrite`/`fdatasync` on the worker thread, one request at a time.
    Sync,
}

/// Longest serial a guest can read (`VIRTIO_BLK_ID_BYTES`).
pub const SERIAL_MAX_LEN: usize = 20;

/// A virtio-blk disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockConfig {
    /// A raw image file or a host block device.
    pub path: PathBuf,
    /// The guest sees a read-only disk and writes fail with an I/O error.
    pub read_only: bool,
    pub cache: CacheMode,
    pub sync: SyncMode,
    /// What the guest reads with `GET_ID` (at most 20 bytes; Linux shows it as the serial).
    pub serial: Option<String>,
    pub engine: IoEngine,
}

impl BlockConfig {
    /// A writable disk with the safe defaults: cached, `sync = full`.
    pub fn new(path: impl Into<PathBuf>) -> BlockConfig {
        BlockConfig {
            path: path.into(),
            read_only: false,
            cache: CacheMode::default(),
            sync: SyncMode::default(),
            serial: None,
            engine: IoEngine::default(),
        }
    }
}
