//! Copying a disk file: a reflink where the file system shares blocks, a sparse copy elsewhere.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

use rustix::fs::{copy_file_range, ioctl_ficlone};
use rustix::io::Errno;

use super::error::{io_error, DiskImageError};
use super::extents::DataExtents;
use super::new_file::NewFile;
use super::{open_source, CHUNK};

/// How [`clone_file`] copied the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloneMethod {
    /// The copy shares the source's blocks (`FICLONE`: btrfs, XFS with reflink, bcachefs, ...):
    /// instant, and no space is used until either file changes.
    Reflink,
    /// The file system cannot share blocks: the data extents were copied and the holes kept.
    SparseCopy,
    /// A layered (qcow2) disk: a new empty layer over the source's frozen layers, which are
    /// shared as hard links (nothing writes them again). Instant on every file system.
    Layered,
}

impl std::fmt::Display for CloneMethod {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            CloneMethod::Reflink => "reflink",
            CloneMethod::SparseCopy => "sparse copy",
            CloneMethod::Layered => "layered",
        })
    }
}

/// Copies `src` to the new file `dst` (which must not exist) with the same length, content and
/// permission bits: a reflink when the file system supports it between these two files,
/// otherwise a copy of the data extents only, so holes stay holes. `progress(done, total)`
/// follows the copy (one call for a reflink). On success `dst` is flushed to disk; on any error
/// it is removed.
pub fn clone_file(
    src: &Path,
    dst: &Path,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<CloneMethod, DiskImageError> {
    let (source, len) = open_source(src)?;
    let out = NewFile::create(dst)?;
    let method = match ioctl_ficlone(out.file(), &source) {
        Ok(()) => {
            progress(len, len);
            CloneMethod::Reflink
        }
        // No reflink here: not supported by the file system, across file systems, or not a
        // regular file.
        Err(Errno::OPNOTSUPP | Errno::XDEV | Errno::INVAL | Errno::NOTTY) => {
            sparse_copy(&source, src, &out, len, progress)?;
            CloneMethod::SparseCopy
        }
        Err(e) => return Err(io_error("reflink", src)(e.into())),
    };
    let permissions = source
        .metadata()
        .map_err(io_error("read the metadata of", src))?
        .permissions();
    out.file()
        .set_permissions(permissions)
        .map_err(io_error("set the permissions of", out.path()))?;
    out.finish()?;
    tracing::info!(src = %src.display(), dst = %dst.display(), %method, len, "cloned disk file");
    Ok(method)
}

/// Copies the data extents of `source` into `out` (at the same offsets), with
/// `copy_file_range` (done inside the kernel) or, where that is refused, reads and writes.
fn sparse_copy(
    source: &File,
    src: &Path,
    out: &NewFile,
    len: u64,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<(), DiskImageError> {
    out.file()
        .set_len(len)
        .map_err(io_error("set the size of", out.path()))?;
    let mut in_kernel = true;
    let mut buf = Vec::new();
    for extent in DataExtents::new(source, len) {
        let extent = extent.map_err(io_error("find the data in", src))?;
        let mut pos = extent.start;
        while pos < extent.end {
            let want = (extent.end - pos).min(CHUNK as u64) as usize;
            let copied = if in_kernel {
                let (mut off_in, mut off_out) = (pos, pos);
                match copy_file_range(source, Some(&mut off_in), out.file(), Some(&mut off_out), want) {
                    Ok(0) => {
                        return Err(io_error("read", src)(std::io::Error::new(
                            std::io::ErrorKind::UnexpectedEof,
                            "the file shrank while it was being copied",
                        )))
                    }
                    Ok(n) => n,
                    Err(Errno::XDEV | Errno::OPNOTSUPP | Errno::NOSYS | Errno::INVAL) => {
                        tracing::debug!("copy_file_range refused; copying through user space");
                        in_kernel = false;
                        continue;
                    }
                    Err(e) => return Err(io_error("copy", src)(e.into())),
                }
            } else {
                buf.resize(CHUNK, 0);
                source
                    .read_exact_at(&mut buf[..want], pos)
                    .map_err(io_error("read", src))?;
                out.file()
                    .write_all_at(&buf[..want], pos)
                    .map_err(io_error("write to", out.path()))?;
                want
            };
            pos += copied as u64;
            progress(pos, len);
        }
    }
    progress(len, len);
    Ok(())
}
