//! The console hub of a VM process: the guest's serial output goes to the bundle's
//! `console.log`, to every client of `console.sock` and, in the foreground, to this terminal;
//! what any client types goes to the guest.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustix::event::{poll, PollFd, PollFlags, Timespec};

/// Where guest output goes and where guest input comes from.
pub struct ConsoleHub {
    clients: Arc<Mutex<Vec<UnixStream>>>,
    guest_input: Arc<Mutex<File>>,
}

/// The output pump; [`OutputPump::finish`] returns once it has written everything the guest
/// wrote before the machine stopped.
pub struct OutputPump {
    thread: std::thread::JoinHandle<()>,
    machine_stopped: Arc<AtomicBool>,
}

/// How long the pipe must stay empty, after the machine stopped, to count as drained.
const DRAIN_QUIET: Duration = Duration::from_millis(50);

impl OutputPump {
    /// Call after the machine stopped: no more output can come, so once the pipe is empty the
    /// pump is done (the pipe's write end may outlive the machine, so EOF is not awaited).
    pub fn finish(self) {
        self.machine_stopped.store(true, Ordering::SeqCst);
        let _ = self.thread.join();
    }
}

/// Waits until `file` is readable; false if nothing came within `timeout`.
fn readable(file: &File, timeout: Duration) -> bool {
    let mut fds = [PollFd::new(file, PollFlags::IN)];
    let timeout = Timespec::try_from(timeout).ok();
    matches!(poll(&mut fds, timeout.as_ref()), Ok(n) if n > 0)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl ConsoleHub {
    /// Starts pumping `guest_output` (the serial port's output pipe) into `log`, the clients
    /// and `echo` (the terminal, in the foreground). `guest_input` is the serial port's input
    /// pipe.
    pub fn start(
        guest_output: OwnedFd,
        guest_input: OwnedFd,
        mut log: File,
        mut echo: Option<Box<dyn Write + Send>>,
    ) -> std::io::Result<(ConsoleHub, OutputPump)> {
        let clients: Arc<Mutex<Vec<UnixStream>>> = Arc::default();
        let out_clients = clients.clone();
        let mut output = File::from(guest_output);
        let machine_stopped = Arc::new(AtomicBool::new(false));
        let stopped = machine_stopped.clone();
        let thread = std::thread::Builder::new()
            .name("console-out".into())
            .spawn(move || {
                let mut buf = [0u8; 4096];
                loop {
                    if !readable(&output, DRAIN_QUIET) {
                        if stopped.load(Ordering::SeqCst) {
                            return;
                        }
                        continue;
                    }
                    let n = match output.read(&mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => n,
                    };
                    let bytes = &buf[..n];
                    // The log is what `virtkit logs` shows: keep writing it even if a client stalls.
                    let _ = log.write_all(bytes);
                    if let Some(e) = echo.as_mut() {
                        let _ = e.write_all(bytes).and_then(|_| e.flush());
                    }
                    lock(&out_clients).retain_mut(|c| c.write_all(bytes).is_ok());
                }
            })?;
        Ok((
            ConsoleHub {
                clients,
                guest_input: Arc::new(Mutex::new(File::from(guest_input))),
            },
            OutputPump {
                thread,
                machine_stopped,
            },
        ))
    }

    /// Copies everything read from `source` to the guest until it ends.
    pub fn feed_from(&self, mut source: impl Read + Send + 'static) -> std::io::Result<()> {
        let input = self.guest_input.clone();
        std::thread::Builder::new()
            .name("console-in".into())
            .spawn(move || {
                let mut buf = [0u8; 512];
                while let Ok(n) = source.read(&mut buf) {
                    if n == 0 || lock(&input).write_all(&buf[..n]).is_err() {
                        return;
                    }
                }
            })?;
        Ok(())
    }

    /// Serves `console.sock`: each client gets the output from now on, and its input goes to
    /// the guest.
    pub fn serve(&self, path: &Path) -> std::io::Result<()> {
        let _ = std::fs::remove_file(path);
        let listener = UnixListener::bind(path)?;
        let clients = self.clients.clone();
        let input = self.guest_input.clone();
        std::thread::Builder::new()
            .name("console-sock".into())
            .spawn(move || {
                for stream in listener.incoming().filter_map(|s| s.ok()) {
                    let Ok(reader) = stream.try_clone() else { continue };
                    lock(&clients).push(stream);
                    let input = input.clone();
                    let _ = std::thread::Builder::new()
                        .name("console-client".into())
                        .spawn(move || {
                            let mut reader = reader;
                            let mut buf = [0u8; 512];
                            while let Ok(n) = reader.read(&mut buf) {
                                if n == 0 || lock(&input).write_all(&buf[..n]).is_err() {
                                    return;
                                }
                            }
                        });
                }
            })?;
        Ok(())
    }
}
