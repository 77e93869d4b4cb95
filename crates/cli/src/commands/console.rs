//! `virtkit console NAME [--port PORT]`: attach this terminal to a running VM's console, or to
//! one of its named virtio-console ports.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::sync::mpsc::channel;

use clap::Args;
use virtkit_manager::bundle::{Bundle, CONSOLE_SOCKET};

use crate::commands::vms::{home, open};
use crate::exit::CliError;
use crate::terminal::{forward_stdin_with_escape, stdin_is_terminal, RawMode};

#[derive(Args)]
pub struct ConsoleArgs {
    pub name: String,
    /// A named virtio-console port of the VM (`create --port`) instead of its console.
    #[arg(long)]
    pub port: Option<String>,
}

pub fn run(args: &ConsoleArgs) -> Result<u8, CliError> {
    let home = home()?;
    let b = open(&home, &args.name)?;
    if !b.is_running() {
        return Err(CliError::new(format!(
            "the VM `{0}` is not running; start it with `virtkit run {0} --detach`, or read its last output with `virtkit logs {0}`",
            args.name
        )));
    }
    let (path, what) = match &args.port {
        None => (b.file(CONSOLE_SOCKET), "the console".to_owned()),
        Some(port) => (
            b.path().join(Bundle::port_socket(port)),
            format!("the port `{port}`"),
        ),
    };
    let stream = UnixStream::connect(&path).map_err(|e| {
        CliError::with_chain(
            format!(
                "cannot attach to {what} of `{}` (ports are made with `virtkit create --port NAME`)",
                args.name
            ),
            &e,
        )
    })?;
    let mut to_guest = stream
        .try_clone()
        .map_err(|e| CliError::with_chain("cannot use the console socket", &e))?;
    let (done_tx, done_rx) = channel::<&'static str>();

    let mut raw_mode = None;
    if stdin_is_terminal() {
        let (quit_tx, quit_rx) = channel();
        let input = forward_stdin_with_escape(quit_tx)
            .map_err(|e| CliError::with_chain("cannot read the terminal", &e))?;
        let detach = done_tx.clone();
        std::thread::spawn(move || {
            if quit_rx.recv().is_ok() {
                let _ = detach.send("detached");
            }
        });
        std::thread::spawn(move || {
            let _ = std::io::copy(&mut std::fs::File::from(input), &mut to_guest);
        });
        raw_mode = Some(
            RawMode::enter().map_err(|e| CliError::with_chain("cannot put the terminal in raw mode", &e))?,
        );
        err!(
            "virtkit: attached to `{}`; Ctrl-A x detaches (the VM keeps running)\r\n",
            args.name
        );
    } else {
        // Piped input goes to the guest; its end does not detach (output keeps coming).
        std::thread::spawn(move || {
            let _ = std::io::copy(&mut std::io::stdin(), &mut to_guest);
        });
    }

    let mut from_guest = stream;
    let ended = done_tx;
    std::thread::spawn(move || {
        let mut out = std::io::stdout();
        let mut buf = [0u8; 4096];
        loop {
            match from_guest.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if out.write_all(&buf[..n]).and_then(|_| out.flush()).is_err() {
                        break;
                    }
                }
            }
        }
        let _ = ended.send("the VM stopped");
    });
    let why = done_rx.recv().unwrap_or("the VM stopped");
    drop(raw_mode);
    errln!("\nvirtkit: {why}");
    Ok(0)
}
