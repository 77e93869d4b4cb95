//! The bundle lock: the process running a VM holds an exclusive `flock` on `<bundle>/lock`
//! for its whole life. The kernel drops it when the process dies, however it dies, so a
//! crashed VM process never leaves a VM that looks running. The file is owner-only (0600):
//! anyone who can open it can take the lock and so block `run` and `delete`.

use std::fs::File;
use std::path::Path;

use rustix::fs::{flock, FlockOperation, Mode, OFlags};

/// An exclusive lock on a bundle; released on drop or process exit.
#[derive(Debug)]
pub struct BundleLock {
    _file: File,
}

/// Takes the lock on the opened lock file without waiting. `Ok(None)`: another process holds it.
pub(crate) fn try_lock(file: File) -> std::io::Result<Option<BundleLock>> {
    match flock(&file, FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => Ok(Some(BundleLock { _file: file })),
        Err(rustix::io::Errno::WOULDBLOCK) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Whether some process holds the lock at `path` now (a momentary answer). The file is opened
/// as it is, never created and never through a link.
pub(crate) fn is_locked(path: &Path) -> std::io::Result<bool> {
    let flags = OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::NOCTTY;
    let file = match rustix::fs::open(path, flags, Mode::empty()) {
        Ok(fd) => File::from(fd),
        Err(rustix::io::Errno::NOENT) => return Ok(false),
        Err(e) => return Err(e.into()),
    };
    if !file.metadata()?.is_file() {
        return Ok(false);
    }
    Ok(try_lock(file)?.is_none())
}
