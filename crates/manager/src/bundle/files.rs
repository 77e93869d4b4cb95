//! Opening a bundle's own files: never through a symbolic link, never anything but a regular
//! file, owner-only whatever the umask, and metadata read with a bound.
//!
//! A bundle is a directory a user can copy, unpack or edit by hand, so its entries are not
//! trusted to be what their names say: `console.log` as a link to another file would have that
//! file emptied and filled with guest output, `config.json` as a link to `/dev/zero` would be
//! read without end, `disk.img` as a link to another VM's disk would be grown under it. Every
//! open here is `O_NOFOLLOW | O_NONBLOCK` and checked with `fstat` before anything is read,
//! written or emptied.

use std::fs::File;
use std::io::ErrorKind;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use rustix::fs::{Mode, OFlags};
use virtkit::regular_file::{kind_of, read_open_bounded, RegularFileError};

use super::{io_error, BundleError};

/// The largest metadata file read (`config.json`, `hardware-model.json`, `machine-id`, `pid`,
/// `external-paths.json`): each is a few hundred bytes when virtkit wrote it.
pub const MAX_METADATA_SIZE: u64 = 1 << 20;

/// Owner read and write: every file a bundle holds.
pub(crate) const FILE_MODE: u32 = 0o600;
/// Owner only: the bundle directory.
pub(crate) const DIR_MODE: u32 = 0o700;

/// How a bundle file is opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Read an existing file.
    Read,
    /// Read and write an existing file in place (the disk).
    ReadWrite,
    /// Read and write, created if missing, never emptied (the lock).
    Lock,
    /// Write from empty, created if missing (`console.log`, `serial.log`).
    Replace,
    /// Append, created if missing (`vmm.log`).
    Append,
}

fn damaged(vm: &str, problem: String) -> BundleError {
    BundleError::Damaged {
        name: vm.to_owned(),
        problem,
    }
}

fn not_regular(vm: &str, file: &str, kind: &str) -> BundleError {
    damaged(
        vm,
        format!("{file} is {kind}; bundle files must be regular files (remove it)"),
    )
}

/// Opens `dir/file` of the VM `vm` as `access` says; see the module documentation.
pub(crate) fn open_in(dir: &Path, vm: &str, file: &str, access: Access) -> Result<File, BundleError> {
    let path = dir.join(file);
    let base = OFlags::CLOEXEC | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::NOCTTY;
    let flags = base
        | match access {
            Access::Read => OFlags::RDONLY,
            Access::ReadWrite => OFlags::RDWR,
            Access::Lock => OFlags::RDWR | OFlags::CREATE,
            Access::Replace => OFlags::WRONLY | OFlags::CREATE,
            Access::Append => OFlags::WRONLY | OFlags::CREATE | OFlags::APPEND,
        };
    let fd = match rustix::fs::open(&path, flags, Mode::from_raw_mode(FILE_MODE)) {
        Ok(fd) => fd,
        Err(rustix::io::Errno::LOOP) => return Err(not_regular(vm, file, "a symbolic link")),
        // Opening a FIFO with no reader for writing, with O_NONBLOCK.
        Err(rustix::io::Errno::NXIO) => return Err(not_regular(vm, file, "a FIFO (named pipe)")),
        Err(e) if std::io::Error::from(e).kind() == ErrorKind::NotFound => {
            return Err(damaged(vm, format!("{file} is missing")))
        }
        Err(e) => return Err(io_error("open", &path)(e.into())),
    };
    let f = File::from(fd);
    let meta = f.metadata().map_err(io_error("read", &path))?;
    if !meta.is_file() {
        return Err(not_regular(vm, file, kind_of(&meta)));
    }
    if matches!(access, Access::ReadWrite | Access::Replace) && meta.nlink() > 1 {
        // Another name for the same data (another VM's disk, a file outside the bundle): writing
        // or emptying it would change that too.
        return Err(damaged(
            vm,
            format!(
                "{file} has {} hard links; bundle files must be the bundle's own (copy the file instead of linking it)",
                meta.nlink()
            ),
        ));
    }
    if access != Access::Read && meta.mode() & 0o077 != 0 {
        // Bundles made before files were owner-only, or a file created under an odd umask.
        f.set_permissions(std::fs::Permissions::from_mode(FILE_MODE))
            .map_err(io_error("restrict the permissions of", &path))?;
    }
    if access == Access::Replace {
        f.set_len(0).map_err(io_error("empty", &path))?;
    }
    Ok(f)
}

/// Reads a metadata file of the VM `vm` as text, refusing one over [`MAX_METADATA_SIZE`].
pub(crate) fn read_small(dir: &Path, vm: &str, file: &str) -> Result<String, BundleError> {
    let f = open_in(dir, vm, file, Access::Read)?;
    let bytes = read_open_bounded(f, &dir.join(file), MAX_METADATA_SIZE).map_err(|e| match e {
        RegularFileError::TooLarge { .. } => damaged(
            vm,
            format!("{file} is larger than 1 MiB, so virtkit did not write it (remove or restore it)"),
        ),
        other => damaged(vm, format!("{file} cannot be read ({other})")),
    })?;
    String::from_utf8(bytes).map_err(|_| damaged(vm, format!("{file} is not text")))
}

/// Every file a bundle may hold, other than sockets: each must be a regular file if present.
pub(crate) const KNOWN_FILES: &[&str] = &[
    super::CONFIG_FILE,
    super::DISK_FILE,
    super::AUX_FILE,
    super::HARDWARE_MODEL_FILE,
    super::MACHINE_ID_FILE,
    super::KERNEL_FILE,
    super::INITRD_FILE,
    super::CONSOLE_LOG_FILE,
    super::SERIAL_LOG_FILE,
    super::VMM_LOG_FILE,
    super::LOCK_FILE,
    super::PID_FILE,
    super::EXTERNAL_PATHS_FILE,
    crate::seed::SEED_FILE,
    crate::seed::SEED_SETTINGS_FILE,
    // The guest's SSH host keys (`virtkit ssh`).
    "known_hosts",
    "restore-image.raw",
    "restore-image.qcow2",
    super::SNAPSHOTS_FILE,
    super::VNC_TCP_FILE,
];

/// Refuses a bundle where a known file is a symbolic link or not a regular file. `open_in`
/// refuses each on its own; checking all of them when the bundle is opened also covers the
/// files other code opens by path (`vmm.log` by `run --detach`, the logs `virtkit logs` reads).
pub(crate) fn check_layout(dir: &Path, vm: &str) -> Result<(), BundleError> {
    for file in KNOWN_FILES {
        match std::fs::symlink_metadata(dir.join(file)) {
            Ok(m) if m.is_file() => {}
            Ok(m) => return Err(not_regular(vm, file, kind_of(&m))),
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => return Err(io_error("read", &dir.join(file))(e)),
        }
    }
    Ok(())
}

/// Makes a new bundle owner-only, whatever the umask was when its files were made: the
/// directory 0700, every regular file in it 0600.
pub(crate) fn restrict_permissions(dir: &Path) -> Result<(), BundleError> {
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(DIR_MODE))
        .map_err(io_error("restrict the permissions of", dir))?;
    for entry in std::fs::read_dir(dir).map_err(io_error("read", dir))? {
        let entry = entry.map_err(io_error("read", dir))?;
        let path = entry.path();
        let meta = std::fs::symlink_metadata(&path).map_err(io_error("read", &path))?;
        // Frozen disk layers stay read-only (0400, owner-only too); a clone shares them as hard
        // links, so changing one here would change the source's.
        let layer = entry
            .file_name()
            .to_str()
            .is_some_and(super::layers::is_layer_name);
        if meta.is_file() && !layer && meta.mode() & 0o777 != FILE_MODE {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(FILE_MODE))
                .map_err(io_error("restrict the permissions of", &path))?;
        }
    }
    Ok(())
}

/// Creates a directory owner-only (0700), whatever the umask.
pub(crate) fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new().mode(DIR_MODE).create(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(DIR_MODE))
}
