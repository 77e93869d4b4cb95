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
    let (stream, _) = virtkit::connect_vsock(&path, args.port, HANDSHAKE_TIMEOUT).map_err(|e| match e {
        virtkit::VsockConnectError::Unreachable { .. } => {
            let hint = if args.name.contains('/') {
                "is the VM that serves it running?".to_owned()
            } else {
                format!(
                    "is the VM running? start it with `virtkit run {} --detach`",
                    args.name
                )
            };
            CliError::with_chain(format!("{e} ({hint})"), &e)
        }
        e => CliError::new(e.to_string()),
    })?;
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
