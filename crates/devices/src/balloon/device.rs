//! The virtio-balloon device: features, configuration space, and starting and stopping its
//! worker.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use virtkit_virtio::features::VERSION_1;
use virtkit_virtio::{DeviceQueue, VirtioDevice, VirtioError, VirtioInterrupt, WorkerThread};
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

enum Run<D> {
    Inactive,
    Running(WorkerThread<(Vec<DeviceQueue>, BalloonHandler<D>)>),
    Asleep,
}

/// A virtio-balloon device; `D` gives guest pages back to the host.
pub struct Balloon<D: MemoryDiscard + 'static = MadviseDiscard> {
    config: BalloonConfig,
    /// The handler while no worker has it.
    handler: Option<BalloonHandler<D>>,
    features: u64,
    acked_features: u64,
    queue_sizes: Vec<u16>,
    run: Run<D>,
    /// Memory and interrupt from activation, for waking.
    activation: Option<(GuestMemoryMmap, Arc<dyn VirtioInterrupt>)>,
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
            handler: Some(BalloonHandler::new(discard, metrics)),
            features: offered,
            acked_features: 0,
            queue_sizes: vec![QUEUE_SIZE; queue_roles(offered).len()],
            run: Run::Inactive,
            activation: None,
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
        self.handler.as_ref().map(|h| &h.discard)
    }

    fn start_worker(&mut self, queues: Vec<DeviceQueue>) -> Result<(), VirtioError> {
        let (memory, interrupt) = self.activation.clone().ok_or(VirtioError::NotActive)?;
        let handler = self.handler.take().ok_or(VirtioError::IncompatibleState(
            "the balloon's handler was lost when a worker failed",
        ))?;
        let worker = Worker {
            queues,
            acked_features: self.acked_features,
            memory,
            interrupt,
            handler,
            shared: self.shared.clone(),
            stats_interval: Duration::from_secs(self.config.stats_interval_secs),
            broken: false,
        };
        let thread = WorkerThread::start("balloon", move |kill| worker.run(kill))?;
        self.run = Run::Running(thread);
        Ok(())
    }

    fn stop_worker(&mut self) -> Option<Vec<DeviceQueue>> {
        let Run::Running(thread) = std::mem::replace(&mut self.run, Run::Asleep) else {
            return None;
        };
        match thread.stop() {
            Ok((queues, handler)) => {
                self.handler = Some(handler);
                Some(queues)
            }
            Err(e) => {
                tracing::error!("virtio-balloon: {e}");
                None
            }
        }
    }

    /// Checks the queues handed over: inflate and deflate must be there, indices unique and
    /// within what was offered.
    fn check_queues(&self, queues: &[DeviceQueue], acked_features: u64) -> Result<(), VirtioError> {
        let mut seen = vec![false; self.queue_sizes.len()];
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

    fn config_bytes(&self) -> [u8; CONFIG_LEN] {
        let mut c = [0u8; CONFIG_LEN];
        c[0..4].copy_from_slice(&self.shared.target_pages.load(Ordering::Acquire).to_le_bytes());
        c[4..8].copy_from_slice(&self.shared.actual_pages.load(Ordering::Acquire).to_le_bytes());
        // free_page_hint_cmd_id and poison_val: zero (their features are not offered).
        c
    }
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
        for (i, byte) in data.iter_mut().enumerate() {
            *byte = offset
                .checked_add(i as u64)
                .and_then(|at| usize::try_from(at).ok())
                .and_then(|at| config.get(at).copied())
                .unwrap_or(0);
        }
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
        if !matches!(self.run, Run::Inactive) {
            return Err(VirtioError::AlreadyActive);
        }
        let acked_features = acked_features & self.features;
        self.check_queues(&queues, acked_features)?;
        self.acked_features = acked_features;
        self.activation = Some((memory, interrupt.clone()));
        if let Err(e) = self.start_worker(queues) {
            self.activation = None;
            self.acked_features = 0;
            self.run = Run::Inactive;
            return Err(e);
        }
        // A target set before activation is announced now.
        self.shared.set_interrupt(Some(interrupt));
        Ok(())
    }

    fn reset(&mut self) -> Option<Vec<DeviceQueue>> {
        let queues = self.stop_worker();
        self.shared.set_interrupt(None);
        self.run = Run::Inactive;
        self.activation = None;
        self.acked_features = 0;
        // The guest starts over with an empty balloon; the host's target stays.
        self.shared.actual_pages.store(0, Ordering::Release);
        if let Some(handler) = self.handler.as_mut() {
            handler.set_stats_head(None);
        }
        queues
    }

    fn sleep(&mut self) -> Result<Option<Vec<DeviceQueue>>, VirtioError> {
        Ok(self.stop_worker())
    }

    fn wake(&mut self, queues: Option<Vec<DeviceQueue>>) -> Result<(), VirtioError> {
        match (&self.run, queues) {
            (Run::Asleep, Some(queues)) => {
                self.check_queues(&queues, self.acked_features)?;
                self.start_worker(queues)
            }
            _ => Ok(()),
        }
    }

    fn snapshot(&self) -> Result<BalloonState, VirtioError> {
        if matches!(self.run, Run::Running(_)) {
            return Err(VirtioError::Running);
        }
        Ok(BalloonState {
            acked_features: self.acked_features,
            num_pages: self.shared.target_pages.load(Ordering::Acquire),
            actual: self.shared.actual_pages.load(Ordering::Acquire),
            config: self.config.clone(),
            stats_head: self.handler.as_ref().and_then(|h| h.stats_head()),
        })
    }

    fn restore(&mut self, state: BalloonState) -> Result<(), VirtioError> {
        if matches!(self.run, Run::Running(_)) {
            return Err(VirtioError::Running);
        }
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
        let handler = self.handler.as_mut().ok_or(VirtioError::IncompatibleState(
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
