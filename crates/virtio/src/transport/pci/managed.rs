//! A virtio-pci device seen by the device manager without its type: a name, sleep and wake
//! (the worker stops and the transport keeps the queues meanwhile), and its saved state
//! (transport and device, `persist`).

use std::sync::{Arc, Mutex};

use super::{VirtioPciDevice, VirtioPciState};
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
    /// The transport's and the device's state, queue positions included; it must be asleep
    /// or not started.
    fn save_state(&self) -> Result<VirtioPciState, VirtioError>;
    /// Takes a state from [`ManagedDevice::save_state`] into this device, which must be new
    /// (never activated): everything is checked first, and nothing outside the device changes
    /// (no KVM route, no worker). [`ManagedDevice::finish_restore`] completes it.
    fn restore_state(&mut self, state: &VirtioPciState) -> Result<(), VirtioError>;
    /// After [`ManagedDevice::restore_state`], once guest memory is restored and the BARs are
    /// mapped: the MSI routes, the INTx line, and for an active device its queues (checked
    /// against guest memory) with the worker asleep until [`ManagedDevice::wake`].
    fn finish_restore(&mut self) -> Result<(), VirtioError>;
    /// The device itself, for what only its own type offers (a disk's backend replaced while it
    /// sleeps); the caller downcasts it.
    fn device_any_mut(&mut self) -> &mut dyn std::any::Any;
}

/// A handle the device manager keeps: the same device the PCI bus holds.
pub type SharedManagedDevice = Arc<Mutex<dyn ManagedDevice>>;

impl<D: VirtioDevice + 'static> ManagedDevice for VirtioPciDevice<D> {
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

    fn save_state(&self) -> Result<VirtioPciState, VirtioError> {
        VirtioPciDevice::save_state(self)
    }

    fn restore_state(&mut self, state: &VirtioPciState) -> Result<(), VirtioError> {
        self.restore_saved_state(state)
    }

    fn finish_restore(&mut self) -> Result<(), VirtioError> {
        self.finish_saved_restore()
    }

    fn device_any_mut(&mut self) -> &mut dyn std::any::Any {
        self.device_mut()
    }
}
