//! `virtkit vnc NAME`: where a running VM's display is served over VNC. Two lines: the
//! address on 127.0.0.1 with this run's password as a `vnc://:PASSWORD@127.0.0.1:PORT` URL
//! (every VNC viewer), then the bundle's `vnc.sock` (owner-only, no password; for clients that
//! speak Unix sockets: `vncdo -s PATH`, TigerVNC's `vncviewer PATH`).

use clap::Args;
use virtkit_manager::bundle::{Access, VNC_SOCKET, VNC_TCP_FILE};

use crate::commands::vms::{home, open, socket_alive};
use crate::exit::CliError;

#[derive(Args)]
pub struct VncArgs {
    pub name: String,
}

pub fn run(args: &VncArgs) -> Result<u8, CliError> {
    let home = home()?;
    let b = open(&home, &args.name)?;
    let name = &args.name;
    if !b.is_running() {
        return Err(CliError::new(format!(
            "`{name}` is not running; start it with a display: `virtkit run {name} --detach --display 1280x800`"
        )));
    }
    let path = b.file(VNC_SOCKET);
    if !socket_alive(&path) {
        return Err(CliError::new(format!(
            "`{name}` runs without a display; stop it and run it with `--display WIDTHxHEIGHT`"
        )));
    }
    let tcp = b
        .open_file(VNC_TCP_FILE, Access::Read)
        .ok()
        .and_then(|f| serde_json::from_reader::<_, serde_json::Value>(f).ok());
    if let Some(tcp) = tcp {
        let address = tcp["address"].as_str().unwrap_or_default();
        let password = tcp["password"].as_str().unwrap_or_default();
        outln!("vnc://:{password}@{address}");
    }
    outln!("{}", path.display());
    Ok(0)
}
