//! Counters of one vsock device, readable while it runs.

use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Debug, Default)]
pub struct VsockMetrics {
    /// Connections the guest opened to a host service.
    pub guest_connections: AtomicU64,
    /// Connections host clients opened to the guest (the guest answered RESPONSE).
    pub host_connections: AtomicU64,
    /// Payload bytes from the guest, and to it.
    pub guest_bytes: AtomicU64,
    pub host_bytes: AtomicU64,
    /// RSTs sent to the guest.
    pub resets_sent: AtomicU64,
    /// Packets refused: wrong CIDs or type, bad lengths, ops out of place.
    pub bad_packets: AtomicU64,
    /// Chains refused (too short for a header, outside guest memory, wrong direction).
    pub bad_chains: AtomicU64,
    /// Host clients closed before they became a connection (bad line, timeout, EOF).
    pub clients_refused: AtomicU64,
    /// RSTs not sent because too many waited for guest buffers.
    pub control_dropped: AtomicU64,
    /// Transport-reset events given to the guest.
    pub transport_resets: AtomicU64,
}

impl VsockMetrics {
    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}
