//! The virtio-balloon device: features, configuration space, and starting and stopping its
//! worker.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use virtkit_virtio::features::VERSION_1;
use virtkit_virtio::{
    Activation, DeviceQueue, DeviceWorker, VirtioDevice, VirtioError, VirtioInterrupt, WorkerBody,
};
use vm_memory::GuestMemoryMmap;

use super::config::BalloonConfig;
use super::discard::{MadviseDiscard, MemoryDiscard};
use super::handle::{BalloonError, BalloonHandle, Shared};
use super::handler::BalloonHandler;
use super::layout::{queue_roles, role_of, QueueRole};
use super::metrics::BalloonMetrics;
use super::worker::Worker;

/// Virtio device ID of memory balloons.
pub const DEVICE_TYPE: u32 = 5;
/// Size of every queue.
pub const QUEUE_SIZE: u16 = 256;
/// PCI class code: memory controller, RAM (as QEMU reports a balloon).
pub const PCI_CLASS: (u8, u8, u8) = (0x05, 0x00, 0x00);
/// Bytes of `struct virtio_balloon_config`: num_pages, actual, free_page_hint_cmd_id,
/// poison_val.
pub const CONFIG_LEN: usize = 16;
/// The only guest-writable bytes of the configuration space: `actual`.
const ACTUAL: std::ops::Range<u64> = 4..8;

/// Feature bits (`VIRTIO_BALLOON_F_*`).
pub mod features {
    pub const STATS_VQ: u64 = 1 << 1;
    pub const DEFLATE_ON_OOM: u64 = 1 << 2;
    pub const FREE_PAGE_REPORTING: u64 = 1 << 5;
}

/// What the device keeps across a snapshot (the transport keeps the queues).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BalloonState {
    pub acked_features: u64,
    /// The host's target, in 4 KiB pages.
    pub num_pages: u32,
    /// What the guest last wrote to `actual`, in 4 KiB pages.
    pub actual: u32,
    pub config: BalloonConfig,
    /// The statistics buffer the device held (popped from the ring, not yet used).
    pub stats_head: Option<u16>,
}

/// A virtio-balloon device; `D` gives guest pages back to the host.
pub struct Balloon<D: MemoryDiscard + 'static = MadviseDiscard> {
    config: BalloonConfig,
    features: u64,
    acked_features: u64,
    queue_sizes: Vec<u16>,
    /// The handler, and the `v_balloon` thread that has it while the device runs.
    worker: DeviceWorker<BalloonHandler<D>>,
    shared: Arc<Shared>,
}

impl<D: MemoryDiscard + 'static> std::fmt::Debug for Balloon<D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Balloon")
            .field("config", &self.config)
            .field("acked_features", &self.acked_features)
            .field("shared", &self.shared)
            .finish_non_exhaustive()
    }
}

impl Balloon<MadviseDiscard> {
    /// A balloon that discards with `madvise(MADV_DONTNEED)`.
    pub fn new(config: BalloonConfig) -> Result<Balloon<MadviseDiscard>, BalloonError> {
        Balloon::with_discard(config, MadviseDiscard)
    }
}

impl<D: MemoryDiscard + 'static> Balloon<D> {
    /// A balloon that gives pages back through `discard`.
    pub fn with_discard(config: BalloonConfig, discard: D) -> Result<Balloon<D>, BalloonError> {
        let mut offered = VERSION_1 | features::STATS_VQ;
        if config.deflate_on_oom {
            offered |= features::DEFLATE_ON_OOM;
        }
        if config.free_page_reporting {
            offered |= features::FREE_PAGE_REPORTING;
        }
        let metrics = Arc::new(BalloonMetrics::default());
        let shared = Arc::new(Shared::new(metrics.clone())?);
        Ok(Balloon {
            config,
            features: offered,
            acked_features: 0,
            queue_sizes: vec![QUEUE_SIZE; queue_roles(offered).len()],
            worker: DeviceWorker::new("balloon", BalloonHandler::new(discard, metrics)),
            shared,
        })
    }

    /// The host's handle: target, actual, statistics. Valid before activation and for the
    /// device's whole life.
    pub fn handle(&self) -> BalloonHandle {
        BalloonHandle {
            shared: self.shared.clone(),
        }
    }

    pub fn metrics(&self) -> &Arc<BalloonMetrics> {
        &self.shared.metrics
    }

    pub fn config(&self) -> &BalloonConfig {
        &self.config
    }

    /// The discard, while no worker has it (for tests).
    pub fn discard(&self) -> Option<&D> {
        self.worker.handler().map(|h| &h.discard)
    }

    /// A `start` for [`DeviceWorker`]: checks the queues handed over under `acked_features` and
    /// builds the `v_balloon` worker's body.
    fn start(
        &self,
        acked_features: u64,
    ) -> impl FnOnce(Vec<DeviceQueue>, &Activation) -> Result<WorkerBody<BalloonHandler<D>>, VirtioError>
    {
        let queue_count = self.queue_sizes.len();
        let shared = self.shared.clone();
        let stats_interval = Duration::from_secs(self.config.stats_interval_secs);
        move |queues, activation| {
            check_queues(queue_count, &queues, acked_features)?;
            let Activation { memory, interrupt } = activation.clone();
            Ok(Box::new(move |handler, kill| {
                let worker = Worker {
                    queues,
                    acked_features,
                    memory,
                    interrupt,
                    handler,
                    shared,
                    stats_interval,
                    broken: false,
                };
                worker.run(kill)
            }))
        }
    }

    fn config_bytes(&self) -> [u8; CONFIG_LEN] {
        let mut c = [0u8; CONFIG_LEN];
        c[0..4].copy_from_slice(&self.shared.target_pages.load(Ordering::Acquire).to_le_bytes());
        c[4..8].copy_from_slice(&self.shared.actual_pages.load(Ordering::Acquire).to_le_bytes());
        // free_page_hint_cmd_id and poison_val: zero (their features are not offered).
        c
    }
}

/// Checks the queues handed over: inflate and deflate must be there, indices unique and
/// within what was offered.
fn check_queues(queue_count: usize, queues: &[DeviceQueue], acked_features: u64) -> Result<(), VirtioError> {
    let mut seen = vec![false; queue_count];
    for queue in queues {
        let slot = seen
            .get_mut(usize::from(queue.index))
            .filter(|s| !**s)
            .ok_or(VirtioError::BadQueue { index: queue.index })?;
        *slot = true;
    }
    for role in [QueueRole::Inflate, QueueRole::Deflate] {
        let present = queues
            .iter()
            .any(|q| role_of(q.index, acked_features) == Some(role));
        if !present {
            let index = queue_roles(acked_features)
                .iter()
                .position(|r| *r == role)
                .unwrap_or(0);
            return Err(VirtioError::BadQueue { index: index as u16 });
        }
    }
    Ok(())
}

impl<D: MemoryDiscard + 'static> VirtioDevice for Balloon<D> {
    type State = BalloonState;

    fn name(&self) -> &str {
        "balloon"
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
        let config = self.config_bytes();
        virtkit_virtio::read_config_bytes(&config, offset, data);
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        let mut actual = self.shared.actual_pages.load(Ordering::Acquire).to_le_bytes();
        let mut changed = false;
        for (i, &byte) in data.iter().enumerate() {
            match offset.checked_add(i as u64) {
                Some(at) if ACTUAL.contains(&at) => {
                    actual[(at - ACTUAL.start) as usize] = byte;
                    changed = true;
                }
                _ => tracing::trace!(offset, "virtio-balloon: config write outside `actual` ignored"),
            }
        }
        if changed {
            self.shared
                .actual_pages
                .store(u32::from_le_bytes(actual), Ordering::Release);
        }
    }

    fn activate(
        &mut self,
        memory: GuestMemoryMmap,
        interrupt: Arc<dyn VirtioInterrupt>,
        queues: Vec<DeviceQueue>,
        acked_features: u64,
    ) -> Result<(), VirtioError> {
        let acked_features = acked_features & self.features;
        let start = self.start(acked_features);
        self.worker.activate(memory, interrupt.clone(), queues, start)?;
        self.acked_features = acked_features;
        // A target set before activation is announced now.
        self.shared.set_interrupt(Some(interrupt));
        Ok(())
    }

    fn reset(&mut self) -> Option<Vec<DeviceQueue>> {
        let queues = self.worker.reset();
        self.shared.set_interrupt(None);
        self.acked_features = 0;
        // The guest starts over with an empty balloon; the host's target stays.
        self.shared.actual_pages.store(0, Ordering::Release);
        if let Some(handler) = self.worker.handler_mut() {
            handler.set_stats_head(None);
        }
        queues
    }

    fn sleep(&mut self) -> Result<Option<Vec<DeviceQueue>>, VirtioError> {
        Ok(self.worker.sleep())
    }

    fn wake(&mut self, queues: Option<Vec<DeviceQueue>>) -> Result<(), VirtioError> {
        let start = self.start(self.acked_features);
        self.worker.wake(queues, start)
    }

    fn snapshot(&self) -> Result<BalloonState, VirtioError> {
        self.worker.ensure_stopped()?;
        Ok(BalloonState {
            acked_features: self.acked_features,
            num_pages: self.shared.target_pages.load(Ordering::Acquire),
            actual: self.shared.actual_pages.load(Ordering::Acquire),
            config: self.config.clone(),
            stats_head: self.worker.handler().and_then(|h| h.stats_head()),
        })
    }

    fn restore(&mut self, state: BalloonState) -> Result<(), VirtioError> {
        self.worker.ensure_stopped()?;
        if state.config.deflate_on_oom != self.config.deflate_on_oom
            || state.config.free_page_reporting != self.config.free_page_reporting
        {
            return Err(VirtioError::IncompatibleState("the balloon's features changed"));
        }
        if state.acked_features & !self.features != 0 {
            return Err(VirtioError::IncompatibleState(
                "features this balloon does not offer",
            ));
        }
        if state.stats_head.is_some_and(|head| head >= QUEUE_SIZE) {
            return Err(VirtioError::IncompatibleState(
                "a statistics buffer outside the queue",
            ));
        }
        let handler = self.worker.handler_mut().ok_or(VirtioError::IncompatibleState(
            "the balloon's handler was lost when a worker failed",
        ))?;
        handler.set_stats_head(state.stats_head);
        self.acked_features = state.acked_features;
        self.shared.target_pages.store(state.num_pages, Ordering::Release);
        self.shared.actual_pages.store(state.actual, Ordering::Release);
        // The polling interval stays this host's choice.
        Ok(())
    }
}
