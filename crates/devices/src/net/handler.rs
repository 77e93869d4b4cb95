//! The device's state over one rx/tx queue pair and its backend, pure: no thread, no epoll, so
//! tests and the fuzzer drive it directly. `tx` and `rx` hold the two directions' logic.
//!
//! Nothing here blocks. A frame the backend cannot take now keeps its chain (the tx queue is
//! not popped meanwhile) and waits for the backend to be writable. A frame read from the
//! backend waits for guest buffers, and the backend is not read meanwhile: back-pressure goes
//! to the peer through the socket instead of frames being dropped here.
//!
//! A multiqueue card has one handler per pair, each with its own backend and worker.

use std::collections::VecDeque;
use std::io;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::backend::{NetBackend, MAX_FRAME_LEN, VNET_HDR_LEN};
use super::chain::Segment;
use super::metrics::NetMetrics;
use super::observer::AddressObserver;

/// Frames moved each way per pass: a peer that never stops sending, or a guest that never
/// stops queueing, cannot keep the worker from the other direction. The worker passes again
/// at once when a budget ran out.
pub(crate) const FRAME_BUDGET: usize = 256;

/// A tx chain taken from the ring whose frame the backend has not taken yet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingTx {
    pub head: u16,
    /// The chain's buffers, header included; read again from guest memory after a restore, so
    /// the state carries no guest data.
    pub segments: Vec<Segment>,
}

/// An rx chain taken from the ring for a frame that has not come or does not fit yet.
#[derive(Debug, Clone)]
pub(crate) struct HeldRx {
    pub head: u16,
    pub segments: Vec<Segment>,
    pub capacity: u64,
}

/// One queue pair's state between passes.
pub struct NetHandler {
    pub(crate) backend: Box<dyn NetBackend>,
    pub(crate) metrics: Arc<NetMetrics>,
    /// The driver took `VIRTIO_NET_F_MRG_RXBUF`: a frame may spread over several rx chains.
    pub(crate) mergeable: bool,
    pub(crate) tx: Option<PendingTx>,
    /// The pending chain's frame as the backend gets it (`tx_ready`: read from guest memory).
    pub(crate) tx_frame: Vec<u8>,
    pub(crate) tx_ready: bool,
    /// A send or flush would have blocked: wait for the backend to be writable.
    pub(crate) tx_blocked: bool,
    /// Header and frame read from the backend, `rx_len` bytes of it (0: none waiting).
    pub(crate) rx_frame: Box<[u8]>,
    pub(crate) rx_len: usize,
    /// Chains taken for frames, in ring order.
    pub(crate) rx_held: VecDeque<HeldRx>,
    /// No chain was refused or used since the held ones were taken: they are the last taken,
    /// and can be put back in the ring as if never taken.
    pub(crate) rx_held_last: bool,
    /// The guest had no buffer: read no more until it adds some (an rx notification).
    pub(crate) rx_starved: bool,
    /// The backend is gone for good: tx frames are dropped, nothing is read, the link is down.
    pub(crate) backend_down: bool,
    /// A budget ran out with work left: pass again without waiting.
    pub(crate) more: bool,
    /// Learns the guest's addresses from every frame sent and delivered, when asked for.
    pub(crate) observer: Option<AddressObserver>,
}

impl std::fmt::Debug for NetHandler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NetHandler")
            .field("mergeable", &self.mergeable)
            .field("tx", &self.tx)
            .field("rx_len", &self.rx_len)
            .field("backend_down", &self.backend_down)
            .finish_non_exhaustive()
    }
}

impl NetHandler {
    pub fn new(backend: Box<dyn NetBackend>, metrics: Arc<NetMetrics>) -> NetHandler {
        NetHandler {
            backend,
            metrics,
            mergeable: false,
            tx: None,
            tx_frame: Vec::new(),
            tx_ready: false,
            tx_blocked: false,
            rx_frame: vec![0; VNET_HDR_LEN + MAX_FRAME_LEN].into_boxed_slice(),
            rx_len: 0,
            rx_held: VecDeque::new(),
            rx_held_last: true,
            rx_starved: false,
            backend_down: false,
            more: false,
            observer: None,
        }
    }

    pub fn metrics(&self) -> &Arc<NetMetrics> {
        &self.metrics
    }

    /// Whether the driver took `VIRTIO_NET_F_MRG_RXBUF` (a frame may spread over several rx
    /// chains). Activation sets it from the acked features; a driver that runs the handler
    /// itself (the `net_throughput` benchmark) sets it here.
    pub fn set_mergeable(&mut self, mergeable: bool) {
        self.mergeable = mergeable;
    }

    /// The guest added rx buffers (what the worker does on an rx notification): a frame that
    /// waited for buffers may fit now, and reading from the backend goes on.
    pub fn rx_buffers_added(&mut self) {
        self.rx_starved = false;
    }

    /// Whether the backend is still there (the link is up).
    pub fn link_up(&self) -> bool {
        !self.backend_down
    }

    /// Forgets the driver's state (a device reset): its chains belong to rings that are gone.
    /// A frame read from the backend is kept for the next driver.
    pub(crate) fn reset(&mut self) {
        self.tx = None;
        self.tx_ready = false;
        self.tx_blocked = false;
        self.rx_held.clear();
        self.rx_held_last = true;
        self.rx_starved = false;
        self.more = false;
    }

    /// Whether the worker should wait for the backend to be readable.
    pub(crate) fn wants_input(&self) -> bool {
        !self.backend_down && !self.rx_starved && self.rx_len == 0
    }

    /// Whether the worker should wait for the backend to be writable.
    pub(crate) fn wants_output(&self) -> bool {
        !self.backend_down && self.tx_blocked
    }

    /// Notes a backend error; errors that mean the peer is gone take the backend down.
    pub(crate) fn backend_failed(&mut self, e: &io::Error) -> bool {
        use io::ErrorKind::*;
        let gone = matches!(
            e.kind(),
            UnexpectedEof | InvalidData | BrokenPipe | ConnectionReset | ConnectionAborted | NotConnected
        );
        if gone && !self.backend_down {
            self.backend_down = true;
            virtkit_virtio::warn_ratelimited!("virtio-net: the backend is gone ({e}); the link is down");
        }
        gone
    }
}
