//! `virtkit logs NAME`: the serial console output of the VM's current or last run.

use std::io::{Read, Seek, SeekFrom, Write};
use std::time::Duration;

use clap::Args;
use virtkit_manager::bundle::{CONSOLE_LOG_FILE, VMM_LOG_FILE};

use crate::commands::vms::{home, open};
use crate::exit::CliError;

#[derive(Args)]
pub struct LogsArgs {
    pub name: String,
    /// Keep printing new output while the VM runs.
    #[arg(short, long)]
    pub follow: bool,
    /// Show the VM process's own log (vmm.log) instead of the console.
    #[arg(long)]
    pub vmm: bool,
}

pub fn run(args: &LogsArgs) -> Result<u8, CliError> {
    let home = home()?;
    let b = open(&home, &args.name)?;
    let path = b.file(if args.vmm { VMM_LOG_FILE } else { CONSOLE_LOG_FILE });
    let mut file = match std::fs::File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            eprintln!("virtkit: `{}` has not run yet: no log", args.name);
            return Ok(0);
        }
        Err(e) => {
            return Err(CliError::with_chain(
                format!("cannot read {}", path.display()),
                &e,
            ))
        }
    };
    let mut out = std::io::stdout();
    let mut buf = Vec::new();
    let mut offset = 0u64;
    loop {
        buf.clear();
        file.seek(SeekFrom::Start(offset))
            .and_then(|_| file.read_to_end(&mut buf))
            .map_err(|e| CliError::with_chain(format!("cannot read {}", path.display()), &e))?;
        offset += buf.len() as u64;
        if out.write_all(&buf).and_then(|_| out.flush()).is_err() {
            return Ok(0);
        }
        if !args.follow || !b.is_running() {
            return Ok(0);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}
