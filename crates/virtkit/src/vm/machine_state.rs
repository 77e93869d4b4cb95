//! Saving a paused virtual machine's state to a file and restoring it into a new one built from
//! the same configuration, which comes back paused (as Apple's `saveMachineStateTo` and
//! `restoreMachineStateFrom`). The file's format is the machine's (docs/SAVE.md); this adds
//! what only the framework knows: which configuration the machine was built from, its virtio
//! devices' state (the device manager's section of the file), and which configured devices
//! cannot be saved yet.

use std::path::Path;

use virtkit_machine::snapshot::check_state_file;
use virtkit_machine::{SaveSummary, SnapshotError};

use super::{Shared, StartError, VirtualMachine};
use crate::config::VirtualMachineConfiguration;
use crate::devices::{DeviceError, SavedDevices};
use crate::state::VmState;

/// Why a machine state was not saved or restored.
#[derive(Debug, thiserror::Error)]
pub enum MachineStateError {
    #[error("cannot save the state of a virtual machine that is {state}; pause it first")]
    NotPaused { state: VmState },
    #[error("cannot restore a state into a virtual machine that is {state}; restore into a new virtual machine that has not started")]
    NotStopped { state: VmState },
    #[error("cannot save or restore the state of this virtual machine: {devices} cannot be saved yet; remove them from the configuration to use machine state files")]
    UnsaveableDevices { devices: String },
    #[error(transparent)]
    Devices(#[from] DeviceError),
    #[error(transparent)]
    State(#[from] SnapshotError),
    #[error("cannot describe the configuration for the state file (a virtkit bug)")]
    Describe(#[source] serde_json::Error),
    #[error("cannot start the restored virtual machine")]
    Start(#[from] StartError),
    #[error("cannot run the restored virtual machine")]
    Resume(#[source] super::VmError),
}

/// Why each kind of device a state file cannot hold yet is left out, by configuration field.
/// Every other device is saved through the device manager: disks, entropy devices, memory
/// balloons, consoles, socket devices, network cards, displays (their registers and whole video
/// memory), keyboards and pointing devices. (A balloon on a restored VM gives pages
/// back with `MADV_DONTNEED` on the private mapping of the file, after which they read as saved
/// rather than as zeros: virtio leaves a page's content undefined after the guest gives it back
/// unless VIRTIO_BALLOON_F_PAGE_POISON is negotiated, which virtkit does not offer. A network
/// card gets a new attachment, passt started anew, and loses the frames in flight. docs/SAVE.md.)
const UNSAVEABLE: [(&str, &str); 1] = [("directory_sharing_devices", "virtiofsd's state is not saved")];

/// Each configured device that a state file cannot hold yet, by its configuration field, with
/// why.
fn unsaveable_devices(config: &VirtualMachineConfiguration) -> Vec<String> {
    let counts = [config.directory_sharing_devices.len()];
    UNSAVEABLE
        .iter()
        .zip(counts)
        .filter(|(_, count)| *count > 0)
        .map(|((field, why), count)| {
            let devices: Vec<String> = (0..count).map(|i| format!("{field}[{i}]")).collect();
            format!("{} ({why})", devices.join(", "))
        })
        .collect()
}

fn refuse_unsaveable_devices(config: &VirtualMachineConfiguration) -> Result<(), MachineStateError> {
    let devices = unsaveable_devices(config);
    if devices.is_empty() {
        return Ok(());
    }
    Err(MachineStateError::UnsaveableDevices {
        devices: devices.join("; "),
    })
}

/// The configuration as a state file records it: what the guest sees. The host side of COM1
/// (a new run has new pipes or sockets; handed-over descriptors do not serialise at all), the
/// seccomp policy and where helpers log may differ, so they are left out.
pub(super) fn saved_configuration(
    config: &VirtualMachineConfiguration,
) -> Result<serde_json::Value, MachineStateError> {
    use serde_json::to_value;
    let describe = |e| MachineStateError::Describe(e);
    let mut object = serde_json::Map::new();
    object.insert("version".into(), to_value(config.version).map_err(describe)?);
    object.insert("cpu_count".into(), to_value(config.cpu_count).map_err(describe)?);
    object.insert(
        "memory_size".into(),
        to_value(config.memory_size).map_err(describe)?,
    );
    object.insert(
        "boot_loader".into(),
        to_value(&config.boot_loader).map_err(describe)?,
    );
    object.insert(
        "machine_identifier".into(),
        to_value(config.platform.machine_identifier).map_err(describe)?,
    );
    // The device lists: a restore needs the same devices (their state is in the file).
    let devices = [
        (
            "storage_devices",
            Ok(storage_devices_as_the_guest_sees_them(config)),
        ),
        ("entropy_devices", to_value(&config.entropy_devices)),
        ("memory_balloon_devices", to_value(&config.memory_balloon_devices)),
        (
            "console_devices",
            Ok(console_devices_as_the_guest_sees_them(config)),
        ),
        (
            "network_devices",
            Ok(network_devices_as_the_guest_sees_them(config)),
        ),
        ("socket_devices", to_value(&config.socket_devices)),
        (
            "directory_sharing_devices",
            to_value(&config.directory_sharing_devices),
        ),
    ];
    for (field, value) in devices {
        object.insert(field.into(), value.map_err(describe)?);
    }
    // Only when there are some: files saved before displays could be have no such members, and
    // a machine without them must still restore those.
    let input_devices = [
        (
            "graphics_devices",
            Ok(graphics_devices_as_the_guest_sees_them(config)),
        ),
        ("keyboards", to_value(&config.keyboards)),
        ("pointing_devices", to_value(&config.pointing_devices)),
    ];
    for (field, value) in input_devices {
        let value = value.map_err(describe)?;
        if value.as_array().is_some_and(|list| !list.is_empty()) {
            object.insert(field.into(), value);
        }
    }
    Ok(serde_json::Value::Object(object))
}

/// The console devices without their ports' host side (a new run has new pipes, sockets or
/// handed-over descriptors, which do not serialise at all): each port's name and kind.
fn console_devices_as_the_guest_sees_them(config: &VirtualMachineConfiguration) -> serde_json::Value {
    config
        .console_devices
        .iter()
        .map(|device| {
            let ports: Vec<serde_json::Value> = device
                .ports
                .iter()
                .map(|p| serde_json::json!({"name": p.name, "is_console": p.is_console}))
                .collect();
            serde_json::json!({ "ports": ports })
        })
        .collect()
}

/// The network cards: each MAC and attachment, a socket handed over as a descriptor recorded
/// only as such (a new run gets a new one, and descriptors do not serialise).
/// The disks without how their files store them: a snapshot turns a raw boot disk into a qcow2
/// layer over the same bytes, which a suspended guest must not notice.
fn storage_devices_as_the_guest_sees_them(config: &VirtualMachineConfiguration) -> serde_json::Value {
    config
        .storage_devices
        .iter()
        .map(|disk| {
            let mut value = serde_json::to_value(disk).unwrap_or_default();
            if let Some(fields) = value.as_object_mut() {
                fields.remove("format");
            }
            value
        })
        .collect()
}

/// The displays without where their VGA BIOS file is on the host: the guest's copy is in its
/// memory.
fn graphics_devices_as_the_guest_sees_them(config: &VirtualMachineConfiguration) -> serde_json::Value {
    config
        .graphics_devices
        .iter()
        .map(|d| serde_json::json!({"width": d.width, "height": d.height}))
        .collect()
}

fn network_devices_as_the_guest_sees_them(config: &VirtualMachineConfiguration) -> serde_json::Value {
    config
        .network_devices
        .iter()
        .map(|card| {
            let attachment = serde_json::to_value(&card.attachment)
                .unwrap_or_else(|_| serde_json::json!({"type": "file_handle"}));
            serde_json::json!({"mac": card.mac, "attachment": attachment})
        })
        .collect()
}

/// The displays of the virtual machine a state file was saved from, as its configuration had
/// them: an owner that gave a display for one run only (`virtkit run NAME --display`) adds the
/// same one to resume that run's saved state, which needs the same devices.
pub fn saved_graphics_devices(
    path: &Path,
) -> Result<Vec<crate::GraphicsDeviceConfiguration>, MachineStateError> {
    let (_, _, metadata) = virtkit_machine::snapshot::open_state_file(path)?;
    match metadata.configuration.get("graphics_devices") {
        // Saved before displays could be: it had none.
        None => Ok(Vec::new()),
        Some(displays) => serde_json::from_value(displays.clone()).map_err(MachineStateError::Describe),
    }
}

impl VirtualMachine {
    /// Whether this virtual machine's configuration can go into a state file, checked before
    /// trying: `Err` is the refusal [`VirtualMachine::save_machine_state`] and
    /// [`VirtualMachine::restore_machine_state`] would give, naming each device that cannot be
    /// saved yet and why.
    pub fn check_machine_state_support(&self) -> Result<(), MachineStateError> {
        refuse_unsaveable_devices(&self.config)
    }

    /// Saves the state of this paused virtual machine to `path`: every vCPU, the interrupt
    /// controllers, the platform devices, the virtio devices (asleep since the pause, their
    /// requests in flight answered) and guest memory, with the configuration it was built
    /// from. The file appears whole or not at all (written beside it, then renamed). Refused
    /// unless the virtual machine is paused, and for a configuration with a device that cannot
    /// be saved yet; it stays paused either way.
    pub fn save_machine_state(&self, path: &Path) -> Result<SaveSummary, MachineStateError> {
        refuse_unsaveable_devices(&self.config)?;
        let state = self.state();
        let handle = match &self.handle {
            Some(handle) if state == VmState::Paused => handle,
            _ => return Err(MachineStateError::NotPaused { state }),
        };
        let devices =
            serde_json::to_value(self.devices.save_devices()?).map_err(MachineStateError::Describe)?;
        Ok(handle.save_state(path, &saved_configuration(&self.config)?, &devices)?)
    }

    /// Builds this (not yet started) virtual machine and puts the state saved in `path` into
    /// it; it comes back paused, and [`VirtualMachine::resume`] runs the guest on from where it
    /// was saved. The file must have been saved from a virtual machine with the same
    /// configuration; a file that is not one, is damaged, is of a newer format or was saved with
    /// another configuration is refused before anything is built.
    pub fn restore_machine_state(&mut self, path: &Path) -> Result<(), MachineStateError> {
        let state = self.state();
        if !matches!(state, VmState::Stopped | VmState::Error) {
            return Err(MachineStateError::NotStopped { state });
        }
        refuse_unsaveable_devices(&self.config)?;
        let configuration = saved_configuration(&self.config)?;
        let metadata = check_state_file(path, &configuration)?;
        let devices = SavedDevices::from_section(&metadata.devices)?;
        {
            let mut s = self.shared.lock();
            s.reason = None;
            Shared::transition(&mut s, VmState::Starting);
        }
        if let Some(t) = self.monitor.take() {
            let _ = t.join();
        }
        self.launch(Some(super::RestoreFrom {
            path,
            configuration: &configuration,
            devices: &devices,
        }))
        .map_err(MachineStateError::Start)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_unsaveable_device_is_named_by_its_field_with_why() {
        let mut config = VirtualMachineConfiguration::linux(1, 64 << 20, "k".into(), None, "");
        config.entropy_devices.push(Default::default());
        config.memory_balloon_devices.push(Default::default());
        config
            .storage_devices
            .push(crate::StorageDeviceConfiguration::disk_image(
                std::path::PathBuf::from("d.img"),
            ));
        let nat: crate::NetworkDeviceConfiguration =
            serde_json::from_value(serde_json::json!({"attachment": {"type": "nat"}})).unwrap();
        config.network_devices.push(nat);
        assert!(
            unsaveable_devices(&config).is_empty(),
            "disks, entropy devices, balloons and network cards are saved"
        );
        for tag in ["t", "u"] {
            config
                .directory_sharing_devices
                .push(serde_json::from_value(serde_json::json!({"tag": tag, "path": "/tmp"})).unwrap());
        }
        let e = refuse_unsaveable_devices(&config).unwrap_err().to_string();
        assert!(
            e.contains(
                "directory_sharing_devices[0], directory_sharing_devices[1] (virtiofsd's state is not saved) cannot be saved yet"
            ) && e.contains("remove them"),
            "{e}"
        );
    }

    #[test]
    fn a_machine_without_a_display_describes_itself_as_before_displays_were_saved() {
        let mut config = VirtualMachineConfiguration::linux(1, 64 << 20, "k".into(), None, "");
        let saved = saved_configuration(&config).unwrap();
        for field in ["graphics_devices", "keyboards", "pointing_devices"] {
            assert!(saved.get(field).is_none(), "{field}: {saved}");
        }
        config.add_display(crate::GraphicsDeviceConfiguration {
            width: 640,
            height: 480,
            option_rom: Some("/somewhere/vgabios.bin".into()),
        });
        let saved = saved_configuration(&config).unwrap();
        assert_eq!(
            saved["graphics_devices"],
            serde_json::json!([{"width": 640, "height": 480}]),
            "the VGA BIOS's host path is left out"
        );
        assert_eq!(saved["keyboards"].as_array().map(Vec::len), Some(1));
        assert_eq!(saved["pointing_devices"].as_array().map(Vec::len), Some(1));
    }

    #[test]
    fn the_saved_configuration_records_a_handed_over_network_socket_only_as_such() {
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        let mut config = VirtualMachineConfiguration::linux(1, 64 << 20, "k".into(), None, "");
        config.network_devices.push(crate::NetworkDeviceConfiguration {
            mac: Some("02:00:00:00:00:01".into()),
            attachment: crate::NetworkAttachment::FileHandle {
                socket: crate::SharedFd(std::sync::Arc::new(a.into())),
            },
        });
        let saved = saved_configuration(&config).unwrap();
        assert_eq!(saved["network_devices"][0]["attachment"]["type"], "file_handle");
        assert_eq!(saved["network_devices"][0]["mac"], "02:00:00:00:00:01");
    }

    #[test]
    fn the_saved_configuration_leaves_out_the_host_side_of_console_ports() {
        let (tx, _rx) = std::io::pipe().unwrap();
        let mut with_handles = VirtualMachineConfiguration::linux(1, 64 << 20, "k".into(), None, "");
        with_handles
            .console_devices
            .push(crate::ConsoleDeviceConfiguration {
                ports: vec![crate::ConsolePortConfiguration::console(Some(
                    crate::SerialAttachment::FileHandles {
                        read: None,
                        write: Some(tx.into()),
                    },
                ))],
            });
        let mut plain = VirtualMachineConfiguration::linux(1, 64 << 20, "k".into(), None, "");
        plain.console_devices.push(crate::ConsoleDeviceConfiguration {
            ports: vec![crate::ConsolePortConfiguration::console(None)],
        });
        let saved = saved_configuration(&with_handles).unwrap();
        assert_eq!(saved, saved_configuration(&plain).unwrap());
        assert_eq!(saved["console_devices"][0]["ports"][0]["is_console"], true);
        plain.console_devices[0].ports[0].name = Some("other".into());
        assert_ne!(
            saved,
            saved_configuration(&plain).unwrap(),
            "the guest sees port names"
        );
    }

    #[test]
    fn the_saved_configuration_leaves_out_the_host_side_of_the_serial_port() {
        let with_stdio = VirtualMachineConfiguration::linux(2, 64 << 20, "k".into(), None, "quiet")
            .with_serial(crate::SerialAttachment::Stdio);
        let (tx, _rx) = std::io::pipe().unwrap();
        let with_handles = VirtualMachineConfiguration::linux(2, 64 << 20, "k".into(), None, "quiet")
            .with_serial(crate::SerialAttachment::FileHandles {
                read: None,
                write: Some(tx.into()),
            });
        let plain = VirtualMachineConfiguration::linux(2, 64 << 20, "k".into(), None, "quiet");
        let saved = saved_configuration(&plain).unwrap();
        assert_eq!(saved_configuration(&with_stdio).unwrap(), saved);
        assert_eq!(
            saved_configuration(&with_handles).unwrap(),
            saved,
            "descriptors are left out"
        );
        let other = VirtualMachineConfiguration::linux(4, 64 << 20, "k".into(), None, "quiet");
        assert_ne!(saved_configuration(&other).unwrap(), saved);
        assert_eq!(saved["cpu_count"], 2);
        assert_eq!(saved["memory_size"], 64 << 20);
        assert_eq!(saved["boot_loader"]["command_line"], "quiet");
    }
}
