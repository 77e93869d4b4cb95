//! The host side of the device, behind [`VsockHost`]: where host clients come from and how a
//! guest's connection to the host reaches a host service. [`UnixHost`] is Firecracker's hybrid
//! scheme: a listening Unix socket (`vsock.sock`) whose clients say `CONNECT <port>\n`, and
//! `<path>_<port>` for the guest's connections to host port `<port>`. Everything is
//! non-blocking: the worker never waits on a host peer.

use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

use rustix::net::{send, SendFlags, Shutdown};

/// One connection's host end: a non-blocking byte stream.
pub trait HostStream: Read + Write + AsRawFd + Send {
    /// Tells the host peer no more bytes come (a half close).
    fn shutdown_write(&self) -> io::Result<()>;
}

/// Where the device's connections meet the host.
pub trait VsockHost: Send {
    type Stream: HostStream;
    /// The descriptor to wait on for new host clients (`None`: there are none).
    fn listener_fd(&self) -> Option<RawFd>;
    /// A new host client, non-blocking; `Ok(None)` when none waits.
    fn accept(&mut self) -> io::Result<Option<Self::Stream>>;
    /// Connects to the host service on `port` for the guest, without blocking; an error when
    /// nothing listens there (the guest then gets an RST).
    fn connect(&mut self, port: u32) -> io::Result<Self::Stream>;
}

#[derive(Debug, thiserror::Error)]
pub enum HostError {
    #[error("{0} exists and is not a socket; refusing to replace it")]
    NotASocket(PathBuf),
    #[error("cannot listen on {0}")]
    Bind(PathBuf, #[source] io::Error),
    #[error("cannot make {0} private (mode 0600)")]
    Permissions(PathBuf, #[source] io::Error),
}

/// A Unix stream socket as a connection's host end; written with `send(MSG_NOSIGNAL)`, so a
/// peer gone away is an error here, never a SIGPIPE.
#[derive(Debug)]
pub struct UnixHostStream(UnixStream);

impl UnixHostStream {
    pub fn new(stream: UnixStream) -> io::Result<UnixHostStream> {
        stream.set_nonblocking(true)?;
        Ok(UnixHostStream(stream))
    }
}

impl Read for UnixHostStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.read(buf)
    }
}

impl Write for UnixHostStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        Ok(send(&self.0, buf, SendFlags::NOSIGNAL)?)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl AsRawFd for UnixHostStream {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }
}

impl HostStream for UnixHostStream {
    fn shutdown_write(&self) -> io::Result<()> {
        Ok(rustix::net::shutdown(&self.0, Shutdown::Write)?)
    }
}

/// Firecracker's hybrid scheme on a Unix socket at `path` (mode 0600; clients of another user
/// than ours, or root, are closed at once).
#[derive(Debug)]
pub struct UnixHost {
    listener: UnixListener,
    path: PathBuf,
}

impl UnixHost {
    /// Listens on `path`, replacing a stale socket (never any other kind of file).
    pub fn bind(path: impl AsRef<Path>) -> Result<UnixHost, HostError> {
        let path = path.as_ref().to_path_buf();
        if let Ok(meta) = std::fs::symlink_metadata(&path) {
            if !meta.file_type().is_socket() {
                return Err(HostError::NotASocket(path));
            }
            let _ = std::fs::remove_file(&path);
        }
        let listener = UnixListener::bind(&path).map_err(|e| HostError::Bind(path.clone(), e))?;
        let private = std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
            .and_then(|()| listener.set_nonblocking(true));
        if let Err(e) = private {
            let _ = std::fs::remove_file(&path);
            return Err(HostError::Permissions(path, e));
        }
        Ok(UnixHost { listener, path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Where the guest's connections to host port `port` go: `<path>_<port>`.
    pub fn port_path(&self, port: u32) -> PathBuf {
        let mut name = self.path.clone().into_os_string();
        name.push(format!("_{port}"));
        PathBuf::from(name)
    }
}

impl Drop for UnixHost {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Whether the peer is this process's user or root.
fn peer_is_owner_or_root(stream: &UnixStream) -> bool {
    match rustix::net::sockopt::socket_peercred(stream) {
        Ok(cred) => {
            let peer = cred.uid.as_raw();
            peer == 0 || peer == rustix::process::geteuid().as_raw()
        }
        Err(_) => false,
    }
}

impl VsockHost for UnixHost {
    type Stream = UnixHostStream;

    fn listener_fd(&self) -> Option<RawFd> {
        Some(self.listener.as_raw_fd())
    }

    fn accept(&mut self) -> io::Result<Option<UnixHostStream>> {
        loop {
            match self.listener.accept() {
                Ok((stream, _)) => {
                    if !peer_is_owner_or_root(&stream) {
                        tracing::warn!("virtio-vsock: a client of another user was refused");
                        continue;
                    }
                    return UnixHostStream::new(stream).map(Some);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(None),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
    }

    fn connect(&mut self, port: u32) -> io::Result<UnixHostStream> {
        use rustix::net::{AddressFamily, SocketAddrUnix, SocketFlags, SocketType};
        let path = self.port_path(port);
        let fd: OwnedFd = rustix::net::socket_with(
            AddressFamily::UNIX,
            SocketType::STREAM,
            SocketFlags::NONBLOCK | SocketFlags::CLOEXEC,
            None,
        )?;
        let address = SocketAddrUnix::new(&path)?;
        // A Unix socket connects at once or not at all (EAGAIN: the listener's backlog is
        // full): either way the worker does not wait.
        rustix::net::connect(&fd, &address)?;
        Ok(UnixHostStream(UnixStream::from(fd)))
    }
}
