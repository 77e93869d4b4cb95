//! The virtio-console device: features, configuration space, the resize handle, and starting
//! and stopping its worker.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use virtkit_virtio::features::{RING_EVENT_IDX, VERSION_1};
use virtkit_virtio::{
    Activation, DeviceQueue, DeviceWorker, VirtioDevice, VirtioError, VirtioInterrupt, WorkerBody,
};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::handler::ConsoleHandler;
use super::metrics::ConsoleMetrics;
use super::port::{ConsolePortConfig, PendingTx};
use super::worker::Worker;

/// Virtio device ID of consoles.
pub const DEVICE_TYPE: u32 = 3;
/// Queue size: as Linux and QEMU use.
pub const QUEUE_SIZE: u16 = 256;
/// PCI class code: simple communication controller, other (as QEMU reports it).
pub const PCI_CLASS: (u8, u8, u8) = (0x07, 0x80, 0x00);
/// Most ports a device takes (each adds two queues).
pub const MAX_PORTS: usize = 64;
/// Bytes of `struct virtio_console_config`: cols, rows, max_nr_ports, emerg_wr.
pub const CONFIG_LEN: usize = 12;
const EMERG_WR_OFFSET: u64 = 8;

/// Feature bits (`VIRTIO_CONSOLE_F_*`).
pub mod features {
    /// cols and rows in the configuration space are valid.
    pub const SIZE: u64 = 1 << 0;
    /// Several ports, and the control queues.
    pub const MULTIPORT: u64 = 1 << 1;
}

/// The rx and tx queue indices of port `p` (virtio 1.x, 5.3.2): port 0 has 0 and 1, the control
/// queues are 2 and 3, port N has 2N+2 and 2N+3.
pub fn port_queues(p: usize) -> (usize, usize) {
    if p == 0 {
        (0, 1)
    } else {
        (2 * p + 2, 2 * p + 3)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConsoleError {
    #[error("a console needs at least one port")]
    NoPorts,
    #[error("{0} ports; at most {MAX_PORTS}")]
    TooManyPorts(usize),
    #[error("port name {0:?} is empty, too long (over 255 bytes) or has a '/' or NUL")]
    BadName(String),
    #[error("two ports are named {0:?}")]
    DuplicateName(String),
    #[error("cannot create the device's wake eventfd")]
    EventFd(#[source] std::io::Error),
}

/// Host-side state the device, its worker and [`ConsoleHandle`]s share.
pub(crate) struct Shared {
    size: Mutex<(u16, u16)>,
    /// A resize the worker has not acted on.
    pub resize_pending: AtomicBool,
    emergency: Mutex<Vec<u8>>,
    /// Wakes the worker for the two above.
    pub wake: EventFd,
}

impl Shared {
    pub fn size(&self) -> (u16, u16) {
        *self.size.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn take_emergency(&self) -> Vec<u8> {
        std::mem::take(&mut *self.emergency.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

/// Resizes the console from any thread (a SIGWINCH handler's, a control socket's). Cheap to
/// clone; holds no port.
#[derive(Clone)]
pub struct ConsoleHandle {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for ConsoleHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConsoleHandle")
            .field("size", &self.size())
            .finish()
    }
}

impl ConsoleHandle {
    /// The console (port 0) is now `cols` x `rows`. The guest hears of it as a `RESIZE` control
    /// message when it took multiport, else as a configuration change; a device that is not
    /// running tells it when it runs.
    pub fn resize(&self, cols: u16, rows: u16) {
        *self.shared.size.lock().unwrap_or_else(|p| p.into_inner()) = (cols, rows);
        self.shared.resize_pending.store(true, Ordering::Release);
        if let Err(e) = self.shared.wake.write(1) {
            tracing::warn!("virtio-console: cannot wake the worker for a resize: {e}");
        }
    }

    /// The size last set (0 x 0 if never).
    pub fn size(&self) -> (u16, u16) {
        self.shared.size()
    }
}

/// One port's saved state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortState {
    pub guest_ready: bool,
    pub guest_open: bool,
    pub host_open_sent: bool,
    /// Output taken from the ring and not all written to the host.
    pub tx_pending: Option<PendingTx>,
}

/// What the device keeps across a snapshot (the transport keeps the queues).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConsoleState {
    pub acked_features: u64,
    pub cols: u16,
    pub rows: u16,
    pub device_ready: bool,
    pub ports: Vec<PortState>,
    /// Control messages not yet in a guest buffer.
    pub control_out: Vec<Vec<u8>>,
}

/// A virtio-console device with one or more ports.
pub struct Console {
    features: u64,
    acked_features: u64,
    queue_sizes: Vec<u16>,
    config_tail: [u8; 4],
    /// The ports and protocol state, and the `v_console` thread that has them while the device
    /// runs.
    worker: DeviceWorker<ConsoleHandler>,
    shared: Arc<Shared>,
    metrics: Arc<ConsoleMetrics>,
}

impl std::fmt::Debug for Console {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Console")
            .field("queues", &self.queue_sizes.len())
            .field("acked_features", &self.acked_features)
            .finish()
    }
}

impl Console {
    /// A console with `ports` (port 0 first; make it `is_console` for `hvc0`).
    pub fn new(ports: Vec<ConsolePortConfig>) -> Result<Console, ConsoleError> {
        if ports.is_empty() {
            return Err(ConsoleError::NoPorts);
        }
        if ports.len() > MAX_PORTS {
            return Err(ConsoleError::TooManyPorts(ports.len()));
        }
        let mut names: Vec<&str> = Vec::new();
        for name in ports.iter().filter_map(|p| p.name.as_deref()) {
            if name.is_empty() || name.len() > super::control::NAME_MAX_LEN || name.contains(['/', '\0']) {
                return Err(ConsoleError::BadName(name.to_owned()));
            }
            if names.contains(&name) {
                return Err(ConsoleError::DuplicateName(name.to_owned()));
            }
            names.push(name);
        }
        let count = ports.len();
        let metrics = Arc::new(ConsoleMetrics::default());
        let shared = Arc::new(Shared {
            size: Mutex::new((0, 0)),
            resize_pending: AtomicBool::new(false),
            emergency: Mutex::new(Vec::new()),
            wake: EventFd::new(EFD_NONBLOCK).map_err(ConsoleError::EventFd)?,
        });
        Ok(Console {
            features: VERSION_1 | RING_EVENT_IDX | features::SIZE | features::MULTIPORT,
            acked_features: 0,
            queue_sizes: vec![QUEUE_SIZE; 2 * count + 2],
            config_tail: (count as u32).to_le_bytes(),
            worker: DeviceWorker::new("console", ConsoleHandler::new(ports, metrics.clone())),
            shared,
            metrics,
        })
    }

    /// A handle that resizes the console from another thread.
    pub fn handle(&self) -> ConsoleHandle {
        ConsoleHandle {
            shared: self.shared.clone(),
        }
    }

    pub fn metrics(&self) -> &Arc<ConsoleMetrics> {
        &self.metrics
    }

    /// Whether a guest program has port `port` open, as the driver last said; `None` while a
    /// worker runs or for a port that does not exist.
    pub fn guest_open(&self, port: usize) -> Option<bool> {
        self.worker.handler()?.ports.get(port).map(|p| p.guest_open)
    }

    fn multiport(&self) -> bool {
        self.acked_features & features::MULTIPORT != 0
    }

    /// A `start` for [`DeviceWorker`]: arranges the queues handed over (with or without
    /// `multiport`) and builds the `v_console` worker's body.
    fn start(
        &self,
        multiport: bool,
    ) -> impl FnOnce(Vec<DeviceQueue>, &Activation) -> Result<WorkerBody<ConsoleHandler>, VirtioError> {
        let queue_count = self.queue_sizes.len();
        let shared = self.shared.clone();
        move |queues, activation| {
            let queues = arrange(queue_count, queues, multiport)?;
            let Activation { memory, interrupt } = activation.clone();
            Ok(Box::new(move |mut handler: ConsoleHandler, kill| {
                handler.multiport = multiport;
                let (queues, handler) = Worker::new(queues, memory, interrupt, handler, shared).run(kill);
                (queues.into_iter().flatten().collect(), handler)
            }))
        }
    }
}

/// The queues by index, checked: each index once and in range, port 0's two always, the
/// control queues when multiport was taken. Queues the driver left disabled are `None`.
fn arrange(
    queue_count: usize,
    queues: Vec<DeviceQueue>,
    multiport: bool,
) -> Result<Vec<Option<DeviceQueue>>, VirtioError> {
    let mut slots: Vec<Option<DeviceQueue>> = (0..queue_count).map(|_| None).collect();
    for queue in queues {
        let index = queue.index;
        match slots.get_mut(usize::from(index)) {
            Some(slot @ None) => *slot = Some(queue),
            _ => return Err(VirtioError::BadQueue { index }),
        }
    }
    let required: &[u16] = if multiport { &[0, 1, 2, 3] } else { &[0, 1] };
    for &index in required {
        if slots[usize::from(index)].is_none() {
            return Err(VirtioError::BadQueue { index });
        }
    }
    Ok(slots)
}

impl VirtioDevice for Console {
    type State = ConsoleState;

    fn name(&self) -> &str {
        "console"
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
        let (cols, rows) = self.shared.size();
        let mut config = [0u8; CONFIG_LEN];
        config[0..2].copy_from_slice(&cols.to_le_bytes());
        config[2..4].copy_from_slice(&rows.to_le_bytes());
        config[4..8].copy_from_slice(&self.config_tail);
        // emerg_wr (8..12) reads as zero.
        virtkit_virtio::read_config_bytes(&config, offset, data);
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        // Only emerg_wr is writable: its low byte is a character for port 0 (early boot output,
        // before or without the queues). Linux writes it as one 32-bit value.
        if offset != EMERG_WR_OFFSET || data.is_empty() {
            tracing::trace!(offset, len = data.len(), "virtio-console: config write ignored");
            return;
        }
        let byte = data[0];
        match self.worker.handler_mut() {
            // No worker: write to port 0 now (dropped if it would block: never stall a vCPU).
            Some(handler) => {
                let port = &mut handler.ports[0];
                if !port.backend.connected() || !matches!(port.backend.write(&[byte]), Ok(1)) {
                    ConsoleMetrics::add(&self.metrics.dropped_bytes, 1);
                }
            }
            None => {
                self.shared
                    .emergency
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(byte);
                let _ = self.shared.wake.write(1);
            }
        }
    }

    fn activate(
        &mut self,
        memory: GuestMemoryMmap,
        interrupt: Arc<dyn VirtioInterrupt>,
        queues: Vec<DeviceQueue>,
        acked_features: u64,
    ) -> Result<(), VirtioError> {
        let acked = acked_features & self.features;
        let start = self.start(acked & features::MULTIPORT != 0);
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
        let start = self.start(self.multiport());
        self.worker.wake(queues, start)
    }

    fn snapshot(&self) -> Result<ConsoleState, VirtioError> {
        self.worker.ensure_stopped()?;
        let handler = self.worker.handler().ok_or(VirtioError::IncompatibleState(
            "the ports were lost when a worker failed",
        ))?;
        let (cols, rows) = self.shared.size();
        Ok(ConsoleState {
            acked_features: self.acked_features,
            cols,
            rows,
            device_ready: handler.device_ready,
            ports: handler
                .ports
                .iter()
                .map(|p| PortState {
                    guest_ready: p.guest_ready,
                    guest_open: p.guest_open,
                    host_open_sent: p.host_open_sent,
                    // Emergency bytes are host data, not part of the guest's state.
                    tx_pending: p.tx.clone().filter(|tx| tx.head.is_some()),
                })
                .collect(),
            control_out: handler.control_out.iter().cloned().collect(),
        })
    }

    fn restore(&mut self, state: ConsoleState) -> Result<(), VirtioError> {
        self.worker.ensure_stopped()?;
        if state.acked_features & !self.features != 0 {
            return Err(VirtioError::IncompatibleState(
                "features this console does not offer",
            ));
        }
        let handler = self.worker.handler_mut().ok_or(VirtioError::IncompatibleState(
            "the ports were lost when a worker failed",
        ))?;
        if state.ports.len() != handler.ports.len() {
            return Err(VirtioError::IncompatibleState("the number of ports changed"));
        }
        if state
            .ports
            .iter()
            .any(|p| p.tx_pending.as_ref().is_some_and(|tx| tx.head.is_none()))
        {
            return Err(VirtioError::IncompatibleState("pending output without a chain"));
        }
        handler.device_ready = state.device_ready;
        handler.control_out = state.control_out.into_iter().collect();
        for (port, saved) in handler.ports.iter_mut().zip(state.ports) {
            port.guest_ready = saved.guest_ready;
            port.guest_open = saved.guest_open;
            port.host_open_sent = saved.host_open_sent;
            port.tx = saved.tx_pending;
            port.tx_blocked = false;
        }
        handler.multiport = state.acked_features & features::MULTIPORT != 0;
        if (state.cols, state.rows) != (0, 0) {
            handler.size = Some((state.cols, state.rows));
        }
        *self.shared.size.lock().unwrap_or_else(|p| p.into_inner()) = (state.cols, state.rows);
        self.acked_features = state.acked_features;
        Ok(())
    }
}
