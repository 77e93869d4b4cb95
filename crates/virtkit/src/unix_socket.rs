//! The VM's Unix sockets (`control.sock`, `console.sock`, serial and console-port sockets) are
//! for the user who runs the VM: the socket file is owner-only (0600) whatever the umask, and a
//! server checks each client's credentials (`SO_PEERCRED`) before it serves it, so neither a
//! loose umask nor a loose directory lets another user in.

use std::io;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;

/// Binds a listening socket at `path` with mode 0600. A socket left there (by a process that
/// died) is replaced; any other file is not (binding then fails with `AddrInUse`).
pub fn bind_owner_only(path: &Path) -> io::Result<UnixListener> {
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        use std::os::unix::fs::FileTypeExt;
        if meta.file_type().is_socket() {
            let _ = std::fs::remove_file(path);
        }
    }
    let listener = UnixListener::bind(path)?;
    // The socket's inode is new and ours: chmod cannot follow a link planted after the bind
    // because a planted link would have made the bind fail.
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

/// Whether the peer of `stream` is this process's user or root: the only clients a VM's
/// sockets serve.
pub fn peer_is_owner_or_root(stream: &UnixStream) -> bool {
    match rustix::net::sockopt::socket_peercred(stream) {
        Ok(cred) => {
            let peer = cred.uid.as_raw();
            peer == 0 || peer == rustix::process::geteuid().as_raw()
        }
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn the_socket_is_owner_only_and_our_own_connection_is_served() {
        let path = std::env::temp_dir().join(format!("virtkit-unix-socket-{}.sock", std::process::id()));
        let listener = bind_owner_only(&path).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().mode() & 0o777, 0o600);
        let client = UnixStream::connect(&path).unwrap();
        let (served, _) = listener.accept().unwrap();
        assert!(peer_is_owner_or_root(&served));
        drop(client);
        // A second bind replaces the stale socket; a regular file is left alone.
        drop(listener);
        let _again = bind_owner_only(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        std::fs::write(&path, b"not a socket").unwrap();
        assert!(bind_owner_only(&path).is_err());
        assert_eq!(std::fs::read(&path).unwrap(), b"not a socket");
        std::fs::remove_file(&path).unwrap();
    }
}
