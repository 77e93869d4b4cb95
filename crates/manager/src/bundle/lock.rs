//! The bundle lock: the process running a VM holds an exclusive `flock` on `<bundle>/lock`
//! for its whole life. The kernel drops it when the process dies, however it dies, so a
//! crashed VM process never leaves a VM that looks running.

use std::fs::{File, OpenOptions};
use std::path::Path;

use rustix::fs::{flock, FlockOperation};

/// An exclusive lock on a bundle; released on drop or process exit.
#[derive(Debug)]
pub struct BundleLock {
    _file: File,
}

/// Takes the lock without waiting. `Ok(None)`: another process holds it.
pub(crate) fn try_lock(path: &Path) -> std::io::Result<Option<BundleLock>> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)?;
    match flock(&file, FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => Ok(Some(BundleLock { _file: file })),
        Err(rustix::io::Errno::WOULDBLOCK) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Whether some process holds the lock now (a momentary answer).
pub(crate) fn is_locked(path: &Path) -> std::io::Result<bool> {
    if !path.exists() {
        return Ok(false);
    }
    Ok(try_lock(path)?.is_none())
}
