//! The virtio-input device: two queues (events to the driver, status from it), the
//! configuration space of its kind, and starting and stopping its worker.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use virtkit_virtio::features::{RING_EVENT_IDX, RING_INDIRECT_DESC, VERSION_1};
use virtkit_virtio::{
    read_config_bytes, Activation, DeviceQueue, DeviceWorker, VirtioDevice, VirtioError, VirtioInterrupt,
    WorkerBody,
};
use vm_memory::GuestMemoryMmap;

use super::config::{InputConfig, InputKind};
use super::handle::{InputHandle, Shared};
use super::worker::Worker;

/// Virtio device ID of input devices.
pub const DEVICE_TYPE: u32 = 18;
/// Queue size of both queues (as QEMU's).
pub const QUEUE_SIZE: u16 = 64;
/// PCI class code: input device, other (as QEMU reports virtio-input).
pub const PCI_CLASS: (u8, u8, u8) = (0x09, 0x80, 0x00);

const FEATURES: u64 = VERSION_1 | RING_INDIRECT_DESC | RING_EVENT_IDX;

/// What the device keeps across a snapshot (the transport keeps the queues). Events the guest
/// had not read yet are not kept: input is of the moment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InputState {
    pub kind: InputKind,
    pub acked_features: u64,
    pub select: u8,
    pub subsel: u8,
}

/// A virtio keyboard or tablet.
pub struct Input {
    kind: InputKind,
    config: InputConfig,
    acked_features: u64,
    queue_sizes: [u16; 2],
    shared: Arc<Shared>,
    worker: DeviceWorker<Arc<Shared>>,
}

impl std::fmt::Debug for Input {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Input")
            .field("kind", &self.kind)
            .finish_non_exhaustive()
    }
}

impl Input {
    /// A device of `kind` and the handle the host sends its events through.
    pub fn new(kind: InputKind) -> std::io::Result<(Input, InputHandle)> {
        let shared = Arc::new(Shared::new()?);
        let device = Input {
            kind,
            config: InputConfig::new(kind),
            acked_features: 0,
            queue_sizes: [QUEUE_SIZE; 2],
            shared: shared.clone(),
            worker: DeviceWorker::new("input", shared.clone()),
        };
        Ok((device, InputHandle { shared }))
    }

    pub fn kind(&self) -> InputKind {
        self.kind
    }
}

/// The `v_input` worker's body for the event and status queues.
fn start(queues: Vec<DeviceQueue>, activation: &Activation) -> Result<WorkerBody<Arc<Shared>>, VirtioError> {
    let mut queues = queues.into_iter();
    let (events, status) = match (queues.next(), queues.next(), queues.next()) {
        (Some(e), Some(s), None) if e.index == 0 && s.index == 1 => (e, s),
        _ => return Err(VirtioError::BadQueue { index: 0 }),
    };
    let Activation { memory, interrupt } = activation.clone();
    Ok(Box::new(move |shared: Arc<Shared>, kill| {
        let worker = Worker {
            events,
            status,
            memory,
            interrupt,
            shared: shared.clone(),
        };
        (worker.run(kill), shared)
    }))
}

impl VirtioDevice for Input {
    type State = InputState;

    fn name(&self) -> &str {
        "input"
    }

    fn device_type(&self) -> u32 {
        DEVICE_TYPE
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &self.queue_sizes
    }

    fn features(&self) -> u64 {
        FEATURES
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config.bytes(), offset, data);
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        self.config.write(offset, data);
    }

    fn activate(
        &mut self,
        memory: GuestMemoryMmap,
        interrupt: Arc<dyn VirtioInterrupt>,
        queues: Vec<DeviceQueue>,
        acked_features: u64,
    ) -> Result<(), VirtioError> {
        self.worker.activate(memory, interrupt, queues, start)?;
        self.acked_features = acked_features & FEATURES;
        self.shared.set_ready(true);
        Ok(())
    }

    fn reset(&mut self) -> Option<Vec<DeviceQueue>> {
        self.shared.set_ready(false);
        self.acked_features = 0;
        self.worker.reset()
    }

    fn sleep(&mut self) -> Result<Option<Vec<DeviceQueue>>, VirtioError> {
        Ok(self.worker.sleep())
    }

    fn wake(&mut self, queues: Option<Vec<DeviceQueue>>) -> Result<(), VirtioError> {
        self.worker.wake(queues, start)
    }

    fn snapshot(&self) -> Result<InputState, VirtioError> {
        self.worker.ensure_stopped()?;
        Ok(InputState {
            kind: self.kind,
            acked_features: self.acked_features,
            select: self.config.select,
            subsel: self.config.subsel,
        })
    }

    fn restore(&mut self, state: InputState) -> Result<(), VirtioError> {
        self.worker.ensure_stopped()?;
        if state.kind != self.kind {
            return Err(VirtioError::IncompatibleState("an input device of another kind"));
        }
        if state.acked_features & !FEATURES != 0 {
            return Err(VirtioError::IncompatibleState(
                "features this input device does not offer",
            ));
        }
        self.acked_features = state.acked_features;
        self.config.select = state.select;
        self.config.subsel = state.subsel;
        Ok(())
    }
}
