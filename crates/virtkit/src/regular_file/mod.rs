//! Opening the files a VM is made of (configurations, kernels, initrds, firmware, serial output
//! files) without ever blocking on, or reading without end from, something that is not a file.
//!
//! A plain `open(2)` of a FIFO waits for the other end forever (and a process blocked there
//! ignores the signal handlers that would stop it); reading `/dev/zero` never ends; opening some
//! devices has side effects. So the path is looked at (`stat`) before it is opened, the open is
//! `O_NONBLOCK` (a FIFO that appeared in between cannot block it), and the opened file is looked
//! at again (`fstat`) to be sure it is the regular file that was checked.

use std::fs::{File, Metadata};
use std::io::{self, Read};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use rustix::fs::{Mode, OFlags};

/// What a path that is not a regular file is, in words: `a FIFO (named pipe)`.
pub fn kind_of(meta: &Metadata) -> &'static str {
    let t = meta.file_type();
    if t.is_file() {
        "a regular file"
    } else if t.is_dir() {
        "a directory"
    } else if t.is_symlink() {
        "a symbolic link"
    } else if t.is_fifo() {
        "a FIFO (named pipe)"
    } else if t.is_char_device() {
        "a character device"
    } else if t.is_block_device() {
        "a block device"
    } else if t.is_socket() {
        "a socket"
    } else {
        "not a regular file"
    }
}

/// Why a file could not be opened as a regular file.
#[derive(Debug, thiserror::Error)]
pub enum RegularFileError {
    #[error("{} is {kind}, not a regular file", path.display())]
    NotRegular { path: PathBuf, kind: &'static str },
    #[error("{} is a symbolic link", path.display())]
    SymbolicLink { path: PathBuf },
    #[error("{} is larger than {limit} bytes", path.display())]
    TooLarge { path: PathBuf, limit: u64 },
    #[error("cannot {action} {}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

impl RegularFileError {
    /// The underlying system error, if that is what it was (to tell "missing" apart).
    pub fn io_kind(&self) -> Option<io::ErrorKind> {
        match self {
            RegularFileError::Io { source, .. } => Some(source.kind()),
            _ => None,
        }
    }
}

fn io_err<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> RegularFileError + 'a {
    move |source| RegularFileError::Io {
        action,
        path: path.to_owned(),
        source,
    }
}

/// Whether the file is the null device, the one special file that is fine as an output: writes
/// to it never block and go nowhere.
fn is_dev_null(meta: &Metadata) -> bool {
    meta.file_type().is_char_device() && meta.rdev() == rustix::fs::makedev(1, 3)
}

/// Opens `path` for reading; refused unless it is a regular file (symbolic links followed).
pub fn open_regular(path: &Path) -> Result<File, RegularFileError> {
    let meta = std::fs::metadata(path).map_err(io_err("read", path))?;
    if !meta.is_file() {
        return Err(RegularFileError::NotRegular {
            path: path.to_owned(),
            kind: kind_of(&meta),
        });
    }
    let fd = rustix::fs::open(
        path,
        OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NONBLOCK | OFlags::NOCTTY,
        Mode::empty(),
    )
    .map_err(|e| io_err("open", path)(e.into()))?;
    let file = File::from(fd);
    confirm_regular(&file, path)?;
    Ok(file)
}

/// Fails unless the opened `file` is a regular file (it may have been swapped since `stat`).
fn confirm_regular(file: &File, path: &Path) -> Result<Metadata, RegularFileError> {
    let meta = file.metadata().map_err(io_err("read", path))?;
    if meta.is_file() {
        Ok(meta)
    } else {
        Err(RegularFileError::NotRegular {
            path: path.to_owned(),
            kind: kind_of(&meta),
        })
    }
}

/// Reads all of the regular file `path`, refusing one longer than `limit` bytes (checked before
/// reading, and the read itself stops at the limit in case the file grows meanwhile).
pub fn read_bounded(path: &Path, limit: u64) -> Result<Vec<u8>, RegularFileError> {
    let file = open_regular(path)?;
    read_open_bounded(file, path, limit)
}

/// [`read_bounded`] on a file already opened (and checked) by the caller.
pub fn read_open_bounded(file: File, path: &Path, limit: u64) -> Result<Vec<u8>, RegularFileError> {
    let too_large = || RegularFileError::TooLarge {
        path: path.to_owned(),
        limit,
    };
    let len = file.metadata().map_err(io_err("read", path))?.len();
    if len > limit {
        return Err(too_large());
    }
    let mut bytes = Vec::with_capacity(len as usize);
    file.take(limit + 1)
        .read_to_end(&mut bytes)
        .map_err(io_err("read", path))?;
    if bytes.len() as u64 > limit {
        return Err(too_large());
    }
    Ok(bytes)
}

/// Checks that `path`, if it exists, may be written as an output file: a regular file or
/// `/dev/null`. FIFOs, terminals and other devices are refused: a FIFO without a reader blocks
/// the writer, and a device is no log.
pub fn check_output(path: &Path) -> Result<(), RegularFileError> {
    match std::fs::metadata(path) {
        Ok(meta) if meta.is_file() || is_dev_null(&meta) => Ok(()),
        Ok(meta) => Err(RegularFileError::NotRegular {
            path: path.to_owned(),
            kind: kind_of(&meta),
        }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_err("read", path)(e)),
    }
}

/// Opens (creating, owner-only) an output file: appended to, or emptied. Refused unless it is a
/// regular file or `/dev/null`; the file is emptied only after that check, so a wrong path never
/// truncates a device or a FIFO's reader's data.
pub fn open_output(path: &Path, append: bool) -> Result<File, RegularFileError> {
    check_output(path)?;
    let mut flags = OFlags::WRONLY | OFlags::CREATE | OFlags::CLOEXEC | OFlags::NONBLOCK | OFlags::NOCTTY;
    if append {
        flags |= OFlags::APPEND;
    }
    let fd = rustix::fs::open(path, flags, Mode::RUSR | Mode::WUSR).map_err(|e| {
        // A FIFO that appeared since the check, with no reader: ENXIO, not a wait.
        if e == rustix::io::Errno::NXIO {
            RegularFileError::NotRegular {
                path: path.to_owned(),
                kind: "a FIFO (named pipe)",
            }
        } else {
            io_err("open", path)(e.into())
        }
    })?;
    let file = File::from(fd);
    let meta = file.metadata().map_err(io_err("read", path))?;
    if is_dev_null(&meta) {
        return Ok(file);
    }
    if !meta.is_file() {
        return Err(RegularFileError::NotRegular {
            path: path.to_owned(),
            kind: kind_of(&meta),
        });
    }
    if !append {
        file.set_len(0).map_err(io_err("empty", path))?;
    }
    Ok(file)
}

/// Whether `a` and `b` name the same file: the same device and inode when both exist, else the
/// same path once their directories are resolved (an output file that does not exist yet cannot
/// be an existing input, but two spellings of one new path are still one file).
pub fn same_file(a: &Path, b: &Path) -> bool {
    if let (Ok(ma), Ok(mb)) = (std::fs::metadata(a), std::fs::metadata(b)) {
        return ma.dev() == mb.dev() && ma.ino() == mb.ino();
    }
    resolved(a) == resolved(b)
}

fn resolved(p: &Path) -> PathBuf {
    if let Ok(c) = p.canonicalize() {
        return c;
    }
    let absolute = std::path::absolute(p).unwrap_or_else(|_| p.to_owned());
    match (absolute.parent(), absolute.file_name()) {
        (Some(dir), Some(name)) => dir
            .canonicalize()
            .map(|d| d.join(name))
            .unwrap_or(absolute.clone()),
        _ => absolute,
    }
}

#[cfg(test)]
mod tests;
