//! `virtkit vsock-proxy NAME PORT`: this process's standard input and output become a stream
//! connection to the guest's vsock port PORT, through the VM's `vsock.sock` (the
//! `CONNECT <port>\n` / `OK <host port>\n` handshake of Firecracker's hybrid scheme). What
//! `ssh -o ProxyCommand='virtkit vsock-proxy NAME 22'` runs. NAME may also be the path of a
//! vsock socket (anything with a `/`), for a VM run with `virtkit run --vsock PATH`.

use std::io::{Read, Write};
use std::net::Shutdown;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use virtkit_manager::bundle::VSOCK_SOCKET;

use crate::commands::vms::{home, open};
use crate::exit::CliError;

/// How long the guest has to accept the connection (the device itself gives up after 5 s).
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Args)]
pub struct VsockProxyArgs {
    /// The VM's name, or the path of a vsock socket (`run --vsock PATH`).
    pub name: String,
    /// The guest's vsock port.
    pub port: u32,
}

pub fn run(args: &VsockProxyArgs) -> Result<u8, CliError> {
    let path = socket_path(&args.name)?;
    let mut stream = UnixStream::connect(&path).map_err(|e| {
        let hint = if args.name.contains('/') {
            "is the VM that serves it running?".to_owned()
        } else {
            format!(
                "is the VM running? start it with `virtkit run {} --detach`",
                args.name
            )
        };
        CliError::with_chain(
            format!("cannot reach the vsock socket {} ({hint})", path.display()),
            &e,
        )
    })?;
    handshake(&mut stream, args.port)?;
    relay(stream)
}

fn socket_path(name: &str) -> Result<PathBuf, CliError> {
    if name.contains('/') {
        return Ok(PathBuf::from(name));
    }
    let home = home()?;
    let b = open(&home, name)?;
    if !b.is_running() {
        return Err(CliError::new(format!(
            "the VM `{name}` is not running; start it with `virtkit run {name} --detach`"
        )));
    }
    Ok(b.file(VSOCK_SOCKET))
}

/// Sends `CONNECT <port>\n` and reads the answer a byte at a time (nothing of the guest's data
/// is read past it).
fn handshake(stream: &mut UnixStream, port: u32) -> Result<(), CliError> {
    let io = |e: std::io::Error| CliError::with_chain("the vsock socket failed", &e);
    stream.set_read_timeout(Some(HANDSHAKE_TIMEOUT)).map_err(io)?;
    stream
        .write_all(format!("CONNECT {port}\n").as_bytes())
        .map_err(io)?;
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    while line.len() < 32 {
        match stream.read(&mut byte) {
            Ok(0) => break,
            Ok(_) if byte[0] == b'\n' => {
                if line.starts_with(b"OK ") {
                    stream.set_read_timeout(None).map_err(io)?;
                    return Ok(());
                }
                break;
            }
            Ok(_) => line.push(byte[0]),
            // The device closes a refused client's socket; Linux reports ECONNRESET when the
            // line it sent was still unread in the device's buffer at that moment.
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                return Err(CliError::new(format!(
                    "the guest did not answer a connection to vsock port {port} within {} s",
                    HANDSHAKE_TIMEOUT.as_secs()
                )))
            }
            Err(e) => return Err(io(e)),
        }
    }
    Err(CliError::new(format!(
        "the guest refused the connection to vsock port {port}: nothing listens there, or the guest \
         has no vsock driver loaded (vmw_vsock_virtio_transport)"
    )))
}

/// Standard input to the guest (its end half-closes the connection), the guest's bytes to
/// standard output until it closes.
fn relay(stream: UnixStream) -> Result<u8, CliError> {
    let mut to_guest = stream
        .try_clone()
        .map_err(|e| CliError::with_chain("cannot use the vsock socket", &e))?;
    std::thread::spawn(move || {
        let _ = std::io::copy(&mut std::io::stdin().lock(), &mut to_guest);
        let _ = to_guest.shutdown(Shutdown::Write);
    });
    let mut from_guest = stream;
    let mut stdout = std::io::stdout().lock();
    let mut buf = vec![0u8; 64 << 10];
    loop {
        let n = match from_guest.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
            Err(e) => return Err(CliError::with_chain("the vsock connection failed", &e)),
        };
        if stdout.write_all(&buf[..n]).and_then(|()| stdout.flush()).is_err() {
            // Nobody reads our output any more.
            break;
        }
    }
    Ok(0)
}
