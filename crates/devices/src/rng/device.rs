//! The virtio-rng device: one queue, no configuration space, and starting and stopping its
//! worker.

use std::sync::Arc;
use std::time::Instant;

use serde::{Deserialize, Serialize};
use virtkit_virtio::features::{RING_EVENT_IDX, RING_INDIRECT_DESC, VERSION_1};
use virtkit_virtio::{
    single_queue, Activation, DeviceQueue, DeviceWorker, VirtioDevice, VirtioError, VirtioInterrupt,
    WorkerBody,
};
use vm_memory::GuestMemoryMmap;

use super::handler::EntropyHandler;
use super::limiter::{RateLimit, TokenBucket};
use super::metrics::RngMetrics;
use super::source::{EntropySource, HostRandom};
use super::worker::Worker;

/// Virtio device ID of entropy sources.
pub const DEVICE_TYPE: u32 = 4;
/// Queue size: as QEMU uses.
pub const QUEUE_SIZE: u16 = 256;
/// PCI class code: "other", as QEMU reports virtio-rng.
pub const PCI_CLASS: (u8, u8, u8) = (0xff, 0x00, 0x00);

/// What the device keeps across a snapshot (the transport keeps the queue).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RngState {
    pub acked_features: u64,
}

/// A virtio-rng device over an [`EntropySource`].
pub struct Rng<S: EntropySource + 'static = HostRandom> {
    acked_features: u64,
    queue_sizes: [u16; 1],
    /// The handler (with the source and limiter), and the `v_rng` thread that has it while the
    /// device runs.
    worker: DeviceWorker<EntropyHandler<S>>,
    metrics: Arc<RngMetrics>,
}

impl<S: EntropySource + 'static> std::fmt::Debug for Rng<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rng").field("metrics", &self.metrics).finish()
    }
}

const FEATURES: u64 = VERSION_1 | RING_INDIRECT_DESC | RING_EVENT_IDX;

impl Rng<HostRandom> {
    /// The host's `getrandom`, optionally rate-limited.
    pub fn host(limit: Option<RateLimit>) -> Rng<HostRandom> {
        Rng::new(HostRandom, limit)
    }
}

impl<S: EntropySource + 'static> Rng<S> {
    pub fn new(source: S, limit: Option<RateLimit>) -> Rng<S> {
        let metrics = Arc::new(RngMetrics::default());
        let limiter = limit.map(|l| TokenBucket::new(l, Instant::now()));
        Rng {
            acked_features: 0,
            queue_sizes: [QUEUE_SIZE],
            worker: DeviceWorker::new("rng", EntropyHandler::new(source, limiter, metrics.clone())),
            metrics,
        }
    }

    pub fn metrics(&self) -> &Arc<RngMetrics> {
        &self.metrics
    }
}

/// The `v_rng` worker's body for the queue handed over.
fn start<S: EntropySource + 'static>(
    queues: Vec<DeviceQueue>,
    activation: &Activation,
) -> Result<WorkerBody<EntropyHandler<S>>, VirtioError> {
    let queue = single_queue(queues)?;
    let Activation { memory, interrupt } = activation.clone();
    Ok(Box::new(move |handler, kill| {
        let worker = Worker {
            queue,
            memory,
            interrupt,
            handler,
            broken: false,
        };
        worker.run(kill)
    }))
}

impl<S: EntropySource + 'static> VirtioDevice for Rng<S> {
    type State = RngState;

    fn name(&self) -> &str {
        "rng"
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

    fn read_config(&self, _offset: u64, data: &mut [u8]) {
        // virtio-rng has no configuration space.
        data.fill(0);
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        tracing::trace!(offset, len = data.len(), "virtio-rng: config write ignored");
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
        Ok(())
    }

    fn reset(&mut self) -> Option<Vec<DeviceQueue>> {
        self.acked_features = 0;
        self.worker.reset()
    }

    fn sleep(&mut self) -> Result<Option<Vec<DeviceQueue>>, VirtioError> {
        Ok(self.worker.sleep())
    }

    fn wake(&mut self, queues: Option<Vec<DeviceQueue>>) -> Result<(), VirtioError> {
        self.worker.wake(queues, start)
    }

    fn snapshot(&self) -> Result<RngState, VirtioError> {
        self.worker.ensure_stopped()?;
        Ok(RngState {
            acked_features: self.acked_features,
        })
    }

    fn restore(&mut self, state: RngState) -> Result<(), VirtioError> {
        self.worker.ensure_stopped()?;
        if state.acked_features & !FEATURES != 0 {
            return Err(VirtioError::IncompatibleState(
                "features this entropy device does not offer",
            ));
        }
        self.acked_features = state.acked_features;
        Ok(())
    }
}
