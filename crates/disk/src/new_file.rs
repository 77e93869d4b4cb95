//! A destination file that exists whole or not at all.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};

use super::error::{io_error, DiskImageError};

/// A file created for an import or a clone: never an existing file, removed again when dropped
/// before [`NewFile::finish`] (an error, or a panic), so a failed import leaves nothing behind.
pub(crate) struct NewFile {
    file: File,
    path: PathBuf,
    finished: bool,
}

impl NewFile {
    /// Creates `path`, which must not exist, for reading and writing.
    pub(crate) fn create(path: &Path) -> Result<NewFile, DiskImageError> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(path)
            .map_err(|source| match source.kind() {
                io::ErrorKind::AlreadyExists => DiskImageError::DestinationExists {
                    path: path.to_owned(),
                },
                _ => io_error("create", path)(source),
            })?;
        Ok(NewFile {
            file,
            path: path.to_owned(),
            finished: false,
        })
    }

    pub(crate) fn file(&self) -> &File {
        &self.file
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Makes the file durable: its data and size, then its directory entry.
    pub(crate) fn finish(mut self) -> Result<(), DiskImageError> {
        self.file.sync_all().map_err(io_error("flush", &self.path))?;
        crate::durable::sync_parent(&self.path).map_err(io_error("flush the directory of", &self.path))?;
        self.finished = true;
        Ok(())
    }
}

impl Drop for NewFile {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        match fs::remove_file(&self.path) {
            Ok(()) => tracing::debug!(path = %self.path.display(), "removed the unfinished file"),
            Err(e) => tracing::warn!(path = %self.path.display(), "cannot remove the unfinished file: {e}"),
        }
    }
}
