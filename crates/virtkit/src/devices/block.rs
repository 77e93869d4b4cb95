//! Disks: each `storage_devices` entry as a virtio-blk device (the configuration type is
//! `crate::storage::StorageDeviceConfiguration`).

use virtkit_devices::block::qcow2::Qcow2Disk;
use virtkit_devices::block::{AnyDisk, Block, DiskOpenError, FileDisk, IoEngine, PCI_CLASS, SERIAL_MAX_LEN};
use virtkit_machine::Machine;
use virtkit_virtio::transport::pci::attach as attach_pci;

use super::{DeviceError, DeviceManager};
use crate::storage::{DiskImageFormat, StorageDeviceConfiguration};
use crate::validate::{check_disk, Issues};

pub(super) fn validate(disks: &[StorageDeviceConfiguration], issues: &mut Issues) {
    for (i, disk) in disks.iter().enumerate() {
        let field = format!("storage_devices[{i}].path");
        check_disk(issues, &field, disk);
        if let Some(id) = &disk.identifier {
            if id.len() > SERIAL_MAX_LEN || !id.is_ascii() {
                issues.add(
                    &format!("storage_devices[{i}].identifier"),
                    format!("`{id}` is not a disk serial; use at most {SERIAL_MAX_LEN} ASCII characters"),
                );
            }
        }
        if disks[..i].iter().any(|d| d.path == disk.path) {
            issues.add(
                &field,
                format!("{} is attached twice; give each disk once", disk.path.display()),
            );
        }
    }
}

/// Opens `disk`'s file (and for qcow2 its backing chain) as the backend its device runs on.
pub(super) fn open_disk(disk: &StorageDeviceConfiguration) -> Result<AnyDisk, DiskOpenError> {
    Ok(match disk.format {
        DiskImageFormat::Raw => Box::new(FileDisk::open_with_engine(
            &disk.path,
            disk.read_only,
            disk.caching,
            disk.synchronization,
            IoEngine::default(),
        )?),
        DiskImageFormat::Qcow2 => Box::new(Qcow2Disk::open(
            &disk.path,
            disk.read_only,
            disk.caching,
            disk.synchronization,
        )?),
    })
}

/// Opens and attaches each disk; returns their slots in the order given.
pub(super) fn attach(
    manager: &DeviceManager,
    machine: &Machine,
    disks: &[StorageDeviceConfiguration],
) -> Result<Vec<u8>, DeviceError> {
    let mut slots = Vec::new();
    for disk in disks {
        let disk_error = |source| DeviceError::Disk {
            path: disk.path.clone(),
            source,
        };
        let image = open_disk(disk).map_err(|e| disk_error(e.into()))?;
        let block = Block::new(image, disk.read_only, disk.identifier.as_deref()).map_err(disk_error)?;
        let attached = attach_pci(machine, block, PCI_CLASS).map_err(|source| DeviceError::Attach {
            what: format!("disk {}", disk.path.display()),
            source,
        })?;
        slots.push(manager.add("blk", attached));
    }
    Ok(slots)
}

impl DeviceManager {
    /// Closes disk `index` (`blk<index>`, asleep: the VM is paused) and opens `disk` in its
    /// place, the same size (a running VM's boot disk becoming a new layer at a snapshot). If
    /// the new file cannot be opened the disk stays closed (its requests fail) and the caller
    /// may open another.
    pub fn replace_disk(&self, index: usize, disk: &StorageDeviceConfiguration) -> Result<(), DeviceError> {
        let name = format!("blk{index}");
        let entries = self.lock();
        let entry = entries
            .iter()
            .find(|e| e.name == name)
            .ok_or(DeviceError::NoSuchDisk { index })?;
        let mut device = super::lock_device(&entry.device);
        let block = device
            .device_any_mut()
            .downcast_mut::<Block<AnyDisk>>()
            .ok_or(DeviceError::NoSuchDisk { index })?;
        block
            .replace_disk(|| open_disk(disk))
            .map_err(|source| DeviceError::ReplaceDisk {
                path: disk.path.clone(),
                source,
            })
    }
}
