//! The VM bundle: a directory per virtual machine that holds everything it is.
//!
//! ```text
//! <home>/vms/<name>/
//!   config.json          the VirtualMachineConfiguration (paths relative to the bundle)
//!   disk.img             the boot disk: a sparse raw image
//!   aux.img              auxiliary storage: the firmware's variable store
//!   hardware-model.json  the machine model and host CPU the VM was created with
//!   machine-id           the machine identifier (SMBIOS UUID and serial, MACs derive from it)
//!   kernel, initrd       copies of the direct-boot kernel and initrd, when it has them
//!   external-paths.json  the paths outside the bundle its configuration may name (see `external`)
//!   restore-image.*      the image it was installed from (`create --keep-image`), if kept
//!   console.log          the serial console of the last run
//!   vmm.log              the VM process's own log
//!   lock, pid            held / written by the process running the VM
//!   control.sock         that process's control socket (JSON lines, docs/CONTROL.md)
//!   console.sock         that process's serial console
//!   vsock.sock           the guest's vsock ports for host programs (`CONNECT <port>`);
//!                        `vsock.sock_<port>` is where the guest's connections to host port
//!                        <port> go, if a host program listens there
//! ```
//!
//! Creating and cloning build the bundle in a hidden temporary directory beside it and rename
//! it into place, so an interrupted create leaves nothing a user sees; leftovers of a killed
//! create are removed by the next command that looks at the VMs. Every later write of a
//! metadata file is atomic (temporary file, fsync, rename).
//!
//! A bundle is trusted only as far as it should be (docs/BUNDLES.md, "Trust"): its files are
//! opened without following links and only as regular files (`files`), it is owner-only, and
//! its configuration may reach outside it only to paths a virtkit command recorded (`external`).

mod atomic;
mod change;
mod create;
mod external;
mod files;
mod hardware;
mod layers;
mod lock;
mod name;
mod siblings;
mod snapshots;

use std::fs::File;
use std::io::ErrorKind;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

pub use change::Change;
pub use create::{
    NewBoot, NewBundle, DEFAULT_DISK_SIZE, DEFAULT_EFI_CODE, DEFAULT_EFI_VARS, DEFAULT_FIRMWARE,
};
pub use external::EXTERNAL_PATHS_FILE;
pub use files::{Access, MAX_METADATA_SIZE};
pub use hardware::{HardwareModel, HARDWARE_MODEL_VERSION, MACHINE_MODEL};
pub use lock::BundleLock;
pub use name::{check_name, MAX_NAME_LEN};
pub use snapshots::{Snapshot, MAX_SNAPSHOT_NAME, SNAPSHOTS_FILE};
/// The disk image types bundle operations report.
pub use virtkit_disk::{CloneMethod, DiskImageError};

use crate::home::VirtkitHome;
use virtkit::MachineIdentifier;
use virtkit::ValidationError;
use virtkit::{
    BootLoader, SerialAttachment, SocketDeviceConfiguration, VirtualMachineConfiguration,
    CONFIG_FORMAT_VERSION,
};

pub const CONFIG_FILE: &str = "config.json";
pub const DISK_FILE: &str = "disk.img";
pub const AUX_FILE: &str = "aux.img";
pub const HARDWARE_MODEL_FILE: &str = "hardware-model.json";
pub const MACHINE_ID_FILE: &str = "machine-id";
pub const KERNEL_FILE: &str = "kernel";
/// `restore-image.raw` or `restore-image.qcow2`: the image the VM was installed from, if kept.
pub const RESTORE_IMAGE_STEM: &str = "restore-image";
pub const INITRD_FILE: &str = "initrd";
pub const CONSOLE_LOG_FILE: &str = "console.log";
/// COM1's output when the VM's console is the virtio console (`run --console hvc`).
pub const SERIAL_LOG_FILE: &str = "serial.log";
pub const VMM_LOG_FILE: &str = "vmm.log";
pub const LOCK_FILE: &str = "lock";
pub const PID_FILE: &str = "pid";
pub const CONTROL_SOCKET: &str = "control.sock";
pub const CONSOLE_SOCKET: &str = "console.sock";
/// The display's VNC server (a VM with a display), owner-only, no password.
pub const VNC_SOCKET: &str = "vnc.sock";
/// Where the display's VNC server also listens on 127.0.0.1 and its password for this run
/// (owner-only JSON: `{"address": "127.0.0.1:PORT", "password": "..."}`).
pub const VNC_TCP_FILE: &str = "vnc.json";
/// The socket device's host socket (virtio-vsock, Firecracker's hybrid scheme).
pub const VSOCK_SOCKET: &str = "vsock.sock";
/// A suspended VM's saved state (docs/SAVE.md): written by `suspend`, restored and then
/// removed by the next run, discarded by `run --fresh`.
pub const STATE_FILE: &str = "state.vksave";

/// Why a bundle operation failed.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error("{0}")]
    BadName(String),
    #[error("there is no VM named `{name}` in {dir}")]
    NotFound { name: String, dir: PathBuf },
    #[error("a VM named `{name}` already exists")]
    Exists { name: String },
    #[error("a VM named `{existing}` already exists (names differ only in case)")]
    CaseClash { name: String, existing: String },
    #[error(
        "the VM `{name}` has the same machine identifier as `{other}`, which is running (a bundle \
         copied by hand keeps its identity, and two running machines must not share one)"
    )]
    SameIdentity { name: String, other: String },
    #[error(
        "the configuration of the VM `{name}` names {} ({field}), a path outside its bundle that \
         no virtkit command recorded",
        path.display()
    )]
    Unrecorded {
        name: String,
        field: String,
        path: PathBuf,
    },
    #[error("the VM `{name}` is damaged: {problem}")]
    Damaged { name: String, problem: String },
    #[error(
        "the VM `{name}` was made by a newer virtkit (bundle format {found}); this virtkit reads \
         formats up to {supported}: upgrade virtkit to use it"
    )]
    NewerFormat {
        name: String,
        found: u64,
        supported: u32,
    },
    #[error("the VM `{name}` is running{}", pid.map(|p| format!(" (process {p})")).unwrap_or_default())]
    Running { name: String, pid: Option<u32> },
    #[error("cannot {action} {}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot make the disk from {}", path.display())]
    Disk {
        path: PathBuf,
        #[source]
        source: DiskImageError,
    },
    #[error("the VM's configuration is not valid")]
    Invalid(#[from] ValidationError),
    #[error("{0}")]
    Refused(String),
}

pub(crate) fn io_error<'a>(
    action: &'static str,
    path: &'a Path,
) -> impl FnOnce(std::io::Error) -> BundleError + 'a {
    move |source| BundleError::Io {
        action,
        path: path.to_owned(),
        source,
    }
}

/// A VM found by [`Bundle::list`]: its name and the bundle, or why it cannot be read.
pub type ListedBundle = (String, Result<Bundle, BundleError>);

/// A VM bundle that was read and checked.
#[derive(Debug)]
pub struct Bundle {
    name: String,
    path: PathBuf,
    config: VirtualMachineConfiguration,
    machine_id: MachineIdentifier,
    hardware: HardwareModel,
    /// Paths outside the bundle its configuration may name (`external-paths.json`).
    external: Vec<PathBuf>,
}

impl Bundle {
    /// Opens the VM `name` under `home`.
    pub fn open(home: &VirtkitHome, name: &str) -> Result<Bundle, BundleError> {
        check_name(name).map_err(BundleError::BadName)?;
        let path = home.vms_dir().join(name);
        if !path.is_dir() {
            return Err(BundleError::NotFound {
                name: name.to_owned(),
                dir: home.vms_dir(),
            });
        }
        Bundle::open_path(name, path)
    }

    pub(crate) fn open_path(name: &str, path: PathBuf) -> Result<Bundle, BundleError> {
        let damaged = |problem: String| BundleError::Damaged {
            name: name.to_owned(),
            problem,
        };
        // The bundle itself must be a directory in the home, not a link to one elsewhere: every
        // check of its files would otherwise be about another directory's.
        if std::fs::symlink_metadata(&path).is_ok_and(|m| m.file_type().is_symlink()) {
            return Err(damaged(format!(
                "{} is a symbolic link; a VM's bundle must be a directory in {} (move the directory there)",
                path.display(),
                path.parent()
                    .map_or_else(String::new, |p| p.display().to_string())
            )));
        }
        files::check_layout(&path, name)?;
        let read = |file: &str| files::read_small(&path, name, file);
        let config_text = read(CONFIG_FILE)?;
        // The version decides how to read the rest, so look at it first: a newer format may
        // have fields this build does not know.
        let value: serde_json::Value = serde_json::from_str(&config_text)
            .map_err(|e| damaged(format!("{CONFIG_FILE} is not JSON ({e})")))?;
        let found = value.get("version").and_then(|v| v.as_u64()).unwrap_or(1);
        if found > u64::from(CONFIG_FORMAT_VERSION) {
            return Err(BundleError::NewerFormat {
                name: name.to_owned(),
                found,
                supported: CONFIG_FORMAT_VERSION,
            });
        }
        let mut config = VirtualMachineConfiguration::from_json(&config_text)
            .map_err(|e| damaged(format!("{CONFIG_FILE}: {e}")))?;
        if layers::interrupted_freeze(&path) {
            // A snapshot's freeze of the raw disk was cut short: the disk is still the raw file.
            tracing::warn!(
                vm = name,
                "a snapshot was interrupted before its disk layer was made; the disk stays as it was"
            );
            for disk in &mut config.storage_devices {
                if disk.path == Path::new(DISK_FILE) {
                    disk.format = virtkit::DiskImageFormat::Raw;
                }
            }
        }
        let machine_id = read(MACHINE_ID_FILE)?
            .parse()
            .map_err(|e| damaged(format!("{MACHINE_ID_FILE}: {e}")))?;
        let hardware: HardwareModel = serde_json::from_str(&read(HARDWARE_MODEL_FILE)?)
            .map_err(|e| damaged(format!("{HARDWARE_MODEL_FILE}: {e}")))?;
        if hardware.version > HARDWARE_MODEL_VERSION {
            return Err(BundleError::NewerFormat {
                name: name.to_owned(),
                found: u64::from(hardware.version),
                supported: HARDWARE_MODEL_VERSION,
            });
        }
        // `check_layout` saw that it is a regular file if it is there at all.
        if std::fs::symlink_metadata(path.join(DISK_FILE)).is_err() {
            return Err(damaged(format!("{DISK_FILE} is missing")));
        }
        let external = external::read(&path, name)?;
        Ok(Bundle {
            name: name.to_owned(),
            path,
            config,
            machine_id,
            hardware,
            external,
        })
    }

    /// Every VM under `home`, by name; a damaged one is listed with its error.
    pub fn list(home: &VirtkitHome) -> Result<Vec<ListedBundle>, BundleError> {
        let dir = home.vms_dir();
        create::sweep_leftovers(&dir);
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io_error("read", &dir)(e)),
        };
        let mut names: Vec<String> = entries
            .filter_map(|e| e.ok())
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir() || t.is_symlink()))
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|n| check_name(n).is_ok())
            .collect();
        names.sort();
        Ok(names
            .into_iter()
            .map(|n| {
                let b = Bundle::open_path(&n, dir.join(&n));
                (n, b)
            })
            .collect())
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The configuration as stored: paths relative to the bundle, no serial ports.
    pub fn configuration(&self) -> &VirtualMachineConfiguration {
        &self.config
    }

    pub fn machine_identifier(&self) -> MachineIdentifier {
        self.machine_id
    }

    pub fn hardware_model(&self) -> &HardwareModel {
        &self.hardware
    }

    pub fn file(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    /// The paths outside the bundle that its configuration may name, as recorded by virtkit's
    /// commands (`create --firmware`, `set --add-disk`, `set --allow-path`).
    pub fn external_paths(&self) -> &[PathBuf] {
        &self.external
    }

    /// Opens one of the bundle's files (`console.log`, `disk.img`, ...) without following a
    /// symbolic link and only if it is a regular file; created files are owner-only (0600). A
    /// link or special file there is [`BundleError::Damaged`].
    pub fn open_file(&self, file: &str, access: Access) -> Result<File, BundleError> {
        files::open_in(&self.path, &self.name, file, access)
    }

    /// The configuration to run: paths made absolute and the machine identifier set. Refused
    /// when the configuration names a path outside the bundle that no virtkit command
    /// recorded, or when another running VM has this one's machine identifier (call it holding
    /// the bundle's lock, so two copies started at once cannot both pass).
    pub fn runtime_configuration(&self) -> Result<VirtualMachineConfiguration, BundleError> {
        external::check(&self.path, &self.name, &self.config, &self.external)?;
        // A layered disk reads only the bundle's own layers.
        layers::chain(&self.path, &self.name, self.disk_format())?;
        let vms = self.path.parent().unwrap_or(Path::new("."));
        if let Some(other) = siblings::running_twin(vms, &self.name, self.machine_id) {
            return Err(BundleError::SameIdentity {
                name: self.name.clone(),
                other,
            });
        }
        Ok(self.resolved_configuration())
    }

    /// The stored configuration with its paths made absolute and the machine identifier set.
    fn resolved_configuration(&self) -> VirtualMachineConfiguration {
        // A JSON round trip is the deep copy (the serial attachments' file handles are not Clone,
        // and a stored configuration never has them).
        let mut c = VirtualMachineConfiguration::from_json(&self.config.to_json())
            .expect("a configuration read from JSON reads back");
        let resolve = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = self.path.join(&*p);
            }
        };
        match &mut c.boot_loader {
            BootLoader::Linux { kernel, initrd, .. } => {
                resolve(kernel);
                if let Some(i) = initrd {
                    resolve(i);
                }
            }
            BootLoader::Firmware { path, variable_store } => {
                resolve(path);
                if let Some(v) = variable_store {
                    resolve(v);
                }
            }
        }
        for d in &mut c.storage_devices {
            resolve(&mut d.path);
        }
        // Named console ports live in the bundle as `port-NAME.sock` (see `port_socket`).
        for port in c.console_devices.iter_mut().flat_map(|d| d.ports.iter_mut()) {
            if let Some(SerialAttachment::UnixSocket { path } | SerialAttachment::File { path, .. }) =
                &mut port.attachment
            {
                resolve(path);
            }
        }
        // Every bundle VM has a socket device, its host socket in the bundle (guest CID 3
        // unless the configuration says otherwise).
        match c.socket_devices.first_mut() {
            Some(device) => resolve(&mut device.uds_path),
            None => c
                .socket_devices
                .push(SocketDeviceConfiguration::new(self.path.join(VSOCK_SOCKET))),
        }
        c.platform.machine_identifier = Some(self.machine_id);
        // passt's messages beside console.log, for `virtkit logs --network`.
        c.platform.helper_log_directory = Some(self.path.clone());
        c
    }

    /// The Unix socket of the named console port `port` (relative to the bundle, as stored).
    pub fn port_socket(port: &str) -> PathBuf {
        PathBuf::from(format!("port-{port}.sock"))
    }

    /// Replaces the stored configuration after checking it; the VM must not be running.
    pub fn set_configuration(&mut self, config: VirtualMachineConfiguration) -> Result<(), BundleError> {
        self.change(Change {
            config: Some(config),
            ..Change::default()
        })
    }

    /// The boot disk's size as the guest sees it.
    pub fn disk_size(&self) -> Result<u64, BundleError> {
        // Opened as the bundle's files are (no links, regular files only) before reading it.
        self.open_file(DISK_FILE, Access::Read)?;
        layers::virtual_size(&self.path, self.disk_format())
    }

    /// Grows the boot disk; the VM must not be running. Shrinking is refused: it would cut off
    /// whatever the guest keeps at the end of its disk.
    pub fn grow_disk(&mut self, new_size: u64) -> Result<(), BundleError> {
        self.change(Change {
            disk_size: Some(new_size),
            ..Change::default()
        })
    }

    /// Bytes the bundle's files take on the host's disk (sparse files count what is allocated).
    pub fn disk_usage(&self) -> u64 {
        std::fs::read_dir(&self.path)
            .into_iter()
            .flatten()
            .filter_map(|e| e.ok()?.metadata().ok())
            .filter(|m| m.is_file())
            .map(|m| m.blocks() * 512)
            .sum()
    }

    /// Takes the bundle's lock for running or changing the VM; refused while another process
    /// has it.
    pub fn lock(&self) -> Result<BundleLock, BundleError> {
        let path = self.file(LOCK_FILE);
        let file = self.open_file(LOCK_FILE, Access::Lock)?;
        match lock::try_lock(file).map_err(io_error("lock", &path))? {
            Some(l) => Ok(l),
            None => Err(BundleError::Running {
                name: self.name.clone(),
                pid: self.running_pid(),
            }),
        }
    }

    /// Whether a process runs this VM now.
    pub fn is_running(&self) -> bool {
        lock::is_locked(&self.file(LOCK_FILE)).unwrap_or(false)
    }

    /// The process that runs the VM, if one does.
    pub fn running_pid(&self) -> Option<u32> {
        if !self.is_running() {
            return None;
        }
        files::read_small(&self.path, &self.name, PID_FILE)
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    /// Records the running process's ID; call while holding the lock.
    pub fn write_pid(&self, _lock: &BundleLock) -> Result<(), BundleError> {
        let path = self.file(PID_FILE);
        atomic::write_atomic(&path, format!("{}\n", std::process::id()).as_bytes())
            .map_err(io_error("write", &path))
    }

    /// Deletes the bundle; refused while the VM runs. The directory is first renamed out of
    /// sight, so a delete cut short leaves no half-deleted VM.
    pub fn delete(self) -> Result<(), BundleError> {
        let lock = self.lock()?;
        let vms = self.path.parent().unwrap_or(Path::new("."));
        let doomed = vms.join(create::leftover_name(&self.name, "deleting"));
        std::fs::rename(&self.path, &doomed).map_err(io_error("move away", &self.path))?;
        drop(lock);
        let _ = atomic::sync_dir(vms);
        std::fs::remove_dir_all(&doomed).map_err(io_error("remove", &doomed))
    }
}

#[cfg(test)]
mod tests;
#[cfg(test)]
mod trust_tests;
