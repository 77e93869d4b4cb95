//! Disk image files: recognise an image ([`inspect`]), turn a raw or qcow2 image into a VM's
//! sparse raw disk ([`import`]), copy a disk file cheaply ([`clone_file`]), and make a qcow2
//! layer over another image in O(1) ([`create_qcow2_layer`]).
//!
//! Everything here works on whole files and never overwrites one: a destination is created new
//! and removed again if the operation fails, and is flushed to disk (data, size and directory
//! entry) before the operation reports success. Holes stay holes: only non-zero data is written,
//! so a 20 GiB disk with 1 GiB of data takes 1 GiB of the host's disk.
//!
//! qcow2 images are read through the `imago` crate, using its cluster mapping to skip
//! unallocated and zero clusters without reading them. Images with a backing file, an external
//! data file or encryption are refused with a message saying how to flatten them; other image
//! formats (VMDK, VHDX, VDI, ...) are recognised by their magic and refused.

#![forbid(unsafe_code)]

mod clone;
pub mod durable;
mod error;
mod extents;
mod import;
mod layer;
mod new_file;
mod pipeline;
mod probe;
mod qcow2;
mod size;
mod sparse_writer;

use std::fs::File;
use std::io::{Seek, SeekFrom};
use std::os::unix::fs::FileTypeExt;
use std::path::Path;

pub use clone::{clone_file, CloneMethod};
pub use error::DiskImageError;
pub use import::{import, ImportReport};
pub use layer::{create_qcow2_layer, is_qcow2, qcow2_layer_has_data, read_qcow2_header, Qcow2Header};

use error::io_error;

/// Size of each read and write: large enough for sequential throughput, small enough to keep
/// progress reports frequent.
const CHUNK: usize = 4 << 20;

/// How a disk image file stores the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageFormat {
    /// The file is the disk, byte for byte.
    Raw,
    /// QEMU's copy-on-write format (version 2 or 3).
    Qcow2,
}

impl std::fmt::Display for ImageFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ImageFormat::Raw => "raw",
            ImageFormat::Qcow2 => "qcow2",
        })
    }
}

/// What [`inspect`] found out about an image file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImageInfo {
    pub format: ImageFormat,
    /// The size of the disk the image describes, in bytes (for raw, the file's length).
    pub virtual_size: u64,
}

/// Recognises the image at `path`: qcow2 by its magic (its header checked, see the module
/// documentation), other known image formats refused, and anything else raw.
pub fn inspect(path: &Path) -> Result<ImageInfo, DiskImageError> {
    let (file, len) = open_source(path)?;
    inspect_open(&file, path, len)
}

/// [`inspect`] on a file already open; `len` is its length.
fn inspect_open(file: &File, path: &Path, len: u64) -> Result<ImageInfo, DiskImageError> {
    let mut head = [0u8; probe::PROBE_LEN];
    let head_len = qcow2::read_prefix(file, &mut head).map_err(io_error("read", path))?;
    let head = &head[..head_len];
    if let Some(format) = probe::foreign_format(head) {
        return Err(DiskImageError::UnsupportedFormat {
            path: path.to_owned(),
            format: format.to_string(),
        });
    }
    if probe::is_qcow2(head) {
        let header = qcow2::read_header(file, path, len)?;
        tracing::debug!(
            path = %path.display(),
            version = header.version,
            cluster_size = header.cluster_size,
            "qcow2 image"
        );
        return Ok(ImageInfo {
            format: ImageFormat::Qcow2,
            virtual_size: header.virtual_size,
        });
    }
    Ok(ImageInfo {
        format: ImageFormat::Raw,
        virtual_size: len,
    })
}

/// Opens a source file for reading and returns it with its length (a block device's size too).
/// Only regular files and block devices are images: anything else is refused before it is
/// opened (a FIFO would block the open, `/dev/zero` would never end), and the open is
/// `O_NONBLOCK` with the type checked again on the open file, in case the path changed between.
fn open_source(path: &Path) -> Result<(File, u64), DiskImageError> {
    use std::os::unix::fs::OpenOptionsExt;
    let is_image = |m: &std::fs::Metadata| m.is_file() || m.file_type().is_block_device();
    let not_an_image = |m: &std::fs::Metadata| DiskImageError::NotAnImage {
        path: path.to_owned(),
        kind: kind_of(m),
    };
    let meta = std::fs::metadata(path).map_err(io_error("open", path))?;
    if !is_image(&meta) {
        return Err(not_an_image(&meta));
    }
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(rustix::fs::OFlags::NONBLOCK.bits() as i32)
        .open(path)
        .map_err(io_error("open", path))?;
    let meta = file.metadata().map_err(io_error("read the metadata of", path))?;
    if !is_image(&meta) {
        return Err(not_an_image(&meta));
    }
    let len = if meta.file_type().is_block_device() {
        file.seek(SeekFrom::End(0))
            .map_err(io_error("find the size of", path))?
    } else {
        meta.len()
    };
    Ok((file, len))
}

/// What a file that is no image is, in words.
fn kind_of(meta: &std::fs::Metadata) -> &'static str {
    let t = meta.file_type();
    if t.is_dir() {
        "a directory"
    } else if t.is_fifo() {
        "a FIFO (named pipe)"
    } else if t.is_char_device() {
        "a character device"
    } else if t.is_socket() {
        "a socket"
    } else {
        "not a regular file"
    }
}
