//! Putting a virtio device on a machine's PCI bus: a free slot, its MSI vectors, its INTx line,
//! ioeventfds on the VM.

use std::sync::{Arc, Mutex};

use virtkit_machine::interrupt::{InterruptError, KvmLevelIrq, LevelIrq};
use virtkit_machine::ioevent::IoEvents;
use virtkit_machine::pci::{intx_gsi, PciRootError};
use virtkit_machine::Machine;

use super::{SharedManagedDevice, VirtioPciDevice, VirtioPciError, VirtioPciOptions};
use crate::VirtioDevice;

/// A device on the bus: where it is, and the handle the device manager keeps.
pub struct AttachedDevice {
    pub slot: u8,
    pub device: SharedManagedDevice,
}

#[derive(Debug, thiserror::Error)]
pub enum AttachError {
    #[error("no free PCI slot on bus 0")]
    NoSlot,
    #[error("cannot get MSI vectors for the device")]
    Vectors(#[source] InterruptError),
    #[error(transparent)]
    Transport(#[from] VirtioPciError),
    #[error("cannot put the device on the PCI bus")]
    Bus(#[from] PciRootError),
}

/// Wraps `device` in the virtio-pci transport and plugs it into the first free slot of
/// `machine`'s bus 0, before the machine starts. `class` is the PCI class code (base class,
/// subclass, programming interface). Returns the slot and a handle on the device.
pub fn attach<D: VirtioDevice + 'static>(
    machine: &Machine,
    device: D,
    class: (u8, u8, u8),
) -> Result<AttachedDevice, AttachError> {
    let root = machine.pci_root();
    let mut root = root.lock().unwrap_or_else(|p| p.into_inner());
    let slot = root.free_slot().ok_or(AttachError::NoSlot)?;
    let vectors = machine
        .gsi_router()
        .allocate_msi_vectors(VirtioPciDevice::vectors_needed(&device))
        .map_err(AttachError::Vectors)?;
    let gsi = intx_gsi(slot, 1);
    let intx: Arc<dyn LevelIrq> = Arc::new(KvmLevelIrq::new(machine.vm().clone(), gsi));
    let ioevents: Arc<dyn IoEvents> = machine.vm().clone();
    let pci = VirtioPciDevice::new(
        device,
        machine.memory().clone(),
        Arc::new(vectors),
        ioevents,
        VirtioPciOptions {
            class: class.0,
            subclass: class.1,
            prog_if: class.2,
            // GSIs 16..24 fit the interrupt line register.
            intx: Some((intx, gsi as u8)),
        },
    )?;
    let pci = Arc::new(Mutex::new(pci));
    root.add_device(slot, pci.clone())?;
    Ok(AttachedDevice { slot, device: pci })
}
