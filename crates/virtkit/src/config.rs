//! The machine description: one serde type for the bundle, the control API and the CLI.

use std::os::fd::OwnedFd;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::devices::{
    ConsoleDeviceConfiguration, DirectorySharingDeviceConfiguration, EntropyDeviceConfiguration,
    MemoryBalloonConfiguration, NetworkDeviceConfiguration, SocketDeviceConfiguration,
};
use crate::identity::MachineIdentifier;
use crate::storage::StorageDeviceConfiguration;

/// The configuration format this build writes and reads. Files from newer formats are refused
/// with a clear error; older ones are read with defaults for what they lack.
pub const CONFIG_FORMAT_VERSION: u32 = 1;

fn default_version() -> u32 {
    CONFIG_FORMAT_VERSION
}

/// What a virtual machine is.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub struct VirtualMachineConfiguration {
    /// Format version of this description.
    #[serde(default = "default_version")]
    pub version: u32,
    /// Number of vCPUs, 1..=255.
    pub cpu_count: u32,
    /// Guest RAM in bytes; at least 64 MiB, a multiple of 4 KiB.
    pub memory_size: u64,
    /// How the machine boots.
    pub boot_loader: BootLoader,
    /// Serial ports; the first is COM1.
    #[serde(default)]
    pub serial_ports: Vec<SerialPortConfiguration>,
    /// Disks, as virtio-blk devices on PCI, in boot order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub storage_devices: Vec<StorageDeviceConfiguration>,
    /// Entropy devices (virtio-rng), each fed by the host's `getrandom`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub entropy_devices: Vec<EntropyDeviceConfiguration>,
    /// A memory balloon (at most one): the host asks the guest to give memory back.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub memory_balloon_devices: Vec<MemoryBalloonConfiguration>,
    /// Console devices (virtio-console): `hvc0` and named ports.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub console_devices: Vec<ConsoleDeviceConfiguration>,
    /// Network cards (virtio-net): NAT through passt, or a Unix socket.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub network_devices: Vec<NetworkDeviceConfiguration>,
    /// Socket devices (virtio-vsock, at most one): host programs reach the guest's ports
    /// through a Unix socket (`CONNECT <port>`), the guest reaches `<uds_path>_<port>`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub socket_devices: Vec<SocketDeviceConfiguration>,
    /// Host directories shared with the guest (virtio-fs, each served by a virtiofsd), mounted
    /// by tag.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub directory_sharing_devices: Vec<DirectorySharingDeviceConfiguration>,
    /// Displays (at most one): a framebuffer the firmware and the guest draw into.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub graphics_devices: Vec<crate::GraphicsDeviceConfiguration>,
    /// Keyboards (virtio, at most one) for the guest's driver; keys come from the display's
    /// VNC server.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub keyboards: Vec<crate::KeyboardConfiguration>,
    /// Pointing devices (a virtio tablet, at most one) for the guest's driver; positions come
    /// from the display's VNC server.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pointing_devices: Vec<crate::PointingDeviceConfiguration>,
    /// The platform's identity (SMBIOS UUID and serial, MAC addresses).
    #[serde(default, skip_serializing_if = "PlatformConfiguration::is_default")]
    pub platform: PlatformConfiguration,
}

/// What the guest sees of the machine it runs on, beyond CPUs and memory.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub struct PlatformConfiguration {
    /// Stable identity of this machine; without one the guest sees a fixed all-zero identity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub machine_identifier: Option<MachineIdentifier>,
    /// The VMM's threads' seccomp filters (`docs/SECURITY.md`): `kill` (absent: the default), `log`, `off`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seccomp: Option<virtkit_sandbox::SeccompAction>,
    /// A directory where helper processes write their messages: passt's for network card N
    /// go to `passt.log` (card 0) or `passt-N.log`, a shared directory's virtiofsd's to
    /// `virtiofsd-<tag>.log`, appended. Absent: they are discarded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub helper_log_directory: Option<std::path::PathBuf>,
}

impl PlatformConfiguration {
    fn is_default(&self) -> bool {
        *self == PlatformConfiguration::default()
    }
}

/// How the machine boots.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case", tag = "type")]
pub enum BootLoader {
    /// Direct kernel boot: a bzImage, or an ELF vmlinux with a PVH entry note.
    Linux {
        kernel: PathBuf,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        initrd: Option<PathBuf>,
        #[serde(default)]
        command_line: String,
    },
    /// Firmware (BIOS) boot from the reset vector.
    Firmware {
        path: PathBuf,
        /// Where the firmware keeps its variables (EFI); unused by BIOS.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        variable_store: Option<PathBuf>,
    },
}

/// A serial port and where its bytes go.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub struct SerialPortConfiguration {
    pub attachment: SerialAttachment,
}

/// The host side of a serial port.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case", tag = "type")]
pub enum SerialAttachment {
    /// The VMM process's standard input and output.
    Stdio,
    /// Output appended to (or replacing) a file; no input.
    File {
        path: PathBuf,
        #[serde(default)]
        append: bool,
    },
    /// A Unix socket the VMM listens on; one client at a time reads and writes the console.
    UnixSocket { path: PathBuf },
    /// Open file descriptors the caller hands over (API only; not in configuration files).
    #[serde(skip)]
    FileHandles {
        read: Option<OwnedFd>,
        write: Option<OwnedFd>,
    },
}

impl VirtualMachineConfiguration {
    /// A Linux direct-boot machine with no serial port.
    pub fn linux(
        cpu_count: u32,
        memory_size: u64,
        kernel: PathBuf,
        initrd: Option<PathBuf>,
        command_line: &str,
    ) -> Self {
        VirtualMachineConfiguration {
            version: CONFIG_FORMAT_VERSION,
            cpu_count,
            memory_size,
            boot_loader: BootLoader::Linux {
                kernel,
                initrd,
                command_line: command_line.to_owned(),
            },
            serial_ports: Vec::new(),
            storage_devices: Vec::new(),
            entropy_devices: Vec::new(),
            memory_balloon_devices: Vec::new(),
            console_devices: Vec::new(),
            network_devices: Vec::new(),
            socket_devices: Vec::new(),
            directory_sharing_devices: Vec::new(),
            graphics_devices: Vec::new(),
            keyboards: Vec::new(),
            pointing_devices: Vec::new(),
            platform: PlatformConfiguration::default(),
        }
    }

    /// A firmware-boot machine with no serial port.
    pub fn firmware(cpu_count: u32, memory_size: u64, path: PathBuf) -> Self {
        VirtualMachineConfiguration {
            version: CONFIG_FORMAT_VERSION,
            cpu_count,
            memory_size,
            boot_loader: BootLoader::Firmware {
                path,
                variable_store: None,
            },
            serial_ports: Vec::new(),
            storage_devices: Vec::new(),
            entropy_devices: Vec::new(),
            memory_balloon_devices: Vec::new(),
            console_devices: Vec::new(),
            network_devices: Vec::new(),
            socket_devices: Vec::new(),
            directory_sharing_devices: Vec::new(),
            graphics_devices: Vec::new(),
            keyboards: Vec::new(),
            pointing_devices: Vec::new(),
            platform: PlatformConfiguration::default(),
        }
    }

    /// Adds a disk.
    pub fn with_storage(mut self, disk: StorageDeviceConfiguration) -> Self {
        self.storage_devices.push(disk);
        self
    }

    /// Adds a display, and with it a keyboard and a pointing device for the guest's drivers
    /// (unless it has them), as a screen comes with both.
    pub fn add_display(&mut self, display: crate::GraphicsDeviceConfiguration) {
        self.graphics_devices.push(display);
        if self.keyboards.is_empty() {
            self.keyboards.push(crate::KeyboardConfiguration::default());
        }
        if self.pointing_devices.is_empty() {
            self.pointing_devices
                .push(crate::PointingDeviceConfiguration::default());
        }
    }

    /// Adds an entropy device.
    pub fn with_entropy(mut self, device: EntropyDeviceConfiguration) -> Self {
        self.entropy_devices.push(device);
        self
    }

    /// Adds a serial port.
    pub fn with_serial(mut self, attachment: SerialAttachment) -> Self {
        self.serial_ports.push(SerialPortConfiguration { attachment });
        self
    }

    /// Reads a configuration from JSON text; the error names the line, column and field.
    pub fn from_json(text: &str) -> Result<Self, serde_json::Error> {
        serde_json::from_str(text)
    }

    /// The configuration as pretty JSON.
    pub fn to_json(&self) -> String {
        // Serialising plain data with string keys cannot fail.
        serde_json::to_string_pretty(self).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = r#"{
        "version": 1,
        "cpu_count": 2,
        "memory_size": 536870912,
        "boot_loader": {"type": "linux", "kernel": "/k", "initrd": "/i", "command_line": "console=ttyS0"},
        "serial_ports": [{"attachment": {"type": "stdio"}}]
    }"#;

    #[test]
    fn reads_the_documented_example() {
        let c = VirtualMachineConfiguration::from_json(EXAMPLE).unwrap();
        assert_eq!(c.cpu_count, 2);
        assert_eq!(c.memory_size, 512 << 20);
        assert!(
            matches!(c.boot_loader, BootLoader::Linux { ref command_line, .. } if command_line == "console=ttyS0")
        );
        assert!(matches!(c.serial_ports[0].attachment, SerialAttachment::Stdio));
    }

    #[test]
    fn unknown_field_is_an_error_naming_it() {
        let text = EXAMPLE.replace("\"cpu_count\"", "\"cpus\": 1, \"cpu_count\"");
        let err = VirtualMachineConfiguration::from_json(&text)
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown field `cpus`"), "{err}");
    }

    #[test]
    fn missing_version_defaults_to_current() {
        let text = EXAMPLE.replace("\"version\": 1,", "");
        assert_eq!(
            VirtualMachineConfiguration::from_json(&text).unwrap().version,
            CONFIG_FORMAT_VERSION
        );
    }

    #[test]
    fn round_trips_through_json() {
        let c = VirtualMachineConfiguration::linux(1, 64 << 20, "/k".into(), None, "quiet").with_serial(
            SerialAttachment::File {
                path: "/tmp/log".into(),
                append: true,
            },
        );
        let back = VirtualMachineConfiguration::from_json(&c.to_json()).unwrap();
        assert_eq!(back.to_json(), c.to_json());
    }
}
