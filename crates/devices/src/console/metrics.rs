//! Per-device counters, shared between the device and its worker.

use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Debug, Default)]
pub struct ConsoleMetrics {
    /// Guest output bytes the host sides took.
    pub tx_bytes: AtomicU64,
    /// Host input bytes put in guest buffers.
    pub rx_bytes: AtomicU64,
    /// Guest output dropped: no host side connected, or it failed.
    pub dropped_bytes: AtomicU64,
    /// Chains returned with nothing done (wrong direction, loops, bad addresses).
    pub bad_chains: AtomicU64,
    /// Control messages from the driver that were refused (short, unknown event or port).
    pub bad_control: AtomicU64,
    /// Device control messages dropped (no room for them in the guest's buffer, or too many).
    pub dropped_control: AtomicU64,
}

impl ConsoleMetrics {
    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}
