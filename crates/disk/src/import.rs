//! Importing a raw or qcow2 image into a new sparse raw disk file.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;

use imago::file::File as ImagoFile;
use imago::qcow2::Qcow2;
use imago::{FormatAccess, Mapping, Storage, StorageExt, StorageOpenOptions};
use rustix::fs::{fadvise, Advice};

use super::error::{io_error, DiskImageError};
use super::extents::DataExtents;
use super::new_file::NewFile;
use super::pipeline::{pipelined, Feeder};
use super::sparse_writer::SparseWriter;
use super::{inspect_open, open_source, ImageFormat, CHUNK};

/// What [`import`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImportReport {
    /// The source image's format.
    pub format: ImageFormat,
    /// The source image's disk size in bytes.
    pub virtual_size: u64,
    /// The new disk file's length: the requested size, or the image's virtual size.
    pub disk_size: u64,
    /// Bytes of non-zero data written; the rest of the disk is holes.
    pub bytes_written: u64,
}

/// Writes the disk held by the raw or qcow2 image `src` into the new sparse raw file `dst`.
///
/// `dst` must not exist. It gets the length `disk_size` (which must be at least the image's
/// virtual size) or, without one, the virtual size. Only non-zero data is written: holes of a
/// raw source (`SEEK_DATA`/`SEEK_HOLE`), unallocated and zero clusters of a qcow2 source (never
/// read) and all-zero 4 KiB blocks stay holes. `progress(done, total)` is called as the
/// image's `total` bytes are gone through. On success the file is flushed to disk; on any error
/// it is removed.
pub fn import(
    src: &Path,
    dst: &Path,
    disk_size: Option<u64>,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<ImportReport, DiskImageError> {
    let (source, source_len) = open_source(src)?;
    let info = inspect_open(&source, src, source_len)?;
    if info.virtual_size == 0 {
        return Err(DiskImageError::EmptyImage { path: src.to_owned() });
    }
    let disk_size = match disk_size {
        Some(requested) if requested < info.virtual_size => {
            return Err(DiskImageError::DiskSizeTooSmall {
                requested,
                virtual_size: info.virtual_size,
            })
        }
        Some(requested) => requested,
        None => info.virtual_size,
    };

    let out = NewFile::create(dst)?;
    out.file()
        .set_len(disk_size)
        .map_err(io_error("set the size of", out.path()))?;
    let mut writer = SparseWriter::new(out.file(), out.path());
    let total = info.virtual_size;
    match info.format {
        ImageFormat::Raw => pipelined(
            |feeder| read_raw(&source, src, source_len, feeder),
            &mut writer,
            total,
            progress,
        )?,
        ImageFormat::Qcow2 => pipelined(
            |feeder| read_qcow2(src, total, feeder),
            &mut writer,
            total,
            progress,
        )?,
    }
    let bytes_written = writer.bytes_written();
    out.finish()?;
    progress(info.virtual_size, info.virtual_size);
    tracing::info!(
        src = %src.display(),
        dst = %dst.display(),
        format = %info.format,
        disk_size,
        bytes_written,
        "imported disk image"
    );
    Ok(ImportReport {
        format: info.format,
        virtual_size: info.virtual_size,
        disk_size,
        bytes_written,
    })
}

/// Reads the data extents of a raw image in `CHUNK`-sized pieces.
fn read_raw(source: &File, src: &Path, len: u64, feeder: &mut Feeder) -> Result<(), DiskImageError> {
    // A larger readahead window: the extents are read front to back.
    if let Err(e) = fadvise(source, 0, None, Advice::Sequential) {
        tracing::debug!("posix_fadvise(SEQUENTIAL) on {}: {e}", src.display());
    }
    for extent in DataExtents::new(source, len) {
        let extent = extent.map_err(io_error("find the data in", src))?;
        feeder.skipped(extent.start)?;
        let mut pos = extent.start;
        while pos < extent.end {
            let n = (extent.end - pos).min(CHUNK as u64) as usize;
            feeder.data(pos, n, |buf| {
                source.read_exact_at(buf, pos).map_err(io_error("read", src))
            })?;
            pos += n as u64;
        }
    }
    Ok(())
}

/// Reads a qcow2 image through imago, guided by its cluster mapping: data clusters are read
/// straight from the file in large reads, compressed clusters are decompressed by imago, and
/// unallocated or zero clusters are skipped without reading anything.
fn read_qcow2(src: &Path, virtual_size: u64, feeder: &mut Feeder) -> Result<(), DiskImageError> {
    // `inspect_open` already refused backing files and external data files, so nothing else is
    // opened: every data mapping points into this one file.
    let storage = ImagoFile::open(StorageOpenOptions::new().filename(src)).map_err(io_error("open", src))?;
    let qcow2 = Qcow2::<ImagoFile>::open_image(storage, false).map_err(qcow2_error(src))?;
    let image = FormatAccess::new(qcow2);

    let mut offset = 0u64;
    while offset < virtual_size {
        let (mapping, len) = image
            .get_mapping(offset, virtual_size - offset)
            .map_err(qcow2_error(src))?;
        if len == 0 {
            // imago's end of file; the rest of the disk reads as zeroes.
            break;
        }
        match mapping {
            Mapping::Raw {
                storage,
                offset: host,
                ..
            } => {
                let storage_len = storage.size().map_err(io_error("find the size of", src))?;
                if host.checked_add(len).is_none_or(|end| end > storage_len) {
                    return Err(DiskImageError::CorruptQcow2 {
                        path: src.to_owned(),
                        reason: format!(
                            "the data for disk offset {offset} ({len} bytes) is at file offset \
                             {host}, beyond the end of the file ({storage_len} bytes)"
                        ),
                    });
                }
                feed_chunks(offset, len, feeder, |buf, done| {
                    storage.read(buf, host + done).map_err(qcow2_error(src))
                })?;
            }
            Mapping::Special { .. } => {
                // Compressed clusters: imago decompresses them.
                feed_chunks(offset, len, feeder, |buf, done| {
                    image.read(buf, offset + done).map_err(qcow2_error(src))
                })?;
            }
            Mapping::Zero { .. } => feeder.skipped(offset + len)?,
            Mapping::Eof { .. } => break,
            other => {
                return Err(DiskImageError::UnsupportedQcow2 {
                    path: src.to_owned(),
                    feature: format!("a cluster mapping imago reports as {other:?}"),
                })
            }
        }
        offset += len;
    }
    Ok(())
}

/// Feeds `len` disk bytes from `disk_offset` in `CHUNK`-sized pieces, each filled by
/// `read(piece, bytes_done_so_far)`.
fn feed_chunks(
    disk_offset: u64,
    len: u64,
    feeder: &mut Feeder,
    mut read: impl FnMut(&mut [u8], u64) -> Result<(), DiskImageError>,
) -> Result<(), DiskImageError> {
    let mut done = 0u64;
    while done < len {
        let n = (len - done).min(CHUNK as u64) as usize;
        feeder.data(disk_offset + done, n, |buf| read(buf, done))?;
        done += n as u64;
    }
    Ok(())
}

/// imago reports damaged metadata as `InvalidData`; anything else is an I/O failure.
fn qcow2_error(path: &Path) -> impl Fn(io::Error) -> DiskImageError + '_ {
    move |source| match source.kind() {
        io::ErrorKind::InvalidData => DiskImageError::CorruptQcow2 {
            path: path.to_owned(),
            reason: source.to_string(),
        },
        _ => io_error("read the qcow2 image", path)(source),
    }
}
