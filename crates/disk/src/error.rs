//! What can go wrong reading, importing or cloning a disk image.

use std::io;
use std::path::{Path, PathBuf};

use crate::size::ByteSize;

/// Why inspecting, importing or cloning a disk image failed. Every message names the file and
/// says how to fix the problem; an I/O failure carries the system error as its source.
#[derive(Debug, thiserror::Error)]
pub enum DiskImageError {
    /// A system call on a file failed.
    #[error("cannot {action} {}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    /// The destination exists: imports and clones never overwrite a file.
    #[error("{} already exists; remove it or choose another destination", path.display())]
    DestinationExists { path: PathBuf },

    /// The source is a disk image in a format virtkit does not read (VMDK, VHDX, VDI, ...).
    #[error(
        "{} is a {format} image, which virtkit cannot import; convert it to raw or qcow2 with \
         qemu-img convert (for example `qemu-img convert -O qcow2 {} disk.qcow2`)",
        path.display(),
        path.display()
    )]
    UnsupportedFormat { path: PathBuf, format: String },

    /// A qcow2 image uses a feature the importer does not handle (backing file, encryption, ...).
    #[error(
        "{} uses {feature}, which virtkit does not import; make a self-contained copy with \
         `qemu-img convert -O qcow2 {} disk.qcow2` and import that",
        path.display(),
        path.display()
    )]
    UnsupportedQcow2 { path: PathBuf, feature: String },

    /// A qcow2 image's metadata is inconsistent or points outside the file.
    #[error(
        "{} is a damaged qcow2 image: {reason}; check it with `qemu-img check {}`",
        path.display(),
        path.display()
    )]
    CorruptQcow2 { path: PathBuf, reason: String },

    /// The source is a FIFO, a character device, a directory or a socket.
    #[error(
        "{} is {kind}, not a disk image; give a raw or qcow2 image file (or a block device)",
        path.display()
    )]
    NotAnImage { path: PathBuf, kind: &'static str },

    /// The image describes a disk of 0 bytes: nothing to install, and no disk to boot.
    #[error("{} is an empty image (a 0-byte disk); give the image the VM should start from", path.display())]
    EmptyImage { path: PathBuf },

    /// The requested disk size cannot hold the image.
    #[error(
        "the disk size {requested} bytes ({}) is smaller than the image's virtual size \
         {virtual_size} bytes ({}); the smallest allowed disk size is {virtual_size} bytes ({}), \
         or leave the size out to use the image's own",
        ByteSize(*requested),
        ByteSize(*virtual_size),
        ByteSize(*virtual_size)
    )]
    DiskSizeTooSmall { requested: u64, virtual_size: u64 },
}

/// `map_err` helper: wraps an `io::Error` with what was being done to which file.
pub(crate) fn io_error<'a>(
    action: &'static str,
    path: &'a Path,
) -> impl FnOnce(io::Error) -> DiskImageError + 'a {
    move |source| DiskImageError::Io {
        action,
        path: path.to_owned(),
        source,
    }
}
