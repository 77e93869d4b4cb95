//! A console on a Unix socket: the guest's output goes to the connected clients (and, as
//! configured, to a log file, a terminal and a history a new client gets first); what a client
//! types goes to the guest. One implementation for both users: a serial port attached to a Unix
//! socket ([`crate::SerialAttachment::UnixSocket`]: one client at a time, nothing kept while
//! none is connected) and the VM manager's console hub (`console.sock`: many clients, every byte
//! in `console.log`, the terminal in the foreground).

use std::collections::VecDeque;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use rustix::event::{poll, PollFd, PollFlags, Timespec};

/// How many clients may be connected at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConsoleClients {
    /// One at a time; the next waits (in the socket's backlog) until it leaves.
    One,
    /// Any number: each gets the output, and all their input goes to the guest.
    Many,
}

/// What a [`ConsoleServer`] does besides serving its socket.
pub struct ConsoleServerOptions {
    pub clients: ConsoleClients,
    /// Gets every byte of output, whether or not a client is connected; kept written even when a
    /// client stalls.
    pub log: Option<File>,
    /// Also gets the output (a terminal, in the foreground).
    pub echo: Option<Box<dyn Write + Send>>,
    /// How many bytes of the latest output a new client gets first; 0: a client gets the
    /// output from when it connects.
    pub history: usize,
    /// The name of the thread that accepts clients (per-thread policies go by name).
    pub thread_name: &'static str,
}

impl ConsoleServerOptions {
    /// One client at a time, no log, no history.
    pub fn one_client(thread_name: &'static str) -> ConsoleServerOptions {
        ConsoleServerOptions {
            clients: ConsoleClients::One,
            log: None,
            echo: None,
            history: 0,
            thread_name,
        }
    }

    /// Many clients, no log, no history.
    pub fn many_clients(thread_name: &'static str) -> ConsoleServerOptions {
        ConsoleServerOptions {
            clients: ConsoleClients::Many,
            ..ConsoleServerOptions::one_client(thread_name)
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Where output goes.
struct Outputs {
    log: Option<File>,
    echo: Option<Box<dyn Write + Send>>,
    history: VecDeque<u8>,
    history_len: usize,
    clients: Vec<UnixStream>,
}

struct Shared {
    clients: ConsoleClients,
    outputs: Mutex<Outputs>,
    guest_input: Mutex<Box<dyn Write + Send>>,
}

impl Shared {
    fn write_output(&self, bytes: &[u8]) {
        let mut out = lock(&self.outputs);
        if let Some(log) = out.log.as_mut() {
            let _ = log.write_all(bytes);
        }
        if let Some(e) = out.echo.as_mut() {
            let _ = e.write_all(bytes).and_then(|_| e.flush());
        }
        if out.history_len > 0 {
            out.history.extend(bytes);
            let excess = out.history.len().saturating_sub(out.history_len);
            out.history.drain(..excess);
        }
        out.clients.retain_mut(|c| c.write_all(bytes).is_ok());
    }

    /// Registers a client, after sending it the history.
    fn add_client(&self, mut stream: UnixStream) {
        let mut out = lock(&self.outputs);
        let (a, b) = out.history.as_slices();
        if stream.write_all(a).and_then(|_| stream.write_all(b)).is_ok() {
            out.clients.push(stream);
        }
    }

    /// Copies everything read from `reader` to the guest until it ends or `stop` closes.
    fn forward_input(&self, mut reader: impl Read + AsFd, stop: Option<&impl AsFd>) {
        let mut buf = [0u8; 1024];
        loop {
            if let Some(stop) = stop {
                if !wait_readable(&reader, stop) {
                    return;
                }
            }
            match reader.read(&mut buf) {
                Ok(0) => return,
                Ok(n) => {
                    if lock(&self.guest_input).write_all(&buf[..n]).is_err() {
                        return;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return,
            }
        }
    }
}

/// Waits until `fd` has something to read (or its end): true; or until `stop` closes: false.
fn wait_readable(fd: &impl AsFd, stop: &impl AsFd) -> bool {
    let mut fds = [PollFd::new(fd, PollFlags::IN), PollFd::new(stop, PollFlags::IN)];
    loop {
        match poll(&mut fds, None) {
            Err(rustix::io::Errno::INTR) => continue,
            Err(_) => return false,
            Ok(_) => return fds[1].revents().is_empty() && !fds[0].revents().is_empty(),
        }
    }
}

/// Whether `output` has bytes (or its end) to read: waits for that or for `stop` to close;
/// `wait` false only looks.
fn output_ready(output: &File, stop: &impl AsFd, wait: bool) -> bool {
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

/// The socket being served: closing `stop` ends the accepting thread.
struct Listening {
    stop: Option<io::PipeWriter>,
    thread: Option<JoinHandle<()>>,
    path: PathBuf,
}

/// A console server: see the module documentation. Dropping it stops serving, disconnects the
/// clients and removes the socket file.
pub struct ConsoleServer {
    shared: Arc<Shared>,
    thread_name: &'static str,
    listening: Option<Listening>,
}

/// Writes to every output of a [`ConsoleServer`]; give it to whatever produces guest output.
/// Writes never fail: a client whose connection fails is dropped.
#[derive(Clone)]
pub struct ConsoleOutput(Arc<Shared>);

impl Write for ConsoleOutput {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        self.0.write_output(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The output pump of [`ConsoleServer::pump`]; [`OutputPump::finish`] returns once it has
/// written everything the guest wrote before the machine stopped.
pub struct OutputPump {
    thread: JoinHandle<()>,
    /// Closed by `finish`: the pump then drains the pipe and ends. It sleeps in `poll` on this
    /// and the output pipe, so an idle console costs no wake-ups.
    machine_stopped: io::PipeWriter,
}

impl OutputPump {
    /// Call after the machine stopped: no more output can come, so once the pipe is empty the
    /// pump is done (the pipe's write end may outlive the machine, so EOF is not awaited).
    pub fn finish(self) {
        drop(self.machine_stopped);
        let _ = self.thread.join();
    }
}

impl ConsoleServer {
    /// A server whose clients' input goes to `guest_input`; it serves no socket until
    /// [`ConsoleServer::listen`].
    pub fn new(options: ConsoleServerOptions, guest_input: impl Write + Send + 'static) -> ConsoleServer {
        ConsoleServer {
            shared: Arc::new(Shared {
                clients: options.clients,
                outputs: Mutex::new(Outputs {
                    log: options.log,
                    echo: options.echo,
                    history: VecDeque::new(),
                    history_len: options.history,
                    clients: Vec::new(),
                }),
                guest_input: Mutex::new(Box::new(guest_input)),
            }),
            thread_name: options.thread_name,
            listening: None,
        }
    }

    /// Where guest output is to be written.
    pub fn output(&self) -> ConsoleOutput {
        ConsoleOutput(self.shared.clone())
    }

    /// Starts serving clients on `path`. A socket left there (by a process that died) is
    /// replaced; any other file is not.
    pub fn listen(&mut self, path: &Path) -> io::Result<()> {
        if let Ok(meta) = std::fs::symlink_metadata(path) {
            use std::os::unix::fs::FileTypeExt;
            if meta.file_type().is_socket() {
                let _ = std::fs::remove_file(path);
            }
        }
        let listener = UnixListener::bind(path)?;
        listener.set_nonblocking(true)?;
        let (stop, stop_writer) = io::pipe()?;
        let shared = self.shared.clone();
        // One client: the accepting thread also forwards that client's input (the serial
        // socket); many: it only accepts, and each client gets a thread of its own.
        let role = match self.shared.clients {
            ConsoleClients::One => virtkit_sandbox::ThreadRole::SerialSocket,
            ConsoleClients::Many => virtkit_sandbox::ThreadRole::ConsoleSocket,
        };
        let thread = virtkit_sandbox::Builder::new(role)
            .name(self.thread_name.into())
            .spawn(move || accept_clients(&listener, &shared, stop))?;
        self.listening = Some(Listening {
            stop: Some(stop_writer),
            thread: Some(thread),
            path: path.to_owned(),
        });
        Ok(())
    }

    /// Copies what the guest writes to `guest_output` (a pipe) to the outputs, on a thread
    /// `console-out`.
    pub fn pump(&self, guest_output: OwnedFd) -> io::Result<OutputPump> {
        let mut output = File::from(guest_output);
        let (stop, machine_stopped) = io::pipe()?;
        let shared = self.shared.clone();
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
                    shared.write_output(&buf[..n]);
                }
            })?;
        Ok(OutputPump {
            thread,
            machine_stopped,
        })
    }

    /// Copies everything read from `source` (a terminal) to the guest until it ends, on a
    /// thread `console-in`.
    pub fn feed_from(&self, mut source: impl Read + Send + 'static) -> io::Result<()> {
        let shared = self.shared.clone();
        virtkit_sandbox::Builder::new(virtkit_sandbox::ThreadRole::ConsoleInput)
            .name("console-in".into())
            .spawn(move || {
                let mut buf = [0u8; 512];
                while let Ok(n) = source.read(&mut buf) {
                    if n == 0 || lock(&shared.guest_input).write_all(&buf[..n]).is_err() {
                        return;
                    }
                }
            })?;
        Ok(())
    }
}

fn accept_clients(listener: &UnixListener, shared: &Arc<Shared>, stop: io::PipeReader) {
    while wait_readable(listener, &stop) {
        let stream = match listener.accept() {
            Ok((stream, _)) => stream,
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted) => continue,
            Err(_) => return,
        };
        let Ok(reader) = stream.try_clone() else {
            continue;
        };
        shared.add_client(stream);
        match shared.clients {
            ConsoleClients::One => {
                shared.forward_input(reader, Some(&stop));
                lock(&shared.outputs).clients.clear();
            }
            ConsoleClients::Many => {
                let Ok(stop) = stop.try_clone() else { continue };
                let shared = shared.clone();
                let _ = virtkit_sandbox::Builder::new(virtkit_sandbox::ThreadRole::ConsoleClient)
                    .name("console-client".into())
                    .spawn(move || shared.forward_input(reader, Some(&stop)));
            }
        }
    }
}

impl Drop for ConsoleServer {
    fn drop(&mut self) {
        if let Some(mut l) = self.listening.take() {
            drop(l.stop.take());
            if let Some(t) = l.thread.take() {
                let _ = t.join();
            }
            let _ = std::fs::remove_file(&l.path);
        }
        for client in lock(&self.shared.outputs).clients.drain(..) {
            let _ = client.shutdown(std::net::Shutdown::Both);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn socket_path(name: &str) -> PathBuf {
        std::env::temp_dir().join(format!("virtkit-console-{name}-{}.sock", std::process::id()))
    }

    #[test]
    fn many_clients_get_the_output_history_and_log() {
        let path = socket_path("many");
        let log_path = path.with_extension("log");
        let (mut to_guest, guest_input) = io::pipe().unwrap();
        let mut server = ConsoleServer::new(
            ConsoleServerOptions {
                log: Some(File::create(&log_path).unwrap()),
                history: 4,
                ..ConsoleServerOptions::many_clients("console-sock")
            },
            guest_input,
        );
        let mut output = server.output();
        output.write_all(b"early").unwrap();
        server.listen(&path).unwrap();
        let mut a = UnixStream::connect(&path).unwrap();
        let mut got = [0u8; 4];
        a.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"arly", "the last 4 bytes of history");
        let mut b = UnixStream::connect(&path).unwrap();
        b.read_exact(&mut got).unwrap();
        output.write_all(b"both").unwrap();
        for c in [&mut a, &mut b] {
            c.read_exact(&mut got).unwrap();
            assert_eq!(&got, b"both");
        }
        a.write_all(b"x").unwrap();
        b.write_all(b"y").unwrap();
        let mut typed = [0u8; 2];
        to_guest.read_exact(&mut typed).unwrap();
        typed.sort();
        assert_eq!(&typed, b"xy");
        drop(server);
        assert_eq!(std::fs::read(&log_path).unwrap(), b"earlyboth");
        assert!(!path.exists());
        std::fs::remove_file(&log_path).ok();
    }
}
