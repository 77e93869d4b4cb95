//! The virtio-rng device: one queue, no configuration space, and starting and stopping its
//! worker.

use std::sync::Arc;
use std::time::Instant;

use serde::{Deserialize, Serialize};
use virtkit_virtio::features::{RING_EVENT_IDX, RING_INDIRECT_DESC, VERSION_1};
use virtkit_virtio::{DeviceQueue, VirtioDevice, VirtioError, VirtioInterrupt, WorkerThread};
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

enum Run<S> {
    Inactive,
    Running(WorkerThread<(DeviceQueue, EntropyHandler<S>)>),
    Asleep,
}

/// A virtio-rng device over an [`EntropySource`].
pub struct Rng<S: EntropySource + 'static = HostRandom> {
    /// The handler (with the source and limiter) while no worker has it.
    handler: Option<EntropyHandler<S>>,
    acked_features: u64,
    queue_sizes: [u16; 1],
    run: Run<S>,
    /// Memory and interrupt from activation, for waking.
    activation: Option<(GuestMemoryMmap, Arc<dyn VirtioInterrupt>)>,
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
            handler: Some(EntropyHandler::new(source, limiter, metrics.clone())),
            acked_features: 0,
            queue_sizes: [QUEUE_SIZE],
            run: Run::Inactive,
            activation: None,
            metrics,
        }
    }

    pub fn metrics(&self) -> &Arc<RngMetrics> {
        &self.metrics
    }

    fn start_worker(&mut self, queue: DeviceQueue) -> Result<(), VirtioError> {
        let (memory, interrupt) = self.activation.clone().ok_or(VirtioError::NotActive)?;
        let handler = self.handler.take().ok_or(VirtioError::IncompatibleState(
            "the entropy source was lost when a worker failed",
        ))?;
        let worker = Worker {
            queue,
            memory,
            interrupt,
            handler,
            broken: false,
        };
        let thread = WorkerThread::start("rng", move |kill| worker.run(kill))?;
        self.run = Run::Running(thread);
        Ok(())
    }

    /// Stops the worker, taking the handler back; returns the queue.
    fn stop_worker(&mut self) -> Option<DeviceQueue> {
        let Run::Running(thread) = std::mem::replace(&mut self.run, Run::Asleep) else {
            return None;
        };
        match thread.stop() {
            Ok((queue, handler)) => {
                self.handler = Some(handler);
                Some(queue)
            }
            Err(e) => {
                tracing::error!("virtio-rng: {e}; the device is gone");
                None
            }
        }
    }

    fn single_queue(queues: Vec<DeviceQueue>) -> Result<DeviceQueue, VirtioError> {
        let mut queues = queues.into_iter();
        match (queues.next(), queues.next()) {
            (Some(queue), None) if queue.index == 0 => Ok(queue),
            _ => Err(VirtioError::BadQueue { index: 0 }),
        }
    }
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
        if !matches!(self.run, Run::Inactive) {
            return Err(VirtioError::AlreadyActive);
        }
        let queue = Self::single_queue(queues)?;
        self.acked_features = acked_features & FEATURES;
        self.activation = Some((memory, interrupt));
        if let Err(e) = self.start_worker(queue) {
            self.activation = None;
            self.run = Run::Inactive;
            return Err(e);
        }
        Ok(())
    }

    fn reset(&mut self) -> Option<Vec<DeviceQueue>> {
        let queue = self.stop_worker();
        self.run = Run::Inactive;
        self.activation = None;
        self.acked_features = 0;
        queue.map(|q| vec![q])
    }

    fn sleep(&mut self) -> Result<Option<Vec<DeviceQueue>>, VirtioError> {
        Ok(self.stop_worker().map(|q| vec![q]))
    }

    fn wake(&mut self, queues: Option<Vec<DeviceQueue>>) -> Result<(), VirtioError> {
        match (&self.run, queues) {
            (Run::Asleep, Some(queues)) => {
                let queue = Self::single_queue(queues)?;
                self.start_worker(queue)
            }
            _ => Ok(()),
        }
    }

    fn snapshot(&self) -> Result<RngState, VirtioError> {
        if matches!(self.run, Run::Running(_)) {
            return Err(VirtioError::Running);
        }
        Ok(RngState {
            acked_features: self.acked_features,
        })
    }

    fn restore(&mut self, state: RngState) -> Result<(), VirtioError> {
        if matches!(self.run, Run::Running(_)) {
            return Err(VirtioError::Running);
        }
        if state.acked_features & !FEATURES != 0 {
            return Err(VirtioError::IncompatibleState(
                "features this entropy device does not offer",
            ));
        }
        self.acked_features = state.acked_features;
        Ok(())
    }
}
