//! Socket devices: virtio-vsock, as Apple's `VZVirtioSocketDeviceConfiguration`, with
//! Firecracker's hybrid Unix-socket host side: the VM listens on `uds_path`, where a host client
//! sends `CONNECT <port>\n` to reach the guest's port; the guest's connections to the host's
//! port P (CID 2) reach `<uds_path>_P` when something listens there.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use virtkit_devices::vsock::{UnixHost, Vsock, MIN_GUEST_CID, PCI_CLASS};
use virtkit_machine::Machine;
use virtkit_virtio::transport::pci::attach as attach_pci;

use super::{DeviceError, DeviceManager};
use crate::validate::{check_socket_path, Issues};

/// The guest's CID when none is given (the first a guest may have).
pub const DEFAULT_GUEST_CID: u64 = 3;

fn default_cid() -> u64 {
    DEFAULT_GUEST_CID
}

/// A virtio socket device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub struct SocketDeviceConfiguration {
    /// The guest's context ID (3 or more; 3 when left out).
    #[serde(default = "default_cid")]
    pub guest_cid: u64,
    /// The Unix socket the VM listens on for host clients (mode 0600).
    pub uds_path: PathBuf,
}

impl SocketDeviceConfiguration {
    pub fn new(uds_path: impl Into<PathBuf>) -> SocketDeviceConfiguration {
        SocketDeviceConfiguration {
            guest_cid: DEFAULT_GUEST_CID,
            uds_path: uds_path.into(),
        }
    }
}

pub(super) fn validate(devices: &[SocketDeviceConfiguration], issues: &mut Issues) {
    if devices.len() > 1 {
        issues.add(
            "socket_devices",
            format!(
                "{} socket devices given; a guest has one vsock transport, so give at most one",
                devices.len()
            ),
        );
    }
    for (i, device) in devices.iter().enumerate() {
        if device.guest_cid < MIN_GUEST_CID || device.guest_cid >= u64::from(u32::MAX) {
            issues.add(
                &format!("socket_devices[{i}].guest_cid"),
                format!(
                    "CID {} is reserved (0 and 1 are special, 2 is the host, 4294967295 means any); \
                     give 3 or more",
                    device.guest_cid
                ),
            );
        }
        check_socket_path(
            issues,
            &format!("socket_devices[{i}].uds_path"),
            &device.uds_path,
            true,
        );
    }
}

pub(super) fn attach(
    manager: &DeviceManager,
    machine: &Machine,
    devices: &[SocketDeviceConfiguration],
) -> Result<(), DeviceError> {
    for device in devices {
        let host = UnixHost::bind(&device.uds_path).map_err(DeviceError::SocketHost)?;
        let vsock = Vsock::new(device.guest_cid, host).map_err(DeviceError::SocketDevice)?;
        let attached = attach_pci(machine, vsock, PCI_CLASS).map_err(|source| DeviceError::Attach {
            what: "socket device".into(),
            source,
        })?;
        manager.add("vsock", attached);
        manager.add_socket_file(device.uds_path.clone());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_uses_the_documented_names_and_the_default_cid() {
        let d: SocketDeviceConfiguration = serde_json::from_str(r#"{"uds_path": "/tmp/v.sock"}"#).unwrap();
        assert_eq!(d, SocketDeviceConfiguration::new("/tmp/v.sock"));
        let d: SocketDeviceConfiguration =
            serde_json::from_str(r#"{"guest_cid": 42, "uds_path": "/tmp/v.sock"}"#).unwrap();
        assert_eq!(d.guest_cid, 42);
        assert!(serde_json::from_str::<SocketDeviceConfiguration>(r#"{"cid": 3, "uds_path": "x"}"#).is_err());
    }

    #[test]
    fn reserved_cids_long_paths_and_two_devices_are_refused_with_sentences() {
        let long = format!("/tmp/{}", "x".repeat(120));
        let devices = [
            SocketDeviceConfiguration {
                guest_cid: 2,
                uds_path: "/tmp/a.sock".into(),
            },
            SocketDeviceConfiguration::new(long),
        ];
        let mut issues = Issues(Vec::new());
        validate(&devices, &mut issues);
        let text = format!("{:?}", issues.0);
        assert!(text.contains("socket_devices[0].guest_cid"), "{text}");
        assert!(text.contains("CID 2 is reserved"), "{text}");
        assert!(text.contains("socket_devices[1].uds_path"), "{text}");
        assert!(text.contains("at most one"), "{text}");
        let mut fine = Issues(Vec::new());
        validate(&[SocketDeviceConfiguration::new("/tmp/ok.sock")], &mut fine);
        assert!(fine.0.is_empty(), "{:?}", fine.0);
    }
}
