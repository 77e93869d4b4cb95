//! The virtio-vsock device (virtio 1.2, 5.10, device type 19): features, the `guest_cid`
//! configuration space, and starting and stopping its worker. Connections are not kept across a
//! restore: the restored device owes the guest a transport-reset event, after which the guest
//! drops its sockets.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use virtkit_virtio::features::{RING_EVENT_IDX, VERSION_1};
use virtkit_virtio::{
    Activation, DeviceQueue, DeviceWorker, VirtioDevice, VirtioError, VirtioInterrupt, WorkerBody,
};
use vm_memory::GuestMemoryMmap;

use super::handler::VsockHandler;
use super::host::VsockHost;
use super::metrics::VsockMetrics;
use super::muxer::Muxer;
use super::worker::Worker;

/// Virtio device ID of socket devices.
pub const DEVICE_TYPE: u32 = 19;
/// Queue size of each of the three queues.
pub const QUEUE_SIZE: u16 = 256;
/// PCI class code: other communication controller (as QEMU's vhost-vsock-pci reports).
pub const PCI_CLASS: (u8, u8, u8) = (0x07, 0x80, 0x00);
/// Bytes of `struct virtio_vsock_config`: `le64 guest_cid`.
pub const CONFIG_LEN: usize = 8;
/// The smallest CID a guest may have (0, 1 and 2 are reserved, 2 is the host).
pub const MIN_GUEST_CID: u64 = 3;

#[derive(Debug, thiserror::Error)]
pub enum VsockError {
    #[error("guest CID {0} is reserved; a guest's CID is 3 or more (and below 2^32 - 1)")]
    BadCid(u64),
}

/// What the device keeps across a snapshot: no connections (see the module's note).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VsockState {
    pub acked_features: u64,
    pub guest_cid: u64,
}

/// A virtio-vsock device whose host side is `H`.
pub struct Vsock<H: VsockHost + 'static> {
    guest_cid: u64,
    acked_features: u64,
    worker: DeviceWorker<VsockHandler<H>>,
    metrics: Arc<VsockMetrics>,
}

impl<H: VsockHost + 'static> std::fmt::Debug for Vsock<H> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vsock")
            .field("guest_cid", &self.guest_cid)
            .field("worker", &self.worker)
            .finish_non_exhaustive()
    }
}

const FEATURES: u64 = VERSION_1 | RING_EVENT_IDX;
const QUEUE_SIZES: [u16; 3] = [QUEUE_SIZE; 3];

impl<H: VsockHost + 'static> Vsock<H> {
    pub fn new(guest_cid: u64, host: H) -> Result<Vsock<H>, VsockError> {
        // CIDs are 32-bit in Linux's sockaddr_vm; U32_MAX is VMADDR_CID_ANY.
        if guest_cid < MIN_GUEST_CID || guest_cid >= u64::from(u32::MAX) {
            return Err(VsockError::BadCid(guest_cid));
        }
        let metrics = Arc::new(VsockMetrics::default());
        let muxer = Muxer::new(host, guest_cid, metrics.clone());
        Ok(Vsock {
            guest_cid,
            acked_features: 0,
            worker: DeviceWorker::new("vsock", VsockHandler::new(muxer, metrics.clone())),
            metrics,
        })
    }

    pub fn guest_cid(&self) -> u64 {
        self.guest_cid
    }

    pub fn metrics(&self) -> &Arc<VsockMetrics> {
        &self.metrics
    }

    /// The handler while no worker runs (tests, snapshot).
    pub fn handler(&self) -> Option<&VsockHandler<H>> {
        self.worker.handler()
    }
}

fn start<H: VsockHost + 'static>(
    queues: Vec<DeviceQueue>,
    activation: &Activation,
) -> Result<WorkerBody<VsockHandler<H>>, VirtioError> {
    let mut slots: [Option<DeviceQueue>; 3] = [None, None, None];
    for queue in queues {
        let index = queue.index;
        match slots.get_mut(usize::from(index)) {
            Some(slot @ None) => *slot = Some(queue),
            _ => return Err(VirtioError::BadQueue { index }),
        }
    }
    let mut queues = Vec::with_capacity(3);
    for (index, slot) in slots.into_iter().enumerate() {
        queues.push(slot.ok_or(VirtioError::BadQueue { index: index as u16 })?);
    }
    let Activation { memory, interrupt } = activation.clone();
    Ok(Box::new(move |handler, kill| {
        Worker::new(queues, memory, interrupt, handler).run(kill)
    }))
}

impl<H: VsockHost + 'static> VirtioDevice for Vsock<H> {
    type State = VsockState;

    fn name(&self) -> &str {
        "vsock"
    }

    fn device_type(&self) -> u32 {
        DEVICE_TYPE
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &QUEUE_SIZES
    }

    fn features(&self) -> u64 {
        FEATURES
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        virtkit_virtio::read_config_bytes(&self.guest_cid.to_le_bytes(), offset, data);
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        tracing::trace!(
            offset,
            len = data.len(),
            "virtio-vsock: config write ignored (read-only)"
        );
    }

    fn activate(
        &mut self,
        memory: GuestMemoryMmap,
        interrupt: Arc<dyn VirtioInterrupt>,
        queues: Vec<DeviceQueue>,
        acked_features: u64,
    ) -> Result<(), VirtioError> {
        self.worker.activate(memory, interrupt, queues, start::<H>)?;
        self.acked_features = acked_features & FEATURES;
        Ok(())
    }

    /// Drops every connection: their host sockets close.
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
        self.worker.wake(queues, start::<H>)
    }

    fn snapshot(&self) -> Result<VsockState, VirtioError> {
        self.worker.ensure_stopped()?;
        Ok(VsockState {
            acked_features: self.acked_features,
            guest_cid: self.guest_cid,
        })
    }

    /// The connections of the saved VM are gone: the guest gets a transport-reset event when
    /// the device runs, and every connection of this device is dropped.
    fn restore(&mut self, state: VsockState) -> Result<(), VirtioError> {
        self.worker.ensure_stopped()?;
        if state.acked_features & !FEATURES != 0 {
            return Err(VirtioError::IncompatibleState(
                "features this vsock device does not offer",
            ));
        }
        if state.guest_cid != self.guest_cid {
            return Err(VirtioError::IncompatibleState("the guest CID changed"));
        }
        let handler = self.worker.handler_mut().ok_or(VirtioError::IncompatibleState(
            "the connections were lost when a worker failed",
        ))?;
        handler.muxer.reset();
        handler.transport_reset_pending = state.acked_features != 0;
        self.acked_features = state.acked_features;
        Ok(())
    }
}
