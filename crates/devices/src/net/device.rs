//! The virtio-net device: features, configuration space (MAC, link status), and starting and
//! stopping its worker.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use virtio_bindings::virtio_net::{
    VIRTIO_NET_F_MAC, VIRTIO_NET_F_MRG_RXBUF, VIRTIO_NET_F_STATUS, VIRTIO_NET_S_LINK_UP,
};
use virtkit_virtio::features::{RING_EVENT_IDX, RING_INDIRECT_DESC, VERSION_1};
use virtkit_virtio::{
    Activation, DeviceQueue, DeviceWorker, VirtioDevice, VirtioError, VirtioInterrupt, WorkerBody,
};
use vm_memory::GuestMemoryMmap;

use super::backend::{NetBackend, VNET_HDR_LEN};
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
/// Queue pairs: one for now. Multiqueue (`VIRTIO_NET_F_MQ` and the control queue) adds pairs
/// 2N/2N+1, each its own handler and worker.
pub const QUEUE_PAIRS: u16 = 1;

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
}

#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("the backend's virtio-net header is {0} bytes; the device takes 0 or {VNET_HDR_LEN}")]
    HeaderLength(usize),
    #[error("{0} is a multicast MAC address; a network card needs a unicast one")]
    MulticastMac(MacText),
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

/// Host-side state the device and its worker share.
#[derive(Debug)]
pub(crate) struct Shared {
    /// What the configuration space's status says; the worker clears it when the backend goes.
    pub link_up: AtomicBool,
}

/// What the device keeps across a snapshot (the transport keeps the queues). A frame read from
/// the backend and not yet in a guest buffer is not kept: a network drops frames anyway, and
/// the backend's connection does not outlive the process.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetState {
    pub acked_features: u64,
    pub link_up: bool,
    /// A tx chain taken from the ring whose frame the backend had not taken.
    pub tx_pending: Option<PendingTx>,
}

/// A virtio-net device with one queue pair over a [`NetBackend`].
pub struct Net {
    features: u64,
    acked_features: u64,
    mac: [u8; 6],
    queue_sizes: [u16; 2],
    /// The handler (with the backend), and the `v_net` thread that has it while the device runs.
    worker: DeviceWorker<NetHandler>,
    shared: Arc<Shared>,
    metrics: Arc<NetMetrics>,
}

impl std::fmt::Debug for Net {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Net")
            .field("mac", &MacText(self.mac).to_string())
            .field("acked_features", &self.acked_features)
            .finish()
    }
}

impl Net {
    /// A network card with address `mac` over `backend`. Offloads are offered only when the
    /// backend takes frames with the virtio-net header and says it handles them.
    pub fn new(mac: [u8; 6], backend: Box<dyn NetBackend>) -> Result<Net, NetError> {
        if mac[0] & 1 != 0 {
            return Err(NetError::MulticastMac(MacText(mac)));
        }
        let mut features = VERSION_1
            | RING_EVENT_IDX
            | RING_INDIRECT_DESC
            | 1 << VIRTIO_NET_F_MAC
            | 1 << VIRTIO_NET_F_STATUS
            | 1 << VIRTIO_NET_F_MRG_RXBUF;
        match backend.vnet_hdr_len() {
            0 => {}
            VNET_HDR_LEN => features |= backend.offloads().features(),
            other => return Err(NetError::HeaderLength(other)),
        }
        let metrics = Arc::new(NetMetrics::default());
        Ok(Net {
            features,
            acked_features: 0,
            mac,
            queue_sizes: [QUEUE_SIZE; 2],
            worker: DeviceWorker::new("net", NetHandler::new(backend, metrics.clone())),
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

    /// Starts learning the guest's addresses from this NIC's frames (before the device is
    /// attached); the watch reads them. `None` while the worker runs (it has the handler).
    pub fn watch_addresses(&mut self) -> Option<AddressWatch> {
        let (observer, watch) = AddressObserver::new(self.mac);
        self.worker.handler_mut()?.observer = Some(observer);
        Some(watch)
    }

    /// A `start` for [`DeviceWorker`]: takes the rx and tx queues and builds the `v_net`
    /// worker's body.
    fn start(
        &self,
        mergeable: bool,
    ) -> impl FnOnce(Vec<DeviceQueue>, &Activation) -> Result<WorkerBody<NetHandler>, VirtioError> {
        let shared = self.shared.clone();
        move |queues, activation| {
            let (rx, tx) = queue_pair(queues)?;
            let Activation { memory, interrupt } = activation.clone();
            Ok(Box::new(move |mut handler: NetHandler, kill| {
                handler.mergeable = mergeable;
                Worker::new(rx, tx, (memory, interrupt), handler, shared).run(kill)
            }))
        }
    }
}

/// Queues 0 (rx) and 1 (tx), each exactly once.
fn queue_pair(queues: Vec<DeviceQueue>) -> Result<(DeviceQueue, DeviceQueue), VirtioError> {
    let mut rx = None;
    let mut tx = None;
    for queue in queues {
        let slot = match queue.index {
            0 => &mut rx,
            1 => &mut tx,
            index => return Err(VirtioError::BadQueue { index }),
        };
        if slot.is_some() {
            return Err(VirtioError::BadQueue { index: queue.index });
        }
        *slot = Some(queue);
    }
    match (rx, tx) {
        (Some(rx), Some(tx)) => Ok((rx, tx)),
        (None, _) => Err(VirtioError::BadQueue { index: 0 }),
        (_, None) => Err(VirtioError::BadQueue { index: 1 }),
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
        config[8..10].copy_from_slice(&QUEUE_PAIRS.to_le_bytes());
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
        if let Some(handler) = self.worker.handler_mut() {
            if let Err(e) = handler.backend.negotiated(acked) {
                virtkit_virtio::warn_ratelimited!(
                    "virtio-net: the backend cannot take the negotiated offloads: {e}"
                );
            }
        }
        let start = self.start(acked & features::MRG_RXBUF != 0);
        self.worker.activate(memory, interrupt, queues, start)?;
        self.acked_features = acked;
        Ok(())
    }

    fn reset(&mut self) -> Option<Vec<DeviceQueue>> {
        let queues = self.worker.reset();
        self.acked_features = 0;
        if let Some(handler) = self.worker.handler_mut() {
            handler.reset();
        }
        queues
    }

    fn sleep(&mut self) -> Result<Option<Vec<DeviceQueue>>, VirtioError> {
        Ok(self.worker.sleep())
    }

    fn wake(&mut self, queues: Option<Vec<DeviceQueue>>) -> Result<(), VirtioError> {
        let start = self.start(self.acked_features & features::MRG_RXBUF != 0);
        self.worker.wake(queues, start)
    }

    fn snapshot(&self) -> Result<NetState, VirtioError> {
        self.worker.ensure_stopped()?;
        let handler = self.worker.handler().ok_or(VirtioError::IncompatibleState(
            "the backend was lost when a worker failed",
        ))?;
        Ok(NetState {
            acked_features: self.acked_features,
            link_up: self.shared.link_up.load(Ordering::Acquire),
            tx_pending: handler.tx.clone(),
        })
    }

    fn restore(&mut self, state: NetState) -> Result<(), VirtioError> {
        self.worker.ensure_stopped()?;
        if state.acked_features & !self.features != 0 {
            return Err(VirtioError::IncompatibleState(
                "features this network device does not offer",
            ));
        }
        let handler = self.worker.handler_mut().ok_or(VirtioError::IncompatibleState(
            "the backend was lost when a worker failed",
        ))?;
        handler.reset();
        if let Err(e) = handler.backend.negotiated(state.acked_features) {
            virtkit_virtio::warn_ratelimited!(
                "virtio-net: the backend cannot take the negotiated offloads: {e}"
            );
        }
        handler.tx = state.tx_pending;
        handler.mergeable = state.acked_features & features::MRG_RXBUF != 0;
        // The link is the new backend's: up unless it has gone since.
        self.shared.link_up.store(handler.link_up(), Ordering::Release);
        self.acked_features = state.acked_features;
        Ok(())
    }
}
