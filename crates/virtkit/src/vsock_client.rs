//! The host client's side of a socket device (Firecracker's hybrid scheme): connect to the VM's
//! Unix socket, say `CONNECT <port>\n`, and read `OK <host port>\n`; what `virtkit vsock-proxy`
//! and the guest agent's client use. The answer is read a byte at a time, so nothing of the
//! guest's data is consumed with it.

use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Longest answer line the device sends (`OK 4294967295\n` is 14 bytes).
const ANSWER_MAX: usize = 32;

#[derive(Debug, thiserror::Error)]
pub enum VsockConnectError {
    #[error("cannot reach the vsock socket {path}")]
    Unreachable {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "the guest refused the connection to vsock port {port}: nothing listens there, or the guest \
         has no vsock driver loaded (vmw_vsock_virtio_transport)"
    )]
    Refused { port: u32 },
    #[error(
        "the guest did not answer a connection to vsock port {port} within {} s (its vsock driver \
         may not have started yet)",
        timeout.as_secs()
    )]
    Timeout { port: u32, timeout: Duration },
    #[error("the vsock socket failed")]
    Io(#[source] io::Error),
}

/// A stream connection to the guest's vsock `port` through the socket device's Unix socket at
/// `path`, and the host port the device chose for it. `timeout` bounds the wait for the
/// guest's answer (the device itself gives up after 5 s once its driver runs).
pub fn connect_vsock(
    path: &Path,
    port: u32,
    timeout: Duration,
) -> Result<(UnixStream, u32), VsockConnectError> {
    let mut stream = UnixStream::connect(path).map_err(|source| VsockConnectError::Unreachable {
        path: path.to_owned(),
        source,
    })?;
    stream
        .set_read_timeout(Some(timeout))
        .map_err(VsockConnectError::Io)?;
    stream
        .write_all(format!("CONNECT {port}\n").as_bytes())
        .map_err(VsockConnectError::Io)?;
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    while line.len() < ANSWER_MAX {
        match stream.read(&mut byte) {
            Ok(0) => break,
            Ok(_) if byte[0] == b'\n' => {
                let local = std::str::from_utf8(&line)
                    .ok()
                    .and_then(|l| l.strip_prefix("OK "))
                    .and_then(|p| p.trim_end_matches('\r').parse().ok());
                let Some(local) = local else { break };
                stream.set_read_timeout(None).map_err(VsockConnectError::Io)?;
                return Ok((stream, local));
            }
            Ok(_) => line.push(byte[0]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            // The device closes a refused client's socket; Linux reports ECONNRESET when the
            // line it sent was still unread in the device's buffer at that moment.
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => break,
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {
                return Err(VsockConnectError::Timeout { port, timeout })
            }
            Err(e) => return Err(VsockConnectError::Io(e)),
        }
    }
    Err(VsockConnectError::Refused { port })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixListener;

    fn serve(path: &Path, answer: &'static [u8]) -> std::thread::JoinHandle<Vec<u8>> {
        let listener = UnixListener::bind(path).unwrap();
        std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let mut line = [0u8; 13];
            s.read_exact(&mut line).unwrap();
            s.write_all(answer).unwrap();
            std::thread::sleep(Duration::from_millis(300));
            line.to_vec()
        })
    }

    #[test]
    fn ok_gives_the_stream_and_anything_else_is_a_refusal() {
        let dir = std::env::temp_dir().join(format!("virtkit-vsock-client-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("ok.sock");
        let server = serve(&path, b"OK 1073741825\nguest bytes");
        let (mut stream, local) = connect_vsock(&path, 1024, Duration::from_secs(5)).unwrap();
        assert_eq!(local, 1_073_741_825);
        let mut rest = [0u8; 11];
        stream.read_exact(&mut rest).unwrap();
        assert_eq!(&rest, b"guest bytes", "nothing after the answer was consumed");
        assert_eq!(server.join().unwrap(), b"CONNECT 1024\n");

        let path = dir.join("no.sock");
        let server = serve(&path, b"NO\n");
        let e = connect_vsock(&path, 1024, Duration::from_secs(5)).unwrap_err();
        assert!(matches!(e, VsockConnectError::Refused { port: 1024 }), "{e}");
        server.join().unwrap();

        let e = connect_vsock(&dir.join("none.sock"), 22, Duration::from_secs(1)).unwrap_err();
        assert!(matches!(e, VsockConnectError::Unreachable { .. }), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
