//! Counters of one network device, shared between the device and its worker.

use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Debug, Default)]
pub struct NetMetrics {
    /// Frames from the guest the backend took, and their bytes (without the virtio-net header).
    pub tx_frames: AtomicU64,
    pub tx_bytes: AtomicU64,
    /// Guest frames lost: the backend failed on them or is gone.
    pub tx_dropped: AtomicU64,
    /// Times a send would have blocked: the chain waited for the backend.
    pub tx_blocked: AtomicU64,
    /// Frames put in guest buffers, and their bytes (without the header).
    pub rx_frames: AtomicU64,
    pub rx_bytes: AtomicU64,
    /// Host frames lost: too long for the guest's buffers, malformed, or a failed read.
    pub rx_dropped: AtomicU64,
    /// Times the guest had no buffer for a frame: reading stopped until it added some.
    pub rx_starved: AtomicU64,
    /// Chains returned with nothing done (wrong direction, loops, bad addresses, too long).
    pub bad_chains: AtomicU64,
}

impl NetMetrics {
    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}
