//! Disks: each `storage_devices` entry as a virtio-blk device (the configuration type is
//! `crate::storage::StorageDeviceConfiguration`).

use virtkit_devices::block::qcow2::Qcow2Disk;
use virtkit_devices::block::{Block, BlockConfig, PCI_CLASS, SERIAL_MAX_LEN};
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
        let attach_error = |source| DeviceError::Attach {
            what: format!("disk {}", disk.path.display()),
            source,
        };
        let attached = match disk.format {
            DiskImageFormat::Raw => {
                let block = Block::open(&BlockConfig {
                    path: disk.path.clone(),
                    read_only: disk.read_only,
                    cache: disk.caching,
                    sync: disk.synchronization,
                    serial: disk.identifier.clone(),
                    engine: Default::default(),
                })
                .map_err(disk_error)?;
                attach_pci(machine, block, PCI_CLASS).map_err(attach_error)?
            }
            DiskImageFormat::Qcow2 => {
                let image = Qcow2Disk::open(&disk.path, disk.read_only, disk.caching, disk.synchronization)
                    .map_err(|e| disk_error(e.into()))?;
                let block =
                    Block::new(image, disk.read_only, disk.identifier.as_deref()).map_err(disk_error)?;
                attach_pci(machine, block, PCI_CLASS).map_err(attach_error)?
            }
        };
        slots.push(manager.add("blk", attached));
    }
    Ok(slots)
}
