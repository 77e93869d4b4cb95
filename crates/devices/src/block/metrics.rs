//! Per-disk counters, shared between the device and its worker.

use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Debug, Default)]
pub struct BlockMetrics {
    pub requests: AtomicU64,
    pub read_bytes: AtomicU64,
    pub write_bytes: AtomicU64,
    pub flushes: AtomicU64,
    pub discards: AtomicU64,
    pub write_zeroes: AtomicU64,
    /// Requests answered with `IOERR` (bad requests and failed I/O).
    pub io_errors: AtomicU64,
    /// Requests answered with `UNSUPP`.
    pub unsupported: AtomicU64,
    /// Chains returned unanswered (no status byte to write).
    pub broken_chains: AtomicU64,
}

impl BlockMetrics {
    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}
