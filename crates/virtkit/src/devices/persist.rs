//! The devices' part of a machine state file (docs/SAVE.md): each attached device by name and
//! slot with its transport's and its own state, in a section with its own version.
//!
//! Saving needs every device asleep (a paused VM's are). Restoring runs in two steps around the
//! machine's own restore: [`DeviceManager::restore_devices`] checks the section against the
//! attached devices and gives each its state without touching KVM, then, once guest memory and
//! the platform are restored, [`DeviceManager::finish_restore`] maps each device's BARs where
//! the saved configuration space puts them (its ioeventfds follow), sets its MSI routes and
//! hands an active device its queues back, asleep until the VM resumes.

use serde::{Deserialize, Serialize};
use virtkit_devices::display::SavedDisplay;
use virtkit_machine::Machine;
use virtkit_virtio::transport::pci::VirtioPciState;

use super::{lock_device, DeviceError, DeviceManager};

/// The devices section this virtkit writes, and the newest it reads.
pub const DEVICES_SECTION_VERSION: u32 = 1;

/// One device as saved.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedDevice {
    /// `blk0`, `rng0`, ...
    pub name: String,
    pub slot: u8,
    pub state: VirtioPciState,
}

/// A display as saved: a PCI function of its own, not a virtio device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedDisplayDevice {
    pub slot: u8,
    pub state: SavedDisplay,
}

/// Every attached device, in attach order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedDevices {
    pub version: u32,
    pub devices: Vec<SavedDevice>,
    /// Absent in files saved before displays could be (none had one).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub displays: Vec<SavedDisplayDevice>,
}

impl SavedDevices {
    /// Reads a state file's devices section: `null` (a file with no devices, or of format 1)
    /// is an empty list.
    pub fn from_section(section: &serde_json::Value) -> Result<SavedDevices, DeviceError> {
        if section.is_null() {
            return Ok(SavedDevices {
                version: DEVICES_SECTION_VERSION,
                devices: Vec::new(),
                displays: Vec::new(),
            });
        }
        let version = section.get("version").and_then(serde_json::Value::as_u64);
        match version {
            Some(v) if v > u64::from(DEVICES_SECTION_VERSION) => {
                return Err(DeviceError::NewerDevicesSection { found: v })
            }
            Some(v) if v >= 1 => {}
            _ => return Err(DeviceError::UnreadableDevicesSection),
        }
        serde_json::from_value(section.clone()).map_err(|_| DeviceError::UnreadableDevicesSection)
    }

    /// Every device by name and slot, the displays last (`display0`, ...).
    fn names(&self) -> Vec<(String, u8)> {
        named_with_displays(
            self.devices.iter().map(|d| (d.name.clone(), d.slot)),
            self.displays.iter().map(|d| d.slot),
        )
    }
}

/// Devices by name and slot, then the displays as `display0`, `display1`, ... by slot: the one
/// list a state file and a machine are compared by.
fn named_with_displays(
    devices: impl Iterator<Item = (String, u8)>,
    display_slots: impl Iterator<Item = u8>,
) -> Vec<(String, u8)> {
    let displays = display_slots
        .enumerate()
        .map(|(i, slot)| (format!("display{i}"), slot));
    devices.chain(displays).collect()
}

fn describe(devices: &[(String, u8)]) -> String {
    if devices.is_empty() {
        return "none".to_owned();
    }
    let names: Vec<String> = devices
        .iter()
        .map(|(name, slot)| format!("{name} in slot {slot}"))
        .collect();
    names.join(", ")
}

impl DeviceManager {
    /// Every device's state; each must be asleep or never started by its driver.
    pub fn save_devices(&self) -> Result<SavedDevices, DeviceError> {
        let devices = self
            .lock()
            .iter()
            .map(|e| {
                lock_device(&e.device)
                    .save_state()
                    .map(|state| SavedDevice {
                        name: e.name.clone(),
                        slot: e.slot,
                        state,
                    })
                    .map_err(|source| DeviceError::Device {
                        name: e.name.clone(),
                        action: "save its state",
                        source,
                    })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let displays = self
            .lock_displays()
            .iter()
            .map(|d| {
                d.lock()
                    .save_state()
                    .map(|state| SavedDisplayDevice { slot: d.slot, state })
                    .map_err(|source| DeviceError::DisplayState {
                        slot: d.slot,
                        action: "save its state",
                        source,
                    })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(SavedDevices {
            version: DEVICES_SECTION_VERSION,
            devices,
            displays,
        })
    }

    /// Every device by name and slot as [`SavedDevices::names`] lists them.
    fn names_and_slots(&self) -> Vec<(String, u8)> {
        let display_slots: Vec<u8> = self.lock_displays().iter().map(|d| d.slot).collect();
        named_with_displays(
            self.lock().iter().map(|e| (e.name.clone(), e.slot)),
            display_slots.into_iter(),
        )
    }

    /// First step of a restore, on new devices that have not run: the saved devices must be
    /// exactly these (names and slots); each takes its state. Nothing outside the devices
    /// changes, so a refusal leaves a machine that is simply not started.
    pub fn restore_devices(&self, saved: &SavedDevices) -> Result<(), DeviceError> {
        let here = self.names_and_slots();
        let entries = self.lock();
        if saved.names() != here {
            return Err(DeviceError::SavedDevicesMismatch {
                saved: describe(&saved.names()),
                here: describe(&here),
            });
        }
        for (entry, device) in entries.iter().zip(&saved.devices) {
            lock_device(&entry.device)
                .restore_state(&device.state)
                .map_err(|source| DeviceError::Device {
                    name: entry.name.clone(),
                    action: "take its saved state",
                    source,
                })?;
        }
        for (display, saved) in self.lock_displays().iter().zip(&saved.displays) {
            display
                .lock()
                .restore_state(&saved.state)
                .map_err(|source| DeviceError::DisplayState {
                    slot: display.slot,
                    action: "take its saved state",
                    source,
                })?;
        }
        Ok(())
    }

    /// Second step, after the machine's memory and platform are restored and before it
    /// starts: each device's BARs go where its restored configuration says, and each finishes
    /// its restore (MSI routes, INTx, queues checked against guest memory, asleep).
    pub fn finish_restore(&self, machine: &Machine) -> Result<(), DeviceError> {
        let entries = self.lock();
        let root = machine.pci_root();
        let mut root = root.lock().unwrap_or_else(|p| p.into_inner());
        for entry in entries.iter() {
            root.sync_bars(entry.slot);
            lock_device(&entry.device)
                .finish_restore()
                .map_err(|source| DeviceError::Device {
                    name: entry.name.clone(),
                    action: "resume from its saved state",
                    source,
                })?;
        }
        // A display's framebuffer slot follows its BAR (`BochsDisplay::bar_moved`).
        for display in self.lock_displays().iter() {
            root.sync_bars(display.slot);
        }
        Ok(())
    }
}
