//! The console hub of a VM process: the guest's serial output goes to the bundle's
//! `console.log`, to every client of `console.sock` and, in the foreground, to this terminal;
//! what any client types goes to the guest.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::{Arc, Mutex};

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
    /// Closed by `finish`: the pump then drains the pipe and ends. It sleeps in `poll` on this
    /// and the output pipe, so an idle console costs no wake-ups.
    machine_stopped: std::io::PipeWriter,
}

impl OutputPump {
    /// Call after the machine stopped: no more output can come, so once the pipe is empty the
    /// pump is done (the pipe's write end may outlive the machine, so EOF is not awaited).
    pub fn finish(self) {
        drop(self.machine_stopped);
        let _ = self.thread.join();
    }
}

/// Whether `output` has bytes (or its end) to read: waits for that or for `stop` to close;
/// `wait` false only looks.
fn output_ready(output: &File, stop: &impl std::os::fd::AsFd, wait: bool) -> bool {
    let mut fds = [
        PollFd::new(output, PollFlags::IN),
        PollFd::new(stop, PollFlags::IN),
    ];
    let timeout = (!wait).then(Timespec::default);
    loop {
        match poll(&mut fds, timeout.as_ref()) {
            Err(rustix::io::Errno::INTR) => continue,
            Err(_) => return false,
            Ok(_) => return !fds[0].revents().is_empty(),
        }
    }
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
        let (stop, machine_stopped) = std::io::pipe()?;
        let thread = virtkit_sandbox::Builder::new(virtkit_sandbox::ThreadRole::ConsoleOutput)
            .name("console-out".into())
            .spawn(move || {
                let mut buf = [0u8; 4096];
                let mut stopping = false;
                loop {
                    if !output_ready(&output, &stop, !stopping) {
                        if stopping {
                            return;
                        }
                        // Woken by `finish` with nothing to read: drain what is left, then end.
                        stopping = true;
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
        virtkit_sandbox::Builder::new(virtkit_sandbox::ThreadRole::ConsoleInput)
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
        virtkit_sandbox::Builder::new(virtkit_sandbox::ThreadRole::ConsoleSocket)
            .name("console-sock".into())
            .spawn(move || {
                for stream in listener.incoming().filter_map(|s| s.ok()) {
                    let Ok(reader) = stream.try_clone() else { continue };
                    lock(&clients).push(stream);
                    let input = input.clone();
                    let _ = virtkit_sandbox::Builder::new(virtkit_sandbox::ThreadRole::ConsoleClient)
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
