//! Descriptors a process did not open itself. A detached VM process lives for days; every
//! descriptor it inherited from whoever started `virtkit run --detach` (a shell's redirection, a
//! test harness's pipe, a CI runner's log) stays open for that long: a pipe reader never sees its
//! end (`$(virtkit run vm --detach)` would hang), a deleted file's space never comes back, and the
//! VM process holds what it has no business holding.

/// Closes every descriptor above standard error. Call it first thing in a process that was
/// started to run detached, before anything in it opens a descriptor of its own.
pub fn close_inherited_descriptors() -> std::io::Result<()> {
    // SAFETY: `close_range` only closes descriptors. The caller runs this before the process has
    // opened any descriptor of its own, so no object in this process owns one of those closed
    // (nothing is closed twice or used after closing).
    let result = unsafe { libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32) };
    if result == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}
