//! Keyboards and pointing devices for the guest's own drivers: each `keyboards` entry a
//! virtio keyboard, each `pointing_devices` entry a virtio tablet (an absolute pointer), as
//! Apple's `VZUSBKeyboardConfiguration` and `VZUSBScreenCoordinatePointingDeviceConfiguration`.
//! Their events come from the display's VNC server, which sends them to the PS/2 keyboard and
//! mouse (the firmware's) until the guest's driver of these is up.

use serde::{Deserialize, Serialize};
use virtkit_devices::input::{Input, InputKind, PCI_CLASS};
use virtkit_machine::Machine;
use virtkit_virtio::transport::pci::attach as attach_pci;

use super::{DeviceError, DeviceManager};
use crate::validate::Issues;

/// A keyboard (virtio-input): every key of a PC keyboard.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyboardConfiguration {}

/// A pointing device that reports screen positions (a virtio tablet): the pointer is where the
/// VNC client's pointer is, with no acceleration or capture.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PointingDeviceConfiguration {}

pub(super) fn validate(
    keyboards: &[KeyboardConfiguration],
    pointing_devices: &[PointingDeviceConfiguration],
    displays: usize,
    issues: &mut Issues,
) {
    for (field, count, what) in [
        ("keyboards", keyboards.len(), "keyboards"),
        ("pointing_devices", pointing_devices.len(), "pointing devices"),
    ] {
        if count > 1 {
            issues.add(
                field,
                format!("{count} {what} given; a machine has at most one, so remove the others"),
            );
        }
        if count > 0 && displays == 0 {
            issues.add(
                field,
                format!(
                    "{what} take their input from the display's VNC server, and this machine has no display; \
                     add one (`graphics_devices`, or `--display WIDTHxHEIGHT`) or remove the {what}"
                ),
            );
        }
    }
}

pub(super) fn attach(
    manager: &DeviceManager,
    machine: &Machine,
    keyboards: &[KeyboardConfiguration],
    pointing_devices: &[PointingDeviceConfiguration],
) -> Result<(), DeviceError> {
    let kinds = keyboards
        .iter()
        .map(|_| InputKind::Keyboard)
        .chain(pointing_devices.iter().map(|_| InputKind::Tablet));
    for kind in kinds {
        let what = match kind {
            InputKind::Keyboard => "keyboard",
            InputKind::Tablet => "pointing device",
        };
        let (device, handle) = Input::new(kind).map_err(|source| DeviceError::Input { what, source })?;
        let attached = attach_pci(machine, device, PCI_CLASS).map_err(|source| DeviceError::Attach {
            what: what.into(),
            source,
        })?;
        manager.add(
            match kind {
                InputKind::Keyboard => "keyboard",
                InputKind::Tablet => "tablet",
            },
            attached,
        );
        manager.set_input(kind, handle);
    }
    Ok(())
}
