//! virtkit: describe a virtual machine, validate it, run it and watch it.
//!
//! The shape follows Apple's Virtualization framework: a [`VirtualMachineConfiguration`] says
//! what the machine is; [`VirtualMachineConfiguration::validate`] reports every problem at once;
//! a [`VirtualMachine`] built from a valid configuration starts, pauses, resumes, asks its guest
//! to stop, stops, and reports its [`VmState`] and why it stopped.
#![forbid(unsafe_code)]

pub mod buffered_output;
mod config;
mod config_file;
mod console_server;
pub mod devices;
mod exit_stats;
mod host;
mod identity;
pub mod network;
pub mod regular_file;
mod serial;
mod size;
mod state;
mod storage;
pub mod unix_socket;
mod validate;
mod vm;
mod vsock_client;

pub use config::{
    BootLoader, PlatformConfiguration, SerialAttachment, SerialPortConfiguration,
    VirtualMachineConfiguration, CONFIG_FORMAT_VERSION,
};
pub use config_file::{ConfigFileError, MAX_CONFIG_SIZE};
pub use console_server::{ConsoleClients, ConsoleOutput, ConsoleServer, ConsoleServerOptions, OutputPump};
pub use devices::DISPLAY_OPTION_ROM;
pub use devices::{
    find_virtiofsd, passt_log_name, virtiofsd_log_name, BalloonStatus, ConsoleDeviceConfiguration,
    ConsolePortConfiguration, DeviceError, DeviceManager, DirectorySharingDeviceConfiguration,
    EntropyDeviceConfiguration, Framing, GraphicsDeviceConfiguration, KeyboardConfiguration,
    MemoryBalloonConfiguration, NetworkAttachment, NetworkDeviceConfiguration, NicAddresses,
    PointingDeviceConfiguration, PortProtocol, PublishedPort, SharedFd, SocketDeviceConfiguration,
    VirtiofsdError, DEFAULT_GUEST_CID, VIRTIOFSD_ENV,
};
pub use exit_stats::{DeviceExits, ExitCounts, ExitStatistics};
pub use host::{HostCapabilities, HostKind};
pub use identity::{BadMachineIdentifier, MachineIdentifier};
pub use size::{parse_size, ByteSize};
pub use state::{StopReason, VmState};
pub use storage::{CacheMode, DiskImageFormat, StorageDeviceConfiguration, SyncMode};
pub use validate::{ValidationError, ValidationIssue, MAX_SOCKET_PATH};
pub use virtkit_devices::balloon::BalloonStatistics;
pub use virtkit_devices::display::Frame;
pub use virtkit_devices::rng::RateLimit;
pub use virtkit_machine::SaveSummary;
pub use vm::{saved_graphics_devices, MachineStateError, StartError, VirtualMachine, VmError, PAUSE_TIMEOUT};
pub use vsock_client::{connect_vsock, VsockConnectError};
