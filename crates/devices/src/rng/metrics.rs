//! Counters of one entropy device, readable while it runs.

use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Debug, Default)]
pub struct RngMetrics {
    /// Buffers answered.
    pub requests: AtomicU64,
    /// Random bytes written to guest memory.
    pub bytes: AtomicU64,
    /// Times the rate limit made the device wait.
    pub throttled: AtomicU64,
    /// Chains refused (a buffer the device may not write, or outside guest memory).
    pub bad_chains: AtomicU64,
}

impl RngMetrics {
    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}
