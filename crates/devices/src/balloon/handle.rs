//! [`BalloonHandle`]: the host's side of the balloon, usable from any thread, before and after
//! the device is activated. It sets the target, reads what the guest says it gave up, and reads
//! (or asks for) the guest's memory statistics.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use virtkit_virtio::VirtioInterrupt;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::metrics::BalloonMetrics;
use super::stats::BalloonStatistics;

/// The balloon's page size: `num_pages` and `actual` count 4 KiB pages whatever the guest's
/// page size.
pub const BALLOON_PAGE_SIZE: u64 = 4096;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BalloonError {
    #[error("a balloon target of {0} bytes is more than the device can express (2^32 - 1 pages of 4 KiB)")]
    TargetTooLarge(u64),
    #[error("cannot create the statistics request eventfd: {0}")]
    EventFd(String),
}

/// State shared by the device, its worker and every handle.
pub(crate) struct Shared {
    /// `num_pages`: the host's target.
    pub target_pages: AtomicU32,
    /// `actual`: what the guest wrote.
    pub actual_pages: AtomicU32,
    pub stats: Mutex<Option<BalloonStatistics>>,
    /// The interrupt while the device is active, for configuration changes.
    pub interrupt: Mutex<Option<Arc<dyn VirtioInterrupt>>>,
    /// Written to ask the worker for fresh statistics.
    pub stats_request: EventFd,
    pub metrics: Arc<BalloonMetrics>,
}

impl Shared {
    pub fn new(metrics: Arc<BalloonMetrics>) -> Result<Shared, BalloonError> {
        Ok(Shared {
            target_pages: AtomicU32::new(0),
            actual_pages: AtomicU32::new(0),
            stats: Mutex::new(None),
            interrupt: Mutex::new(None),
            stats_request: EventFd::new(EFD_NONBLOCK).map_err(|e| BalloonError::EventFd(e.to_string()))?,
            metrics,
        })
    }

    /// Sets (or clears) the interrupt; when set and a target is pending, tells the driver.
    pub fn set_interrupt(&self, interrupt: Option<Arc<dyn VirtioInterrupt>>) {
        let mut slot = self.interrupt.lock().unwrap_or_else(|p| p.into_inner());
        *slot = interrupt;
        if let Some(interrupt) = slot.as_ref() {
            if self.target_pages.load(Ordering::Acquire) != 0 {
                interrupt.signal_config_changed();
            }
        }
    }

    pub fn store_stats(&self, stats: BalloonStatistics) {
        *self.stats.lock().unwrap_or_else(|p| p.into_inner()) = Some(stats);
    }
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("target_pages", &self.target_pages)
            .field("actual_pages", &self.actual_pages)
            .finish_non_exhaustive()
    }
}

/// The host's handle on a balloon: cheap to clone, usable from any thread.
#[derive(Debug, Clone)]
pub struct BalloonHandle {
    pub(crate) shared: Arc<Shared>,
}

impl BalloonHandle {
    /// Sets how much memory the guest should give up, in bytes, rounded down to 4 KiB pages.
    /// Stored before activation and announced when the device activates; afterwards the driver
    /// is told at once (a configuration change interrupt).
    pub fn set_target_bytes(&self, bytes: u64) -> Result<(), BalloonError> {
        let pages =
            u32::try_from(bytes / BALLOON_PAGE_SIZE).map_err(|_| BalloonError::TargetTooLarge(bytes))?;
        // Under the interrupt lock, so an activation in between sees either the old target
        // (and this call signals) or the new one (and it does).
        let interrupt = self.shared.interrupt.lock().unwrap_or_else(|p| p.into_inner());
        let old = self.shared.target_pages.swap(pages, Ordering::AcqRel);
        if old != pages {
            if let Some(interrupt) = interrupt.as_ref() {
                interrupt.signal_config_changed();
            }
        }
        Ok(())
    }

    /// The target: bytes the guest should give up (`num_pages` × 4 KiB).
    pub fn target_bytes(&self) -> u64 {
        u64::from(self.shared.target_pages.load(Ordering::Acquire)) * BALLOON_PAGE_SIZE
    }

    /// Bytes the guest says it has given up (its `actual` × 4 KiB).
    pub fn actual_bytes(&self) -> u64 {
        u64::from(self.shared.actual_pages.load(Ordering::Acquire)) * BALLOON_PAGE_SIZE
    }

    /// The last statistics the guest reported, with the time they arrived.
    pub fn stats(&self) -> Option<BalloonStatistics> {
        self.shared
            .stats
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Asks the guest for fresh statistics: the device hands its statistics buffer back, and
    /// the guest refills it. [`BalloonHandle::stats`] shows them once they arrive. Does nothing
    /// visible when the driver did not accept the statistics queue or the device is not active.
    pub fn request_stats(&self) {
        if let Err(e) = self.shared.stats_request.write(1) {
            tracing::warn!("virtio-balloon: cannot request statistics: {e}");
        }
    }

    /// The balloon's counters.
    pub fn metrics(&self) -> Arc<BalloonMetrics> {
        self.shared.metrics.clone()
    }
}
