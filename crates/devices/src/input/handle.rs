//! The host's side of an input device: events wait in a bounded queue until the guest's
//! driver has buffers for them, and an eventfd wakes the device's worker. Events only queue
//! while the driver is up (the device activated): before that the guest could not read them,
//! and the host sends them to the PS/2 devices instead ([`InputHandle::is_ready`]).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::event::InputEvent;

/// Most events waiting for the guest: a guest that reads nothing costs the host this much
/// memory, no more. A report that does not fit whole is dropped.
pub const MAX_PENDING: usize = 1024;

/// Counters, for logs and tests.
#[derive(Debug, Default)]
pub struct InputMetrics {
    /// Events the guest was given.
    pub delivered: AtomicU64,
    /// Events dropped: the queue was full (a guest not reading) or the driver was not up.
    pub dropped: AtomicU64,
    /// Buffers refused: read-only, too short or outside guest memory.
    pub bad_chains: AtomicU64,
    /// Status events the driver sent (LEDs).
    pub status_events: AtomicU64,
}

impl InputMetrics {
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }

    pub(super) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }
}

pub(super) struct Shared {
    pending: Mutex<VecDeque<InputEvent>>,
    /// Signalled when events are queued.
    pub wake: EventFd,
    /// The driver is up: the device was activated and not reset since.
    ready: AtomicBool,
    /// The LEDs the driver last set (bit n: `LED_*` code n).
    leds: AtomicU8,
    pub metrics: InputMetrics,
}

impl Shared {
    pub fn new() -> std::io::Result<Shared> {
        Ok(Shared {
            pending: Mutex::new(VecDeque::new()),
            wake: EventFd::new(EFD_NONBLOCK)?,
            ready: AtomicBool::new(false),
            leds: AtomicU8::new(0),
            metrics: InputMetrics::default(),
        })
    }

    pub fn pending(&self) -> MutexGuard<'_, VecDeque<InputEvent>> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Up or down. Under the queue's lock, so no report checked against the old state lands
    /// after the change; the queue starts empty either way (a report from before a reset must
    /// not reach the next driver: a key down with no key up would repeat for ever).
    pub fn set_ready(&self, ready: bool) {
        let mut pending = self.pending();
        pending.clear();
        self.ready.store(ready, Ordering::Release);
    }

    pub fn set_led(&self, led: u16, on: bool) {
        if led < 8 {
            let bit = 1u8 << led;
            if on {
                self.leds.fetch_or(bit, Ordering::Relaxed);
            } else {
                self.leds.fetch_and(!bit, Ordering::Relaxed);
            }
        }
    }
}

/// Sends events to one input device; cheap to clone, usable from any thread.
#[derive(Clone)]
pub struct InputHandle {
    pub(super) shared: Arc<Shared>,
}

impl std::fmt::Debug for InputHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InputHandle")
            .field("ready", &self.is_ready())
            .finish_non_exhaustive()
    }
}

impl InputHandle {
    /// The guest's driver is up, so events sent now reach it.
    pub fn is_ready(&self) -> bool {
        self.shared.ready.load(Ordering::Acquire)
    }

    /// Queues one report (end it with [`InputEvent::sync`]); `false` if it was dropped (the
    /// driver is not up, or the guest has not read the events before it).
    pub fn send(&self, report: &[InputEvent]) -> bool {
        {
            let mut pending = self.shared.pending();
            if !self.is_ready() {
                drop(pending);
                InputMetrics::add(&self.shared.metrics.dropped, report.len() as u64);
                return false;
            }
            if pending.len() + report.len() > MAX_PENDING {
                drop(pending);
                InputMetrics::add(&self.shared.metrics.dropped, report.len() as u64);
                virtkit_virtio::warn_ratelimited!(
                    "virtio-input: the guest reads no input; {} events dropped",
                    report.len()
                );
                return false;
            }
            pending.extend(report.iter().copied());
        }
        if let Err(e) = self.shared.wake.write(1) {
            tracing::error!("virtio-input: cannot wake the device: {e}");
        }
        true
    }

    /// The keyboard LEDs the guest last set (bit n: `LED_*` code n: Num, Caps, Scroll Lock).
    pub fn leds(&self) -> u8 {
        self.shared.leds.load(Ordering::Relaxed)
    }

    pub fn metrics(&self) -> &InputMetrics {
        &self.shared.metrics
    }
}
