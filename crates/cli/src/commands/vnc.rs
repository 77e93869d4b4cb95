//! `virtkit vnc NAME`: where a running VM's display is served over VNC (the bundle's `vnc.sock`,
//! owner-only, no password), for a VNC client that speaks Unix sockets (`vncdo -s PATH`,
//! `gvncviewer`, TigerVNC's `vncviewer PATH`).

use clap::Args;
use virtkit_manager::bundle::VNC_SOCKET;

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
    outln!("{}", path.display());
    Ok(0)
}
