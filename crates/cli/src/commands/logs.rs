//! `virtkit logs NAME`: the serial console output of the VM's current or last run, or with
//! `--vmm` the VM process's own log. Streamed: a log of any size costs a 64 KiB buffer.

use std::fs::File;
use std::io::{ErrorKind, Read, Write};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::Duration;

use clap::Args;
use virtkit_manager::bundle::{Access, Bundle, CONSOLE_LOG_FILE, VMM_LOG_FILE};

use crate::commands::vms::{bundle_error, home, open};
use crate::exit::CliError;

#[derive(Args)]
pub struct LogsArgs {
    pub name: String,
    /// Keep printing new output while the VM runs.
    #[arg(short, long)]
    pub follow: bool,
    /// Show the VM process's own log (vmm.log, after the older part vmm.log.1) instead of the
    /// console.
    #[arg(long, conflicts_with = "network")]
    pub vmm: bool,
    /// Show the NAT helper's messages (passt's warnings and errors, passt.log for the first
    /// network card, passt-N.log for card N).
    #[arg(long, value_name = "CARD", num_args = 0..=1, default_missing_value = "0")]
    pub network: Option<usize>,
}

/// Opens a log of the bundle (never through a link, never blocking on a FIFO: only a regular
/// file); `None`: there is none yet.
fn open_log(b: &Bundle, file: &str) -> Result<Option<File>, CliError> {
    if std::fs::symlink_metadata(b.file(file)).is_err() {
        return Ok(None);
    }
    b.open_file(file, Access::Read)
        .map(Some)
        .map_err(|e| bundle_error(&e))
}

/// Copies what `file` has from where it is to `out`; false once `out` is gone (a closed pipe).
fn copy_available(
    file: &mut File,
    path: &Path,
    out: &mut impl Write,
    buf: &mut [u8],
) -> Result<bool, CliError> {
    loop {
        let n = match file.read(buf) {
            Ok(0) => return Ok(out.flush().is_ok()),
            Ok(n) => n,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => {
                return Err(CliError::with_chain(
                    format!("cannot read {}", path.display()),
                    &e,
                ));
            }
        };
        if out.write_all(&buf[..n]).is_err() {
            return Ok(false);
        }
    }
}

/// Whether `path` is now another file than `file` (the log was rotated).
fn replaced(path: &Path, file: &File) -> bool {
    match (std::fs::symlink_metadata(path), file.metadata()) {
        (Ok(now), Ok(open)) => now.ino() != open.ino() || now.dev() != open.dev(),
        _ => false,
    }
}

pub fn run(args: &LogsArgs) -> Result<u8, CliError> {
    let home = home()?;
    let b = open(&home, &args.name)?;
    let passt_log = args.network.map(virtkit::passt_log_name);
    let name = match (&passt_log, args.vmm) {
        (Some(passt), _) => passt.as_str(),
        (None, true) => VMM_LOG_FILE,
        (None, false) => CONSOLE_LOG_FILE,
    };
    let path = b.file(name);
    let mut out = std::io::stdout().lock();
    let mut buf = vec![0u8; 64 * 1024];
    if args.vmm {
        let older_name = format!("{VMM_LOG_FILE}.1");
        let older = b.file(&older_name);
        if let Some(mut file) = open_log(&b, &older_name)? {
            if !copy_available(&mut file, &older, &mut out, &mut buf)? {
                return Ok(0);
            }
        }
    }
    let Some(mut file) = open_log(&b, name)? else {
        errln!("virtkit: `{}` has not run yet: no log", args.name);
        return Ok(0);
    };
    loop {
        if !copy_available(&mut file, &path, &mut out, &mut buf)? {
            return Ok(0);
        }
        if !args.follow || !b.is_running() {
            return Ok(0);
        }
        if replaced(&path, &file) {
            // The old file has all it will get (read above); go on with the new one.
            match open_log(&b, name)? {
                Some(new) => file = new,
                None => return Ok(0),
            }
            continue;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}
