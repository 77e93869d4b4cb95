//! The host side of the guest agent (docs/AGENT.md): [`AgentClient`] reaches `virtkit-agent`
//! in a running VM through the bundle's `vsock.sock` (Firecracker's hybrid vsock: `CONNECT
//! 1024`, `OK <port>`, then a byte stream to the guest's port 1024), one connection per
//! operation; [`AgentHost`] is the VM process's side: it takes the agent's hello on
//! `vsock.sock_1025`, records that the agent is up (the control socket reports it), and sends
//! `set-time` after a resume.

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{channel, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use virtkit_agent_protocol::tree::{receive_tree, send_tree, CopyReport, TreeError};
use virtkit_agent_protocol::{
    read_line, read_line_peeking, write_header, AgentInfo, ErrorKind, ExitStatus, Frame, FrameError,
    FrameReader, FrameWriter, HeaderError, Hello, IpReport, Request, Stream, AGENT_PORT, HELLO_PORT,
};

/// The VM's vsock device's host socket (Firecracker's hybrid scheme), in the bundle.
pub use crate::bundle::VSOCK_SOCKET;

/// Where the guest's connections to the host's port `port` arrive.
pub fn host_port_socket(port: u32) -> String {
    format!("{VSOCK_SOCKET}_{port}")
}

/// How long connecting (and the CONNECT/OK exchange) may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a short request (ip, version, set-time, shutdown) waits for its answer.
const REPLY_TIMEOUT: Duration = Duration::from_secs(30);
/// The longest hello line taken.
const MAX_HELLO_BYTES: usize = 4096;

/// Why the agent could not be reached or did not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("the VM has no vsock socket ({}): it was started without a vsock device", .0.display())]
    NoVsock(PathBuf),
    #[error("cannot reach the VM's vsock socket {}", path.display())]
    Connect {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("nothing listens on the guest's vsock port {AGENT_PORT}{}", .0.as_deref().map(|a| format!(" (the VM's vsock device answered: {a})")).unwrap_or_default())]
    NoAgent(Option<String>),
    #[error("the connection to the agent failed")]
    Io(#[from] std::io::Error),
    #[error("the agent's answer is malformed")]
    Frame(#[from] FrameError),
    #[error("the request could not be sent")]
    Header(#[from] HeaderError),
    #[error("the agent disconnected before it answered")]
    Disconnected,
    #[error("the agent answered something unexpected: {0}")]
    Unexpected(String),
    /// The agent refused or failed, in its own sentence.
    #[error("{1}")]
    Refused(ErrorKind, String),
    #[error(transparent)]
    Copy(#[from] TreeError),
}

/// A connection to the agent for one operation.
pub struct AgentConnection {
    pub reader: FrameReader<UnixStream>,
    pub writer: FrameWriter<UnixStream>,
}

/// Reaches the agent of the VM whose bundle is at `bundle`.
#[derive(Debug, Clone)]
pub struct AgentClient {
    socket: PathBuf,
}

impl AgentClient {
    pub fn new(bundle: &Path) -> AgentClient {
        AgentClient {
            socket: bundle.join(VSOCK_SOCKET),
        }
    }

    /// A client through an explicit hybrid-vsock socket.
    pub fn with_socket(socket: PathBuf) -> AgentClient {
        AgentClient { socket }
    }

    /// Connects to the guest's port 1024 and sends `request`.
    pub fn open(&self, request: &Request) -> Result<AgentConnection, AgentError> {
        let mut stream = connect_port(&self.socket, AGENT_PORT)?;
        write_header(&mut stream, request)?;
        Ok(AgentConnection {
            reader: FrameReader::new(stream.try_clone()?),
            writer: FrameWriter::new(stream),
        })
    }

    /// A request answered by one `reply` frame.
    fn ask<T: for<'de> Deserialize<'de>>(&self, request: &Request) -> Result<T, AgentError> {
        let mut c = self.open(request)?;
        c.reader_timeout(Some(REPLY_TIMEOUT))?;
        match c.reader.read()? {
            Some(Frame::Reply(json)) => {
                serde_json::from_slice(&json).map_err(|e| AgentError::Unexpected(e.to_string()))
            }
            Some(Frame::Error(kind, text)) => Err(AgentError::Refused(kind, text)),
            Some(other) => Err(AgentError::Unexpected(format!("{other:?}"))),
            None => Err(AgentError::Disconnected),
        }
    }

    /// A request answered by `exit` 0.
    fn command(&self, request: &Request) -> Result<(), AgentError> {
        let mut c = self.open(request)?;
        c.reader_timeout(Some(REPLY_TIMEOUT))?;
        c.expect_done()
    }

    /// Mounts each shared directory's tag at `/mnt/<tag>` in the guest (`mount -t virtiofs`),
    /// leaving mounted ones as they are; the tags must be [`automount_tag`]s.
    pub fn mount_shares(&self, tags: &[String]) -> Result<(), AgentError> {
        let mut argv: Vec<String> = [
            "/bin/sh",
            "-c",
            // `/proc/mounts` rather than `mountpoint`, which not every guest has.
            "for t in \"$@\"; do mkdir -p \"/mnt/$t\" && { grep -qsF \" /mnt/$t virtiofs \" /proc/mounts || mount -t virtiofs \"$t\" \"/mnt/$t\"; } || exit 1; done",
            "virtkit-mount-shares",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        argv.extend(tags.iter().cloned());
        let mut c = self.open(&Request::Exec {
            argv,
            env: Vec::new(),
            cwd: Some("/".into()),
            user: None,
            tty: false,
            cols: 0,
            rows: 0,
        })?;
        c.reader_timeout(Some(REPLY_TIMEOUT))?;
        c.writer.write(&Frame::Eof(Stream::Stdin))?;
        let mut errors = Vec::new();
        loop {
            match c.reader.read()? {
                Some(Frame::Stderr(bytes)) => errors.extend(bytes),
                Some(Frame::Exit(ExitStatus::Code(0))) => return Ok(()),
                Some(Frame::Exit(status)) => {
                    return Err(AgentError::Unexpected(format!(
                        "mounting the shared directories ended with {status:?}: {}",
                        String::from_utf8_lossy(&errors).trim()
                    )))
                }
                Some(Frame::Error(kind, text)) => return Err(AgentError::Refused(kind, text)),
                Some(_) => {}
                None => return Err(AgentError::Disconnected),
            }
        }
    }

    pub fn version(&self) -> Result<AgentInfo, AgentError> {
        self.ask(&Request::Version)
    }

    pub fn ip(&self) -> Result<IpReport, AgentError> {
        self.ask(&Request::Ip)
    }

    /// Sets the guest's clock to the host's.
    pub fn set_time(&self) -> Result<(), AgentError> {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
        self.command(&Request::SetTime {
            unix_nanos: u64::try_from(now.as_nanos()).unwrap_or(u64::MAX),
        })
    }

    /// Asks the guest to power off (or reboot); returns once the agent has taken it.
    pub fn shutdown(&self, reboot: bool) -> Result<(), AgentError> {
        self.command(&Request::Shutdown { reboot })
    }

    /// Copies the local `src` (file, directory or link) to `dest` in the guest.
    pub fn copy_in(&self, src: &Path, dest: &str) -> Result<CopyReport, AgentError> {
        let mut c = self.open(&Request::CopyIn {
            dest: dest.to_owned(),
        })?;
        match send_tree(src, &mut c.writer) {
            Ok(report) => {
                c.expect_done()?;
                Ok(report)
            }
            // The agent stopped reading: its error frame says why.
            Err(TreeError::Send(e)) => match c.reader.read() {
                Ok(Some(Frame::Error(kind, text))) => Err(AgentError::Refused(kind, text)),
                _ => Err(AgentError::Io(e)),
            },
            Err(e) => Err(e.into()),
        }
    }

    /// Copies `src` in the guest to the local `dest`; returns where it went.
    pub fn copy_out(&self, src: &str, dest: &Path) -> Result<(PathBuf, CopyReport), AgentError> {
        let mut c = self.open(&Request::CopyOut { src: src.to_owned() })?;
        match receive_tree(dest, &mut c.reader) {
            Ok(done) => Ok(done),
            Err(TreeError::Remote(kind, text)) => Err(AgentError::Refused(kind, text)),
            Err(e) => Err(e.into()),
        }
    }
}

impl AgentConnection {
    pub fn reader_timeout(&mut self, t: Option<Duration>) -> std::io::Result<()> {
        self.writer.get_ref().set_read_timeout(t)
    }

    /// Waits for `exit` 0 (or the agent's error).
    pub fn expect_done(&mut self) -> Result<(), AgentError> {
        match self.reader.read()? {
            Some(Frame::Exit(ExitStatus::Code(0))) => Ok(()),
            Some(Frame::Error(kind, text)) => Err(AgentError::Refused(kind, text)),
            Some(other) => Err(AgentError::Unexpected(format!("{other:?}"))),
            None => Err(AgentError::Disconnected),
        }
    }
}

/// Connects to the guest's vsock `port` through the hybrid socket at `socket`.
pub fn connect_port(socket: &Path, port: u32) -> Result<UnixStream, AgentError> {
    let mut stream = UnixStream::connect(socket).map_err(|source| {
        if matches!(source.kind(), std::io::ErrorKind::NotFound) {
            AgentError::NoVsock(socket.to_owned())
        } else {
            AgentError::Connect {
                path: socket.to_owned(),
                source,
            }
        }
    })?;
    stream.set_read_timeout(Some(CONNECT_TIMEOUT))?;
    stream.write_all(format!("CONNECT {port}\n").as_bytes())?;
    // The device's `OK <port>` line, peeked: a call or two, not one per byte.
    let line = match read_line_peeking(&mut stream, 256, |s, buf| {
        rustix::net::recv(s, buf, rustix::net::RecvFlags::PEEK)
            .map(|(n, _)| n)
            .map_err(std::io::Error::from)
    }) {
        Ok(l) => String::from_utf8_lossy(&l).into_owned(),
        // Firecracker closes the connection when the guest has nothing on the port.
        Err(HeaderError::Closed) => return Err(AgentError::NoAgent(None)),
        Err(HeaderError::Io(e)) if e.kind() == std::io::ErrorKind::ConnectionReset => {
            return Err(AgentError::NoAgent(None))
        }
        Err(e) => return Err(e.into()),
    };
    if !line.starts_with("OK ") {
        return Err(AgentError::NoAgent(Some(line)));
    }
    stream.set_read_timeout(None)?;
    Ok(stream)
}

/// What the VM process knows of the agent: it said hello.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentStatus {
    pub version: String,
    pub hostname: String,
    #[serde(default)]
    pub kernel: String,
    /// When the hello came (Unix seconds).
    pub since: u64,
}

/// Whether a shared directory's tag can be mounted at `/mnt/<tag>` by the agent: a plain name
/// (letters, digits, `.`, `_`, `-`, not starting with `.`), so `/mnt/<tag>` is a directory of
/// `/mnt` and nothing else. Other tags are left for the guest's user to mount.
pub fn automount_tag(tag: &str) -> bool {
    !tag.is_empty()
        && !tag.starts_with('.')
        && tag
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// What the agent thread does for the VM process.
enum AgentJob {
    SetTime,
    MountShares,
    /// The VM was restored from a suspend: no hello comes (the agent said it when the guest
    /// booted, to the process that ran the VM then), so ask whether an agent answers, then set
    /// the clock.
    Restored,
}

/// How often, and how far apart, a restored VM's agent is asked whether it is there: the
/// guest first handles the transport-reset event its vsock device sends after the restore.
const RESTORED_TRIES: u32 = 5;
const RESTORED_TRY_INTERVAL: Duration = Duration::from_millis(500);

/// The VM process's side of the agent: the hello listener, the clock setter and the mounter of
/// shared directories.
pub struct AgentHost {
    status: Mutex<Option<AgentStatus>>,
    client: AgentClient,
    time_requests: Mutex<Option<Sender<AgentJob>>>,
    /// The shared directories' tags, mounted at `/mnt/<tag>` after each hello.
    shares: Vec<String>,
}

impl AgentHost {
    /// Listens on `vsock.sock_1025` in `bundle` for the agent's hello, on a thread of its own.
    ///
    /// The threads run under the `AgentHost` seccomp role: Unix sockets only, no file opens.
    /// What they take from the guest is one line of at most 4 KiB, parsed as JSON.
    /// After each hello (each boot of the guest), the shared directories `shares` (their tags)
    /// are mounted at `/mnt/<tag>`, those that are [`automount_tag`]s.
    pub fn start(bundle: &Path, shares: Vec<String>) -> std::io::Result<Arc<AgentHost>> {
        let path = bundle.join(host_port_socket(HELLO_PORT));
        let listener = virtkit::unix_socket::bind_owner_only(&path)?;
        let (mountable, others): (Vec<String>, Vec<String>) =
            shares.into_iter().partition(|t| automount_tag(t));
        if !others.is_empty() {
            tracing::info!(tags = ?others, "these shared directories' tags are not plain names: the agent does not mount them");
        }
        let host = Arc::new(AgentHost {
            status: Mutex::new(None),
            client: AgentClient::new(bundle),
            time_requests: Mutex::new(None),
            shares: mountable,
        });
        let hello_host = host.clone();
        virtkit_sandbox::Builder::new(virtkit_sandbox::ThreadRole::AgentHost)
            .name("agent-hello".into())
            .spawn(move || hello_host.take_hellos(listener))?;
        let (tx, rx) = channel::<AgentJob>();
        *host.time_requests.lock().unwrap_or_else(|p| p.into_inner()) = Some(tx);
        let time_host = host.clone();
        virtkit_sandbox::Builder::new(virtkit_sandbox::ThreadRole::AgentHost)
            .name("agent-time".into())
            .spawn(move || {
                for job in rx {
                    if matches!(job, AgentJob::Restored) {
                        time_host.after_restore();
                        continue;
                    }
                    if time_host.status().is_none() {
                        continue;
                    }
                    match job {
                        AgentJob::Restored => {}
                        AgentJob::SetTime => match time_host.client.set_time() {
                            Ok(()) => tracing::info!("the guest's clock is set through the agent"),
                            Err(e) => {
                                tracing::warn!(error = %e, "cannot set the guest's clock through the agent")
                            }
                        },
                        AgentJob::MountShares => match time_host.client.mount_shares(&time_host.shares) {
                            Ok(()) => tracing::info!(tags = ?time_host.shares, "mounted the shared directories at /mnt/<tag> through the agent"),
                            Err(e) => tracing::warn!(
                                error = %e,
                                "cannot mount the shared directories through the agent; mount them in the guest with `mount -t virtiofs TAG DIR`"
                            ),
                        },
                    }
                }
            })?;
        Ok(host)
    }

    fn take_hellos(&self, listener: UnixListener) {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else {
                std::thread::sleep(Duration::from_millis(100));
                continue;
            };
            let _ = conn.set_read_timeout(Some(Duration::from_secs(2)));
            let line = match read_line(&mut (&mut conn).take(MAX_HELLO_BYTES as u64 + 1), MAX_HELLO_BYTES) {
                Ok(l) => l,
                Err(e) => {
                    virtkit_machine::warn_ratelimited!("agent hello: {e}");
                    continue;
                }
            };
            match serde_json::from_slice::<Hello>(&line) {
                Ok(Hello { hello }) => {
                    tracing::info!(version = %hello.version, hostname = %hello.hostname, "the guest agent is up");
                    let since = SystemTime::now()
                        .duration_since(UNIX_EPOCH)
                        .map(|d| d.as_secs())
                        .unwrap_or(0);
                    *self.status.lock().unwrap_or_else(|p| p.into_inner()) = Some(AgentStatus {
                        version: hello.version,
                        hostname: hello.hostname,
                        kernel: hello.kernel,
                        since,
                    });
                    if !self.shares.is_empty() {
                        self.send(AgentJob::MountShares);
                    }
                }
                Err(e) => virtkit_machine::warn_ratelimited!("agent hello: not a hello ({e})"),
            }
        }
    }

    /// The agent, if it said hello.
    pub fn status(&self) -> Option<AgentStatus> {
        self.status.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Asks for the guest's clock to be set (after a resume), without waiting.
    pub fn set_time_soon(&self) {
        self.send(AgentJob::SetTime);
    }

    /// After a VM was restored from a suspend, without waiting: finds out whether its guest
    /// has an agent (it says no new hello) and has it set the guest's clock, which lags by the
    /// time the VM was suspended.
    pub fn set_time_after_restore(&self) {
        self.send(AgentJob::Restored);
    }

    fn after_restore(&self) {
        let mut last = None;
        for attempt in 0..RESTORED_TRIES {
            if attempt > 0 {
                std::thread::sleep(RESTORED_TRY_INTERVAL);
            }
            match self.client.version() {
                Ok(info) => {
                    let since = SystemTime::now()
                        .duration_since(UNIX_EPOCH)
                        .map(|d| d.as_secs())
                        .unwrap_or(0);
                    *self.status.lock().unwrap_or_else(|p| p.into_inner()) = Some(AgentStatus {
                        version: info.version,
                        hostname: info.hostname,
                        kernel: info.kernel,
                        since,
                    });
                    match self.client.set_time() {
                        Ok(()) => tracing::info!("the restored guest's clock is set through the agent"),
                        Err(e) => {
                            tracing::warn!(error = %e, "cannot set the restored guest's clock through the agent")
                        }
                    }
                    return;
                }
                Err(e) => last = Some(e),
            }
        }
        if let Some(e) = last {
            tracing::info!(error = %e, "no guest agent answered after the restore; the guest's clock is not set");
        }
    }

    fn send(&self, job: AgentJob) {
        if let Some(tx) = self
            .time_requests
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
        {
            let _ = tx.send(job);
        }
    }
}
