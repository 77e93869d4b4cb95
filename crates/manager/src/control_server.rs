//! The control socket server of a VM process (protocol: `crate::control`, docs/CONTROL.md):
//! one thread with a `poll` loop over the listener, the clients (non-blocking) and the
//! executor's wake-up eventfd. Every client costs bounded memory and no thread:
//!
//! - a request line is at most [`MAX_REQUEST_BYTES`]; a longer one gets one error and the
//!   connection is closed;
//! - at most [`MAX_CLIENTS`] clients at once: a new client takes the place of the one quiet
//!   longest if that one has been quiet [`QUIET_EVICT_AFTER`] (all clients are the VM's own
//!   user, so this only ends forgotten connections); else it gets one error and is closed;
//! - a client's unsent answers are at most [`MAX_UNSENT_BYTES`] (plus one answer): past that
//!   the server reads nothing more from it until it reads what it was sent;
//! - a failing `accept` (out of descriptors) pauses accepting for [`ACCEPT_BACKOFF`] instead
//!   of spinning on a listener that stays readable.
//!
//! Each client is checked with `SO_PEERCRED`: only this process's user and root are served.

use std::io::{self, Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustix::event::{poll, PollFd, PollFlags, Timespec};
use rustix::io::Errno;
use rustix::net::SocketFlags;
use virtkit::VirtualMachine;
use virtkit_machine::warn_ratelimited;

use crate::agent::AgentHost;
use crate::control::{parse_request, ControlRequest, ControlResponse};
use crate::control_exec::{run_executor, waits, Done, Job};
use crate::control_framing::{loggable, too_long_error, Frame, LineFramer, MAX_REQUEST_BYTES};
use crate::suspend::FinalAnswer;

/// Clients served at once. Front ends open one connection per command; 64 leaves room for
/// scripts and monitors while keeping the process's descriptors and memory small.
pub const MAX_CLIENTS: usize = 64;

/// How long a client must have sent and received nothing before a new client at the cap may
/// take its place.
pub const QUIET_EVICT_AFTER: Duration = Duration::from_secs(2);

/// Answers a client may leave unread before the server stops reading its requests.
pub const MAX_UNSENT_BYTES: usize = 64 * 1024;

/// How long accepting pauses after `accept` failed for want of descriptors or memory.
pub const ACCEPT_BACKOFF: Duration = Duration::from_millis(200);

/// How much of a client's input one read takes (the framer holds at most the bound plus this).
const READ_CHUNK: usize = 4096;

/// Connections accepted per turn of the loop, so a flood of them does not starve the clients.
const ACCEPTS_PER_TURN: usize = 16;

/// The answer to the client after the last one [`MAX_CLIENTS`] allows.
pub fn too_many_clients_error() -> String {
    format!("too many control connections ({MAX_CLIENTS} open); close one and try again")
}

/// What the server asks of the VM; the VM process passes its `VirtualMachine`, tests a fake.
pub(crate) trait Handler: Send + Sync + 'static {
    fn handle(&self, request: &ControlRequest) -> ControlResponse;
    /// The loop handed `response` (from the executor) to its client, or found the client gone.
    fn answered(&self, _response: &ControlResponse) {}
}

struct VmHandler {
    vm: Arc<VirtualMachine>,
    agent: Option<Arc<AgentHost>>,
    /// Where a suspend saves the VM (the bundle's `state.vksave`).
    state_file: std::path::PathBuf,
    final_answer: Arc<FinalAnswer>,
    snapshot: crate::running_snapshot::SnapshotTarget,
}

impl Handler for VmHandler {
    fn handle(&self, request: &ControlRequest) -> ControlResponse {
        let target = crate::control_exec::SuspendTarget {
            state_file: &self.state_file,
            answer: &self.final_answer,
            snapshot: Some(&self.snapshot),
        };
        let mut response = crate::control_exec::handle(request, &self.vm, target);
        if let Some(agent) = &self.agent {
            // After a resume the guest's clock lags by the pause: the agent sets it.
            if response.ok && request.command == crate::control::ControlCommand::Resume {
                agent.set_time_soon();
            }
            if response.ok {
                response.agent = agent.status();
            }
        }
        response
    }

    fn answered(&self, response: &ControlResponse) {
        if response.ok && response.state.as_deref() == Some(crate::suspend::SUSPENDED) {
            self.final_answer.sent();
        }
    }
}

/// Serves `path` (bound owner-only, mode 0600) for as long as the process lives; responses
/// report the guest agent `agent` knows of, and a resume has it set the guest's clock.
/// A suspend saves into `state_file`; the returned [`FinalAnswer`] tells when its answer has
/// been sent, which the process waits for before it ends.
pub fn serve(
    path: &Path,
    vm: Arc<VirtualMachine>,
    agent: Option<Arc<AgentHost>>,
    state_file: std::path::PathBuf,
    snapshot: crate::running_snapshot::SnapshotTarget,
) -> io::Result<Arc<FinalAnswer>> {
    let listener = virtkit::unix_socket::bind_owner_only(path)?;
    let final_answer = Arc::new(FinalAnswer::default());
    serve_listener(
        listener,
        Arc::new(VmHandler {
            vm,
            agent,
            state_file,
            final_answer: final_answer.clone(),
            snapshot,
        }),
    )?;
    Ok(final_answer)
}

/// Starts the loop thread and the executor thread on `listener`.
pub(crate) fn serve_listener(listener: UnixListener, handler: Arc<dyn Handler>) -> io::Result<()> {
    listener.set_nonblocking(true)?;
    let wake = Arc::new(rustix::event::eventfd(
        0,
        rustix::event::EventfdFlags::CLOEXEC | rustix::event::EventfdFlags::NONBLOCK,
    )?);
    let (job_tx, job_rx) = channel::<Job>();
    let (done_tx, done_rx) = channel::<Done>();
    let exec_handler = handler.clone();
    let exec_wake = wake.clone();
    virtkit_sandbox::Builder::new(virtkit_sandbox::ThreadRole::ControlExecutor)
        .name("control-exec".into())
        .spawn(move || run_executor(job_rx, done_tx, exec_wake, |r| exec_handler.handle(r)))?;
    let server = Server {
        listener,
        wake,
        jobs: job_tx,
        done: done_rx,
        handler,
        clients: Vec::new(),
        next_id: 0,
        accept_paused_until: None,
    };
    virtkit_sandbox::Builder::new(virtkit_sandbox::ThreadRole::ControlSocket)
        .name("control".into())
        .spawn(move || server.run())?;
    Ok(())
}

/// One connected client.
struct Client {
    id: u64,
    stream: UnixStream,
    framer: LineFramer,
    /// Answers not sent yet.
    out: Vec<u8>,
    /// A request of this client is with the executor: its later requests wait (answers stay
    /// in order).
    busy: bool,
    /// The client closed its end (or sent too much): nothing more is read.
    read_closed: bool,
    /// When it last sent bytes or was answered.
    last_active: Instant,
}

impl Client {
    fn wants_read(&self) -> bool {
        !self.read_closed && !self.busy && self.out.len() < MAX_UNSENT_BYTES
    }

    /// Finished: nothing in flight, nothing more to read or send.
    fn done(&self) -> bool {
        self.read_closed && !self.busy && self.out.is_empty()
    }

    /// Ends the connection at the next clean-up: nothing more is read, answered or sent.
    fn close(&mut self) {
        self.read_closed = true;
        self.out = Vec::new();
        self.framer = LineFramer::new(MAX_REQUEST_BYTES);
    }

    fn answer(&mut self, response: &ControlResponse) {
        self.last_active = Instant::now();
        // A response is plain data; serializing it cannot fail.
        if let Ok(text) = serde_json::to_string(response) {
            self.out.extend_from_slice(text.as_bytes());
            self.out.push(b'\n');
        }
    }

    /// Sends what the socket takes now; `false` when the client is gone.
    fn flush(&mut self) -> bool {
        while !self.out.is_empty() {
            match self.stream.write(&self.out) {
                Ok(0) => return false,
                Ok(n) => {
                    self.out.drain(..n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return true,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => return false,
            }
        }
        true
    }

    /// Reads one chunk into the framer; `false` when the client is gone.
    fn read_some(&mut self) -> bool {
        let mut chunk = [0u8; READ_CHUNK];
        match self.stream.read(&mut chunk) {
            Ok(0) => {
                self.read_closed = true;
                true
            }
            Ok(n) => {
                self.framer.push(&chunk[..n]);
                self.last_active = Instant::now();
                true
            }
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted) => true,
            Err(_) => false,
        }
    }
}

/// What a `poll` found ready.
struct Ready {
    listener: bool,
    wake: bool,
    /// Each ready client's index (among those present before the poll) and its events.
    clients: Vec<(usize, PollFlags)>,
}

struct Server {
    listener: UnixListener,
    wake: Arc<OwnedFd>,
    jobs: Sender<Job>,
    done: Receiver<Done>,
    handler: Arc<dyn Handler>,
    clients: Vec<Client>,
    next_id: u64,
    accept_paused_until: Option<Instant>,
}

impl Server {
    fn run(mut self) {
        loop {
            let now = Instant::now();
            if self.accept_paused_until.is_some_and(|t| t <= now) {
                self.accept_paused_until = None;
            }
            let accepting = self.accept_paused_until.is_none();
            let ready = match self.wait(accepting) {
                Ok(r) => r,
                Err(e) => {
                    warn_ratelimited!("control socket: poll failed: {e}");
                    std::thread::sleep(ACCEPT_BACKOFF);
                    continue;
                }
            };
            if ready.wake {
                let mut counter = [0u8; 8];
                let _ = rustix::io::read(&*self.wake, &mut counter);
            }
            self.collect_done();
            if ready.listener {
                self.accept_some();
            }
            for (i, flags) in ready.clients {
                self.serve_client(i, flags);
            }
            self.clients.retain(|c| !c.done());
        }
    }

    /// Polls the eventfd, the listener (unless accepting is paused) and the clients.
    fn wait(&self, accepting: bool) -> io::Result<Ready> {
        let mut fds = Vec::with_capacity(self.clients.len() + 2);
        fds.push(PollFd::new(&*self.wake, PollFlags::IN));
        if accepting {
            fds.push(PollFd::new(&self.listener, PollFlags::IN));
        }
        let first_client = fds.len();
        for c in &self.clients {
            let mut flags = PollFlags::empty();
            if c.wants_read() {
                flags |= PollFlags::IN;
            }
            if !c.out.is_empty() {
                flags |= PollFlags::OUT;
            }
            fds.push(PollFd::new(&c.stream, flags));
        }
        let timeout = self.accept_paused_until.map(|t| {
            let left = t.saturating_duration_since(Instant::now());
            Timespec::try_from(left).unwrap_or(Timespec {
                tv_sec: 0,
                tv_nsec: 1_000_000,
            })
        });
        loop {
            match poll(&mut fds, timeout.as_ref()) {
                Ok(_) => break,
                Err(Errno::INTR) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        let wake_ready = !fds[0].revents().is_empty();
        let listener_ready = accepting && !fds[1].revents().is_empty();
        let ready = fds[first_client..]
            .iter()
            .enumerate()
            .filter(|(_, fd)| !fd.revents().is_empty())
            .map(|(i, fd)| (i, fd.revents()))
            .collect();
        Ok(Ready {
            listener: listener_ready,
            wake: wake_ready,
            clients: ready,
        })
    }

    /// Hands the executor's answers to their clients (gone clients' answers are dropped).
    fn collect_done(&mut self) {
        while let Ok(done) = self.done.try_recv() {
            if let Some(i) = self.clients.iter().position(|c| c.id == done.client) {
                let c = &mut self.clients[i];
                c.busy = false;
                c.answer(&done.response);
                // The requests that waited behind it.
                self.take_requests(i);
                if !self.clients[i].flush() {
                    self.clients[i].close();
                }
            }
            self.handler.answered(&done.response);
        }
    }

    fn accept_some(&mut self) {
        for _ in 0..ACCEPTS_PER_TURN {
            let fd = match rustix::net::accept_with(
                &self.listener,
                SocketFlags::NONBLOCK | SocketFlags::CLOEXEC,
            ) {
                Ok(fd) => fd,
                Err(Errno::AGAIN) => return,
                Err(Errno::INTR | Errno::CONNABORTED) => continue,
                Err(e) => {
                    // EMFILE, ENFILE, ENOBUFS, ENOMEM: the listener stays readable, so polling
                    // it again at once would spin. Pending clients wait in the backlog.
                    warn_ratelimited!(
                        "control socket: cannot accept a client ({e}); accepting again in {} ms",
                        ACCEPT_BACKOFF.as_millis()
                    );
                    self.accept_paused_until = Some(Instant::now() + ACCEPT_BACKOFF);
                    return;
                }
            };
            self.admit(UnixStream::from(fd));
        }
    }

    fn admit(&mut self, mut stream: UnixStream) {
        if !virtkit::unix_socket::peer_is_owner_or_root(&stream) {
            let uid = rustix::net::sockopt::socket_peercred(&stream)
                .map(|c| c.uid.as_raw().to_string())
                .unwrap_or_else(|_| "?".into());
            warn_ratelimited!(peer_uid = %uid, "control socket: refused a client of another user");
            return;
        }
        if self.clients.iter().filter(|c| !c.done()).count() >= MAX_CLIENTS && !self.evict_quiet() {
            warn_ratelimited!("control socket: refused a client: {MAX_CLIENTS} are connected already");
            let mut text = serde_json::to_string(&ControlResponse::failure(too_many_clients_error()))
                .unwrap_or_default();
            text.push('\n');
            // A fresh socket's buffer takes one short line; if not, the client gets only the close.
            let _ = stream.write(text.as_bytes());
            return;
        }
        self.next_id += 1;
        self.clients.push(Client {
            id: self.next_id,
            stream,
            framer: LineFramer::new(MAX_REQUEST_BYTES),
            out: Vec::new(),
            busy: false,
            read_closed: false,
            last_active: Instant::now(),
        });
    }

    /// At the cap: closes the client quiet longest, if it has been quiet long enough and has
    /// nothing in flight. Returns whether one was closed.
    fn evict_quiet(&mut self) -> bool {
        let now = Instant::now();
        let quiet = self
            .clients
            .iter_mut()
            .filter(|c| !c.done() && !c.busy)
            .min_by_key(|c| c.last_active)
            .filter(|c| now.duration_since(c.last_active) >= QUIET_EVICT_AFTER);
        match quiet {
            Some(c) => {
                c.close();
                true
            }
            None => false,
        }
    }

    fn serve_client(&mut self, i: usize, flags: PollFlags) {
        let c = &mut self.clients[i];
        if flags.intersects(PollFlags::OUT | PollFlags::ERR | PollFlags::HUP)
            && !c.out.is_empty()
            && !c.flush()
        {
            c.close();
            return;
        }
        if flags.intersects(PollFlags::IN | PollFlags::HUP | PollFlags::ERR)
            && c.wants_read()
            && !c.read_some()
        {
            c.close();
            return;
        }
        self.take_requests(i);
        let c = &mut self.clients[i];
        if !c.flush() {
            c.close();
        }
    }

    /// Answers the client's complete requests, in order, until one goes to the executor or
    /// its unsent answers reach the bound.
    fn take_requests(&mut self, i: usize) {
        loop {
            let c = &mut self.clients[i];
            if c.busy || c.out.len() >= MAX_UNSENT_BYTES {
                return;
            }
            match c.framer.next_frame() {
                None => return,
                Some(Frame::TooLong) => {
                    warn_ratelimited!(
                        "control socket: closed a client whose request is longer than {MAX_REQUEST_BYTES} bytes"
                    );
                    c.answer(&ControlResponse::failure(too_long_error(MAX_REQUEST_BYTES)));
                    c.read_closed = true;
                    return;
                }
                Some(Frame::Line(line)) => self.take_line(i, &line),
            }
        }
    }

    fn take_line(&mut self, i: usize, line: &[u8]) {
        if line.iter().all(u8::is_ascii_whitespace) {
            return;
        }
        let request = match std::str::from_utf8(line) {
            Ok(text) => parse_request(text),
            Err(_) => Err(ControlResponse::failure(
                "the request is not UTF-8 text; send one JSON object per line, like {\"command\":\"state\"}",
            )),
        };
        let c = &mut self.clients[i];
        let request = match request {
            Ok(request) => request,
            Err(response) => {
                warn_ratelimited!(request = %loggable(line), "control socket: bad request");
                c.answer(&response);
                return;
            }
        };
        log_request(&request);
        if waits(&request) {
            c.busy = true;
            if self
                .jobs
                .send(Job {
                    client: c.id,
                    request,
                })
                .is_err()
            {
                // The executor is gone (it panicked): say so rather than hang the client.
                c.busy = false;
                c.answer(&ControlResponse::failure(
                    "the VM process cannot run this command any more; stop the VM and run it again",
                ));
            }
        } else {
            let response = self.handler.handle(&request);
            self.clients[i].answer(&response);
        }
    }
}

/// Logs a valid request by its command, at most once a second (a client may send thousands).
fn log_request(request: &ControlRequest) {
    static LIMIT: virtkit_machine::ratelimit::RateLimit = virtkit_machine::ratelimit::RateLimit::new();
    if let Some(suppressed) = LIMIT.check() {
        tracing::info!(
            command = ?request.command,
            target_bytes = request.target_bytes,
            suppressed,
            "control request"
        );
    }
}

#[cfg(test)]
#[path = "control_server_tests.rs"]
mod tests;
