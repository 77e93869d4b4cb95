//! Where a port's bytes go on the host: the [`PortBackend`] trait the worker drives, and
//! [`FdPortBackend`] over plain file descriptors (stdio, pipes, files).
//!
//! Every backend is non-blocking: the worker waits for its descriptors in epoll and must never
//! block in `read` or `write`, or one slow peer would stall every port of the device.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};

use rustix::fs::{fcntl_getfl, fcntl_setfl, OFlags};

/// The host side of one console port, driven by the device's worker thread.
///
/// `read` and `write` must not block: they return `ErrorKind::WouldBlock` instead, and the
/// worker waits for [`PortBackend::input_fd`] / [`PortBackend::output_fd`] in epoll. The
/// descriptors may change when a client connects or goes away; the worker asks again after
/// every call that can change them (`accept`, `input_ended`, `output_failed`).
pub trait PortBackend: Send {
    /// Readable when host input waits (or the input ended). `None`: no input now.
    fn input_fd(&self) -> Option<RawFd>;
    /// Writable when output that would have blocked can go on. `None`: no output now.
    fn output_fd(&self) -> Option<RawFd>;
    /// Readable when a client waits to connect; only asked while not [`connected`](Self::connected).
    fn listener_fd(&self) -> Option<RawFd> {
        None
    }
    /// Takes a waiting client, if any; `Ok(true)` when one is now connected.
    fn accept(&mut self) -> io::Result<bool> {
        Ok(false)
    }
    /// Reads host input; `Ok(0)` is the end of the input.
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize>;
    /// Writes guest output.
    fn write(&mut self, buf: &[u8]) -> io::Result<usize>;
    /// Whether guest output has somewhere to go: the guest sees the port open (`PORT_OPEN`) only
    /// then, and output while it is not is dropped.
    fn connected(&self) -> bool;
    /// The input ended (`read` returned 0 or failed): stop offering it.
    fn input_ended(&mut self);
    /// A write failed for good (the reader went away): stop taking output.
    fn output_failed(&mut self);
}

/// A port on a pair of file descriptors, either optional: stdin/stdout, two pipes, an output
/// file, a character device. It is connected while it has an output.
///
/// The descriptors are made non-blocking (`O_NONBLOCK`) and given back their flags when the
/// backend is dropped. `O_NONBLOCK` belongs to the open file, so it is seen by every process
/// sharing it (a terminal's stdin, for one) while the backend lives. Regular files cannot be
/// waited for in epoll; the worker reads them as fast as the guest takes the bytes.
#[derive(Debug)]
pub struct FdPortBackend {
    input: Option<NonBlocking>,
    output: Option<NonBlocking>,
}

/// A file made non-blocking, its old flags restored on drop.
#[derive(Debug)]
struct NonBlocking {
    file: File,
    old_flags: OFlags,
}

impl NonBlocking {
    fn new(fd: OwnedFd) -> io::Result<NonBlocking> {
        let old_flags = fcntl_getfl(&fd)?;
        fcntl_setfl(&fd, old_flags | OFlags::NONBLOCK)?;
        Ok(NonBlocking {
            file: File::from(fd),
            old_flags,
        })
    }
}

impl Drop for NonBlocking {
    fn drop(&mut self) {
        let _ = fcntl_setfl(self.file.as_fd(), self.old_flags);
    }
}

impl FdPortBackend {
    /// A port reading host input from `input` and writing guest output to `output`.
    pub fn new(input: Option<OwnedFd>, output: Option<OwnedFd>) -> io::Result<FdPortBackend> {
        Ok(FdPortBackend {
            input: input.map(NonBlocking::new).transpose()?,
            output: output.map(NonBlocking::new).transpose()?,
        })
    }

    /// A port on this process's stdin and stdout (duplicated; see the type's note on
    /// `O_NONBLOCK`). A terminal stays in whatever mode the caller set (raw or not).
    pub fn stdio() -> io::Result<FdPortBackend> {
        let input = io::stdin().as_fd().try_clone_to_owned()?;
        let output = io::stdout().as_fd().try_clone_to_owned()?;
        FdPortBackend::new(Some(input), Some(output))
    }

    /// Guest output only, to `output` (a log file, a pipe); no host input.
    pub fn output_only(output: OwnedFd) -> io::Result<FdPortBackend> {
        FdPortBackend::new(None, Some(output))
    }
}

impl PortBackend for FdPortBackend {
    fn input_fd(&self) -> Option<RawFd> {
        self.input.as_ref().map(|i| i.file.as_raw_fd())
    }

    fn output_fd(&self) -> Option<RawFd> {
        self.output.as_ref().map(|o| o.file.as_raw_fd())
    }

    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match &mut self.input {
            Some(input) => input.file.read(buf),
            None => Ok(0),
        }
    }

    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match &mut self.output {
            Some(output) => output.file.write(buf),
            None => Err(io::ErrorKind::NotConnected.into()),
        }
    }

    fn connected(&self) -> bool {
        self.output.is_some()
    }

    fn input_ended(&mut self) {
        self.input = None;
    }

    fn output_failed(&mut self) {
        self.output = None;
    }
}
