//! Saving a virtio-pci device and restoring it into a new one built the same way: the
//! transport's registers (the PCI configuration space with its BARs, MSI-X, the common
//! configuration, the ISR), where each queue's rings stand, and the device's own state.
//!
//! A restore runs in two steps. `ManagedDevice::restore_state` (before the machine's memory and
//! KVM state are restored) checks the saved state against this device and takes it, touching
//! nothing outside the device. `ManagedDevice::finish_restore` (after, with the BARs mapped
//! where the saved configuration puts them) sets the MSI routes and the INTx line, and gives an
//! active device its queues back: checked against guest memory as on activation, continuing
//! from the saved indices, and left asleep until the VM resumes.

use serde::{Deserialize, Serialize};
use virtio_queue::QueueT;
use virtkit_machine::pci::header::COMMAND;
use virtkit_machine::pci::msix::MsixState;
use virtkit_machine::pci::COMMAND_INTX_DISABLE;

use super::common_config::CommonConfigState;
use super::VirtioPciDevice;
use crate::{VirtioDevice, VirtioError};

/// Where one enabled queue's rings stood when its worker stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueProgress {
    pub index: u16,
    pub next_avail: u16,
    pub next_used: u16,
}

/// A virtio-pci device as a state file keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VirtioPciState {
    /// The configuration space (256 bytes): command register and BARs included.
    pub pci_config: Vec<u8>,
    pub msix: MsixState,
    pub common: CommonConfigState,
    pub isr: u8,
    pub needs_reset: bool,
    pub config_generation: u8,
    /// Activated by the driver (DRIVER_OK) and not reset since.
    pub active: bool,
    /// Each enabled queue's progress (empty unless active).
    pub queues: Vec<QueueProgress>,
    /// The device's own state (its `VirtioDevice::State`).
    pub device: serde_json::Value,
}

/// What a restore keeps between its two steps.
#[derive(Debug)]
pub(super) struct PendingRestore {
    active: bool,
    queues: Vec<QueueProgress>,
}

fn incompatible(what: &'static str) -> VirtioError {
    VirtioError::IncompatibleState(what)
}

impl<D: VirtioDevice> VirtioPciDevice<D> {
    pub(super) fn save_state(&self) -> Result<VirtioPciState, VirtioError> {
        let queues = match (&self.slept, self.active) {
            (_, false) => Vec::new(),
            (Some(Some(queues)), true) => queues
                .iter()
                .map(|q| QueueProgress {
                    index: q.index,
                    next_avail: q.queue.next_avail(),
                    next_used: q.queue.next_used(),
                })
                .collect(),
            (Some(None), true) => return Err(incompatible("its worker stopped and its queues are lost")),
            (None, true) => return Err(VirtioError::Running),
        };
        // A restore takes a position for exactly the enabled queues: refuse to write a file
        // that could not be restored.
        let enabled = self.common.queues.iter().filter(|q| q.enabled).count();
        if self.active && queues.len() != enabled {
            return Err(incompatible(
                "its worker handed back fewer queues than are enabled",
            ));
        }
        let device = self.device.snapshot()?;
        Ok(VirtioPciState {
            pci_config: self.config.saved_bytes(),
            msix: self.msix.state(),
            common: self.common.state(),
            isr: self.interrupt.isr(),
            needs_reset: self
                .interrupt
                .needs_reset
                .load(std::sync::atomic::Ordering::Acquire),
            config_generation: self
                .interrupt
                .config_generation
                .load(std::sync::atomic::Ordering::Acquire),
            active: self.active,
            queues,
            device: serde_json::to_value(device).map_err(|_| incompatible("its state cannot be encoded"))?,
        })
    }

    /// Checks everything in `state` that can be checked without guest memory, before any of
    /// it is taken.
    fn check_state(&self, state: &VirtioPciState) -> Result<D::State, VirtioError> {
        if self.active || self.pending_restore.is_some() {
            return Err(VirtioError::AlreadyActive);
        }
        self.config
            .clone()
            .restore_saved(&state.pci_config)
            .map_err(incompatible)?;
        let mut common = self.common.clone();
        common.restore_state(&state.common).map_err(incompatible)?;
        let enabled: Vec<u16> = (0..state.common.queues.len() as u16)
            .filter(|&i| state.common.queues[usize::from(i)].enabled)
            .collect();
        let progress: Vec<u16> = state.queues.iter().map(|q| q.index).collect();
        if state.active && progress != enabled {
            return Err(incompatible(
                "the saved queue positions do not match its enabled queues",
            ));
        }
        if !state.active && !state.queues.is_empty() {
            return Err(incompatible(
                "queue positions saved for a device that was not active",
            ));
        }
        if usize::from(self.msix.vector_count()) != state.msix.entries.len() {
            return Err(incompatible("the number of MSI-X vectors changed"));
        }
        serde_json::from_value(state.device.clone())
            .map_err(|_| incompatible("the saved bytes are not this device's state"))
    }
}

impl<D: VirtioDevice> VirtioPciDevice<D> {
    pub(super) fn restore_saved_state(&mut self, state: &VirtioPciState) -> Result<(), VirtioError> {
        let device_state = self.check_state(state)?;
        let old_config = self.config.saved_bytes();
        self.config
            .restore_saved(&state.pci_config)
            .map_err(incompatible)?;
        self.device.restore(device_state).inspect_err(|_| {
            self.config.set_bytes(0, &old_config);
        })?;
        // Checked above on a copy; these cannot fail now.
        self.common.restore_state(&state.common).map_err(incompatible)?;
        self.msix
            .restore_state(&state.msix)
            .map_err(|_| incompatible("the number of MSI-X vectors changed"))?;
        self.interrupt
            .restore(state.isr, state.needs_reset, state.config_generation);
        self.pending_restore = Some(PendingRestore {
            active: state.active,
            queues: state.queues.clone(),
        });
        Ok(())
    }

    pub(super) fn finish_saved_restore(&mut self) -> Result<(), VirtioError> {
        let Some(pending) = self.pending_restore.take() else {
            return Ok(());
        };
        self.msix.restore_routes();
        self.interrupt.set_vectors(
            self.common.config_msix_vector,
            self.common.queues.iter().map(|q| q.msix_vector),
        );
        let command = u16::from_le_bytes(self.config.register_bytes::<2>(COMMAND));
        self.interrupt
            .set_intx_disabled(command & COMMAND_INTX_DISABLE != 0);
        if !pending.active {
            return Ok(());
        }
        // The rings are checked against the restored guest memory, as on the driver's
        // activation: a state file is trusted for its checksum, not for where it points.
        let mut queues = self.build_queues().map_err(|e| {
            tracing::warn!(
                device = self.device.name(),
                "virtio-pci: restored queues refused: {e}"
            );
            incompatible("its saved queues are not usable in guest memory")
        })?;
        for queue in &mut queues {
            let progress = pending
                .queues
                .iter()
                .find(|p| p.index == queue.index)
                .ok_or(incompatible("a saved queue position is missing"))?;
            queue.queue.set_next_avail(progress.next_avail);
            queue.queue.set_next_used(progress.next_used);
        }
        let features = self.common.driver_features;
        self.device
            .activate(self.memory.clone(), self.interrupt.clone(), queues, features)?;
        self.active = true;
        // Asleep, as the paused VM it belongs to: `wake` runs it when the VM resumes.
        let queues = self.device.sleep()?;
        self.slept = Some(queues);
        Ok(())
    }
}
