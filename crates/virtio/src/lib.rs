//! Virtio for virtkit: the [`VirtioDevice`] trait every device implements, the worker thread a
//! device's queues live on, and the virtio-pci (1.x, modern) transport.
//!
//! A device is three parts: the device itself (features, configuration space, activate/reset),
//! a worker that owns its queues on a thread `v_<name>` and sleeps in epoll between
//! notifications, and a transport that wraps any device and never names a device type. Queue
//! notifications reach the worker through ioeventfds, so a vCPU never processes a queue.

#![forbid(unsafe_code)]

mod conformance;
mod device;
pub mod event_loop;
pub mod testing;
pub mod transport;
mod worker;
pub mod worker_slot;

pub use device::{read_config_bytes, DeviceQueue, QueueError, VirtioDevice, VirtioError, VirtioInterrupt};
pub use event_loop::{EventHandler, EventLoop};
pub use worker::WorkerThread;
pub use worker_slot::{single_queue, Activation, DeviceWorker, WorkerBody};

/// Re-exported for the macros.
#[doc(hidden)]
pub use tracing;
/// Rate-limited logging lives with the machine (its devices log guest-triggerable warnings
/// too); devices reach it from here.
pub use virtkit_machine::{ratelimit, warn_ratelimited};

/// Device status bits (virtio 1.x, 2.1).
pub mod status {
    pub const ACKNOWLEDGE: u8 = 1;
    pub const DRIVER: u8 = 2;
    pub const DRIVER_OK: u8 = 4;
    pub const FEATURES_OK: u8 = 8;
    pub const DEVICE_NEEDS_RESET: u8 = 0x40;
    pub const FAILED: u8 = 0x80;
}

/// Feature bits every transport-independent device may offer.
pub mod features {
    /// Indirect descriptors.
    pub const RING_INDIRECT_DESC: u64 = 1 << 28;
    /// `used_event` / `avail_event` interrupt and notification suppression.
    pub const RING_EVENT_IDX: u64 = 1 << 29;
    /// Virtio 1.x: the only version this transport speaks.
    pub const VERSION_1: u64 = 1 << 32;
}
