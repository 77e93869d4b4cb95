//! `virtkit logs NAME`: the serial console output of the VM's current or last run, or with
//! `--vmm` the VM process's own log. Streamed: a log of any size costs a 64 KiB buffer.

use std::fs::{File, OpenOptions};
use std::io::{ErrorKind, Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
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
    /// Show the VM process's own log (vmm.log, after the older part vmm.log.1) instead of the
    /// console.
    #[arg(long)]
    pub vmm: bool,
}

/// Opens a log of the bundle: never through a symbolic link, never blocking on a FIFO, and only
/// a regular file. `None`: there is none yet.
fn open_log(path: &Path) -> Result<Option<File>, CliError> {
    let cannot = |e: &std::io::Error| CliError::with_chain(format!("cannot read {}", path.display()), e);
    let file = match OpenOptions::new()
        .read(true)
        .custom_flags((rustix::fs::OFlags::NOFOLLOW | rustix::fs::OFlags::NONBLOCK).bits() as i32)
        .open(path)
    {
        Ok(f) => f,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(cannot(&e)),
    };
    let meta = file.metadata().map_err(|e| cannot(&e))?;
    if !meta.is_file() {
        return Err(CliError::new(format!(
            "{} is not a regular file; the bundle was tampered with: remove it",
            path.display()
        )));
    }
    Ok(Some(file))
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
    let path = b.file(if args.vmm { VMM_LOG_FILE } else { CONSOLE_LOG_FILE });
    let mut out = std::io::stdout().lock();
    let mut buf = vec![0u8; 64 * 1024];
    if args.vmm {
        let mut older = path.clone().into_os_string();
        older.push(".1");
        let older = PathBuf::from(older);
        if let Some(mut file) = open_log(&older)? {
            if !copy_available(&mut file, &older, &mut out, &mut buf)? {
                return Ok(0);
            }
        }
    }
    let Some(mut file) = open_log(&path)? else {
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
            match open_log(&path)? {
                Some(new) => file = new,
                None => return Ok(0),
            }
            continue;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}
