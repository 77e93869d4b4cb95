//! virtio-blk: a disk image file or host block device as a virtio block device.
//!
//! - `config`: how a disk is attached (read-only, cache and sync modes, serial).
//! - `backend`: where the bytes live ([`DiskBackend`]: [`FileDisk`], [`MemoryDisk`]).
//! - `request`: chain walking and request checking, pure.
//! - `handler`: running requests and the queue loop, pure.
//! - `worker`: the `v_blk` thread.
//! - `device`: [`Block`], the [`virtkit_virtio::VirtioDevice`].

mod backend;
mod config;
mod device;
pub mod fuzz;
mod handler;
mod metrics;
pub mod request;
mod worker;

#[cfg(test)]
mod tests;

pub use backend::{DiskBackend, DiskOpenError, FileDisk, MemoryDisk, DIRECT_IO_ALIGN};
pub use config::{BlockConfig, CacheMode, SyncMode, SERIAL_MAX_LEN};
pub use device::{features, Block, BlockError, BlockState, CONFIG_LEN, DEVICE_TYPE, PCI_CLASS, QUEUE_SIZE};
pub use handler::{process_queue, QueueError, RequestHandler};
pub use metrics::BlockMetrics;
