//! The console server's event loop: one thread that `poll`s every descriptor the server has
//! (the listener, the guest's output pipes, the clients, the guest's input pipe, local input
//! and its own wake-up pipe), all non-blocking, so that nothing a client does, or fails to do,
//! can hold up the guest: a client that stops reading loses output beyond its bound
//! ([`super::client`]); a guest that stops reading its input stops the clients' input being read
//! (they wait in their own socket buffers), never the output.

use std::collections::VecDeque;
use std::fs::File;
use std::io::Write;
use std::os::fd::OwnedFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::mpsc::{Receiver, Sender, TryRecvError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustix::event::{poll, PollFd, PollFlags, Timespec};
use rustix::io::Errno;
use rustix::net::{accept_with, send, SendFlags, SocketFlags};

use super::client::{Client, Input, PENDING_LIMIT};
use super::echo::EchoQueue;
use super::ConsoleClients;
use crate::unix_socket::peer_is_owner_or_root;

/// Clients of a [`ConsoleClients::Many`] server at once: more than people share a console, few
/// enough that their buffers stay small (16 × [`PENDING_LIMIT`]).
pub(super) const MAX_CLIENTS: usize = 16;

/// The line a client over [`MAX_CLIENTS`] gets before it is closed.
pub(super) fn too_many_clients_line() -> String {
    format!("virtkit: too many console clients ({MAX_CLIENTS} connected); close one and try again\r\n")
}

/// Typed input waiting for the guest to read it (all clients together). When it is full the
/// clients are not read (their input waits in their sockets), so a guest that reads nothing
/// costs this much and no more.
pub(super) const INPUT_LIMIT: usize = 64 * 1024;

/// One read of guest output.
const READ_CHUNK: usize = 16 * 1024;
/// Guest output taken from one pipe per turn of the loop, so that clients are served while the
/// guest floods.
const SOURCE_TURN: usize = 64 * 1024;
/// Output taken when the machine stopped: all of it, but not forever if something still writes.
const DRAIN_LIMIT: usize = 64 << 20;
/// Connections accepted per turn, so that a connection flood does not starve the output.
const ACCEPT_TURN: usize = 64;
/// How long accepting rests when the process is out of descriptors (the listener would
/// otherwise stay readable and the loop spin).
const ACCEPT_REST: Duration = Duration::from_millis(100);

/// What the rest of the server asks the loop, with a byte on the wake-up pipe.
pub(super) enum Command {
    /// Serve this (non-blocking) listener.
    Listen(UnixListener),
    /// Guest output arrives on this (non-blocking) pipe.
    Source(File),
    /// Local input (the terminal) arrives on this (non-blocking) pipe.
    Input(File),
    /// Take all guest output there is now, then answer.
    Drain(Sender<()>),
    /// Take the output there is, give the clients what they take, and end.
    Stop,
}

/// Everything the loop serves.
pub(super) struct Hub {
    pub(super) mode: ConsoleClients,
    pub(super) wake: File,
    pub(super) commands: Receiver<Command>,
    pub(super) sources: Vec<File>,
    pub(super) guest_input: Option<File>,
    pub(super) log: Option<File>,
    pub(super) echo: Option<Arc<EchoQueue>>,
    pub(super) history_len: usize,
    pub(super) listener: Option<UnixListener>,
    pub(super) local_inputs: Vec<File>,
    pub(super) input: VecDeque<u8>,
    pub(super) clients: Vec<Client>,
    pub(super) history: VecDeque<u8>,
    pub(super) log_dropped: u64,
    pub(super) accept_rest_until: Option<Instant>,
}

/// What a polled descriptor is.
#[derive(Clone, Copy)]
enum Slot {
    Wake,
    Listener,
    Source(usize),
    LocalInput(usize),
    GuestInput,
    Client(usize),
}

impl Hub {
    pub(super) fn run(mut self) {
        self.history_len = self.history_len.min(PENDING_LIMIT);
        let mut buf = vec![0u8; READ_CHUNK];
        loop {
            let ready = match self.wait() {
                Ok(ready) => ready,
                Err(e) => {
                    tracing::error!("the console server stops: poll failed: {e}");
                    return;
                }
            };
            // Output first: a client accepted in this turn gets the history up to now.
            let mut closed_sources = Vec::new();
            for &(slot, _) in &ready {
                if let Slot::Source(i) = slot {
                    if !self.read_source(i, &mut buf, SOURCE_TURN) {
                        closed_sources.push(i);
                    }
                }
            }
            remove_indices(&mut self.sources, closed_sources);
            let mut gone = Vec::new();
            let mut ended_inputs = Vec::new();
            for &(slot, events) in &ready {
                match slot {
                    Slot::Client(i) if !self.serve_client(i, events) => gone.push(i),
                    Slot::LocalInput(i) if !self.read_local_input(i, &mut buf) => ended_inputs.push(i),
                    _ => {}
                }
            }
            // Closed at once: a client that left costs nothing from now on.
            remove_indices(&mut self.clients, gone);
            remove_indices(&mut self.local_inputs, ended_inputs);
            self.write_guest_input();
            if ready.iter().any(|(s, _)| matches!(s, Slot::Listener)) {
                self.accept_clients();
            }
            if ready.iter().any(|(s, _)| matches!(s, Slot::Wake)) && !self.take_commands(&mut buf) {
                return;
            }
        }
    }

    fn accepting(&self, now: Instant) -> bool {
        let resting = self.accept_rest_until.is_some_and(|t| now < t);
        // One client at a time: the next waits in the listener's backlog.
        let slot_free = self.mode == ConsoleClients::Many || self.clients.is_empty();
        !resting && slot_free
    }

    fn input_has_room(&self) -> bool {
        self.guest_input.is_none() || self.input.len() < INPUT_LIMIT
    }

    /// Polls what there is to do; the descriptors that have something, with their events.
    fn wait(&mut self) -> rustix::io::Result<Vec<(Slot, PollFlags)>> {
        let now = Instant::now();
        let input_room = self.input_has_room();
        let mut slots = vec![Slot::Wake];
        let mut fds = vec![PollFd::new(&self.wake, PollFlags::IN)];
        if let Some(listener) = &self.listener {
            if self.accepting(now) {
                slots.push(Slot::Listener);
                fds.push(PollFd::new(listener, PollFlags::IN));
            }
        }
        for (i, source) in self.sources.iter().enumerate() {
            slots.push(Slot::Source(i));
            fds.push(PollFd::new(source, PollFlags::IN));
        }
        if input_room {
            for (i, input) in self.local_inputs.iter().enumerate() {
                slots.push(Slot::LocalInput(i));
                fds.push(PollFd::new(input, PollFlags::IN));
            }
        }
        if let Some(guest_input) = &self.guest_input {
            if !self.input.is_empty() {
                slots.push(Slot::GuestInput);
                fds.push(PollFd::new(guest_input, PollFlags::OUT));
            }
        }
        for (i, client) in self.clients.iter().enumerate() {
            // A hang-up is reported whatever is asked: a client that is neither read nor
            // written still gets closed when it leaves.
            let mut events = PollFlags::empty();
            if input_room && !client.input_closed {
                events |= PollFlags::IN;
            }
            if client.has_pending() {
                events |= PollFlags::OUT;
            }
            slots.push(Slot::Client(i));
            fds.push(PollFd::from_borrowed_fd(client.fd(), events));
        }
        let timeout = self
            .accept_rest_until
            .filter(|&t| now < t)
            .map(|t| Timespec::try_from(t - now).unwrap_or_default());
        loop {
            match poll(&mut fds, timeout.as_ref()) {
                Err(Errno::INTR) => continue,
                Err(e) => return Err(e),
                Ok(_) => break,
            }
        }
        Ok(slots
            .into_iter()
            .zip(fds.iter().map(|f| f.revents()))
            .filter(|(_, events)| !events.is_empty())
            .collect())
    }

    /// Takes up to `limit` bytes of guest output from source `i` to every output; false when the
    /// pipe has ended.
    fn read_source(&mut self, i: usize, buf: &mut [u8], limit: usize) -> bool {
        let mut taken = 0;
        while taken < limit {
            match rustix::io::read(&self.sources[i], &mut *buf) {
                Ok(0) => return false,
                Ok(n) => {
                    taken += n;
                    self.distribute(&buf[..n]);
                }
                Err(Errno::AGAIN) => return true,
                Err(Errno::INTR) => {}
                Err(e) => {
                    tracing::warn!("cannot read the guest's console output: {e}");
                    return false;
                }
            }
        }
        true
    }

    /// Gives guest output to the log (every byte: a regular file does not stall), the terminal,
    /// the history and every client; none of them waits for a reader.
    fn distribute(&mut self, bytes: &[u8]) {
        if let Some(log) = self.log.as_mut() {
            let mut rest = bytes;
            while !rest.is_empty() {
                match log.write(rest) {
                    Ok(0) => break,
                    Ok(n) => rest = &rest[n..],
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) => {
                        self.log_dropped += rest.len() as u64;
                        virtkit_machine::warn_ratelimited!(
                            dropped = self.log_dropped,
                            "cannot write the console log, its output is dropped: {e}"
                        );
                        break;
                    }
                }
            }
        }
        if let Some(echo) = &self.echo {
            echo.push(bytes);
        }
        if self.history_len > 0 {
            self.history.extend(bytes);
            let excess = self.history.len().saturating_sub(self.history_len);
            self.history.drain(..excess);
        }
        for client in &mut self.clients {
            client.queue(bytes);
        }
    }

    /// Sends client `i` what it takes and reads what it typed; false when it is gone.
    fn serve_client(&mut self, i: usize, events: PollFlags) -> bool {
        if events.contains(PollFlags::OUT) && self.clients[i].flush().is_err() {
            return false;
        }
        if events.intersects(PollFlags::IN | PollFlags::HUP) && self.input_has_room() {
            let room = if self.guest_input.is_some() {
                INPUT_LIMIT - self.input.len()
            } else {
                INPUT_LIMIT
            };
            let mut typed = [0u8; 4096];
            let want = room.min(typed.len());
            match self.clients[i].read_input(&mut typed[..want]) {
                Ok(Input::Read(n)) => {
                    // Nothing takes input once the guest's side is gone: it is dropped.
                    if self.guest_input.is_some() {
                        self.input.extend(&typed[..n]);
                    }
                }
                Ok(Input::Ended) => {}
                Err(_) => return false,
            }
        }
        !events.intersects(PollFlags::HUP | PollFlags::ERR | PollFlags::NVAL)
    }

    /// Reads local input `i` (the terminal's); false when it ended.
    fn read_local_input(&mut self, i: usize, buf: &mut [u8]) -> bool {
        let room = INPUT_LIMIT.saturating_sub(self.input.len()).min(buf.len());
        if room == 0 {
            return true;
        }
        loop {
            return match rustix::io::read(&self.local_inputs[i], &mut buf[..room]) {
                Ok(0) => false,
                Ok(n) => {
                    if self.guest_input.is_some() {
                        self.input.extend(&buf[..n]);
                    }
                    true
                }
                Err(Errno::AGAIN) => true,
                Err(Errno::INTR) => continue,
                Err(_) => false,
            };
        }
    }

    /// Writes what the guest's input pipe takes now.
    fn write_guest_input(&mut self) {
        let Some(guest_input) = &self.guest_input else {
            return;
        };
        while !self.input.is_empty() {
            let (front, _) = self.input.as_slices();
            match rustix::io::write(guest_input, front) {
                Ok(n) => {
                    self.input.drain(..n);
                }
                Err(Errno::AGAIN) => return,
                Err(Errno::INTR) => {}
                Err(e) => {
                    tracing::debug!("the guest's console input is closed: {e}");
                    self.guest_input = None;
                    self.input.clear();
                    return;
                }
            }
        }
    }

    fn accept_clients(&mut self) {
        for _ in 0..ACCEPT_TURN {
            if !self.accepting(Instant::now()) {
                return;
            }
            let Some(listener) = &self.listener else {
                return;
            };
            match accept_with(listener, SocketFlags::NONBLOCK | SocketFlags::CLOEXEC) {
                Ok(socket) => self.admit(socket),
                Err(Errno::AGAIN) => return,
                Err(Errno::INTR | Errno::CONNABORTED) => {}
                Err(e) => {
                    virtkit_machine::warn_ratelimited!("cannot accept a console client: {e}");
                    self.accept_rest_until = Some(Instant::now() + ACCEPT_REST);
                    return;
                }
            }
        }
    }

    /// Serves a new connection if its peer may use the console and there is room for it.
    fn admit(&mut self, socket: OwnedFd) {
        let stream = UnixStream::from(socket);
        if !peer_is_owner_or_root(&stream) {
            virtkit_machine::warn_ratelimited!("refused a console client: another user's process");
            return;
        }
        if self.clients.len() >= MAX_CLIENTS {
            self.close_departed();
        }
        if self.clients.len() >= MAX_CLIENTS {
            // A fresh socket's buffer takes one line without blocking.
            let _ = send(&stream, too_many_clients_line().as_bytes(), SendFlags::NOSIGNAL);
            virtkit_machine::warn_ratelimited!("refused a console client: {MAX_CLIENTS} are connected");
            return;
        }
        let mut client = Client::new(stream.into());
        let (a, b) = self.history.as_slices();
        client.queue(a);
        client.queue(b);
        self.clients.push(client);
    }

    /// Closes the clients that have left since the last `poll`: a client that just left frees
    /// its place for one that just came.
    fn close_departed(&mut self) {
        let mut fds: Vec<PollFd<'_>> = self
            .clients
            .iter()
            .map(|c| PollFd::from_borrowed_fd(c.fd(), PollFlags::empty()))
            .collect();
        if !matches!(poll(&mut fds, Some(&Timespec::default())), Ok(n) if n > 0) {
            return;
        }
        let gone: Vec<usize> = fds
            .iter()
            .enumerate()
            .filter(|(_, f)| f.revents().intersects(PollFlags::HUP | PollFlags::ERR))
            .map(|(i, _)| i)
            .collect();
        drop(fds);
        remove_indices(&mut self.clients, gone);
    }

    /// Takes the wake-up bytes and the commands behind them; false when the loop is to end.
    fn take_commands(&mut self, buf: &mut [u8]) -> bool {
        while let Ok(n) = rustix::io::read(&self.wake, &mut *buf) {
            if n == 0 {
                break;
            }
        }
        loop {
            match self.commands.try_recv() {
                Ok(Command::Listen(listener)) => self.listener = Some(listener),
                Ok(Command::Source(source)) => self.sources.push(source),
                Ok(Command::Input(input)) => self.local_inputs.push(input),
                Ok(Command::Drain(done)) => {
                    self.drain(buf);
                    let _ = done.send(());
                }
                Ok(Command::Stop) | Err(TryRecvError::Disconnected) => {
                    self.drain(buf);
                    return false;
                }
                Err(TryRecvError::Empty) => return true,
            }
        }
    }

    /// Takes every byte of guest output written so far, and gives each client what its socket
    /// takes now (never waiting for one).
    fn drain(&mut self, buf: &mut [u8]) {
        let mut closed = Vec::new();
        for i in 0..self.sources.len() {
            if !self.read_source(i, buf, DRAIN_LIMIT) {
                closed.push(i);
            }
        }
        remove_indices(&mut self.sources, closed);
        for client in &mut self.clients {
            let _ = client.flush();
        }
    }
}

/// Removes the items at `indices` (ascending) from `items`.
fn remove_indices<T>(items: &mut Vec<T>, indices: Vec<usize>) {
    for i in indices.into_iter().rev() {
        items.remove(i);
    }
}
