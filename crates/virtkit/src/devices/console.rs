//! Console devices: virtio-console with ports, as Apple's `VZVirtioConsoleDeviceConfiguration`.
//! A console port is the guest's `hvc0`; a named port is `/dev/virtio-ports/<name>` in the
//! guest (Debian's `qemu-guest-agent` listens on `org.qemu.guest_agent.0`).

use serde::{Deserialize, Serialize};
use virtkit_devices::console::{
    Console, ConsoleHandle, ConsolePortConfig, FdPortBackend, PortBackend, UnixSocketPortBackend, PCI_CLASS,
};
use virtkit_machine::Machine;
use virtkit_virtio::transport::pci::attach as attach_pci;

use super::{DeviceError, DeviceManager};
use crate::config::SerialAttachment;
use crate::validate::{check_socket_path, Issues};

/// One console device and its ports (port 0 first).
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub struct ConsoleDeviceConfiguration {
    pub ports: Vec<ConsolePortConfiguration>,
}

/// A port of a console device and where its bytes go.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub struct ConsolePortConfiguration {
    /// The guest sees the port as `/dev/virtio-ports/<name>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// A console (`hvc0` for the first) rather than a plain port.
    #[serde(default)]
    pub is_console: bool,
    /// The host side: stdio, a file (output only) or a Unix socket (one client at a time).
    /// None: nothing is connected, and for a named VM the console port is where its console
    /// (the terminal, `console.log`, `virtkit console`) goes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attachment: Option<SerialAttachment>,
}

impl ConsolePortConfiguration {
    /// A console port on `attachment`.
    pub fn console(attachment: Option<SerialAttachment>) -> Self {
        ConsolePortConfiguration {
            name: None,
            is_console: true,
            attachment,
        }
    }

    /// A named port on a Unix socket.
    pub fn named_socket(name: &str, path: impl Into<std::path::PathBuf>) -> Self {
        ConsolePortConfiguration {
            name: Some(name.to_owned()),
            is_console: false,
            attachment: Some(SerialAttachment::UnixSocket { path: path.into() }),
        }
    }
}

/// Most ports a console device takes (the device's own limit).
const MAX_PORTS: usize = virtkit_devices::console::MAX_PORTS;
/// Longest port name the driver takes.
const NAME_MAX: usize = 255;

pub(super) fn validate(devices: &[ConsoleDeviceConfiguration], issues: &mut Issues) {
    let mut names: Vec<&str> = Vec::new();
    for (i, device) in devices.iter().enumerate() {
        if device.ports.is_empty() || device.ports.len() > MAX_PORTS {
            issues.add(
                &format!("console_devices[{i}].ports"),
                format!(
                    "{} ports given; a console device has 1 to {MAX_PORTS}",
                    device.ports.len()
                ),
            );
        }
        for (j, port) in device.ports.iter().enumerate() {
            let field = format!("console_devices[{i}].ports[{j}]");
            if let Some(name) = &port.name {
                if name.is_empty() || name.len() > NAME_MAX || name.contains(['/', '\0']) {
                    issues.add(
                        &format!("{field}.name"),
                        format!("`{name}` is not a port name; use 1 to {NAME_MAX} characters without `/`"),
                    );
                } else if names.contains(&name.as_str()) {
                    issues.add(
                        &format!("{field}.name"),
                        format!("the port name `{name}` is used twice; give each port its own"),
                    );
                } else {
                    names.push(name);
                }
            }
            if let Some(SerialAttachment::UnixSocket { path } | SerialAttachment::File { path, .. }) =
                &port.attachment
            {
                let socket = matches!(port.attachment, Some(SerialAttachment::UnixSocket { .. }));
                check_socket_path(issues, &format!("{field}.attachment.path"), path, socket);
            }
        }
    }
}

/// The host end of a port.
fn backend(attachment: Option<&mut SerialAttachment>) -> std::io::Result<Box<dyn PortBackend>> {
    Ok(match attachment {
        None => Box::new(FdPortBackend::new(None, None)?),
        Some(SerialAttachment::Stdio) => Box::new(FdPortBackend::stdio()?),
        Some(SerialAttachment::File { path, append }) => {
            let file = crate::regular_file::open_output(path, *append).map_err(std::io::Error::other)?;
            Box::new(FdPortBackend::output_only(file.into())?)
        }
        Some(SerialAttachment::UnixSocket { path }) => {
            Box::new(UnixSocketPortBackend::bind(&*path).map_err(std::io::Error::other)?)
        }
        Some(SerialAttachment::FileHandles { read, write }) => {
            Box::new(FdPortBackend::new(read.take(), write.take())?)
        }
    })
}

pub(super) fn attach(
    manager: &DeviceManager,
    machine: &Machine,
    devices: &mut [ConsoleDeviceConfiguration],
) -> Result<(), DeviceError> {
    for device in devices {
        let mut ports = Vec::new();
        for port in &mut device.ports {
            let backend = backend(port.attachment.as_mut()).map_err(|source| DeviceError::ConsolePort {
                port: port.name.clone().unwrap_or_else(|| "console".into()),
                source,
            })?;
            ports.push(ConsolePortConfig {
                name: port.name.clone(),
                is_console: port.is_console,
                backend,
            });
        }
        let console = Console::new(ports).map_err(|e| DeviceError::ConsolePort {
            port: "console device".into(),
            source: std::io::Error::other(e),
        })?;
        let handle: ConsoleHandle = console.handle();
        let attached = attach_pci(machine, console, PCI_CLASS).map_err(|source| DeviceError::Attach {
            what: "console device".into(),
            source,
        })?;
        manager.add("console", attached);
        manager.add_console(handle);
    }
    Ok(())
}
