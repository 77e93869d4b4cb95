//! A console on a Unix socket: the guest's output goes to the connected clients (and, as
//! configured, to a log file, a terminal and a history a new client gets first); what a client
//! types goes to the guest. One implementation for both users: a serial port attached to a Unix
//! socket ([`crate::SerialAttachment::UnixSocket`]: one client at a time, nothing kept while
//! none is connected) and the VM manager's console hub (`console.sock`: many clients, every byte
//! in `console.log`, the terminal in the foreground).
//!
//! Nothing a client does can stall the guest. One thread ([`hub`]) serves everything with
//! non-blocking descriptors: each client has a bounded buffer of output ([`client`], 256 KiB);
//! a client that does not read in time loses what does not fit, and is told how much where the
//! gap is once it reads again (it is not disconnected: a paused terminal is not an error). The
//! log gets every byte; the terminal gets the output through a bounded queue of its own
//! ([`echo`]). Clients' input waits in a bounded buffer for the guest's input pipe; while that is
//! full the clients are not read. At most [`hub::MAX_CLIENTS`] clients at once (one for
//! [`ConsoleClients::One`]), each of this user or root (`SO_PEERCRED`).

mod client;
mod echo;
mod hub;
#[cfg(test)]
mod tests;

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{channel, Sender};
use std::sync::Arc;
use std::thread::JoinHandle;

use echo::{Echo, EchoQueue, FINAL_WRITE_WAIT};
use hub::{Command, Hub};

/// How many clients may be connected at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConsoleClients {
    /// One at a time; the next waits (in the socket's backlog) until it leaves.
    One,
    /// Up to 16: each gets the output, and all their input goes to the guest. One more is told
    /// that there are too many and closed.
    Many,
}

/// What a [`ConsoleServer`] does besides serving its socket.
pub struct ConsoleServerOptions {
    pub clients: ConsoleClients,
    /// Gets every byte of output, whether or not a client is connected; kept written even when a
    /// client stalls.
    pub log: Option<File>,
    /// Also gets the output (a terminal, in the foreground), through a bounded queue: when it
    /// stops taking output, output for it is dropped (and counted), never waited for.
    pub echo: Option<Box<dyn Write + Send>>,
    /// How many bytes of the latest output a new client gets first (at most 256 KiB); 0: a
    /// client gets the output from when it connects.
    pub history: usize,
    /// The name of the server's thread.
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

/// Wakes the server's loop to look at its commands. The pipe is non-blocking: when it is full
/// the loop is awake already.
struct Waker(File);

impl Waker {
    fn wake(&self) {
        let _ = (&self.0).write(&[1]);
    }
}

/// Sends the loop a command and wakes it.
#[derive(Clone)]
struct Commands {
    sender: Sender<Command>,
    waker: Arc<Waker>,
}

impl Commands {
    /// False when the loop has ended.
    fn send(&self, command: Command) -> bool {
        let sent = self.sender.send(command).is_ok();
        self.waker.wake();
        sent
    }
}

fn nonblocking(fd: impl Into<OwnedFd>) -> io::Result<File> {
    let fd = fd.into();
    rustix::io::ioctl_fionbio(&fd, true)?;
    Ok(File::from(fd))
}

/// A console server: see the module documentation. Dropping it stops serving, disconnects the
/// clients and removes the socket file.
pub struct ConsoleServer {
    commands: Commands,
    /// The write end of the loop's own output pipe, for [`ConsoleOutput`].
    output: Arc<File>,
    thread: Option<JoinHandle<()>>,
    echo: Option<Echo>,
    path: Option<PathBuf>,
}

/// Writes to every output of a [`ConsoleServer`]; give it to whatever produces guest output.
/// Writes never fail. They go through a pipe to the server's loop, which takes them as fast as
/// it can write the log: a client never holds them up.
#[derive(Clone)]
pub struct ConsoleOutput(Arc<File>);

impl Write for ConsoleOutput {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        // The loop ended (its end of the pipe closed): the output has nowhere to go.
        let _ = (&*self.0).write_all(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The guest-output pipe given to [`ConsoleServer::pump`]; [`OutputPump::finish`] returns once
/// the server has taken everything the guest wrote before the machine stopped.
pub struct OutputPump {
    commands: Commands,
    echo: Option<Arc<EchoQueue>>,
}

impl OutputPump {
    /// Call after the machine stopped: no more output can come, so once the pipe is empty the
    /// output is complete (the pipe's write end may outlive the machine, so EOF is not awaited).
    /// A terminal gets a little while ([`FINAL_WRITE_WAIT`]) to take the last of it.
    pub fn finish(self) {
        let (done, drained) = channel();
        if self.commands.send(Command::Drain(done)) {
            let _ = drained.recv();
        }
        if let Some(echo) = &self.echo {
            echo.wait_written(FINAL_WRITE_WAIT);
        }
    }
}

impl ConsoleServer {
    /// A server whose clients' input goes to `guest_input` (a pipe; it is made non-blocking);
    /// its thread runs from now on, and serves no socket until [`ConsoleServer::listen`].
    pub fn new(options: ConsoleServerOptions, guest_input: impl Into<OwnedFd>) -> io::Result<ConsoleServer> {
        let guest_input = nonblocking(guest_input)?;
        let (output_reader, output_writer) = io::pipe()?;
        let (wake_reader, wake_writer) = io::pipe()?;
        let echo = options.echo.map(Echo::start).transpose()?;
        let (sender, receiver) = channel();
        let hub = Hub {
            mode: options.clients,
            wake: nonblocking(wake_reader)?,
            commands: receiver,
            sources: vec![nonblocking(output_reader)?],
            guest_input: Some(guest_input),
            log: options.log,
            echo: echo.as_ref().map(|e| e.queue.clone()),
            history_len: options.history,
            listener: None,
            local_inputs: Vec::new(),
            input: Default::default(),
            clients: Vec::new(),
            history: Default::default(),
            log_dropped: 0,
            accept_rest_until: None,
        };
        let waker = Arc::new(Waker(nonblocking(wake_writer)?));
        let thread = virtkit_sandbox::Builder::new(virtkit_sandbox::ThreadRole::ConsoleSocket)
            .name(options.thread_name.into())
            .spawn(move || hub.run())?;
        Ok(ConsoleServer {
            commands: Commands { sender, waker },
            output: Arc::new(File::from(OwnedFd::from(output_writer))),
            thread: Some(thread),
            echo,
            path: None,
        })
    }

    /// Where guest output is to be written.
    pub fn output(&self) -> ConsoleOutput {
        ConsoleOutput(self.output.clone())
    }

    /// Starts serving clients on `path`, a socket only this user can connect to (0600). A socket
    /// left there (by a process that died) is replaced; any other file is not.
    pub fn listen(&mut self, path: &Path) -> io::Result<()> {
        let listener = crate::unix_socket::bind_owner_only(path)?;
        listener.set_nonblocking(true)?;
        self.path = Some(path.to_owned());
        if !self.commands.send(Command::Listen(listener)) {
            return Err(io::Error::other("the console server's thread has ended"));
        }
        Ok(())
    }

    /// Serves what the guest writes to `guest_output` (a pipe; its read end is made
    /// non-blocking) like what is written to [`ConsoleServer::output`].
    pub fn pump(&self, guest_output: OwnedFd) -> io::Result<OutputPump> {
        let source = nonblocking(guest_output)?;
        if !self.commands.send(Command::Source(source)) {
            return Err(io::Error::other("the console server's thread has ended"));
        }
        Ok(OutputPump {
            commands: self.commands.clone(),
            echo: self.echo.as_ref().map(|e| e.queue.clone()),
        })
    }

    /// Copies everything read from `source` (a terminal) to the guest until it ends, on a
    /// thread `console-in` (a terminal is read with blocking reads) through a pipe to the loop,
    /// which takes it as the guest reads its input.
    pub fn feed_from(&self, mut source: impl Read + Send + 'static) -> io::Result<()> {
        let (reader, writer) = io::pipe()?;
        if !self.commands.send(Command::Input(nonblocking(reader)?)) {
            return Err(io::Error::other("the console server's thread has ended"));
        }
        let mut writer = File::from(OwnedFd::from(writer));
        virtkit_sandbox::Builder::new(virtkit_sandbox::ThreadRole::ConsoleInput)
            .name("console-in".into())
            .spawn(move || {
                let mut buf = [0u8; 512];
                while let Ok(n) = source.read(&mut buf) {
                    if n == 0 || writer.write_all(&buf[..n]).is_err() {
                        return;
                    }
                }
            })?;
        Ok(())
    }
}

impl Drop for ConsoleServer {
    fn drop(&mut self) {
        self.commands.send(Command::Stop);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        if let Some(path) = self.path.take() {
            let _ = std::fs::remove_file(path);
        }
        // After the loop: it gave the terminal all it had.
        drop(self.echo.take());
    }
}
