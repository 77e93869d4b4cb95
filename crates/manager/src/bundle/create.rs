//! Making bundles: `create` (from a restore image or an empty disk) and `clone`, both built in
//! a hidden directory and renamed into place.

use std::path::{Path, PathBuf};

use rustix::fs::{renameat_with, RenameFlags, CWD};

use super::atomic::{sync_dir, write_atomic};
use super::files::{create_private_dir, restrict_permissions, DIR_MODE, FILE_MODE};
use super::{
    check_name, external, io_error, siblings, Bundle, BundleError, HardwareModel, AUX_FILE, CONFIG_FILE,
    CONSOLE_SOCKET, CONTROL_SOCKET, DISK_FILE, EXTERNAL_PATHS_FILE, HARDWARE_MODEL_FILE, INITRD_FILE,
    KERNEL_FILE, MACHINE_ID_FILE, RESTORE_IMAGE_STEM, VSOCK_SOCKET,
};
use crate::home::VirtkitHome;
use virtkit::devices::{
    ConsoleDeviceConfiguration, ConsolePortConfiguration, EntropyDeviceConfiguration,
    MemoryBalloonConfiguration,
};
use virtkit::MachineIdentifier;
use virtkit::StorageDeviceConfiguration;
use virtkit::{
    BootLoader, PlatformConfiguration, SerialAttachment, VirtualMachineConfiguration, CONFIG_FORMAT_VERSION,
    MAX_SOCKET_PATH,
};
use virtkit_disk::{clone_file, import, CloneMethod};

/// The size of the empty disk a VM gets when it is created without a restore image.
pub const DEFAULT_DISK_SIZE: u64 = 20 << 30;

/// The firmware VMs boot with unless told otherwise (Debian's `seabios` package).
pub const DEFAULT_FIRMWARE: &str = "/usr/share/seabios/bios.bin";
/// The EFI firmware `create --efi` uses unless told otherwise (Debian's `ovmf` package: the
/// build without SMM, with its variables in a 4 MiB flash).
pub const DEFAULT_EFI_CODE: &str = "/usr/share/OVMF/OVMF_CODE_4M.fd";
/// The variable store a new EFI VM's `aux.img` starts as (the same build's).
pub const DEFAULT_EFI_VARS: &str = "/usr/share/OVMF/OVMF_VARS_4M.fd";

/// Size of the auxiliary storage (the firmware variable store; BIOS firmware keeps none, so it
/// stays empty — a sparse file — until an EFI firmware uses it).
const AUX_SIZE: u64 = 128 << 10;

/// What a new VM is.
#[derive(Debug, Clone)]
pub struct NewBundle {
    pub cpu_count: u32,
    pub memory_size: u64,
    pub boot: NewBoot,
    /// A raw or qcow2 image to install on the boot disk.
    pub restore_image: Option<PathBuf>,
    /// The boot disk's size: at least the image's; default the image's, or
    /// [`DEFAULT_DISK_SIZE`] without one.
    pub disk_size: Option<u64>,
    /// Keep a copy of the restore image in the bundle (reflinked where the file system can),
    /// so the VM can be reinstalled from what it came from.
    pub keep_restore_image: bool,
    /// Named virtio-console ports, each on a Unix socket in the bundle (`port-NAME.sock`), such
    /// as `org.qemu.guest_agent.0` for Debian's `qemu-guest-agent`.
    pub ports: Vec<String>,
    /// Network cards (NAT ones: a socket attachment would name a path outside the bundle).
    pub network_devices: Vec<virtkit::NetworkDeviceConfiguration>,
    /// Host directories shared with the guest; each path is recorded as one the configuration
    /// may name.
    pub shares: Vec<virtkit::DirectorySharingDeviceConfiguration>,
    /// A cloud-init seed (`seed.img`, attached read-only after the boot disk), with the guest
    /// agent binary on it when one is given.
    pub seed: Option<(crate::seed::SeedSettings, Option<PathBuf>)>,
}

/// How a new VM boots.
#[derive(Debug, Clone)]
pub enum NewBoot {
    /// BIOS firmware from the boot disk.
    Firmware { path: PathBuf },
    /// EFI firmware (OVMF's code, `code`) whose variable store, the bundle's `aux.img`, starts
    /// as a copy of `variables` (the same build's VARS file).
    Efi { code: PathBuf, variables: PathBuf },
    /// A Linux kernel (copied into the bundle) with the boot disk attached.
    Linux {
        kernel: PathBuf,
        initrd: Option<PathBuf>,
        command_line: String,
    },
}

const CREATING: &str = "creating";

/// The hidden name a bundle has while being made or deleted by this process.
pub(crate) fn leftover_name(name: &str, what: &str) -> String {
    format!(".{name}.{what}-{}", std::process::id())
}

/// Removes what killed creates, clones and deletes left behind (their process is gone).
pub(crate) fn sweep_leftovers(vms: &Path) {
    let Ok(entries) = std::fs::read_dir(vms) else {
        return;
    };
    for e in entries.filter_map(|e| e.ok()) {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix('.')
            .and_then(|n| n.rsplit_once('-'))
            .filter(|(head, _)| head.ends_with(".creating") || head.ends_with(".deleting"))
            .and_then(|(_, pid)| pid.parse::<i32>().ok())
        else {
            continue;
        };
        if !process_alive(pid) {
            tracing::info!(leftover = %name, "removing what an interrupted create or delete left");
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

fn process_alive(pid: i32) -> bool {
    match rustix::process::Pid::from_raw(pid) {
        Some(p) => !matches!(
            rustix::process::test_kill_process(p),
            Err(rustix::io::Errno::SRCH)
        ),
        None => false,
    }
}

/// A directory being made into a bundle; removed unless `commit` renames it into place.
struct Staging {
    dir: PathBuf,
    committed: bool,
}

impl Staging {
    fn new(vms: &Path, name: &str) -> Result<Staging, BundleError> {
        {
            use std::os::unix::fs::DirBuilderExt;
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(DIR_MODE)
                .create(vms)
                .map_err(io_error("create", vms))?;
        }
        sweep_leftovers(vms);
        if std::fs::symlink_metadata(vms.join(name)).is_ok() {
            return Err(BundleError::Exists {
                name: name.to_owned(),
            });
        }
        siblings::check_case_clash(vms, name)?;
        let dir = vms.join(leftover_name(name, CREATING));
        let _ = std::fs::remove_dir_all(&dir);
        // Owner-only from the start, so nothing in it is ever readable by others.
        create_private_dir(&dir).map_err(io_error("create", &dir))?;
        Ok(Staging {
            dir,
            committed: false,
        })
    }

    fn write(&self, file: &str, bytes: &[u8]) -> Result<(), BundleError> {
        let path = self.dir.join(file);
        write_atomic(&path, bytes).map_err(io_error("write", &path))
    }

    /// Renames the staging directory to `<vms>/<name>`, refusing to replace anything. Every file
    /// is made owner-only first (copies keep their source's mode, new files the umask's).
    fn commit(mut self, vms: &Path, name: &str) -> Result<PathBuf, BundleError> {
        restrict_permissions(&self.dir)?;
        sync_dir(&self.dir).map_err(io_error("flush", &self.dir))?;
        let target = vms.join(name);
        match renameat_with(CWD, &self.dir, CWD, &target, RenameFlags::NOREPLACE) {
            Ok(()) => {}
            Err(rustix::io::Errno::EXIST) => {
                return Err(BundleError::Exists {
                    name: name.to_owned(),
                })
            }
            Err(e) => return Err(io_error("rename into place", &target)(e.into())),
        }
        self.committed = true;
        sync_dir(vms).map_err(io_error("flush", vms))?;
        Ok(target)
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        if !self.committed {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// Copies a kernel or initrd into the bundle; refused unless it is a regular file (a FIFO would
/// block the copy, `/dev/zero` would fill the disk).
fn copy_in(src: &Path, dst: &Path) -> Result<(), BundleError> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut from =
        virtkit::regular_file::open_regular(src).map_err(|e| BundleError::Refused(e.to_string()))?;
    let mut to = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(FILE_MODE)
        .open(dst)
        .map_err(io_error("create", dst))?;
    std::io::copy(&mut from, &mut to).map_err(io_error("copy", src))?;
    Ok(())
}

/// Refuses a VM whose sockets (`control.sock`, `console.sock`, `vsock.sock`, `port-NAME.sock`) would not fit
/// a Unix socket address at their final place: known at create, not first found at a run.
fn check_socket_paths(dir: &Path, config: &VirtualMachineConfiguration) -> Result<(), BundleError> {
    let ports = config.console_devices.iter().flat_map(|d| d.ports.iter());
    let port_sockets = ports.filter_map(|p| match &p.attachment {
        Some(SerialAttachment::UnixSocket { path }) if path.is_relative() => Some(path.clone()),
        _ => None,
    });
    // The longest name the vsock device's host side uses: the agent's hello socket.
    let hello = PathBuf::from(crate::agent::host_port_socket(virtkit_agent_protocol::HELLO_PORT));
    for socket in [
        PathBuf::from(CONTROL_SOCKET),
        PathBuf::from(CONSOLE_SOCKET),
        PathBuf::from(super::VNC_SOCKET),
        PathBuf::from(VSOCK_SOCKET),
        hello,
    ]
    .into_iter()
    .chain(port_sockets)
    {
        let path = dir.join(&socket);
        let len = path.as_os_str().len();
        if len > MAX_SOCKET_PATH {
            return Err(BundleError::Refused(format!(
                "the VM's socket {} would be {len} bytes, more than the {MAX_SOCKET_PATH} a Unix socket \
                 address holds; choose a shorter name, or a virtkit home with a shorter path",
                path.display()
            )));
        }
    }
    Ok(())
}

impl Bundle {
    /// Creates the VM `name` under `home`: a new machine identifier, the host's hardware
    /// model, the boot disk (installed from the restore image if there is one) and the
    /// configuration. `progress(done, total)` follows the disk install.
    pub fn create(
        home: &VirtkitHome,
        name: &str,
        spec: &NewBundle,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<Bundle, BundleError> {
        check_name(name).map_err(BundleError::BadName)?;
        if spec.disk_size == Some(0) {
            return Err(BundleError::Refused(
                "a disk of 0 bytes holds nothing; give the disk a size such as 20G".into(),
            ));
        }
        let vms = home.vms_dir();
        let staging = Staging::new(&vms, name)?;
        let dir = staging.dir.clone();

        let machine_id = MachineIdentifier::random().map_err(io_error("read", Path::new("/dev/urandom")))?;
        staging.write(MACHINE_ID_FILE, format!("{machine_id}\n").as_bytes())?;
        let hardware = HardwareModel::of_this_host();
        staging.write(
            HARDWARE_MODEL_FILE,
            serde_json::to_string_pretty(&hardware)
                .unwrap_or_default()
                .as_bytes(),
        )?;
        let aux = dir.join(AUX_FILE);
        match &spec.boot {
            NewBoot::Efi { variables, .. } => copy_in(variables, &aux)?,
            _ => std::fs::File::create(&aux)
                .and_then(|f| f.set_len(AUX_SIZE))
                .map_err(io_error("create", &aux))?,
        }

        // The firmware stays where it is (a system file); the path the user gave (or the
        // default) is recorded as one the configuration may name.
        let mut external = Vec::new();
        let boot_loader = match &spec.boot {
            NewBoot::Firmware { path } => {
                let path = std::path::absolute(path).map_err(io_error("find", path))?;
                external.push(path.clone());
                BootLoader::Firmware {
                    path,
                    variable_store: None,
                }
            }
            NewBoot::Efi { code, .. } => {
                let path = std::path::absolute(code).map_err(io_error("find", code))?;
                external.push(path.clone());
                BootLoader::Firmware {
                    path,
                    variable_store: Some(AUX_FILE.into()),
                }
            }
            NewBoot::Linux {
                kernel,
                initrd,
                command_line,
            } => {
                copy_in(kernel, &dir.join(KERNEL_FILE))?;
                if let Some(i) = initrd {
                    copy_in(i, &dir.join(INITRD_FILE))?;
                }
                BootLoader::Linux {
                    kernel: KERNEL_FILE.into(),
                    initrd: initrd.as_ref().map(|_| INITRD_FILE.into()),
                    command_line: command_line.clone(),
                }
            }
        };
        let mut config = VirtualMachineConfiguration {
            version: CONFIG_FORMAT_VERSION,
            cpu_count: spec.cpu_count,
            memory_size: spec.memory_size,
            boot_loader,
            serial_ports: Vec::new(),
            storage_devices: Vec::new(),
            // Every new VM gets the host's entropy, as lima and tart guests do, and a memory
            // balloon with free page reporting, so memory the guest frees goes back to the host.
            entropy_devices: vec![EntropyDeviceConfiguration::default()],
            memory_balloon_devices: vec![MemoryBalloonConfiguration::default()],
            console_devices: if spec.ports.is_empty() {
                Vec::new()
            } else {
                vec![ConsoleDeviceConfiguration {
                    ports: spec
                        .ports
                        .iter()
                        .map(|name| ConsolePortConfiguration::named_socket(name, Bundle::port_socket(name)))
                        .collect(),
                }]
            },
            network_devices: spec.network_devices.clone(),
            // The socket device is added at each run (`vsock.sock` in the bundle, CID 3), so
            // it is left out here unless a user sets one.
            socket_devices: Vec::new(),
            directory_sharing_devices: Vec::new(),
            graphics_devices: Vec::new(),
            keyboards: Vec::new(),
            pointing_devices: Vec::new(),
            platform: PlatformConfiguration::default(),
        };
        for share in &spec.shares {
            let mut share = share.clone();
            share.path = std::path::absolute(&share.path).map_err(io_error("find", &share.path))?;
            external.push(share.path.clone());
            config.directory_sharing_devices.push(share);
        }

        // Check everything but the disk before spending time on the disk.
        let mut bundle = Bundle {
            name: name.to_owned(),
            path: dir.clone(),
            config,
            machine_id,
            hardware,
            external,
        };
        check_socket_paths(&vms.join(name), &bundle.config)?;
        bundle.resolved_configuration().validate()?;

        let disk = dir.join(DISK_FILE);
        match &spec.restore_image {
            Some(image) => {
                let report =
                    import(image, &disk, spec.disk_size, progress).map_err(|source| BundleError::Disk {
                        path: image.clone(),
                        source,
                    })?;
                if spec.keep_restore_image {
                    let kept = dir.join(format!("{RESTORE_IMAGE_STEM}.{}", report.format));
                    clone_file(image, &kept, &mut |_, _| {}).map_err(|source| BundleError::Disk {
                        path: image.clone(),
                        source,
                    })?;
                }
            }
            None => {
                let size = spec.disk_size.unwrap_or(DEFAULT_DISK_SIZE);
                std::fs::File::create(&disk)
                    .and_then(|f| f.set_len(size))
                    .map_err(io_error("create", &disk))?;
                progress(size, size);
            }
        }
        config = bundle.config;
        config
            .storage_devices
            .push(StorageDeviceConfiguration::disk_image(DISK_FILE));
        if let Some((settings, agent)) = &spec.seed {
            let mut settings = settings.clone();
            settings
                .write(&dir, name, &machine_id.to_string(), agent.as_deref())
                .map_err(|e| BundleError::Refused(e.to_string()))?;
            config.storage_devices.push(StorageDeviceConfiguration {
                read_only: true,
                identifier: Some("cidata".into()),
                ..StorageDeviceConfiguration::disk_image(crate::seed::SEED_FILE)
            });
        }
        bundle.config = config;
        bundle.resolved_configuration().validate()?;
        if !bundle.external.is_empty() {
            external::write(&dir, &bundle.external)?;
        }
        staging.write(CONFIG_FILE, bundle.config.to_json().as_bytes())?;

        bundle.path = staging.commit(&vms, name)?;
        Ok(bundle)
    }

    /// Copies this stopped VM to a new one named `new_name` with a new machine identifier
    /// (so new SMBIOS UUID, serial and MACs). Files are reflinked where the file system can,
    /// otherwise copied sparsely; the method used for the disk is returned.
    pub fn clone_to(
        &self,
        home: &VirtkitHome,
        new_name: &str,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<(Bundle, CloneMethod), BundleError> {
        check_name(new_name).map_err(BundleError::BadName)?;
        // Held while copying so the source cannot start and change its disk under the copy.
        let _lock = self.lock()?;
        let vms = home.vms_dir();
        check_socket_paths(&vms.join(new_name), &self.config)?;
        let staging = Staging::new(&vms, new_name)?;
        let dir = staging.dir.clone();
        let mut disk_method = CloneMethod::SparseCopy;
        let layered = self.disk_format() == virtkit::DiskImageFormat::Qcow2;
        if layered {
            // O(1) on every file system: the source's active layer is frozen, both VMs get a new
            // empty one over it, and the frozen layers (which nothing writes again) are hard-linked.
            let layer = super::layers::freeze(&self.path, virtkit::DiskImageFormat::Qcow2, || Ok(()))?.layer;
            let mut chain = vec![layer.clone()];
            chain.extend(super::layers::chain_from(&self.path, &self.name, &layer)?);
            for name in &chain {
                let (src, dst) = (self.file(name), dir.join(name));
                std::fs::hard_link(&src, &dst).map_err(io_error("link", &dst))?;
            }
            let size = super::layers::virtual_size(&self.path, virtkit::DiskImageFormat::Qcow2)?;
            super::layers::reset_to(&dir, &layer, size)?;
            disk_method = CloneMethod::Layered;
        }
        for file in [
            CONFIG_FILE,
            HARDWARE_MODEL_FILE,
            AUX_FILE,
            KERNEL_FILE,
            INITRD_FILE,
            EXTERNAL_PATHS_FILE,
            crate::seed::SEED_FILE,
            crate::seed::SEED_SETTINGS_FILE,
            DISK_FILE,
        ] {
            let src = self.file(file);
            if std::fs::symlink_metadata(&src).is_err() || (layered && file == DISK_FILE) {
                continue;
            }
            let mut ignore = |_: u64, _: u64| {};
            let report: &mut dyn FnMut(u64, u64) = if file == DISK_FILE {
                &mut *progress
            } else {
                &mut ignore
            };
            let method = clone_file(&src, &dir.join(file), report).map_err(|source| BundleError::Disk {
                path: src.clone(),
                source,
            })?;
            if file == DISK_FILE {
                disk_method = method;
            }
        }
        let machine_id = MachineIdentifier::random().map_err(io_error("read", Path::new("/dev/urandom")))?;
        staging.write(MACHINE_ID_FILE, format!("{machine_id}\n").as_bytes())?;
        let path = staging.commit(&vms, new_name)?;
        Ok((Bundle::open_path(new_name, path)?, disk_method))
    }
}
