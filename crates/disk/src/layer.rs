//! qcow2 layers: a new empty qcow2 image, alone or on top of a backing image, made in O(1)
//! whatever the backing image's size and the file system.
//!
//! A snapshot or a clone of a qcow2 disk is such a layer: the old disk becomes its read-only
//! backing image and every new write lands in the layer. The layer is written under a temporary
//! name, synced, and renamed into place, so a crash leaves either no layer or a whole one.

use std::path::Path;

use imago::file::File as ImagoFile;
use imago::qcow2::Qcow2;
use imago::{
    FormatAccess, FormatCreateBuilder, ShallowMapping, Storage, StorageCreateOptions, StorageOpenOptions,
};

use crate::durable;
use crate::error::{io_error, DiskImageError};
use crate::ImageFormat;

/// Creates the qcow2 image `path` of `size` bytes, empty, or reading through to `backing`
/// (with its format) where it has no data of its own. `backing` is recorded as given: a
/// relative name is found relative to `path`'s directory, as qemu-img does. Refuses to replace
/// an existing file.
pub fn create_qcow2_layer(
    path: &Path,
    size: u64,
    backing: Option<(&str, ImageFormat)>,
) -> Result<(), DiskImageError> {
    if path.exists() {
        return Err(DiskImageError::DestinationExists {
            path: path.to_owned(),
        });
    }
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let temporary = path.with_file_name(format!(".{name}.part"));
    let _ = std::fs::remove_file(&temporary);
    let made = write_layer(&temporary, size, backing)
        .and_then(|()| std::fs::File::open(&temporary).and_then(|f| f.sync_all()))
        .map_err(io_error("create the qcow2 image", path))
        .and_then(|()| std::fs::rename(&temporary, path).map_err(io_error("rename into place", path)))
        .and_then(|()| durable::sync_parent(path).map_err(io_error("sync the directory of", path)));
    if made.is_err() {
        let _ = std::fs::remove_file(&temporary);
    }
    made
}

fn write_layer(path: &Path, size: u64, backing: Option<(&str, ImageFormat)>) -> std::io::Result<()> {
    let storage = ImagoFile::create_open(StorageCreateOptions::new().filename(path).size(0))?;
    let mut builder = Qcow2::<ImagoFile>::create_builder(storage).size(size);
    if let Some((name, format)) = backing {
        builder = builder.backing(name.to_owned(), format.to_string());
    }
    builder.create()
}

/// Whether the qcow2 image at `path` holds any data of its own (allocated or explicitly zeroed
/// clusters); an image that only reads through to its backing image holds none. Its backing
/// image is not opened.
pub fn qcow2_layer_has_data(path: &Path) -> Result<bool, DiskImageError> {
    let read_error = |e| io_error("read the qcow2 image", path)(e);
    let storage = ImagoFile::open(StorageOpenOptions::new().filename(path)).map_err(read_error)?;
    let qcow2 = Qcow2::<ImagoFile>::open_image(storage, false).map_err(read_error)?;
    let image = FormatAccess::new(qcow2);
    let size = image.size();
    let mut offset = 0;
    while offset < size {
        let (mapping, len) = image
            .get_shallow_mapping(offset, size - offset)
            .map_err(read_error)?;
        match mapping {
            ShallowMapping::Zero { explicit: false, .. } | ShallowMapping::Indirect { .. } => {}
            ShallowMapping::Eof { .. } => return Ok(false),
            _ => return Ok(true),
        }
        if len == 0 {
            return Ok(false);
        }
        offset += len;
    }
    Ok(false)
}

/// What a qcow2 header says about the image's place in a chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Qcow2Header {
    /// The backing file name as written (relative names are relative to the image's directory).
    pub backing: Option<String>,
    /// The disk's size as the guest sees it.
    pub virtual_size: u64,
}

/// Whether `file` starts with the qcow2 magic.
pub fn is_qcow2(file: &std::fs::File) -> bool {
    use std::os::unix::fs::FileExt;
    let mut magic = [0u8; 4];
    file.read_exact_at(&mut magic, 0).is_ok() && magic == *b"QFI\xfb"
}

/// Reads the backing file name and virtual size from the qcow2 header of `file` (QEMU's
/// `docs/interop/qcow2.txt`, big-endian: backing name offset at 8, its length at 16, size at 24).
/// Errors say what is wrong in a few words ("it is not a qcow2 image …").
pub fn read_qcow2_header(file: &std::fs::File) -> std::io::Result<Qcow2Header> {
    use std::os::unix::fs::FileExt;
    let mut header = [0u8; 32];
    file.read_exact_at(&mut header, 0)
        .map_err(|e| std::io::Error::other(format!("its qcow2 header cannot be read ({e})")))?;
    if header[..4] != *b"QFI\xfb" {
        return Err(std::io::Error::other(
            "it is not a qcow2 image (no QFI\\xfb magic)",
        ));
    }
    let offset = u64::from_be_bytes(header[8..16].try_into().expect("8 bytes"));
    let len = u32::from_be_bytes(header[16..20].try_into().expect("4 bytes"));
    let virtual_size = u64::from_be_bytes(header[24..32].try_into().expect("8 bytes"));
    if offset == 0 || len == 0 {
        return Ok(Qcow2Header {
            backing: None,
            virtual_size,
        });
    }
    // qemu limits the name to 1023 bytes.
    if len > 1023 {
        return Err(std::io::Error::other(format!(
            "its backing file name is {len} bytes long (at most 1023)"
        )));
    }
    let mut name = vec![0u8; len as usize];
    file.read_exact_at(&mut name, offset)
        .map_err(|e| std::io::Error::other(format!("its backing file name cannot be read ({e})")))?;
    let name =
        String::from_utf8(name).map_err(|_| std::io::Error::other("its backing file name is not UTF-8"))?;
    Ok(Qcow2Header {
        backing: Some(name),
        virtual_size,
    })
}
