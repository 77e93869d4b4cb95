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
