//! virtio-rng (virtio 1.x, 5.4): the host's entropy as a device the guest's `hwrng` reads.
//!
//! - `source`: where the bytes come from ([`EntropySource`]: the host's `getrandom`).
//! - `limiter`: an optional token bucket (bytes per second, burst), as Firecracker offers.
//! - `handler`: the queue loop, pure: fills the driver's buffers within the limiter's budget.
//! - `worker`: the `v_rng` thread, waking on the queue, the limiter's timer or a stop.
//! - `device`: [`Rng`], the [`virtkit_virtio::VirtioDevice`].
//!
//! This is the smallest device and the template for new ones: see docs/DEVICES.md.

mod device;
pub mod fuzz;
mod handler;
mod limiter;
mod metrics;
mod source;
mod worker;

#[cfg(test)]
mod tests;

pub use device::{Rng, RngState, DEVICE_TYPE, PCI_CLASS, QUEUE_SIZE};
pub use handler::{process_queue, EntropyHandler, Fill, MAX_REQUEST_BYTES};
pub use limiter::{RateLimit, TokenBucket};
pub use metrics::RngMetrics;
pub use source::{EntropySource, HostRandom};
/// The queue loop's error, shared by every device.
pub use virtkit_virtio::QueueError;
