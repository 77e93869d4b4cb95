//! What a bundle may reference outside itself. `config.json` names files by path, and a
//! hand-edited (or received) one could name `/etc/shadow` as a disk, `/dev/sda` as a writable
//! disk or a private key as the initrd. So a path in the configuration is trusted only if it is
//! a file in the bundle (a plain file name such as `disk.img`), or it is listed in
//! `external-paths.json`, which only virtkit commands write, each from a path a user gave on
//! the command line (`create --firmware`, `set --add-disk`, `set --allow-path`). `virtkit get`
//! shows that list.

use std::path::{Component, Path, PathBuf};

use virtkit::{BootLoader, SerialAttachment, VirtualMachineConfiguration};

use super::atomic::write_atomic;
use super::files::{read_small, KNOWN_FILES};
use super::{io_error, BundleError};

/// The list of paths outside the bundle its configuration may name (a JSON array of strings).
pub const EXTERNAL_PATHS_FILE: &str = "external-paths.json";

/// Every path the configuration names: (field, path, whether the VM reads it as an input file:
/// a kernel, initrd, firmware or disk, which must then be a regular file in the bundle).
fn referenced(config: &VirtualMachineConfiguration) -> Vec<(String, &Path, bool)> {
    let mut found = Vec::new();
    match &config.boot_loader {
        BootLoader::Linux { kernel, initrd, .. } => {
            found.push(("boot_loader.kernel".to_owned(), kernel.as_path(), true));
            if let Some(i) = initrd {
                found.push(("boot_loader.initrd".to_owned(), i.as_path(), true));
            }
        }
        BootLoader::Firmware { path, variable_store } => {
            found.push(("boot_loader.path".to_owned(), path.as_path(), true));
            if let Some(v) = variable_store {
                found.push(("boot_loader.variable_store".to_owned(), v.as_path(), true));
            }
        }
    }
    for (i, d) in config.storage_devices.iter().enumerate() {
        found.push((format!("storage_devices[{i}].path"), d.path.as_path(), true));
    }
    for (i, p) in config.serial_ports.iter().enumerate() {
        if let SerialAttachment::File { path, .. } | SerialAttachment::UnixSocket { path } = &p.attachment {
            found.push((
                format!("serial_ports[{i}].attachment.path"),
                path.as_path(),
                false,
            ));
        }
    }
    for (d, device) in config.console_devices.iter().enumerate() {
        for (p, port) in device.ports.iter().enumerate() {
            if let Some(SerialAttachment::File { path, .. } | SerialAttachment::UnixSocket { path }) =
                &port.attachment
            {
                found.push((
                    format!("console_devices[{d}].ports[{p}].attachment.path"),
                    path.as_path(),
                    false,
                ));
            }
        }
    }
    for (i, d) in config.socket_devices.iter().enumerate() {
        found.push((
            format!("socket_devices[{i}].uds_path"),
            d.uds_path.as_path(),
            false,
        ));
    }
    // A shared directory gives the guest the host files under it: only one a virtkit command
    // recorded (`create --share`, `set --share`) may be named.
    for (i, share) in config.directory_sharing_devices.iter().enumerate() {
        found.push((
            format!("directory_sharing_devices[{i}].path"),
            share.path.as_path(),
            false,
        ));
    }
    found
}

/// Whether `path` is a plain file name: a file directly in the bundle.
fn in_bundle(path: &Path) -> Option<&str> {
    let mut parts = path.components();
    match (parts.next(), parts.next()) {
        (Some(Component::Normal(name)), None) => name.to_str(),
        _ => None,
    }
}

/// Reads the recorded external paths (none when the file is missing).
pub(crate) fn read(dir: &Path, vm: &str) -> Result<Vec<PathBuf>, BundleError> {
    if std::fs::symlink_metadata(dir.join(EXTERNAL_PATHS_FILE)).is_err() {
        return Ok(Vec::new());
    }
    let text = read_small(dir, vm, EXTERNAL_PATHS_FILE)?;
    serde_json::from_str(&text).map_err(|e| BundleError::Damaged {
        name: vm.to_owned(),
        problem: format!("{EXTERNAL_PATHS_FILE} is not a list of paths ({e})"),
    })
}

/// Replaces the recorded external paths.
pub(crate) fn write(dir: &Path, paths: &[PathBuf]) -> Result<(), BundleError> {
    let path = dir.join(EXTERNAL_PATHS_FILE);
    let text = serde_json::to_string_pretty(paths).unwrap_or_default();
    write_atomic(&path, text.as_bytes()).map_err(io_error("write", &path))
}

/// Checks every path `config` names against the bundle `dir` and its record; see the module
/// documentation.
pub(crate) fn check(
    dir: &Path,
    vm: &str,
    config: &VirtualMachineConfiguration,
    recorded: &[PathBuf],
) -> Result<(), BundleError> {
    for (field, path, input) in referenced(config) {
        match in_bundle(path) {
            Some(name) if input && KNOWN_FILES.contains(&name) && !is_data_file(name) => {
                return Err(BundleError::Damaged {
                    name: vm.to_owned(),
                    problem: format!(
                        "{field} in config.json names the bundle's own {name}, which is not a disk, kernel or firmware (fix config.json)"
                    ),
                });
            }
            Some(name) if input => {
                // The file must be the bundle's own: a link would reach outside it.
                if let Ok(m) = std::fs::symlink_metadata(dir.join(name)) {
                    if !m.is_file() {
                        return Err(BundleError::Damaged {
                            name: vm.to_owned(),
                            problem: format!(
                                "{name} is {}; bundle files must be regular files (remove it)",
                                virtkit::regular_file::kind_of(&m)
                            ),
                        });
                    }
                }
            }
            Some(name) if KNOWN_FILES.contains(&name) => {
                return Err(BundleError::Damaged {
                    name: vm.to_owned(),
                    problem: format!(
                        "{field} in config.json names the bundle's own {name} as an output (fix config.json)"
                    ),
                });
            }
            Some(_) => {}
            None if recorded.iter().any(|r| r == path) => {}
            None if field == "boot_loader.path" && is_system_firmware(path) => {}
            None => {
                return Err(BundleError::Unrecorded {
                    name: vm.to_owned(),
                    field,
                    path: path.to_owned(),
                })
            }
        }
    }
    Ok(())
}

/// Where distributions install firmware images. A firmware image is only read, and loaded
/// into the guest's memory as its ROM; one that the system's packages installed (owned by root,
/// under these directories) reveals nothing and is what every BIOS VM boots, so bundles made
/// before the record existed, and copies of bundles between hosts, run without `--allow-path`.
const SYSTEM_FIRMWARE_DIRS: [&str; 4] = [
    "/usr/share/seabios/",
    "/usr/share/qemu/",
    "/usr/share/ovmf/",
    "/usr/share/OVMF/",
];

/// Whether `path` is a root-owned file under [`SYSTEM_FIRMWARE_DIRS`] (no `..` in it).
fn is_system_firmware(path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    let plain = path.is_absolute() && path.components().all(|c| !matches!(c, Component::ParentDir));
    plain
        && SYSTEM_FIRMWARE_DIRS.iter().any(|dir| path.starts_with(dir))
        && std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.uid() == 0)
}

/// The known bundle files a configuration may name as an input.
fn is_data_file(name: &str) -> bool {
    [
        super::DISK_FILE,
        super::AUX_FILE,
        super::KERNEL_FILE,
        super::INITRD_FILE,
        crate::seed::SEED_FILE,
        "restore-image.raw",
        "restore-image.qcow2",
    ]
    .contains(&name)
}
