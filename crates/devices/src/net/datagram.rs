//! [`DatagramBackend`]: one frame per datagram on a connected Unix datagram socket (QEMU's
//! `-netdev dgram` on Unix sockets). The socket keeps the frame boundaries, so nothing is held
//! between calls: a datagram the peer cannot take now is refused whole (`WouldBlock`).

use std::io::{self, IoSlice};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::net::UnixDatagram;
use std::path::Path;

use rustix::net::{recv, send, RecvFlags, SendFlags};

use super::backend::{NetBackend, MAX_FRAME_LEN};

#[derive(Debug)]
pub struct DatagramBackend {
    socket: UnixDatagram,
    /// Frames given in several pieces are gathered here: one `send` (a `sendto` with no
    /// address, which the worker's seccomp filter can tell apart from sending anywhere else).
    staging: Vec<u8>,
}

impl DatagramBackend {
    /// A backend over `socket` (made non-blocking), connected to its peer.
    pub fn new(socket: UnixDatagram) -> io::Result<DatagramBackend> {
        socket.set_nonblocking(true)?;
        Ok(DatagramBackend {
            socket,
            staging: Vec::with_capacity(MAX_FRAME_LEN),
        })
    }

    /// Sends `greeting` as one datagram before any frame (vfkit's `VFKT`, which tells a peer
    /// such as gvproxy where the VM is). Waits for the peer to take it: it is sent once, at
    /// attach, before the guest runs.
    pub fn greet(&self, greeting: &[u8]) -> io::Result<()> {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        loop {
            match send(&self.socket, greeting, SendFlags::NOSIGNAL) {
                Ok(_) => return Ok(()),
                Err(rustix::io::Errno::INTR) => {}
                Err(rustix::io::Errno::AGAIN) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(std::time::Duration::from_millis(10))
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Binds `local` (where the peer sends) and connects to `remote`.
    pub fn connect(local: impl AsRef<Path>, remote: impl AsRef<Path>) -> io::Result<DatagramBackend> {
        let socket = UnixDatagram::bind(local)?;
        socket.connect(remote)?;
        DatagramBackend::new(socket)
    }
}

impl NetBackend for DatagramBackend {
    fn fd(&self) -> BorrowedFd<'_> {
        self.socket.as_fd()
    }

    fn send(&mut self, frame: &[IoSlice<'_>]) -> io::Result<()> {
        let bytes: &[u8] = match frame {
            [one] => one,
            pieces => {
                self.staging.clear();
                for piece in pieces {
                    self.staging.extend_from_slice(piece);
                }
                &self.staging
            }
        };
        loop {
            match send(&self.socket, bytes, SendFlags::NOSIGNAL) {
                Ok(n) if n == bytes.len() => return Ok(()),
                Ok(n) => {
                    return Err(io::Error::other(format!(
                        "the socket took {n} of {} bytes",
                        bytes.len()
                    )))
                }
                Err(rustix::io::Errno::INTR) => {}
                Err(e) => return Err(e.into()),
            }
        }
    }

    fn recv(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            // MSG_TRUNC: the datagram's real length, so a cut one is dropped, not passed on.
            match recv(&self.socket, &mut *buf, RecvFlags::TRUNC) {
                Ok((n, full)) if full > n => {
                    return Err(io::Error::other(format!(
                        "a datagram of {full} bytes; at most {n}"
                    )))
                }
                Ok((n, _)) => return Ok(n),
                Err(rustix::io::Errno::INTR) => {}
                Err(e) => return Err(e.into()),
            }
        }
    }
}
