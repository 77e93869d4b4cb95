//! The device side of virtio: what every device implements and what it is given to run.

use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde::Serialize;
use virtio_queue::Queue;
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

/// One virtqueue handed to a device: its index, the queue (rings set up by the driver) and the
/// eventfd the driver's notifications signal.
#[derive(Debug)]
pub struct DeviceQueue {
    pub index: u16,
    pub queue: Queue,
    pub event: EventFd,
}

/// How a device interrupts the driver. The transport decides how (MSI-X vector or INTx with the
/// ISR); callable from the device's worker thread without any lock the vCPUs hold.
pub trait VirtioInterrupt: Send + Sync {
    /// The device put buffers in queue `queue`'s used ring.
    fn signal_used_queue(&self, queue: u16);
    /// The device's configuration space changed.
    fn signal_config_changed(&self);
    /// The device hit an error it cannot go on from (a broken queue): it sets
    /// DEVICE_NEEDS_RESET and tells the driver.
    fn signal_needs_reset(&self);
    /// An eventfd whose signal interrupts the driver for queue `queue` without this process
    /// (the MSI-X vector's irqfd), for a backend in another process (vhost-user's call
    /// eventfd). `None` when the driver chose no vector or uses INTx (which needs the ISR).
    fn queue_irqfd(&self, _queue: u16) -> Option<&EventFd> {
        None
    }
}

/// Why a device's queue loop cannot go on: the device needs a reset (it sets DEVICE_NEEDS_RESET
/// through [`VirtioInterrupt::signal_needs_reset`] and answers nothing more until then).
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    /// virtio-queue refused the rings (an index or address outside what the queue allows).
    #[error("the queue is broken")]
    Broken(#[from] virtio_queue::Error),
    /// More is available, yet passes over the ring find nothing: the driver's available index
    /// runs ahead of what the ring holds (or the ring is outside guest memory).
    #[error("the driver's available index runs ahead of what the ring holds")]
    Stalled,
}

#[derive(Debug, thiserror::Error)]
pub enum VirtioError {
    #[error("the device is already active")]
    AlreadyActive,
    #[error("the device is not active")]
    NotActive,
    #[error("the device is running; put it to sleep first")]
    Running,
    #[error("queue {index} is missing or not usable")]
    BadQueue { index: u16 },
    #[error("cannot start the worker thread")]
    Thread(#[source] std::io::Error),
    #[error("cannot create or clone an eventfd")]
    EventFd(#[source] std::io::Error),
    #[error("the worker thread ended abnormally")]
    WorkerPanicked,
    #[error("the saved state does not fit this device: {0}")]
    IncompatibleState(&'static str),
}

/// A virtio device, whatever its transport.
///
/// Lifecycle: the transport negotiates features and sets up queues, then calls
/// [`VirtioDevice::activate`], which starts the device's worker thread (`v_<name>`) with the
/// queues. [`VirtioDevice::reset`] stops it and hands the queues back. Pause and snapshot use
/// [`VirtioDevice::sleep`] (stop the worker, hand back the queues, keep everything else),
/// [`VirtioDevice::wake`], and [`VirtioDevice::snapshot`] / [`VirtioDevice::restore`] of the
/// device's own typed state (the transport saves the queues).
pub trait VirtioDevice: Send {
    /// The device's saved state.
    type State: Serialize + DeserializeOwned + Clone + PartialEq + std::fmt::Debug;

    /// Short name, for the worker thread (`v_<name>`) and logs.
    fn name(&self) -> &str;
    /// Virtio device ID (2 = block, ...).
    fn device_type(&self) -> u32;
    /// Maximum size of each queue; the length is the number of queues.
    fn queue_max_sizes(&self) -> &[u16];
    /// Feature bits the device offers, transport-independent ones included.
    fn features(&self) -> u64;
    /// Reads the device-specific configuration space; bytes beyond it read as zero.
    fn read_config(&self, offset: u64, data: &mut [u8]);
    /// Writes the device-specific configuration space; writes beyond it are ignored.
    fn write_config(&mut self, offset: u64, data: &[u8]);
    /// Starts the device with the features the driver accepted and the queues it set up.
    fn activate(
        &mut self,
        memory: GuestMemoryMmap,
        interrupt: Arc<dyn VirtioInterrupt>,
        queues: Vec<DeviceQueue>,
        acked_features: u64,
    ) -> Result<(), VirtioError>;
    /// Stops the worker and returns to the state before activation; returns the queues if it
    /// was active.
    fn reset(&mut self) -> Option<Vec<DeviceQueue>>;
    /// Stops the worker, keeping the device active, and hands back its queues (`None` if it was
    /// not active or already asleep).
    fn sleep(&mut self) -> Result<Option<Vec<DeviceQueue>>, VirtioError>;
    /// Restarts the worker of an active device with `queues` (from [`VirtioDevice::sleep`] or a
    /// restore); does nothing to a device that is not active.
    fn wake(&mut self, queues: Option<Vec<DeviceQueue>>) -> Result<(), VirtioError>;
    /// The device's state; it must not be running (inactive or asleep).
    fn snapshot(&self) -> Result<Self::State, VirtioError>;
    /// Takes `state` from [`VirtioDevice::snapshot`]; the device must not be running.
    fn restore(&mut self, state: Self::State) -> Result<(), VirtioError>;
}

/// Copies the bytes of a configuration space `config` at `offset` into `data`; bytes beyond it
/// (or an offset that overflows) read as zero, as the transport's contract says.
pub fn read_config_bytes(config: &[u8], offset: u64, data: &mut [u8]) {
    for (i, byte) in data.iter_mut().enumerate() {
        *byte = offset
            .checked_add(i as u64)
            .and_then(|at| usize::try_from(at).ok())
            .and_then(|at| config.get(at).copied())
            .unwrap_or(0);
    }
}
