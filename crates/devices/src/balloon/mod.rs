//! virtio-balloon (virtio 1.x, 5.5): the host sets a target, the guest gives that much memory
//! back (inflate) or takes it again (deflate), reports its memory statistics, and may report
//! free memory for the host to discard.
//!
//! - `config`: [`BalloonConfig`], the optional features and the statistics polling interval.
//! - `layout`: which queue does what under the accepted features.
//! - `handle`: [`BalloonHandle`], the host's side: target, actual, statistics.
//! - `stats`: [`BalloonStatistics`] and their parsing.
//! - `handler`: the queue logic, pure ([`BalloonHandler`]).
//! - `discard`: giving pages back with `madvise` ([`MemoryDiscard`]); the balloon's only
//!   `unsafe`.
//! - `worker`: the `v_balloon` thread.
//! - `device`: [`Balloon`], the [`virtkit_virtio::VirtioDevice`].

mod config;
mod device;
mod discard;
pub mod fuzz;
mod handle;
mod handler;
mod layout;
mod metrics;
mod stats;
mod worker;

#[cfg(test)]
mod tests;

pub use config::{BalloonConfig, DEFAULT_STATS_INTERVAL_SECS};
pub use device::{features, Balloon, BalloonState, CONFIG_LEN, DEVICE_TYPE, PCI_CLASS, QUEUE_SIZE};
pub use discard::{
    check_discard, DiscardError, MadviseDiscard, MemoryDiscard, RecordingDiscard, DISCARD_ALIGN,
};
pub use handle::{BalloonError, BalloonHandle, BALLOON_PAGE_SIZE};
pub use handler::{BalloonHandler, MAX_PFN_BYTES_PER_CHAIN, PFN_SHIFT};
pub use layout::{queue_roles, role_of, QueueRole};
pub use metrics::BalloonMetrics;
pub use stats::{tags as stat_tags, BalloonStatistics, MAX_STATS_LEN, STAT_ENTRY_LEN};
/// The queue loop's error, shared by every device.
pub use virtkit_virtio::QueueError;
