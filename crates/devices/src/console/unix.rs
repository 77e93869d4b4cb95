//! A port on a Unix socket: the device listens on a path and serves one client at a time.
//!
//! A second client that connects while one is served waits in the listen backlog (the listener
//! is not polled meanwhile) and is accepted when the first goes; it is never refused by us
//! (the kernel refuses connections only once the backlog is full).

use std::io::{self, Read};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

use rustix::net::{send, SendFlags};

use super::backend::PortBackend;

#[derive(Debug, thiserror::Error)]
pub enum SocketError {
    #[error("{0} exists and is not a socket; refusing to replace it")]
    NotASocket(PathBuf),
    #[error("cannot remove the stale socket {0}")]
    RemoveStale(PathBuf, #[source] io::Error),
    #[error("cannot listen on {0}")]
    Bind(PathBuf, #[source] io::Error),
    #[error("cannot make {0} private (mode 0600)")]
    Permissions(PathBuf, #[source] io::Error),
}

/// A port whose host side is the client of a listening Unix socket: its bytes go to the guest,
/// the guest's to it. Connected while a client is; a client leaving tells the guest the port
/// closed (`PORT_OPEN 0`). The socket file is removed when the backend is dropped.
#[derive(Debug)]
pub struct UnixSocketPortBackend {
    listener: UnixListener,
    client: Option<UnixStream>,
    path: PathBuf,
}

impl UnixSocketPortBackend {
    /// Listens on `path`, replacing a stale socket left there (never any other kind of file),
    /// with mode 0600: only this user may connect. The mode is set just after `bind`; the
    /// directory is what keeps others out in between, as for any socket a process creates.
    pub fn bind(path: impl AsRef<Path>) -> Result<UnixSocketPortBackend, SocketError> {
        let path = path.as_ref().to_path_buf();
        if let Ok(meta) = std::fs::symlink_metadata(&path) {
            if !meta.file_type().is_socket() {
                return Err(SocketError::NotASocket(path));
            }
            std::fs::remove_file(&path).map_err(|e| SocketError::RemoveStale(path.clone(), e))?;
        }
        let listener = UnixListener::bind(&path).map_err(|e| SocketError::Bind(path.clone(), e))?;
        let private = std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
            .and_then(|()| listener.set_nonblocking(true));
        if let Err(e) = private {
            let _ = std::fs::remove_file(&path);
            return Err(SocketError::Permissions(path, e));
        }
        Ok(UnixSocketPortBackend {
            listener,
            client: None,
            path,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for UnixSocketPortBackend {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

impl PortBackend for UnixSocketPortBackend {
    fn input_fd(&self) -> Option<RawFd> {
        self.client.as_ref().map(|c| c.as_raw_fd())
    }

    fn output_fd(&self) -> Option<RawFd> {
        self.input_fd()
    }

    fn listener_fd(&self) -> Option<RawFd> {
        Some(self.listener.as_raw_fd())
    }

    fn accept(&mut self) -> io::Result<bool> {
        if self.client.is_some() {
            return Ok(true);
        }
        match self.listener.accept() {
            Ok((stream, _)) => {
                stream.set_nonblocking(true)?;
                self.client = Some(stream);
                Ok(true)
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(false),
            Err(e) => Err(e),
        }
    }

    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match &mut self.client {
            Some(client) => client.read(buf),
            None => Ok(0),
        }
    }

    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match &mut self.client {
            // MSG_NOSIGNAL: a client gone away is an EPIPE error here, never a SIGPIPE that
            // would kill the VMM.
            Some(client) => Ok(send(&*client, buf, SendFlags::NOSIGNAL)?),
            None => Err(io::ErrorKind::NotConnected.into()),
        }
    }

    fn connected(&self) -> bool {
        self.client.is_some()
    }

    fn input_ended(&mut self) {
        self.client = None;
    }

    fn output_failed(&mut self) {
        self.client = None;
    }
}
