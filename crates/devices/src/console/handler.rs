//! The console's queue logic, pure: guest output from the ports' tx queues to their backends,
//! host input into the rx queues, and the control protocol, over a queue, guest memory and the
//! ports, with no thread and no epoll, so tests and the fuzzer drive it directly.
//!
//! Nothing here blocks: a backend that would block on output keeps its chain pending (the port's
//! tx queue is not popped meanwhile), and input is read only while the guest has buffers for it,
//! so a slow or silent peer holds back its own port and no other.

use std::collections::VecDeque;
use std::io;
use std::sync::Arc;

use virtio_queue::{DescriptorChain, Queue, QueueOwnedT, QueueT};
use virtkit_virtio::{warn_ratelimited, QueueError};
use vm_memory::{Bytes, GuestMemoryMmap};

use super::control::{self, DeviceMessage, DriverMessage};
use super::metrics::ConsoleMetrics;
use super::port::{ConsolePortConfig, PendingTx, Port, Segment};

/// Bytes moved between guest memory and a backend at once.
const CHUNK: usize = 16 << 10;
/// Reads from one backend per pass: a peer that never stops sending cannot keep the worker
/// from the other ports (epoll is level-triggered and brings it back).
const READ_BUDGET: usize = 64;
/// Device control messages waiting for guest buffers; a driver repeating `DEVICE_READY` cannot
/// make the device queue more.
const CONTROL_OUT_MAX: usize = 1024;
/// Emergency-write bytes held while port 0's output is busy.
const EMERGENCY_MAX: usize = 4096;

/// A chain the device returns untouched (used length 0).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChainError {
    #[error("the descriptor chain is cut short (a loop, a bad next index or indirect table)")]
    Truncated,
    #[error("a device-writable descriptor where the device only reads")]
    WritableInTx,
    #[error("a device-readable descriptor where the device only writes")]
    ReadableInRx,
    #[error("guest buffer {0:#x} is not in guest memory")]
    OutOfRange(u64),
}

type Chain<'a> = DescriptorChain<&'a GuestMemoryMmap>;

/// The next available chain, with notifications re-enabled when the ring is empty (and checked
/// again after, so a buffer added meanwhile is not missed).
pub(crate) fn pop<'a>(queue: &mut Queue, mem: &'a GuestMemoryMmap) -> Result<Option<Chain<'a>>, QueueError> {
    for _ in 0..2 {
        queue.disable_notification(mem)?;
        if let Some(chain) = queue.iter(mem)?.next() {
            return Ok(Some(chain));
        }
        if !queue.enable_notification(mem)? {
            return Ok(None);
        }
    }
    // More is available, yet twice nothing could be read: the ring is outside guest memory.
    Err(QueueError::Stalled)
}

/// The chain's buffers, all in the direction the device wants (`writable`: device-writable).
/// Zero-length descriptors are left out.
pub(crate) fn walk(chain: Chain<'_>, writable: bool) -> Result<Vec<Segment>, ChainError> {
    let mut segments = Vec::new();
    let mut last_has_next = false;
    for desc in chain {
        last_has_next = desc.has_next();
        if desc.is_write_only() != writable {
            return Err(if writable {
                ChainError::ReadableInRx
            } else {
                ChainError::WritableInTx
            });
        }
        if desc.len() > 0 {
            segments.push(Segment {
                addr: desc.addr().0,
                len: desc.len(),
            });
        }
    }
    // The iterator stops early at a loop or a bad index, leaving "next" set on the last one.
    if last_has_next {
        return Err(ChainError::Truncated);
    }
    Ok(segments)
}

/// Reads up to `buf.len()` bytes of the segments from byte `offset` on; returns how many.
fn read_segments(
    mem: &GuestMemoryMmap,
    segments: &[Segment],
    offset: u64,
    buf: &mut [u8],
) -> Result<usize, ChainError> {
    let mut skip = offset;
    let mut done = 0;
    for seg in segments {
        let len = u64::from(seg.len);
        if skip >= len {
            skip -= len;
            continue;
        }
        let n = (len - skip).min((buf.len() - done) as u64) as usize;
        let addr = seg
            .addr
            .checked_add(skip)
            .ok_or(ChainError::OutOfRange(seg.addr))?;
        mem.read_slice(&mut buf[done..done + n], vm_memory::GuestAddress(addr))
            .map_err(|_| ChainError::OutOfRange(addr))?;
        skip = 0;
        done += n;
        if done == buf.len() {
            break;
        }
    }
    Ok(done)
}

/// Writes `data` into the segments in order; returns how many bytes fit (and were written
/// before a bad buffer, which ends the chain).
fn write_segments(mem: &GuestMemoryMmap, segments: &[Segment], data: &[u8]) -> (usize, Option<ChainError>) {
    let mut done = 0;
    for seg in segments {
        if done == data.len() {
            break;
        }
        let n = (seg.len as usize).min(data.len() - done);
        if mem.write_slice(&data[done..done + n], seg.address()).is_err() {
            return (done, Some(ChainError::OutOfRange(seg.addr)));
        }
        done += n;
    }
    (done, None)
}

enum TxProgress {
    Done,
    Blocked,
}

/// The console's ports and control state.
pub struct ConsoleHandler {
    pub(crate) ports: Vec<Port>,
    /// The driver took `VIRTIO_CONSOLE_F_MULTIPORT`: the control queues and ports 1.. exist.
    pub(crate) multiport: bool,
    /// The driver said `DEVICE_READY 1`.
    pub(crate) device_ready: bool,
    /// Encoded messages for the control rx queue.
    pub(crate) control_out: VecDeque<Vec<u8>>,
    /// The console size last set, if any.
    pub(crate) size: Option<(u16, u16)>,
    /// A port's descriptors changed (a client came or went, an input ended): the worker
    /// registers them again.
    pub(crate) fds_changed: bool,
    /// Emergency-write bytes for port 0.
    pub(crate) emergency: Vec<u8>,
    metrics: Arc<ConsoleMetrics>,
    buf: Vec<u8>,
}

impl ConsoleHandler {
    pub fn new(ports: Vec<ConsolePortConfig>, metrics: Arc<ConsoleMetrics>) -> ConsoleHandler {
        ConsoleHandler {
            ports: ports.into_iter().map(Port::new).collect(),
            multiport: false,
            device_ready: false,
            control_out: VecDeque::new(),
            size: None,
            fds_changed: true,
            emergency: Vec::new(),
            metrics,
            buf: vec![0; CHUNK],
        }
    }

    pub fn metrics(&self) -> &Arc<ConsoleMetrics> {
        &self.metrics
    }

    /// Forgets the driver's state (a device reset); host input already read is kept.
    pub(crate) fn reset(&mut self) {
        self.device_ready = false;
        self.control_out.clear();
        for port in &mut self.ports {
            port.guest_ready = false;
            port.guest_open = false;
            port.host_open_sent = false;
            port.tx = None;
            port.tx_blocked = false;
            port.rx_starved = false;
        }
    }

    /// Whether port `p` has queues under the negotiated features.
    pub(crate) fn served(&self, p: usize) -> bool {
        p == 0 || (self.multiport && p < self.ports.len())
    }

    /// Whether host input of port `p` is read now: it has input, the guest had buffers last
    /// time, and (multiport) a guest program has the port open; Linux drops input on a port
    /// nobody opened, so it waits on the host side instead.
    pub(crate) fn may_read(&self, p: usize) -> bool {
        let Some(port) = self.ports.get(p) else {
            return false;
        };
        self.served(p)
            && port.backend.input_fd().is_some()
            && !port.rx_starved
            && port.rx_pending.is_empty()
            && (!self.multiport || port.guest_open)
    }

    fn send(&mut self, message: DeviceMessage) {
        if self.control_out.len() >= CONTROL_OUT_MAX {
            ConsoleMetrics::add(&self.metrics.dropped_control, 1);
            warn_ratelimited!("virtio-console: too many control messages waiting; {message:?} dropped");
            return;
        }
        self.control_out.push_back(message.encode());
    }

    /// Handles the driver's control tx queue.
    pub fn process_control_tx(
        &mut self,
        queue: &mut Queue,
        mem: &GuestMemoryMmap,
    ) -> Result<bool, QueueError> {
        let mut used = false;
        while let Some(chain) = pop(queue, mem)? {
            let head = chain.head_index();
            let mut bytes = [0u8; control::CONTROL_LEN];
            let read = walk(chain, false).and_then(|segs| read_segments(mem, &segs, 0, &mut bytes));
            match read {
                Ok(n) => match control::parse(&bytes[..n]) {
                    Ok(message) => self.on_driver_message(message),
                    Err(e) => {
                        ConsoleMetrics::add(&self.metrics.bad_control, 1);
                        warn_ratelimited!("virtio-console: control message ignored: {e}");
                    }
                },
                Err(e) => {
                    ConsoleMetrics::add(&self.metrics.bad_chains, 1);
                    warn_ratelimited!("virtio-console: control chain ignored: {e}");
                }
            }
            queue.add_used(mem, head, 0)?;
            used = true;
        }
        Ok(used)
    }

    fn on_driver_message(&mut self, message: DriverMessage) {
        match message {
            DriverMessage::DeviceReady { ok: true } => {
                self.device_ready = true;
                for id in 0..self.ports.len() as u32 {
                    self.send(DeviceMessage::DeviceAdd { id });
                }
            }
            DriverMessage::DeviceReady { ok: false } => {
                warn_ratelimited!("virtio-console: the driver failed to set the device up");
            }
            DriverMessage::PortReady { id, ok } => {
                let Some(port) = self.port_mut(id) else { return };
                if !ok {
                    warn_ratelimited!("virtio-console: the driver failed to set port {id} up");
                    return;
                }
                port.guest_ready = true;
                let (is_console, name) = (port.is_console, port.name.clone());
                if is_console {
                    self.send(DeviceMessage::ConsolePort { id });
                    if let (Some((cols, rows)), 0) = (self.size, id) {
                        self.send(DeviceMessage::Resize { id, cols, rows });
                    }
                }
                if let Some(name) = name {
                    self.send(DeviceMessage::PortName { id, name });
                }
                self.update_host_status();
            }
            DriverMessage::PortOpen { id, open } => {
                let Some(port) = self.port_mut(id) else { return };
                port.guest_open = open;
                // The guest may have buffers now that it did not want filled before.
                port.rx_starved = false;
                self.fds_changed = true;
            }
        }
    }

    fn port_mut(&mut self, id: u32) -> Option<&mut Port> {
        let count = self.ports.len();
        let port = usize::try_from(id).ok().and_then(|p| self.ports.get_mut(p));
        if port.is_none() {
            ConsoleMetrics::add(&self.metrics.bad_control, 1);
            warn_ratelimited!("virtio-console: control message for port {id}; there are {count}");
        }
        port
    }

    /// Accepts waiting clients and tells the guest of host sides that came or went.
    pub fn update_host_status(&mut self) {
        for p in 0..self.ports.len() {
            if !self.served(p) {
                continue;
            }
            // A client that left is announced before the next one is taken, so the guest sees
            // the port close and open again.
            self.announce(p);
            let port = &mut self.ports[p];
            if !port.backend.connected() && port.backend.listener_fd().is_some() {
                match port.backend.accept() {
                    Ok(true) => self.fds_changed = true,
                    Ok(false) => {}
                    Err(e) => warn_ratelimited!("virtio-console: port {p}: accept failed: {e}"),
                }
            }
            self.announce(p);
        }
    }

    /// Tells the guest (`PORT_OPEN`) if port `p`'s host side changed since it was last told.
    fn announce(&mut self, p: usize) {
        let Some(port) = self.ports.get_mut(p) else { return };
        let connected = port.backend.connected();
        if self.multiport && self.device_ready && port.guest_ready && connected != port.host_open_sent {
            port.host_open_sent = connected;
            self.send(DeviceMessage::PortOpen {
                id: p as u32,
                open: connected,
            });
        }
    }

    /// Fills the driver's control rx buffers with waiting messages.
    pub fn fill_control_rx(&mut self, queue: &mut Queue, mem: &GuestMemoryMmap) -> Result<bool, QueueError> {
        let mut used = false;
        while let Some(message) = self.control_out.front() {
            let Some(chain) = pop(queue, mem)? else { break };
            let head = chain.head_index();
            let len = match walk(chain, true) {
                Ok(segments) => {
                    let capacity: u64 = segments.iter().map(|s| u64::from(s.len)).sum();
                    if capacity < message.len() as u64 {
                        // Linux's buffers are all a page; one this small would never do.
                        ConsoleMetrics::add(&self.metrics.dropped_control, 1);
                        warn_ratelimited!(
                            "virtio-console: control buffer of {capacity} bytes too small; message dropped"
                        );
                        self.control_out.pop_front();
                        0
                    } else {
                        match write_segments(mem, &segments, message) {
                            (n, None) => {
                                self.control_out.pop_front();
                                n as u32
                            }
                            (_, Some(e)) => {
                                ConsoleMetrics::add(&self.metrics.bad_chains, 1);
                                warn_ratelimited!("virtio-console: control buffer refused: {e}");
                                0
                            }
                        }
                    }
                }
                Err(e) => {
                    ConsoleMetrics::add(&self.metrics.bad_chains, 1);
                    warn_ratelimited!("virtio-console: control buffer refused: {e}");
                    0
                }
            };
            queue.add_used(mem, head, len)?;
            used = true;
        }
        Ok(used)
    }

    /// A new console size. Multiport: a `RESIZE` message for port 0 (once the guest set it up);
    /// otherwise the configuration space says it: returns whether to signal a config change.
    pub fn resize(&mut self, cols: u16, rows: u16) -> bool {
        self.size = Some((cols, rows));
        if !self.multiport {
            return true;
        }
        let ready = self.ports.first().is_some_and(|p| p.is_console && p.guest_ready);
        if self.device_ready && ready {
            self.send(DeviceMessage::Resize { id: 0, cols, rows });
        }
        false
    }

    /// Bytes written to the emergency-write register, for port 0's output.
    pub fn push_emergency(&mut self, bytes: &[u8]) {
        let room = EMERGENCY_MAX.saturating_sub(self.emergency.len());
        if bytes.len() > room {
            ConsoleMetrics::add(&self.metrics.dropped_bytes, (bytes.len() - room) as u64);
        }
        self.emergency.extend_from_slice(&bytes[..bytes.len().min(room)]);
    }

    /// Writes guest output of port `p` to its backend: the pending chain first, then new ones,
    /// until the ring is empty or the backend would block.
    pub fn process_port_tx(
        &mut self,
        p: usize,
        queue: &mut Queue,
        mem: &GuestMemoryMmap,
    ) -> Result<bool, QueueError> {
        let mut used = false;
        loop {
            if self.ports.get(p).is_none() {
                return Ok(used);
            }
            if self.ports[p].tx.is_none() && p == 0 && !self.emergency.is_empty() {
                self.ports[p].tx = Some(PendingTx {
                    head: None,
                    segments: Vec::new(),
                    written: 0,
                    host_bytes: std::mem::take(&mut self.emergency),
                });
            }
            if self.ports[p].tx.is_some() {
                let progress = self.advance_tx(p, mem);
                self.announce(p);
                match progress {
                    TxProgress::Blocked => {
                        self.ports[p].tx_blocked = true;
                        return Ok(used);
                    }
                    TxProgress::Done => {
                        if let Some(head) = self.ports[p].tx.take().and_then(|tx| tx.head) {
                            queue.add_used(mem, head, 0)?;
                            used = true;
                        }
                    }
                }
            }
            self.ports[p].tx_blocked = false;
            let Some(chain) = pop(queue, mem)? else {
                return Ok(used);
            };
            let head = chain.head_index();
            match walk(chain, false) {
                Ok(segments) => {
                    self.ports[p].tx = Some(PendingTx {
                        head: Some(head),
                        segments,
                        written: 0,
                        host_bytes: Vec::new(),
                    });
                }
                Err(e) => {
                    ConsoleMetrics::add(&self.metrics.bad_chains, 1);
                    warn_ratelimited!("virtio-console: port {p}: output chain refused: {e}");
                    queue.add_used(mem, head, 0)?;
                    used = true;
                }
            }
        }
    }

    /// Moves port `p`'s pending output to its backend as far as it goes without blocking.
    fn advance_tx(&mut self, p: usize, mem: &GuestMemoryMmap) -> TxProgress {
        let ConsoleHandler {
            ports,
            metrics,
            buf,
            fds_changed,
            ..
        } = self;
        let port = &mut ports[p];
        let Some(tx) = port.tx.as_mut() else {
            return TxProgress::Done;
        };
        let total = tx.total();
        loop {
            if tx.written >= total {
                return TxProgress::Done;
            }
            if !port.backend.connected() {
                ConsoleMetrics::add(&metrics.dropped_bytes, total - tx.written);
                tx.written = total;
                return TxProgress::Done;
            }
            let piece = if tx.head.is_none() {
                let start = tx.written as usize;
                let n = (tx.host_bytes.len() - start).min(buf.len());
                buf[..n].copy_from_slice(&tx.host_bytes[start..start + n]);
                n
            } else {
                match read_segments(mem, &tx.segments, tx.written, buf) {
                    Ok(n) => n,
                    Err(e) => {
                        ConsoleMetrics::add(&metrics.bad_chains, 1);
                        warn_ratelimited!("virtio-console: port {p}: output dropped: {e}");
                        tx.written = total;
                        return TxProgress::Done;
                    }
                }
            };
            match port.backend.write(&buf[..piece]) {
                Ok(n) if n > 0 => {
                    tx.written += n as u64;
                    ConsoleMetrics::add(&metrics.tx_bytes, n as u64);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return TxProgress::Blocked,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                result => {
                    let e = result.err().unwrap_or_else(|| io::ErrorKind::WriteZero.into());
                    warn_ratelimited!("virtio-console: port {p}: host output failed: {e}");
                    port.backend.output_failed();
                    *fds_changed = true;
                }
            }
        }
    }

    /// Puts host input of port `p` into the guest's buffers while it has both; stops reading
    /// the backend when the guest has no buffer left (`rx_starved`), keeping what was read.
    pub fn process_port_rx(
        &mut self,
        p: usize,
        queue: &mut Queue,
        mem: &GuestMemoryMmap,
    ) -> Result<bool, QueueError> {
        let mut used = false;
        let mut reads = 0;
        loop {
            let Some(port) = self.ports.get_mut(p) else {
                return Ok(used);
            };
            if port.rx_pending.is_empty() {
                if !self.may_read(p) || reads >= READ_BUDGET {
                    return Ok(used);
                }
                reads += 1;
                let port = &mut self.ports[p];
                match port.backend.read(&mut self.buf) {
                    Ok(0) => {
                        port.backend.input_ended();
                        self.fds_changed = true;
                        self.announce(p);
                        return Ok(used);
                    }
                    Ok(n) => port.rx_pending.extend_from_slice(&self.buf[..n]),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(used),
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => {
                        warn_ratelimited!("virtio-console: port {p}: host input failed: {e}");
                        port.backend.input_ended();
                        self.fds_changed = true;
                        self.announce(p);
                        return Ok(used);
                    }
                }
            }
            let Some(chain) = pop(queue, mem)? else {
                self.ports[p].rx_starved = true;
                return Ok(used);
            };
            let head = chain.head_index();
            let port = &mut self.ports[p];
            let written = match walk(chain, true) {
                Ok(segments) => {
                    let (n, error) = write_segments(mem, &segments, &port.rx_pending);
                    if let Some(e) = error {
                        ConsoleMetrics::add(&self.metrics.bad_chains, 1);
                        warn_ratelimited!("virtio-console: port {p}: input buffer cut short: {e}");
                    }
                    n
                }
                Err(e) => {
                    ConsoleMetrics::add(&self.metrics.bad_chains, 1);
                    warn_ratelimited!("virtio-console: port {p}: input chain refused: {e}");
                    0
                }
            };
            port.rx_pending.drain(..written);
            ConsoleMetrics::add(&self.metrics.rx_bytes, written as u64);
            queue.add_used(mem, head, written as u32)?;
            used = true;
        }
    }
}
