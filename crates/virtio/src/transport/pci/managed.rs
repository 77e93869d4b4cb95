//! A virtio-pci device seen by the device manager without its type: a name, sleep and wake
//! (the worker stops and the transport keeps the queues meanwhile), and its state as bytes.

use std::sync::{Arc, Mutex};

use super::VirtioPciDevice;
use crate::{VirtioDevice, VirtioError};

/// What the device manager can do with any attached device.
pub trait ManagedDevice: Send {
    /// The device's short name (`blk`, `rng`, ...).
    fn name(&self) -> &str;
    /// Stops the device's worker (its requests in flight answered first) and keeps its queues;
    /// a device the driver has not started, or one already asleep, stays as it is.
    fn sleep(&mut self) -> Result<(), VirtioError>;
    /// Restarts the worker of a sleeping device with the queues it had.
    fn wake(&mut self) -> Result<(), VirtioError>;
    /// Whether [`ManagedDevice::sleep`] left it asleep.
    fn is_asleep(&self) -> bool;
    /// The device's own state as JSON bytes; it must be asleep or not started.
    fn snapshot(&self) -> Result<Vec<u8>, VirtioError>;
    /// Takes state from [`ManagedDevice::snapshot`]; it must be asleep or not started.
    fn restore(&mut self, state: &[u8]) -> Result<(), VirtioError>;
}

/// A handle the device manager keeps: the same device the PCI bus holds.
pub type SharedManagedDevice = Arc<Mutex<dyn ManagedDevice>>;

impl<D: VirtioDevice> ManagedDevice for VirtioPciDevice<D> {
    fn name(&self) -> &str {
        self.device().name()
    }

    fn sleep(&mut self) -> Result<(), VirtioError> {
        if self.slept.is_some() || !self.is_active() {
            return Ok(());
        }
        let queues = self.device_mut().sleep()?;
        self.slept = Some(queues);
        Ok(())
    }

    fn wake(&mut self) -> Result<(), VirtioError> {
        match self.slept.take() {
            Some(queues) => self.device_mut().wake(queues),
            None => Ok(()),
        }
    }

    fn is_asleep(&self) -> bool {
        self.slept.is_some()
    }

    fn snapshot(&self) -> Result<Vec<u8>, VirtioError> {
        let state = self.device().snapshot()?;
        serde_json::to_vec(&state).map_err(|_| VirtioError::IncompatibleState("cannot encode the state"))
    }

    fn restore(&mut self, state: &[u8]) -> Result<(), VirtioError> {
        let state = serde_json::from_slice(state)
            .map_err(|_| VirtioError::IncompatibleState("the saved bytes are not this device's state"))?;
        self.device_mut().restore(state)
    }
}
