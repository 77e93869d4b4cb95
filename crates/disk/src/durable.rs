//! Making file system changes durable: what bundles, disk imports and downloads share.

use std::fs::File;
use std::path::Path;

/// Flushes a directory's entries (new names, renames) to disk, so that they survive a crash.
/// An empty path means the current directory.
pub fn sync_dir(dir: &Path) -> std::io::Result<()> {
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    File::open(dir)?.sync_all()
}

/// Flushes the directory that holds `path`.
pub fn sync_parent(path: &Path) -> std::io::Result<()> {
    sync_dir(path.parent().unwrap_or(Path::new(".")))
}
