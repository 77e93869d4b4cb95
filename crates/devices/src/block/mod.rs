//! virtio-blk: a disk image file or host block device as a virtio block device.
//!
//! - `config`: how a disk is attached (read-only, cache and sync modes, serial).
//! - `backend`: where the bytes live ([`DiskBackend`]: [`FileDisk`], [`MemoryDisk`]).
//! - `qcow2`: a qcow2 image and its backing chain as a [`DiskBackend`] ([`qcow2::Qcow2Disk`]).
//! - `request`: chain walking and request checking, pure.
//! - `handler`: running requests and the queue loop, pure.
//! - `buffer`: the host buffers data passes through, and their per-disk pool.
//! - `guest_io`: guest memory as the kernel's I/O vectors, for reads and writes with no copy,
//!   and the bounds-checked copies between guest memory and host buffers.
//! - `uring`: the io_uring engine of a `FileDisk`. These two hold the crate's only `unsafe`.
//! - `swap`: [`AnyDisk`], and replacing a sleeping disk's backend (a running VM's snapshot).
//! - `worker`: the `v_blk` thread.
//! - `device`: [`Block`], the [`virtkit_virtio::VirtioDevice`].

mod backend;
mod buffer;
mod config;
mod device;
pub mod fuzz;
#[allow(unsafe_code)]
mod guest_io;
mod handler;
mod metrics;
pub mod qcow2;
pub mod request;
mod swap;
#[allow(unsafe_code)]
mod uring;
mod worker;

#[cfg(test)]
mod inflight_tests;
#[cfg(test)]
mod test_support;
#[cfg(test)]
mod tests;

pub use backend::{
    run_now, DiskBackend, DiskCompletion, DiskOp, DiskOpenError, FileDisk, MemoryDisk, Started,
    DIRECT_IO_ALIGN,
};
pub use buffer::IoBuffer;
pub use config::{BlockConfig, CacheMode, IoEngine, SyncMode, SERIAL_MAX_LEN};
pub use device::{features, Block, BlockError, BlockState, CONFIG_LEN, DEVICE_TYPE, PCI_CLASS, QUEUE_SIZE};
pub use guest_io::GuestIo;
pub use handler::{complete_requests, drain_queue, process_queue, RequestHandler};
pub use metrics::BlockMetrics;
pub use swap::{AnyDisk, ClosedDisk, ReplaceDiskError};
/// The queue loop's error, shared by every device.
pub use virtkit_virtio::QueueError;
