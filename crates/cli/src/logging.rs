//! The CLI's log (`VIRTKIT_LOG`): lines go through a bounded buffer to a thread that writes them,
//! so no thread — a vCPU above all — waits on standard error, and a write that fails (a closed
//! pipe, `/dev/full`, a full disk) drops the line instead of aborting the process. The detached
//! VM process writes `vmm.log` in its bundle, which is rotated by size (`vmm.log.1` keeps the
//! previous part), so a chatty or hostile client cannot fill the disk through it.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Duration;

use tracing_subscriber::fmt::MakeWriter;
use virtkit::buffered_output::{BufferedOutput, DrainThread};

/// How many bytes of log lines may wait for standard error.
const LOG_BUFFER: usize = 1 << 20;

/// `vmm.log` is rotated when it would grow past this; with `vmm.log.1` the VM process's log
/// takes at most twice this on disk.
pub const VMM_LOG_MAX: u64 = 4 << 20;

/// Overrides [`VMM_LOG_MAX`] (bytes, at least 4096): a smaller log on a small disk, a larger
/// one when debugging.
pub const VMM_LOG_MAX_ENV: &str = "VIRTKIT_VMM_LOG_MAX";

fn vmm_log_max() -> u64 {
    std::env::var(VMM_LOG_MAX_ENV)
        .ok()
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map_or(VMM_LOG_MAX, |v| v.max(4096))
}

/// Where log lines go.
pub enum LogTarget {
    /// Standard error, as it is.
    Stderr,
    /// Standard error, which is the file `path` (the detached VM process's `vmm.log`), rotated
    /// by size.
    RotatedStderr { path: PathBuf },
}

static OUTPUT: OnceLock<BufferedOutput> = OnceLock::new();

struct LogWriter(BufferedOutput);

impl<'a> MakeWriter<'a> for LogWriter {
    type Writer = BufferedOutput;
    fn make_writer(&'a self) -> BufferedOutput {
        self.0.clone()
    }
}

/// Installs the global subscriber. Without a working log thread it logs straight to standard
/// error, still never panicking on a failed write.
pub fn init(target: LogTarget) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("VIRTKIT_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let ansi = matches!(target, LogTarget::Stderr) && io::IsTerminal::is_terminal(&io::stderr());
    let sink: Box<dyn Write + Send> = match target {
        LogTarget::Stderr => Box::new(io::stderr()),
        LogTarget::RotatedStderr { path } => Box::new(RotatedStderr::new(path)),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_target(false)
        // Its default reports a failed write with `eprintln!`, which panics when standard error
        // is what failed.
        .log_internal_errors(false);
    match BufferedOutput::spawn(sink, LOG_BUFFER, "log", DrainThread::Plain) {
        Ok(output) => {
            let _ = OUTPUT.set(output.clone());
            builder.with_writer(LogWriter(output)).init();
        }
        Err(_) => builder.with_writer(io::stderr).init(),
    }
}

/// Before the process ends: waits (a little) for buffered lines to be written, and says how much
/// of the log was lost, if any was.
pub fn finish() {
    if let Some(output) = OUTPUT.get() {
        let dropped = output.dropped();
        if dropped > 0 {
            tracing::warn!(
                bytes = dropped,
                "log lines were dropped: the log could not be written"
            );
        }
        output.flush_for(Duration::from_secs(1));
    }
}

/// Standard error as the file `path`: when the next line would take it past [`VMM_LOG_MAX`], the
/// file becomes `path.1` (replacing the one before) and a new `path` becomes standard error
/// (panic messages go there too).
struct RotatedStderr {
    path: PathBuf,
    written: u64,
    max: u64,
}

impl RotatedStderr {
    fn new(path: PathBuf) -> RotatedStderr {
        let written = std::fs::symlink_metadata(&path).map(|m| m.len()).unwrap_or(0);
        RotatedStderr {
            path,
            written,
            max: vmm_log_max(),
        }
    }

    fn rotate(&mut self) -> io::Result<()> {
        let mut old = self.path.clone().into_os_string();
        old.push(".1");
        std::fs::rename(&self.path, &old)?;
        let file: File = OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
            .open(&self.path)?;
        rustix::stdio::dup2_stderr(&file)?;
        self.written = 0;
        Ok(())
    }
}

impl Write for RotatedStderr {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        if self.written + bytes.len() as u64 > self.max && self.written > 0 {
            // Not rotated (the bundle is read-only, say): keep writing where it is.
            let _ = self.rotate();
        }
        let n = io::stderr().write(bytes)?;
        self.written += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
