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

/// Takes ownership of descriptor `fd`, which this process inherited from the program that
/// started it (a socket handed over as `virtkit run --network fd:N`), after checking it is open.
/// Call it once per number, before anything else in the process could have opened (and so own)
/// that number: the CLI does it while parsing its arguments.
pub fn take_inherited_descriptor(fd: std::os::fd::RawFd) -> std::io::Result<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd;
    if fd < 0 {
        return Err(std::io::Error::from_raw_os_error(libc::EBADF));
    }
    // SAFETY: F_GETFD only reads the descriptor's flags; any number is safe to ask about.
    if unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the descriptor is open (checked above) and was inherited, so no object in this
    // process owns it yet (the caller takes each number once, before opening anything that could
    // have reused it); from here the returned `OwnedFd` is its only owner.
    Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) })
}
