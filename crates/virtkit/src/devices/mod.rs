//! The device manager: every device the configuration names is built, validated and attached
//! here, and once attached it is reached through one type-erased handle (sleep, wake, snapshot,
//! restore, a name). The PCI slot budget and the firmware's boot order live here too.
//!
//! Adding a device type: a folder in `virtkit-devices`, a configuration type with its own
//! `validate` and `attach` in a file here, and one line in [`validate_devices`] and
//! [`DeviceManager::attach_all`] (docs/DEVICES.md).

mod balloon;
mod block;
mod console;
mod directory_sharing;
mod entropy;
mod graphics;
mod input;
mod net;
mod persist;
mod socket;

use std::sync::{Mutex, MutexGuard};

use virtkit_machine::pci::DEVICE_SLOTS;
use virtkit_machine::Machine;
use virtkit_virtio::transport::pci::{AttachError, AttachedDevice, SharedManagedDevice};
use virtkit_virtio::VirtioError;

pub use balloon::{BalloonStatus, MemoryBalloonConfiguration};
pub use console::{ConsoleDeviceConfiguration, ConsolePortConfiguration};
pub use directory_sharing::{
    find_virtiofsd, virtiofsd_log_name, DirectorySharingDeviceConfiguration, VirtiofsdError, VIRTIOFSD_ENV,
};
pub use entropy::EntropyDeviceConfiguration;
pub use graphics::{GraphicsDeviceConfiguration, DISPLAY_OPTION_ROM};
pub use input::{KeyboardConfiguration, PointingDeviceConfiguration};
pub use net::{
    parse_mac, passt_log_name, Framing, NetworkAttachment, NetworkDeviceConfiguration, NicAddresses,
    PortProtocol, PublishedPort, SharedFd, DEFAULT_MAC_PREFIX,
};
pub use persist::{SavedDevice, SavedDevices, SavedDisplayDevice, DEVICES_SECTION_VERSION};
pub use socket::{SocketDeviceConfiguration, DEFAULT_GUEST_CID};
use virtkit_devices::balloon::BalloonHandle;
use virtkit_devices::console::ConsoleHandle;
use virtkit_devices::display::DisplayHandle;
use virtkit_devices::input::{InputHandle, InputKind};

use crate::config::{BootLoader, VirtualMachineConfiguration};
use crate::validate::Issues;

/// Why a device could not be built or attached.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    #[error("cannot open the disk {path}")]
    Disk {
        path: std::path::PathBuf,
        #[source]
        source: virtkit_devices::block::BlockError,
    },
    #[error("cannot attach the {what}")]
    Attach {
        what: String,
        #[source]
        source: AttachError,
    },
    #[error("cannot tell the firmware the boot order")]
    BootOrder(#[source] virtkit_machine::MachineError),
    #[error("cannot create the memory balloon")]
    Balloon {
        #[source]
        source: virtkit_devices::balloon::BalloonError,
    },
    #[error("cannot set up the console port {port}")]
    ConsolePort {
        port: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot set up the network card {name}: {message}")]
    Network { name: String, message: String },
    #[error("cannot set up the socket device's host side")]
    SocketHost(#[source] virtkit_devices::vsock::HostError),
    #[error("cannot create the socket device")]
    SocketDevice(#[source] virtkit_devices::vsock::VsockError),
    #[error("cannot share the directory tagged `{tag}`: {message}")]
    DirectorySharing { tag: String, message: String },
    #[error("this machine has no memory balloon; add one (`memory_balloon_devices`, or `--balloon` when it is created)")]
    NoBalloon,
    #[error("a balloon target of {target} bytes is more than the machine's {memory} bytes of memory")]
    BalloonTooLarge { target: u64, memory: u64 },
    #[error("the state file's devices ({saved}) are not this machine's ({here}); restore it into a virtual machine built from the configuration it was saved with")]
    SavedDevicesMismatch { saved: String, here: String },
    #[error("the state file's devices section has version {found}, newer than version {} that this virtkit reads; restore it with the virtkit that saved it or a newer one", persist::DEVICES_SECTION_VERSION)]
    NewerDevicesSection { found: u64 },
    #[error("the state file's devices section cannot be read; the file is damaged, save the machine again")]
    UnreadableDevicesSection,
    #[error("the VM has no disk number {index}")]
    NoSuchDisk { index: usize },
    #[error("cannot open {} in place of the disk's file", path.display())]
    ReplaceDisk {
        path: std::path::PathBuf,
        #[source]
        source: virtkit_devices::block::ReplaceDiskError,
    },
    #[error("cannot create the {what}")]
    Input {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot set up the display: {message}")]
    Display { message: String },
    #[error("this machine has no display; add one (`graphics_devices`, or `--display WIDTHxHEIGHT`)")]
    NoDisplay,
    #[error("the display in slot {slot} cannot {action}")]
    DisplayState {
        slot: u8,
        action: &'static str,
        #[source]
        source: virtkit_devices::display::DisplayStateError,
    },
    #[error("the device {name} cannot {action}")]
    Device {
        name: String,
        action: &'static str,
        #[source]
        source: VirtioError,
    },
}

/// One attached device.
struct Entry {
    /// `blk0`, `rng0`, ...: the device's name and its index among devices of its kind.
    name: String,
    slot: u8,
    device: SharedManagedDevice,
}

/// Owns every attached device of one running machine.
#[derive(Default)]
pub struct DeviceManager {
    entries: Mutex<Vec<Entry>>,
    /// The memory balloon's runtime control, if the machine has one.
    balloon: Mutex<Option<BalloonHandle>>,
    /// The displays: to read what they show, and to save and restore them (they are PCI
    /// functions of their own, not virtio devices).
    displays: Mutex<Vec<graphics::AttachedDisplay>>,
    /// The PS/2 keyboard that comes with a display.
    keyboard: Mutex<Option<virtkit_machine::devices::KeyboardHandle>>,
    mouse: Mutex<Option<virtkit_machine::devices::MouseHandle>>,
    /// The virtio keyboard and tablet, for the guest's own drivers.
    virtio_keyboard: Mutex<Option<InputHandle>>,
    tablet: Mutex<Option<InputHandle>>,
    /// Each console device's resize handle.
    consoles: Mutex<Vec<ConsoleHandle>>,
    /// Each network card's address watch.
    nics: Mutex<Vec<net::NicRuntime>>,
    /// The socket devices' host sockets, removed when the machine's devices are released
    /// (the device itself may outlive it in the machine's bus).
    socket_files: Mutex<Vec<net::SocketFile>>,
    /// The passt processes of NAT cards and the virtiofsd of shared directories.
    /// [`DeviceManager::release`] leaves them: it runs on the
    /// `vmm` thread, whose seccomp filter allows neither `kill` nor `wait4`. The handles stop
    /// and reap passt when the manager is dropped, on the thread that owns the machine
    /// (`VirtualMachine`'s drop joins `vmm` first, and a new start replaces the manager); a
    /// passt whose socket closed earlier has exited by itself (`-F` implies `--one-off`).
    helpers: Mutex<Vec<virtkit_sandbox::HelperProcess>>,
}

impl std::fmt::Debug for DeviceManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.names()).finish()
    }
}

/// Whether guest memory must be shareable with another process: a vhost-user device's backend
/// (virtiofsd) maps it. Everyone else keeps anonymous memory.
pub(crate) fn needs_shared_memory(config: &VirtualMachineConfiguration) -> bool {
    !config.directory_sharing_devices.is_empty()
}

/// Checks every device section of `config`, and that they fit the PCI slots.
pub(crate) fn validate_devices(config: &VirtualMachineConfiguration, issues: &mut Issues) {
    block::validate(&config.storage_devices, issues);
    entropy::validate(&config.entropy_devices, issues);
    balloon::validate(&config.memory_balloon_devices, issues);
    console::validate(&config.console_devices, issues);
    socket::validate(&config.socket_devices, issues);
    directory_sharing::validate(&config.directory_sharing_devices, issues);
    graphics::validate(
        &config.graphics_devices,
        matches!(config.boot_loader, BootLoader::Firmware { .. }),
        issues,
    );
    input::validate(
        &config.keyboards,
        &config.pointing_devices,
        config.graphics_devices.len(),
        issues,
    );
    net::validate(
        &config.network_devices,
        config.platform.machine_identifier.as_ref(),
        issues,
    );
    let counts = [
        (config.storage_devices.len(), "disks"),
        (config.entropy_devices.len(), "entropy devices"),
        (config.memory_balloon_devices.len(), "memory balloons"),
        (config.console_devices.len(), "console devices"),
        (config.network_devices.len(), "network devices"),
        (config.socket_devices.len(), "socket devices"),
        (config.directory_sharing_devices.len(), "shared directories"),
        (config.graphics_devices.len(), "displays"),
        (config.keyboards.len(), "keyboards"),
        (config.pointing_devices.len(), "pointing devices"),
    ];
    let used: usize = counts.iter().map(|(n, _)| n).sum();
    if used > DEVICE_SLOTS {
        let kinds: Vec<String> = counts.iter().map(|(n, what)| format!("{n} {what}")).collect();
        issues.add(
            "storage_devices",
            format!(
                "{used} PCI devices given ({}); this machine has {DEVICE_SLOTS} PCI slots, so remove {}",
                kinds.join(", "),
                used - DEVICE_SLOTS
            ),
        );
    }
}

impl DeviceManager {
    /// Builds and attaches every device of `config` to `machine` (before it starts), disks
    /// first in the order given; on a firmware boot the disks become the boot order.
    pub fn attach_all(
        machine: &Machine,
        config: &mut VirtualMachineConfiguration,
    ) -> Result<DeviceManager, DeviceError> {
        let manager = DeviceManager::default();
        let disk_slots = block::attach(&manager, machine, &config.storage_devices)?;
        entropy::attach(&manager, machine, &config.entropy_devices)?;
        balloon::attach(&manager, machine, &config.memory_balloon_devices)?;
        console::attach(&manager, machine, &mut config.console_devices)?;
        socket::attach(&manager, machine, &config.socket_devices)?;
        net::attach(
            &manager,
            machine,
            &config.network_devices,
            config.platform.machine_identifier.as_ref(),
            config.platform.helper_log_directory.as_deref(),
            config.cpu_count,
        )?;
        directory_sharing::attach(
            &manager,
            machine,
            &config.directory_sharing_devices,
            config.platform.helper_log_directory.as_deref(),
        )?;
        let firmware_boot = matches!(config.boot_loader, BootLoader::Firmware { .. });
        graphics::attach(&manager, machine, &config.graphics_devices, firmware_boot)?;
        input::attach(&manager, machine, &config.keyboards, &config.pointing_devices)?;
        // EFI keeps its own boot entries in its variable store (efibootmgr's); a fw_cfg boot
        // order would make OVMF reorder, and drop, entries it does not match.
        let efi = matches!(
            config.boot_loader,
            BootLoader::Firmware {
                variable_store: Some(_),
                ..
            }
        );
        if firmware_boot && !efi && !disk_slots.is_empty() {
            let order: Vec<String> = disk_slots.iter().map(|s| format!("/pci@i0cf8/*@{s:x}")).collect();
            machine.set_boot_order(&order).map_err(DeviceError::BootOrder)?;
        }
        Ok(manager)
    }

    fn lock(&self) -> MutexGuard<'_, Vec<Entry>> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records an attached device under `kind` + its index among devices of that kind.
    fn add(&self, kind: &str, attached: AttachedDevice) -> u8 {
        let mut entries = self.lock();
        let index = entries.iter().filter(|e| e.name.starts_with(kind)).count();
        entries.push(Entry {
            name: format!("{kind}{index}"),
            slot: attached.slot,
            device: attached.device,
        });
        attached.slot
    }

    fn add_display(&self, display: graphics::AttachedDisplay) {
        self.displays
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(display);
    }

    fn lock_displays(&self) -> MutexGuard<'_, Vec<graphics::AttachedDisplay>> {
        self.displays.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn set_keyboard(&self, keyboard: virtkit_machine::devices::KeyboardHandle) {
        *self.keyboard.lock().unwrap_or_else(|p| p.into_inner()) = Some(keyboard);
    }

    fn set_mouse(&self, mouse: virtkit_machine::devices::MouseHandle) {
        *self.mouse.lock().unwrap_or_else(|p| p.into_inner()) = Some(mouse);
    }

    fn set_input(&self, kind: InputKind, handle: InputHandle) {
        let slot = match kind {
            InputKind::Keyboard => &self.virtio_keyboard,
            InputKind::Tablet => &self.tablet,
        };
        *slot.lock().unwrap_or_else(|p| p.into_inner()) = Some(handle);
    }

    /// The virtio keyboard, if the machine has one.
    pub fn virtio_keyboard(&self) -> Option<InputHandle> {
        self.virtio_keyboard
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The virtio tablet, if the machine has one.
    pub fn tablet(&self) -> Option<InputHandle> {
        self.tablet.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The PS/2 mouse, if the machine has one (it comes with a display).
    pub fn mouse(&self) -> Option<virtkit_machine::devices::MouseHandle> {
        self.mouse.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The keyboard, if the machine has one (it comes with a display).
    pub fn keyboard(&self) -> Option<virtkit_machine::devices::KeyboardHandle> {
        self.keyboard.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The first display, to follow what it shows (the VNC server).
    pub fn display(&self) -> Option<DisplayHandle> {
        self.lock_displays().first().map(|d| d.handle.clone())
    }

    /// What the first display shows now (`Ok(None)`: no mode set yet, the screen is dark).
    pub fn screenshot(&self) -> Result<Option<virtkit_devices::display::Frame>, DeviceError> {
        let displays = self.lock_displays();
        let display = displays.first().ok_or(DeviceError::NoDisplay)?;
        Ok(display.handle.frame())
    }

    fn set_balloon(&self, handle: BalloonHandle) {
        *self.balloon.lock().unwrap_or_else(|p| p.into_inner()) = Some(handle);
    }

    fn add_console(&self, handle: ConsoleHandle) {
        self.consoles
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(handle);
    }

    fn add_nic(&self, nic: net::NicRuntime) {
        self.nics.lock().unwrap_or_else(|p| p.into_inner()).push(nic);
    }

    /// Each network card's addresses, as the guest's frames showed them (and, for NAT, the
    /// address its DHCP server hands out until then).
    pub fn network_addresses(&self) -> Vec<NicAddresses> {
        let nics = self.nics.lock().unwrap_or_else(|p| p.into_inner());
        nics.iter().map(net::NicRuntime::addresses).collect()
    }

    fn add_helper(&self, helper: virtkit_sandbox::HelperProcess) {
        self.helpers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(helper);
    }

    /// The process ids of the helpers of this machine (passt for NAT cards, virtiofsd for
    /// shared directories).
    pub fn helper_pids(&self) -> Vec<u32> {
        let helpers = self.helpers.lock().unwrap_or_else(|p| p.into_inner());
        helpers.iter().map(virtkit_sandbox::HelperProcess::id).collect()
    }

    fn balloon(&self) -> Result<BalloonHandle, DeviceError> {
        self.balloon
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .ok_or(DeviceError::NoBalloon)
    }

    /// Asks the guest to give `target` bytes of its `memory` back (0: all of it back to the
    /// guest); the guest's driver does it in its own time.
    pub fn set_balloon_target(&self, target: u64, memory: u64) -> Result<(), DeviceError> {
        if target > memory {
            return Err(DeviceError::BalloonTooLarge { target, memory });
        }
        self.balloon()?
            .set_target_bytes(target)
            .map_err(|source| DeviceError::Balloon { source })
    }

    /// The balloon's target, what the guest gave, and its last statistics (a fresh report is
    /// requested for next time).
    pub fn balloon_status(&self) -> Result<BalloonStatus, DeviceError> {
        let handle = self.balloon()?;
        handle.request_stats();
        Ok(BalloonStatus {
            target_bytes: handle.target_bytes(),
            actual_bytes: handle.actual_bytes(),
            statistics: handle.stats(),
        })
    }

    /// Tells every console device's guest driver the terminal's new size.
    pub fn resize_consoles(&self, cols: u16, rows: u16) {
        for console in self.consoles.lock().unwrap_or_else(|p| p.into_inner()).iter() {
            console.resize(cols, rows);
        }
    }

    /// The devices' names with their PCI slots, in the order they were attached.
    pub fn names(&self) -> Vec<(String, u8)> {
        self.lock().iter().map(|e| (e.name.clone(), e.slot)).collect()
    }

    /// Puts every device to sleep: each worker answers what it has in flight and stops. Called
    /// with the vCPUs parked, so nothing new arrives. On an error the devices already asleep
    /// stay asleep; [`DeviceManager::wake_all`] wakes them.
    pub fn sleep_all(&self) -> Result<(), DeviceError> {
        self.for_each("sleep", |d| d.sleep())
    }

    /// Wakes every sleeping device; tries them all, returns the first error.
    pub fn wake_all(&self) -> Result<(), DeviceError> {
        let mut first = Ok(());
        for entry in self.lock().iter() {
            let result = lock_device(&entry.device).wake();
            if let (Err(source), Ok(())) = (result, &first) {
                first = Err(DeviceError::Device {
                    name: entry.name.clone(),
                    action: "wake",
                    source,
                });
            }
        }
        first
    }

    /// Lets go of every device (the machine is gone; its workers stop as the last handle drops).
    pub fn release(&self) {
        // Disks stop their workers first, so that what a backend caches (a qcow2 image's
        // metadata) reaches the file now: the PCI bus, which also holds them, may live on until
        // the process ends. Other devices are not asked to sleep here, as some (vhost-user) would
        // talk to their backend from this thread.
        for entry in self.lock().iter().filter(|e| e.name.starts_with("blk")) {
            if let Err(e) = lock_device(&entry.device).sleep() {
                tracing::error!("disk {}: cannot stop its worker: {e}", entry.name);
            }
        }
        self.lock().clear();
        self.balloon.lock().unwrap_or_else(|p| p.into_inner()).take();
        self.consoles.lock().unwrap_or_else(|p| p.into_inner()).clear();
        // passt's handles stay: see `helpers`.
        self.nics.lock().unwrap_or_else(|p| p.into_inner()).clear();
        self.socket_files
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
    }

    fn add_socket_file(&self, path: std::path::PathBuf) {
        self.socket_files
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(net::SocketFile::new(path));
    }

    fn for_each(
        &self,
        action: &'static str,
        mut f: impl FnMut(&mut dyn virtkit_virtio::transport::pci::ManagedDevice) -> Result<(), VirtioError>,
    ) -> Result<(), DeviceError> {
        for entry in self.lock().iter() {
            f(&mut *lock_device(&entry.device)).map_err(|source| DeviceError::Device {
                name: entry.name.clone(),
                action,
                source,
            })?;
        }
        Ok(())
    }
}

fn lock_device(
    device: &SharedManagedDevice,
) -> MutexGuard<'_, dyn virtkit_virtio::transport::pci::ManagedDevice + 'static> {
    device.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests;
