//! The virtio-net device: features, configuration space (MAC, link status, queue pairs), and
//! starting and stopping its workers: one `v_net` thread per rx/tx queue pair, each over its
//! own backend (a multiqueue TAP gives one descriptor per pair), the first of them also serving
//! the control queue of a multiqueue card.

use std::sync::atomic::{AtomicBool, AtomicU16, Ordering};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use virtio_bindings::virtio_net::{
    VIRTIO_NET_F_CTRL_VQ, VIRTIO_NET_F_MAC, VIRTIO_NET_F_MQ, VIRTIO_NET_F_MRG_RXBUF, VIRTIO_NET_F_STATUS,
    VIRTIO_NET_S_LINK_UP,
};
use virtkit_virtio::features::{RING_EVENT_IDX, RING_INDIRECT_DESC, VERSION_1};
use virtkit_virtio::{
    Activation, DeviceQueue, DeviceWorker, VirtioDevice, VirtioError, VirtioInterrupt, WorkerBody,
};
use vm_memory::GuestMemoryMmap;

use super::backend::{NetBackend, VNET_HDR_LEN};
use super::ctrl::CtrlQueue;
use super::handler::{NetHandler, PendingTx};
use super::metrics::NetMetrics;
use super::observer::{AddressObserver, AddressWatch};
use super::worker::Worker;

/// Virtio device ID of network cards.
pub const DEVICE_TYPE: u32 = 1;
/// Queue size: as QEMU and Firecracker use.
pub const QUEUE_SIZE: u16 = 256;
/// PCI class code: network controller, Ethernet.
pub const PCI_CLASS: (u8, u8, u8) = (0x02, 0x00, 0x00);
/// Bytes of `struct virtio_net_config` the device fills: mac, status, max_virtqueue_pairs.
pub const CONFIG_LEN: usize = 10;
/// Queue pairs of a card over one backend.
pub const QUEUE_PAIRS: u16 = 1;
/// Most queue pairs a card has: the spec allows 0x8000; more than the vCPUs a machine can have
/// buys nothing, and each pair is a thread.
pub const MAX_QUEUE_PAIRS: usize = 64;

/// Feature bits (`VIRTIO_NET_F_*`), as masks.
pub mod features {
    use virtio_bindings::virtio_net as bits;
    pub const MAC: u64 = 1 << bits::VIRTIO_NET_F_MAC;
    pub const STATUS: u64 = 1 << bits::VIRTIO_NET_F_STATUS;
    pub const MRG_RXBUF: u64 = 1 << bits::VIRTIO_NET_F_MRG_RXBUF;
    pub const CSUM: u64 = 1 << bits::VIRTIO_NET_F_CSUM;
    pub const GUEST_CSUM: u64 = 1 << bits::VIRTIO_NET_F_GUEST_CSUM;
    pub const HOST_TSO4: u64 = 1 << bits::VIRTIO_NET_F_HOST_TSO4;
    pub const GUEST_TSO4: u64 = 1 << bits::VIRTIO_NET_F_GUEST_TSO4;
    pub const MQ: u64 = 1 << bits::VIRTIO_NET_F_MQ;
    pub const CTRL_VQ: u64 = 1 << bits::VIRTIO_NET_F_CTRL_VQ;
}

#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("the backend's virtio-net header is {0} bytes; the device takes 0 or {VNET_HDR_LEN}")]
    HeaderLength(usize),
    #[error("{0} is a multicast MAC address; a network card needs a unicast one")]
    MulticastMac(MacText),
    #[error("a network card needs 1 to {MAX_QUEUE_PAIRS} backends (one per queue pair), not {0}")]
    QueuePairs(usize),
    #[error("the backends of one card's queue pairs differ in their header or offloads; give it queues of one TAP")]
    MixedBackends,
}

/// A MAC address shown as `xx:xx:xx:xx:xx:xx`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MacText(pub [u8; 6]);

impl std::fmt::Display for MacText {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let m = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            m[0], m[1], m[2], m[3], m[4], m[5]
        )
    }
}

/// Host-side state the device and its workers share.
#[derive(Debug)]
pub(crate) struct Shared {
    /// What the configuration space's status says; a worker clears it when its backend goes.
    pub link_up: AtomicBool,
}

/// What the device keeps across a snapshot (the transport keeps the queues). A frame read from
/// the backend and not yet in a guest buffer is not kept: a network drops frames anyway, and
/// the backend's connection does not outlive the process.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetState {
    pub acked_features: u64,
    pub link_up: bool,
    /// For each queue pair, a tx chain taken from the ring whose frame the backend had not taken.
    pub tx_pending: Vec<Option<PendingTx>>,
    /// The queue pairs the driver said it uses (`VQ_PAIRS_SET`).
    pub active_pairs: u16,
}

/// A virtio-net device with one rx/tx queue pair per [`NetBackend`] (and, with more than one,
/// the control queue).
pub struct Net {
    features: u64,
    acked_features: u64,
    mac: [u8; 6],
    /// rx0, tx0, rx1, tx1, ..., and the control queue with more than one pair.
    queue_sizes: Vec<u16>,
    /// Each pair's handler (with its backend), and the `v_net` thread that has it while the
    /// device runs.
    pairs: Vec<DeviceWorker<NetHandler>>,
    active_pairs: Arc<AtomicU16>,
    shared: Arc<Shared>,
    metrics: Arc<NetMetrics>,
}

impl std::fmt::Debug for Net {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Net")
            .field("mac", &MacText(self.mac).to_string())
            .field("pairs", &self.pairs.len())
            .field("acked_features", &self.acked_features)
            .finish()
    }
}

impl Net {
    /// A network card with address `mac` over `backend` (one queue pair). Offloads are offered
    /// only when the backend takes frames with the virtio-net header and says it handles them.
    pub fn new(mac: [u8; 6], backend: Box<dyn NetBackend>) -> Result<Net, NetError> {
        Net::with_queue_pairs(mac, vec![backend])
    }

    /// A multiqueue card: one queue pair per backend (a TAP's queues), `VIRTIO_NET_F_MQ` and the
    /// control queue offered when there is more than one.
    pub fn with_queue_pairs(mac: [u8; 6], backends: Vec<Box<dyn NetBackend>>) -> Result<Net, NetError> {
        if mac[0] & 1 != 0 {
            return Err(NetError::MulticastMac(MacText(mac)));
        }
        let count = backends.len();
        if count == 0 || count > MAX_QUEUE_PAIRS {
            return Err(NetError::QueuePairs(count));
        }
        let first = &backends[0];
        let (header, offloads) = (first.vnet_hdr_len(), first.offloads());
        if backends
            .iter()
            .any(|b| b.vnet_hdr_len() != header || (header > 0 && b.offloads() != offloads))
        {
            return Err(NetError::MixedBackends);
        }
        let mut features = VERSION_1
            | RING_EVENT_IDX
            | RING_INDIRECT_DESC
            | 1 << VIRTIO_NET_F_MAC
            | 1 << VIRTIO_NET_F_STATUS
            | 1 << VIRTIO_NET_F_MRG_RXBUF;
        match header {
            0 => {}
            VNET_HDR_LEN => features |= offloads.features(),
            other => return Err(NetError::HeaderLength(other)),
        }
        let mut queue_sizes = vec![QUEUE_SIZE; 2 * count];
        if count > 1 {
            features |= 1 << VIRTIO_NET_F_MQ | 1 << VIRTIO_NET_F_CTRL_VQ;
            queue_sizes.push(QUEUE_SIZE);
        }
        let metrics = Arc::new(NetMetrics::default());
        let pairs = backends
            .into_iter()
            .map(|backend| DeviceWorker::new("net", NetHandler::new(backend, metrics.clone())))
            .collect();
        Ok(Net {
            features,
            acked_features: 0,
            mac,
            queue_sizes,
            pairs,
            active_pairs: Arc::new(AtomicU16::new(count as u16)),
            shared: Arc::new(Shared {
                link_up: AtomicBool::new(true),
            }),
            metrics,
        })
    }

    pub fn metrics(&self) -> &Arc<NetMetrics> {
        &self.metrics
    }

    pub fn mac(&self) -> [u8; 6] {
        self.mac
    }

    /// How many rx/tx queue pairs the card has.
    pub fn queue_pairs(&self) -> u16 {
        self.pairs.len() as u16
    }

    /// Starts learning the guest's addresses from this NIC's frames (before the device is
    /// attached); the watch reads them. `None` while the workers run (they have the handlers).
    pub fn watch_addresses(&mut self) -> Option<AddressWatch> {
        let (observer, watch) = AddressObserver::new(self.mac);
        for pair in &mut self.pairs {
            pair.handler_mut()?.observer = Some(observer.clone());
        }
        Some(watch)
    }

    fn multiqueue(&self) -> bool {
        self.pairs.len() > 1
    }

    /// A `start` for pair `pair`'s [`DeviceWorker`]: takes its rx and tx queues (and the first
    /// pair the control queue) and builds the `v_net` worker's body.
    fn start(
        &self,
        pair: usize,
        mergeable: bool,
    ) -> impl FnOnce(Vec<DeviceQueue>, &Activation) -> Result<WorkerBody<NetHandler>, VirtioError> {
        let shared = self.shared.clone();
        let max_pairs = self.pairs.len() as u16;
        let active_pairs = self.active_pairs.clone();
        move |queues, activation| {
            let (rx, tx, ctrl) = pair_queues(queues, pair)?;
            let ctrl = ctrl.map(|queue| CtrlQueue {
                queue,
                max_pairs,
                active_pairs,
            });
            let Activation { memory, interrupt } = activation.clone();
            Ok(Box::new(move |mut handler: NetHandler, kill| {
                handler.mergeable = mergeable;
                Worker::new(rx, tx, (memory, interrupt), handler, shared)
                    .with_ctrl(ctrl)
                    .run(kill)
            }))
        }
    }

    /// `queues` sorted out by pair: pair `i` gets queues `2i` and `2i+1`, the first pair also
    /// the control queue (`2n`). A pair the driver set no queue up for gets none; an index the
    /// card does not have is an error.
    fn split(&self, queues: Vec<DeviceQueue>) -> Result<Vec<Vec<DeviceQueue>>, VirtioError> {
        let mut by_pair: Vec<Vec<DeviceQueue>> = (0..self.pairs.len()).map(|_| Vec::new()).collect();
        let ctrl_index = 2 * self.pairs.len();
        for queue in queues {
            let index = usize::from(queue.index);
            let pair = if self.multiqueue() && index == ctrl_index {
                0
            } else if index < ctrl_index {
                index / 2
            } else {
                return Err(VirtioError::BadQueue { index: queue.index });
            };
            by_pair[pair].push(queue);
        }
        Ok(by_pair)
    }

    /// Starts each pair that has queues: at activation, or waking from sleep.
    fn start_pairs(
        &mut self,
        queues: Vec<DeviceQueue>,
        mut run: impl FnMut(&mut DeviceWorker<NetHandler>, Vec<DeviceQueue>, usize) -> Result<(), VirtioError>,
    ) -> Result<(), VirtioError> {
        let by_pair = self.split(queues)?;
        if by_pair[0].is_empty() {
            return Err(VirtioError::BadQueue { index: 0 });
        }
        for (i, queues) in by_pair.into_iter().enumerate() {
            if queues.is_empty() {
                continue;
            }
            run(&mut self.pairs[i], queues, i)?;
        }
        Ok(())
    }

    /// Every pair's queues, as the workers hand them back; `None` when no pair ran.
    fn gather(parts: impl Iterator<Item = Option<Vec<DeviceQueue>>>) -> Option<Vec<DeviceQueue>> {
        let mut all: Option<Vec<DeviceQueue>> = None;
        for queues in parts.flatten() {
            all.get_or_insert_with(Vec::new).extend(queues);
        }
        all
    }
}

/// Pair `pair`'s rx (`2·pair`) and tx (`2·pair + 1`) queues, each exactly once, and the control
/// queue if it came with them.
fn pair_queues(
    queues: Vec<DeviceQueue>,
    pair: usize,
) -> Result<(DeviceQueue, DeviceQueue, Option<DeviceQueue>), VirtioError> {
    let (rx_index, tx_index) = ((2 * pair) as u16, (2 * pair + 1) as u16);
    let mut rx = None;
    let mut tx = None;
    let mut ctrl = None;
    for queue in queues {
        let slot = match queue.index {
            i if i == rx_index => &mut rx,
            i if i == tx_index => &mut tx,
            _ if pair == 0 && ctrl.is_none() => &mut ctrl,
            index => return Err(VirtioError::BadQueue { index }),
        };
        if slot.is_some() {
            return Err(VirtioError::BadQueue { index: queue.index });
        }
        *slot = Some(queue);
    }
    match (rx, tx) {
        (Some(rx), Some(tx)) => Ok((rx, tx, ctrl)),
        (None, _) => Err(VirtioError::BadQueue { index: rx_index }),
        (_, None) => Err(VirtioError::BadQueue { index: tx_index }),
    }
}

impl VirtioDevice for Net {
    type State = NetState;

    fn name(&self) -> &str {
        "net"
    }

    fn device_type(&self) -> u32 {
        DEVICE_TYPE
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &self.queue_sizes
    }

    fn features(&self) -> u64 {
        self.features
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        let mut config = [0u8; CONFIG_LEN];
        config[0..6].copy_from_slice(&self.mac);
        let status = if self.shared.link_up.load(Ordering::Acquire) {
            VIRTIO_NET_S_LINK_UP as u16
        } else {
            0
        };
        config[6..8].copy_from_slice(&status.to_le_bytes());
        config[8..10].copy_from_slice(&(self.pairs.len() as u16).to_le_bytes());
        virtkit_virtio::read_config_bytes(&config, offset, data);
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        // The MAC is writable only without VIRTIO_F_VERSION_1 (legacy); nothing else ever is.
        tracing::trace!(offset, len = data.len(), "virtio-net: config write ignored");
    }

    fn activate(
        &mut self,
        memory: GuestMemoryMmap,
        interrupt: Arc<dyn VirtioInterrupt>,
        queues: Vec<DeviceQueue>,
        acked_features: u64,
    ) -> Result<(), VirtioError> {
        let acked = acked_features & self.features;
        for pair in &mut self.pairs {
            if let Some(handler) = pair.handler_mut() {
                if let Err(e) = handler.backend.negotiated(acked) {
                    virtkit_virtio::warn_ratelimited!(
                        "virtio-net: the backend cannot take the negotiated offloads: {e}"
                    );
                }
            }
        }
        let mergeable = acked & features::MRG_RXBUF != 0;
        // `active_pairs` is every pair after construction and after a reset (the only ways to
        // an inactive device), or what a restore put there: left as it is.
        let starts: Vec<_> = (0..self.pairs.len()).map(|i| self.start(i, mergeable)).collect();
        let mut starts: Vec<Option<_>> = starts.into_iter().map(Some).collect();
        let result = self.start_pairs(queues, |worker, queues, i| match starts[i].take() {
            Some(start) => worker.activate(memory.clone(), interrupt.clone(), queues, start),
            None => Err(VirtioError::BadQueue {
                index: (2 * i) as u16,
            }),
        });
        if let Err(e) = result {
            // Nothing half-started: the pairs that started stop again.
            let _ = self.reset();
            return Err(e);
        }
        self.acked_features = acked;
        Ok(())
    }

    fn reset(&mut self) -> Option<Vec<DeviceQueue>> {
        let queues = Net::gather(self.pairs.iter_mut().map(DeviceWorker::reset));
        self.acked_features = 0;
        self.active_pairs
            .store(self.pairs.len() as u16, Ordering::Release);
        for pair in &mut self.pairs {
            if let Some(handler) = pair.handler_mut() {
                handler.reset();
            }
        }
        queues
    }

    fn sleep(&mut self) -> Result<Option<Vec<DeviceQueue>>, VirtioError> {
        Ok(Net::gather(self.pairs.iter_mut().map(DeviceWorker::sleep)))
    }

    fn wake(&mut self, queues: Option<Vec<DeviceQueue>>) -> Result<(), VirtioError> {
        let Some(queues) = queues else {
            return Ok(());
        };
        let mergeable = self.acked_features & features::MRG_RXBUF != 0;
        let starts: Vec<_> = (0..self.pairs.len()).map(|i| self.start(i, mergeable)).collect();
        let mut starts: Vec<Option<_>> = starts.into_iter().map(Some).collect();
        self.start_pairs(queues, |worker, queues, i| match starts[i].take() {
            Some(start) => worker.wake(Some(queues), start),
            None => Err(VirtioError::BadQueue {
                index: (2 * i) as u16,
            }),
        })
    }

    fn snapshot(&self) -> Result<NetState, VirtioError> {
        let mut tx_pending = Vec::with_capacity(self.pairs.len());
        for pair in &self.pairs {
            pair.ensure_stopped()?;
            let handler = pair.handler().ok_or(VirtioError::IncompatibleState(
                "the backend was lost when a worker failed",
            ))?;
            tx_pending.push(handler.tx.clone());
        }
        Ok(NetState {
            acked_features: self.acked_features,
            link_up: self.shared.link_up.load(Ordering::Acquire),
            tx_pending,
            active_pairs: self.active_pairs.load(Ordering::Acquire),
        })
    }

    fn restore(&mut self, state: NetState) -> Result<(), VirtioError> {
        for pair in &self.pairs {
            pair.ensure_stopped()?;
        }
        if state.acked_features & !self.features != 0 {
            return Err(VirtioError::IncompatibleState(
                "features this network device does not offer",
            ));
        }
        if state.tx_pending.len() != self.pairs.len()
            || !(1..=self.pairs.len() as u16).contains(&state.active_pairs)
        {
            return Err(VirtioError::IncompatibleState(
                "another number of queue pairs than this network device has",
            ));
        }
        let mut link_up = true;
        for (pair, pending) in self.pairs.iter_mut().zip(state.tx_pending.iter()) {
            let handler = pair.handler_mut().ok_or(VirtioError::IncompatibleState(
                "the backend was lost when a worker failed",
            ))?;
            handler.reset();
            if let Err(e) = handler.backend.negotiated(state.acked_features) {
                virtkit_virtio::warn_ratelimited!(
                    "virtio-net: the backend cannot take the negotiated offloads: {e}"
                );
            }
            handler.tx = pending.clone();
            handler.mergeable = state.acked_features & features::MRG_RXBUF != 0;
            link_up &= handler.link_up();
        }
        // The link is the new backends': up unless one has gone since.
        self.shared.link_up.store(link_up, Ordering::Release);
        self.active_pairs.store(state.active_pairs, Ordering::Release);
        self.acked_features = state.acked_features;
        Ok(())
    }
}
