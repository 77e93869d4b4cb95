//! Per-balloon counters, shared between the device, its worker and its handle.

use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Debug, Default)]
pub struct BalloonMetrics {
    /// 4 KiB pages the guest put in the balloon (valid PFNs of inflate buffers).
    pub inflated_pages: AtomicU64,
    /// 4 KiB pages the guest took back (valid PFNs of deflate buffers).
    pub deflated_pages: AtomicU64,
    /// Bytes of free memory the guest reported and the host discarded.
    pub reported_bytes: AtomicU64,
    /// Discards the host refused or failed (madvise errors, file-backed memory).
    pub discard_failures: AtomicU64,
    /// PFNs and reported ranges (or parts of them) outside guest memory, skipped.
    pub invalid_ranges: AtomicU64,
    /// Descriptors skipped: device-writable ones in inflate/deflate, unreadable buffers.
    pub skipped_descriptors: AtomicU64,
    /// Statistics reports received from the guest.
    pub stats_reports: AtomicU64,
}

impl BalloonMetrics {
    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}
