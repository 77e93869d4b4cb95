//! The server: listeners, one thread per client, and each client's update loop.

use std::collections::HashMap;
use std::io::{self, BufWriter, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use crate::encode::{rect_header, Encoder};
use crate::error::VncError;
use crate::framebuffer::{Framebuffer, InputSink, KeyEvent, PointerEvent, Rect};
use crate::handshake::{server_handshake, Security};
use crate::protocol::{encoding, ClientMessage, ClientReader};

/// Most clients served at once; more are closed as soon as they connect.
pub const MAX_CLIENTS: usize = 16;
/// How often a client waiting for a change looks at the framebuffer's generation.
const POLL_INTERVAL: Duration = Duration::from_millis(20);
/// How long the handshake may take, and how long one write may block, before the client is
/// dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);
const WRITE_TIMEOUT: Duration = Duration::from_secs(60);
/// Above this many dirty rectangles, a client's pending changes become their bounding box.
const MAX_DIRTY_RECTS: usize = 32;
/// Size of a client's write buffer.
const WRITE_BUFFER: usize = 64 * 1024;

/// A client's socket, Unix or TCP.
trait Connection: Read + Write + Send + 'static {
    fn duplicate(&self) -> io::Result<Box<dyn Connection>>;
    fn set_timeout(&self, read: Option<Duration>) -> io::Result<()>;
    fn set_write_limit(&self, write: Option<Duration>) -> io::Result<()>;
    fn close(&self);
}

macro_rules! impl_connection {
    ($stream:ty) => {
        impl Connection for $stream {
            fn duplicate(&self) -> io::Result<Box<dyn Connection>> {
                Ok(Box::new(self.try_clone()?))
            }
            fn set_timeout(&self, read: Option<Duration>) -> io::Result<()> {
                self.set_read_timeout(read)
            }
            fn set_write_limit(&self, write: Option<Duration>) -> io::Result<()> {
                self.set_write_timeout(write)
            }
            fn close(&self) {
                let _ = self.shutdown(Shutdown::Both);
            }
        }
    };
}

impl_connection!(UnixStream);
impl_connection!(TcpStream);

/// Each connected client's socket (to close it at shutdown) and its thread, by client number.
type ClientTable = HashMap<u64, (Box<dyn Connection>, Option<JoinHandle<()>>)>;

/// Starts one of the server's threads: its name (`vnc-accept`, `vnc-client`) and body. The VM
/// process passes one that puts each under its seccomp filter; the default is a plain thread.
pub type Spawner =
    Arc<dyn Fn(&'static str, Box<dyn FnOnce() + Send>) -> io::Result<JoinHandle<()>> + Send + Sync>;

fn plain_thread(name: &'static str, body: Box<dyn FnOnce() + Send>) -> io::Result<JoinHandle<()>> {
    thread::Builder::new().name(name.into()).spawn(body)
}

/// The server's name, framebuffer and input, shared by every listener and client.
struct Shared {
    spawn: Spawner,
    framebuffer: Arc<dyn Framebuffer>,
    input: Arc<dyn InputSink>,
    name: String,
    stopping: AtomicBool,
    next_client: AtomicU64,
    /// Each client's socket (to close it at shutdown) and its thread.
    clients: Mutex<ClientTable>,
}

impl Shared {
    fn clients(&self) -> MutexGuard<'_, ClientTable> {
        self.clients
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// How an accept thread is woken to stop: by connecting to its own address.
enum Waker {
    Unix(std::path::PathBuf),
    Tcp(std::net::SocketAddr),
}

/// A VNC server: serves one framebuffer to any number of listeners' clients (up to
/// [`MAX_CLIENTS`] at once), each on its own thread (`vnc-client`). Dropping it stops every
/// listener and closes every client.
pub struct VncServer {
    shared: Arc<Shared>,
    listeners: Mutex<Vec<(Waker, JoinHandle<()>)>>,
}

impl std::fmt::Debug for VncServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VncServer")
            .field("name", &self.shared.name)
            .finish_non_exhaustive()
    }
}

impl VncServer {
    /// A server showing `framebuffer` under the desktop name `name`, sending clients' keys and
    /// pointer to `input`. It serves nothing until given a listener.
    pub fn new(
        framebuffer: Arc<dyn Framebuffer>,
        input: Arc<dyn InputSink>,
        name: impl Into<String>,
    ) -> Self {
        Self::with_spawner(framebuffer, input, name, Arc::new(plain_thread))
    }

    /// [`VncServer::new`] whose threads `spawn` starts.
    pub fn with_spawner(
        framebuffer: Arc<dyn Framebuffer>,
        input: Arc<dyn InputSink>,
        name: impl Into<String>,
        spawn: Spawner,
    ) -> Self {
        VncServer {
            shared: Arc::new(Shared {
                spawn,
                framebuffer,
                input,
                name: name.into(),
                stopping: AtomicBool::new(false),
                next_client: AtomicU64::new(1),
                clients: Mutex::new(HashMap::new()),
            }),
            listeners: Mutex::new(Vec::new()),
        }
    }

    /// Serves the clients of a Unix socket bound to a path (the bundle's `vnc.sock`; its file
    /// permissions decide who may connect, so `Security::None` is fine there).
    pub fn serve_unix(&self, listener: UnixListener, security: Security) -> Result<(), VncError> {
        let path = listener
            .local_addr()?
            .as_pathname()
            .map(|p| p.to_path_buf())
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "the VNC Unix socket has no path"))?;
        let shared = self.shared.clone();
        let accept = move || loop {
            match listener.accept() {
                Ok((stream, _)) => {
                    if shared.stopping.load(Ordering::Acquire) {
                        return;
                    }
                    start_client(&shared, Box::new(stream), security.clone());
                }
                Err(error) => {
                    tracing::warn!(%error, "accepting a VNC client on the Unix socket failed");
                    thread::sleep(Duration::from_millis(100));
                }
            }
            if shared.stopping.load(Ordering::Acquire) {
                return;
            }
        };
        self.spawn_listener(Waker::Unix(path), accept)
    }

    /// Serves the clients of a TCP listener, which must be on a loopback address and use VNC
    /// authentication (anyone on the host can connect to it).
    pub fn serve_tcp(&self, listener: TcpListener, security: Security) -> Result<(), VncError> {
        let address = listener.local_addr()?;
        if !address.ip().is_loopback() {
            return Err(VncError::NotLoopback(address));
        }
        if security == Security::None {
            return Err(VncError::TcpNeedsPassword);
        }
        let shared = self.shared.clone();
        let accept = move || loop {
            match listener.accept() {
                Ok((stream, _)) => {
                    if shared.stopping.load(Ordering::Acquire) {
                        return;
                    }
                    let _ = stream.set_nodelay(true);
                    start_client(&shared, Box::new(stream), security.clone());
                }
                Err(error) => {
                    tracing::warn!(%error, "accepting a VNC client on TCP failed");
                    thread::sleep(Duration::from_millis(100));
                }
            }
            if shared.stopping.load(Ordering::Acquire) {
                return;
            }
        };
        self.spawn_listener(Waker::Tcp(address), accept)
    }

    fn spawn_listener(&self, waker: Waker, accept: impl FnOnce() + Send + 'static) -> Result<(), VncError> {
        let handle = (self.shared.spawn)("vnc-accept", Box::new(accept)).map_err(VncError::Thread)?;
        self.listeners
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((waker, handle));
        Ok(())
    }

    /// How many clients are connected now.
    pub fn client_count(&self) -> usize {
        self.shared.clients().len()
    }

    /// Stops every listener and closes every client, waiting for their threads.
    pub fn shutdown(&self) {
        self.shared.stopping.store(true, Ordering::Release);
        let listeners = std::mem::take(&mut *self.listeners.lock().unwrap_or_else(|p| p.into_inner()));
        for (waker, handle) in listeners {
            // Wake the blocking accept; it sees `stopping` and returns.
            let _ = match waker {
                Waker::Unix(path) => UnixStream::connect(path).map(drop),
                Waker::Tcp(address) => TcpStream::connect(address).map(drop),
            };
            let _ = handle.join();
        }
        let clients: Vec<_> = self.shared.clients().drain().collect();
        for (_, (connection, handle)) in clients {
            connection.close();
            if let Some(handle) = handle {
                let _ = handle.join();
            }
        }
    }
}

impl Drop for VncServer {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Registers and starts a client's thread, or closes it when there are too many.
fn start_client(shared: &Arc<Shared>, stream: Box<dyn Connection>, security: Security) {
    let mut clients = shared.clients();
    // Checked under the table's lock: `shutdown` sets the flag before it empties the table, so
    // a client accepted meanwhile is either closed by it or never started.
    if shared.stopping.load(Ordering::Acquire) {
        return;
    }
    if clients.len() >= MAX_CLIENTS {
        tracing::warn!("refusing a VNC client: {MAX_CLIENTS} already connected");
        return;
    }
    let closer = match stream.duplicate() {
        Ok(closer) => closer,
        Err(error) => {
            tracing::warn!(%error, "refusing a VNC client: its socket cannot be duplicated");
            return;
        }
    };
    let id = shared.next_client.fetch_add(1, Ordering::Relaxed);
    let thread_shared = shared.clone();
    let spawned = (shared.spawn)(
        "vnc-client",
        Box::new(move || {
            match serve_client(&thread_shared, stream, &security) {
                Ok(()) => tracing::info!(client = id, "VNC client disconnected"),
                Err(error) => tracing::info!(client = id, error = %error_chain(&error), "VNC client dropped"),
            }
            thread_shared.clients().remove(&id);
        }),
    );
    match spawned {
        Ok(handle) => {
            clients.insert(id, (closer, Some(handle)));
        }
        Err(error) => tracing::warn!(%error, "refusing a VNC client: no thread"),
    }
}

fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// The frame size as RFB carries it.
fn wire_size(framebuffer: &dyn Framebuffer) -> (u16, u16) {
    let (width, height) = framebuffer.size();
    (
        width.min(u32::from(u16::MAX)) as u16,
        height.min(u32::from(u16::MAX)) as u16,
    )
}

fn serve_client(shared: &Shared, stream: Box<dyn Connection>, security: &Security) -> Result<(), VncError> {
    let mut reader = stream;
    let writer = reader.duplicate()?;
    reader.set_timeout(Some(HANDSHAKE_TIMEOUT))?;
    reader.set_write_limit(Some(WRITE_TIMEOUT))?;
    let size = wire_size(&*shared.framebuffer);
    let handshake = server_handshake(&mut reader, security, size, &shared.name, None)?;
    tracing::info!(version = ?handshake.version, "VNC client connected");
    let mut client = Client::new(shared, BufWriter::with_capacity(WRITE_BUFFER, writer), size);
    client.run(&mut *reader)
}

/// A FramebufferUpdateRequest waiting for an answer.
#[derive(Debug, Clone, Copy)]
struct Request {
    incremental: bool,
    rect: Rect,
}

/// One client after its handshake.
struct Client<'a, W: Write> {
    framebuffer: &'a dyn Framebuffer,
    input: &'a dyn InputSink,
    stopping: &'a AtomicBool,
    out: W,
    messages: ClientReader,
    encoder: Encoder,
    zrle: bool,
    desktop_size: bool,
    qemu_keys: bool,
    /// The client takes LED-state updates; the LEDs it was last told about.
    led_state: bool,
    sent_leds: Option<u8>,
    /// The size the client was last told about.
    size: (u16, u16),
    generation: u64,
    /// Changed rectangles the client has not been sent yet (at most [`MAX_DIRTY_RECTS`]).
    dirty: Vec<Rect>,
    pending: Option<Request>,
}

impl<'a, W: Write> Client<'a, W> {
    fn new(shared: &'a Shared, out: W, size: (u16, u16)) -> Self {
        let generation = shared.framebuffer.generation();
        Client {
            framebuffer: &*shared.framebuffer,
            input: &*shared.input,
            stopping: &shared.stopping,
            out,
            messages: ClientReader::new(),
            encoder: Encoder::new(),
            zrle: false,
            desktop_size: false,
            qemu_keys: false,
            led_state: false,
            sent_leds: None,
            size,
            generation,
            // The first incremental request gets the whole frame.
            dirty: vec![Rect::full(u32::from(size.0), u32::from(size.1))],
            pending: None,
        }
    }

    /// Reads and answers messages until the client leaves or the server stops.
    fn run(&mut self, stream: &mut dyn Connection) -> Result<(), VncError> {
        let mut polling = None;
        stream.set_timeout(None)?;
        loop {
            while let Some(message) = self.messages.next_message()? {
                self.handle(message)?;
            }
            self.send_leds()?;
            if self.pending.is_some() {
                self.try_update()?;
            }
            self.out.flush()?;
            let wanted = self.pending.map(|_| POLL_INTERVAL);
            if wanted != polling {
                stream.set_timeout(wanted)?;
                polling = wanted;
            }
            match self.messages.read_from(&mut ReadOnly(stream)) {
                Ok(0) => return Ok(()),
                Ok(_) => {}
                Err(error) if matches!(error.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {
                }
                Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                Err(error) => return Err(error.into()),
            }
            if self.stopping.load(Ordering::Acquire) {
                return Ok(());
            }
        }
    }

    fn handle(&mut self, message: ClientMessage) -> Result<(), VncError> {
        match message {
            ClientMessage::SetPixelFormat(format) => self.encoder.set_format(format),
            ClientMessage::SetEncodings(list) => {
                // The first of RAW and ZRLE the client lists; RAW if neither.
                self.zrle = list.iter().find(|&&e| e == encoding::RAW || e == encoding::ZRLE)
                    == Some(&encoding::ZRLE);
                self.desktop_size = list.contains(&encoding::DESKTOP_SIZE);
                let qemu_keys = list.contains(&encoding::QEMU_EXTENDED_KEY_EVENT);
                if qemu_keys && !self.qemu_keys {
                    // QEMU's way of saying "extended key events are understood": an update
                    // with one pseudo-rectangle of that encoding.
                    let rect = Rect::full(u32::from(self.size.0), u32::from(self.size.1));
                    self.out.write_all(&[0, 0, 0, 1])?;
                    self.out
                        .write_all(&rect_header(&rect, encoding::QEMU_EXTENDED_KEY_EVENT))?;
                }
                self.qemu_keys = qemu_keys;
                self.led_state = list.contains(&encoding::LED_STATE);
                // A client that asks (again) is told the LEDs as they are now.
                self.sent_leds = None;
            }
            ClientMessage::FramebufferUpdateRequest {
                incremental,
                x,
                y,
                width,
                height,
            } => {
                let rect = Rect::new(u32::from(x), u32::from(y), u32::from(width), u32::from(height));
                // A later request replaces an earlier one; a full one is never downgraded.
                let incremental = incremental && self.pending.is_none_or(|p| p.incremental);
                self.pending = Some(Request { incremental, rect });
            }
            ClientMessage::KeyEvent { down, keysym } => {
                self.input.key(KeyEvent {
                    keysym,
                    down,
                    scancode: None,
                });
            }
            ClientMessage::QemuExtendedKeyEvent {
                down,
                keysym,
                scancode,
            } => {
                self.input.key(KeyEvent {
                    keysym,
                    down,
                    scancode: Some(scancode),
                });
            }
            ClientMessage::PointerEvent { buttons, x, y } => {
                let x = x.min(self.size.0.saturating_sub(1));
                let y = y.min(self.size.1.saturating_sub(1));
                self.input.pointer(PointerEvent { x, y, buttons });
            }
            ClientMessage::ClientCutText { .. } => {}
        }
        Ok(())
    }

    /// Tells a client that takes them the keyboard's LEDs when they changed since it was last
    /// told (as QEMU does: an update of one pseudo-rectangle, whether or not a request is
    /// pending). Checked on every message and poll, so a client with a request pending learns
    /// of a change within [`POLL_INTERVAL`].
    fn send_leds(&mut self) -> Result<(), VncError> {
        if !self.led_state {
            return Ok(());
        }
        let Some(leds) = self.input.leds() else {
            return Ok(());
        };
        if self.sent_leds == Some(leds) {
            return Ok(());
        }
        self.out.write_all(&[0, 0, 0, 1])?;
        self.out
            .write_all(&rect_header(&Rect::new(0, 0, 0, 0), encoding::LED_STATE))?;
        self.out.write_all(&[leds & 0b111])?;
        self.sent_leds = Some(leds);
        Ok(())
    }

    /// Answers the pending request if there is something to send.
    fn try_update(&mut self) -> Result<(), VncError> {
        let Some(request) = self.pending else {
            return Ok(());
        };
        let size = wire_size(self.framebuffer);
        let frame = Rect::full(u32::from(size.0), u32::from(size.1));
        if size != self.size && self.desktop_size {
            // Tell the new size alone; the client asks again and gets the whole new frame.
            self.size = size;
            self.generation = self.framebuffer.generation();
            self.dirty = vec![frame];
            self.out.write_all(&[0, 0, 0, 1])?;
            self.out.write_all(&rect_header(&frame, encoding::DESKTOP_SIZE))?;
            self.pending = None;
            return Ok(());
        }
        // A client that cannot resize keeps the size it knows; pixels outside are not sent.
        let known = Rect::full(u32::from(self.size.0), u32::from(self.size.1));
        let visible = frame.intersect(&known).unwrap_or(Rect::new(0, 0, 0, 0));

        let changes = self.framebuffer.changes_since(self.generation);
        self.generation = changes.generation;
        match changes.rects {
            None => self.dirty = vec![visible],
            Some(rects) => self.dirty.extend(rects),
        }
        self.dirty.retain(|r| !r.is_empty());
        if self.dirty.len() <= 4 * MAX_DIRTY_RECTS {
            drop_covered(&mut self.dirty);
        }
        if self.dirty.len() > MAX_DIRTY_RECTS {
            let bounds = self
                .dirty
                .iter()
                .fold(Rect::new(0, 0, 0, 0), |acc, r| acc.union(r));
            self.dirty = vec![bounds];
        }

        let wanted = request.rect.intersect(&visible);
        let mut send = Vec::new();
        match wanted {
            None => {}
            Some(wanted) if !request.incremental => {
                send.push(wanted);
                self.dirty.retain(|r| !wanted.contains(r));
            }
            Some(wanted) => {
                for rect in &self.dirty {
                    if let Some(part) = rect.intersect(&wanted) {
                        send.push(part);
                    }
                }
                self.dirty.retain(|r| !wanted.contains(r));
            }
        }
        if send.is_empty() && request.incremental {
            // Nothing new: keep waiting.
            return Ok(());
        }
        self.pending = None;
        let zrle = self.zrle;
        let bands = |rect: &Rect| Encoder::band_count(rect, zrle);
        let count: u32 = send.iter().map(bands).sum();
        let count = u16::try_from(count).unwrap_or(u16::MAX);
        if u32::from(count) != send.iter().map(bands).sum::<u32>() {
            // Cannot happen with at most MAX_DIRTY_RECTS rectangles of at most 65535 rows.
            send = vec![wanted.unwrap_or(visible)];
        }
        let count: u32 = send.iter().map(bands).sum();
        self.out.write_all(&[0, 0])?;
        self.out.write_all(&(count as u16).to_be_bytes())?;
        for rect in send {
            self.encoder
                .write_rect(self.framebuffer, rect, self.zrle, &mut self.out)?;
        }
        Ok(())
    }
}

/// Removes rectangles that another one in the list covers (the first of equal ones stays).
fn drop_covered(rects: &mut Vec<Rect>) {
    let mut i = 0;
    while i < rects.len() {
        let covered = rects
            .iter()
            .enumerate()
            .any(|(j, other)| j != i && other.contains(&rects[i]) && (other != &rects[i] || j < i));
        if covered {
            rects.remove(i);
        } else {
            i += 1;
        }
    }
}

/// `&mut dyn Connection` as a plain reader.
struct ReadOnly<'a>(&'a mut dyn Connection);

impl Read for ReadOnly<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.read(buf)
    }
}
