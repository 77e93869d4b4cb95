//! The queue logic, pure: the tx queue's packets into the muxer, the muxer's packets into the
//! rx queue's buffers, and the transport-reset event into the event queue. No threads, no
//! clock; every guest address and length is checked (by vm-memory, through `net::chain`), and a
//! hostile chain costs the guest that chain, never a panic.

use std::sync::Arc;

use virtio_queue::{Queue, QueueOwnedT, QueueT};
use virtkit_virtio::{warn_ratelimited, QueueError};
use vm_memory::GuestMemoryMmap;

use super::host::VsockHost;
use super::metrics::VsockMetrics;
use super::muxer::Muxer;
use super::packet::{Header, HDR_LEN, MAX_PKT_LEN};
use crate::net::chain::{gather, pop, scatter, walk, Segment};

/// `VIRTIO_VSOCK_EVENT_TRANSPORT_RESET`.
pub const EVENT_TRANSPORT_RESET: u32 = 0;

/// The device's state between passes: the muxer and what the queues owe.
pub struct VsockHandler<H: VsockHost> {
    pub muxer: Muxer<H>,
    /// A restore happened: the guest must drop its connections (one event).
    pub transport_reset_pending: bool,
    /// The rx queue had no buffer at the last look; cleared when the driver notifies it.
    pub rx_starved: bool,
    pub metrics: Arc<VsockMetrics>,
    scratch: Vec<u8>,
}

impl<H: VsockHost> std::fmt::Debug for VsockHandler<H> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VsockHandler")
            .field("muxer", &self.muxer)
            .field("transport_reset_pending", &self.transport_reset_pending)
            .finish_non_exhaustive()
    }
}

impl<H: VsockHost> VsockHandler<H> {
    pub fn new(muxer: Muxer<H>, metrics: Arc<VsockMetrics>) -> VsockHandler<H> {
        VsockHandler {
            muxer,
            transport_reset_pending: false,
            rx_starved: false,
            metrics,
            scratch: vec![0; MAX_PKT_LEN],
        }
    }

    /// Back to the state before activation: every connection dropped.
    pub fn reset(&mut self) {
        self.muxer.reset();
        self.transport_reset_pending = false;
        self.rx_starved = false;
    }
}

/// Takes every packet the driver put in the tx queue; returns whether buffers were used.
pub fn process_tx<H: VsockHost>(
    queue: &mut Queue,
    mem: &GuestMemoryMmap,
    handler: &mut VsockHandler<H>,
) -> Result<bool, QueueError> {
    let mut used = false;
    while let Some(chain) = pop(queue, mem)? {
        let head = chain.head_index();
        match read_packet(chain, mem, &mut handler.scratch) {
            Some((hdr, len)) => handler.muxer.on_guest_packet(&hdr, &handler.scratch[..len]),
            None => VsockMetrics::add(&handler.metrics.bad_chains, 1),
        }
        queue.add_used(mem, head, 0)?;
        used = true;
    }
    Ok(used)
}

/// A tx chain's header and payload (into `buf`); `None` for a chain the device refuses.
fn read_packet(
    chain: crate::net::chain::Chain<'_>,
    mem: &GuestMemoryMmap,
    buf: &mut [u8],
) -> Option<(Header, usize)> {
    let (segments, total) = match walk(chain, mem, false, HDR_LEN + MAX_PKT_LEN) {
        Ok(walked) => walked,
        Err(e) => {
            warn_ratelimited!("virtio-vsock: tx chain refused: {e}");
            return None;
        }
    };
    let mut raw = [0u8; HDR_LEN];
    if total < HDR_LEN as u64 || gather(mem, &segments, 0, &mut raw).ok()? != HDR_LEN {
        warn_ratelimited!("virtio-vsock: a tx chain of {total} bytes is shorter than the header");
        return None;
    }
    let hdr = Header::from_bytes(&raw);
    let len = hdr.len as usize;
    if len > MAX_PKT_LEN || len as u64 > total - HDR_LEN as u64 || len > buf.len() {
        warn_ratelimited!(
            "virtio-vsock: a packet says {len} payload bytes; its chain has {}",
            total - HDR_LEN as u64
        );
        return None;
    }
    if gather(mem, &segments, HDR_LEN as u64, &mut buf[..len]).ok()? != len {
        return None;
    }
    Some((hdr, len))
}

/// Fills the driver's rx buffers with what the muxer owes; returns whether buffers were used.
pub fn process_rx<H: VsockHost>(
    queue: &mut Queue,
    mem: &GuestMemoryMmap,
    handler: &mut VsockHandler<H>,
) -> Result<bool, QueueError> {
    let mut used = false;
    loop {
        let Some(chain) = pop(queue, mem)? else {
            handler.rx_starved = true;
            break;
        };
        let head = chain.head_index();
        let (segments, total) = match walk(chain, mem, true, usize::MAX) {
            Ok(walked) if walked.1 >= HDR_LEN as u64 => walked,
            Ok(_) | Err(_) => {
                warn_ratelimited!(
                    "virtio-vsock: an rx chain refused (too short, read-only or outside memory)"
                );
                VsockMetrics::add(&handler.metrics.bad_chains, 1);
                queue.add_used(mem, head, 0)?;
                used = true;
                continue;
            }
        };
        let room = usize::try_from(total - HDR_LEN as u64)
            .unwrap_or(usize::MAX)
            .min(MAX_PKT_LEN);
        let Some((hdr, len)) = handler.muxer.next_rx_packet(&mut handler.scratch[..room]) else {
            // Nothing to send: the chain stays for later.
            queue.go_to_previous_position();
            break;
        };
        let written = write_packet(mem, &segments, &hdr, &handler.scratch[..len]);
        queue.add_used(mem, head, written)?;
        used = true;
    }
    Ok(used)
}

fn write_packet(mem: &GuestMemoryMmap, segments: &[Segment], hdr: &Header, data: &[u8]) -> u32 {
    let mut bytes = Vec::with_capacity(HDR_LEN + data.len());
    bytes.extend_from_slice(&hdr.to_bytes());
    bytes.extend_from_slice(data);
    // The segments were checked when walked; a failure here is memory that went away.
    scatter(mem, segments, &bytes).unwrap_or(0) as u32
}

/// Gives the driver the transport-reset event if one is owed; returns whether a buffer was used.
pub fn process_event<H: VsockHost>(
    queue: &mut Queue,
    mem: &GuestMemoryMmap,
    handler: &mut VsockHandler<H>,
) -> Result<bool, QueueError> {
    if !handler.transport_reset_pending {
        return Ok(false);
    }
    let Some(chain) = pop(queue, mem)? else {
        return Ok(false);
    };
    let head = chain.head_index();
    let written = match walk(chain, mem, true, usize::MAX) {
        Ok((segments, total)) if total >= 4 => {
            handler.transport_reset_pending = false;
            VsockMetrics::add(&handler.metrics.transport_resets, 1);
            scatter(mem, &segments, &EVENT_TRANSPORT_RESET.to_le_bytes()).unwrap_or(0) as u32
        }
        _ => {
            VsockMetrics::add(&handler.metrics.bad_chains, 1);
            0
        }
    };
    queue.add_used(mem, head, written)?;
    Ok(true)
}
