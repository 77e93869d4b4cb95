//! A generic vhost-user frontend: a virtio device whose queues another process (the backend:
//! virtiofsd, later passt or a GPU/sound daemon) serves straight from guest memory. The VMM
//! only sets the device up and stays out of the data path:
//!
//! - at attach, [`VhostUserConnection`] connects to the backend's socket and negotiates:
//!   `GET_FEATURES`, `SET_OWNER`, `GET_PROTOCOL_FEATURES`/`SET_PROTOCOL_FEATURES` (MQ and
//!   REPLY_ACK when offered), so the device can offer the guest what the backend does;
//! - when the driver sets DRIVER_OK, the device's worker (`v_<name>`) sends `SET_FEATURES` (the
//!   guest's plus `VHOST_USER_F_PROTOCOL_FEATURES`), `SET_MEM_TABLE` with the memfd behind every
//!   RAM region (`machine::memory::create_shared_guest_memory`), and per queue `SET_VRING_NUM`,
//!   `_ADDR` (our addresses of the rings), `_BASE`, `_KICK` (the queue's ioeventfd: the driver's
//!   notification reaches the backend through KVM), `_CALL` (the MSI-X vector's irqfd: the
//!   backend interrupts the guest through KVM) and `_ENABLE`;
//! - the worker then only watches the socket: a backend that hangs up (crashed, killed) is an
//!   error logged (rate-limited) and DEVICE_NEEDS_RESET for the driver; the VM runs on. A device
//!   that gives [`OrphanedQueues`] then has the worker answer the guest's requests itself
//!   (virtio-fs: `-EIO` for each), since a driver that ignores NEEDS_RESET would otherwise wait
//!   on them forever;
//! - sleep and reset stop the rings (`SET_VRING_ENABLE 0`, `GET_VRING_BASE`, which tells where
//!   the backend stopped); wake and a new activation set them up again from there.
//!
//! Every request has a timeout ([`REQUEST_TIMEOUT`]; the first, which also waits for the daemon
//! to start, [`STARTUP_TIMEOUT`]) so a backend that stops answering costs an error, never a hung
//! vCPU or worker. No `unsafe` here: the `vhost` crate builds the messages.
//! Reconnecting to a restarted backend is not done: the device stays broken until the VM
//! restarts (the guest sees I/O errors).

#[cfg(test)]
mod tests;

use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use vhost::vhost_user::message::VhostUserProtocolFeatures;
use vhost::vhost_user::{Frontend, VhostUserFrontend};
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
use virtio_queue::{DescriptorChain, QueueT};
use virtkit_virtio::event_loop::KILL_TOKEN;
use virtkit_virtio::{
    warn_ratelimited, Activation, DeviceQueue, EventHandler, EventLoop, VirtioError, VirtioInterrupt,
    WorkerBody,
};
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryMmap};
use vmm_sys_util::epoll::EventSet;

/// The feature bit (in `GET_FEATURES`/`SET_FEATURES`, never offered to the guest) that says the
/// backend speaks the protocol features.
pub const VHOST_USER_F_PROTOCOL_FEATURES: u64 = 1 << 30;

/// How long one request may wait for the backend's answer (and a send for room).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the first request may wait: its answer also waits for the daemon to start (exec,
/// its sandbox, the accept), which took over 10 s in the emulated test host under load. A
/// daemon that exits instead closes the socket, which ends the wait at once.
pub const STARTUP_TIMEOUT: Duration = Duration::from_secs(60);

/// The protocol features virtkit takes when the backend offers them. CONFIG is left out: the
/// device keeps its configuration space itself (virtio-fs: the tag).
const WANTED_PROTOCOL_FEATURES: VhostUserProtocolFeatures =
    VhostUserProtocolFeatures::MQ.union(VhostUserProtocolFeatures::REPLY_ACK);

#[derive(Debug, thiserror::Error)]
pub enum VhostUserError {
    #[error("cannot connect to the vhost-user backend's socket {}: {source}; check that its daemon is running", path.display())]
    Connect { path: PathBuf, source: io::Error },
    #[error("cannot set up the vhost-user socket")]
    Socket(#[source] io::Error),
    #[error("the vhost-user backend failed `{request}` (it may have exited; its log says why)")]
    Request {
        request: &'static str,
        #[source]
        source: vhost::Error,
    },
    #[error("the vhost-user backend does not offer VHOST_USER_F_PROTOCOL_FEATURES, which virtkit needs to enable and disable its rings")]
    NoProtocolFeatures,
    #[error("the backend has {backend} queues; the device needs {device}")]
    QueueCount { backend: u64, device: usize },
    #[error("guest memory at {address:#x} is not shareable (no file behind it); a VM with a vhost-user device needs memfd-backed memory")]
    MemoryNotShareable { address: u64 },
    #[error("queue {queue} has no MSI-X vector (the driver uses INTx or chose none); a vhost-user backend interrupts the guest only through MSI-X")]
    NoVector { queue: u16 },
    #[error("queue {queue}'s rings are not in guest memory")]
    RingOutsideMemory { queue: u16 },
}

fn request<T>(name: &'static str, result: vhost::Result<T>) -> Result<T, VhostUserError> {
    result.map_err(|source| VhostUserError::Request {
        request: name,
        source,
    })
}

/// One connection to a vhost-user backend, negotiated up to the point where rings can start.
pub struct VhostUserConnection {
    frontend: Frontend,
    /// A copy of the socket, watched for the backend's hangup.
    socket: OwnedFd,
    /// The virtio features the backend offers (without [`VHOST_USER_F_PROTOCOL_FEATURES`]).
    backend_features: u64,
    protocol_features: VhostUserProtocolFeatures,
    queue_count: usize,
    /// The rings are set up and enabled at the backend.
    started: bool,
}

impl std::fmt::Debug for VhostUserConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VhostUserConnection")
            .field("backend_features", &format_args!("{:#x}", self.backend_features))
            .field("protocol_features", &self.protocol_features)
            .field("started", &self.started)
            .finish()
    }
}

impl VhostUserConnection {
    /// Connects to a backend listening on `path`, retrying for up to `wait` while its daemon
    /// starts (the socket missing or refusing), then negotiates as [`Self::from_stream`].
    pub fn connect(path: &Path, queue_count: usize, wait: Duration) -> Result<Self, VhostUserError> {
        let deadline = Instant::now() + wait;
        let stream = loop {
            match UnixStream::connect(path) {
                Ok(stream) => break stream,
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused
                    ) && Instant::now() < deadline =>
                {
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(source) => {
                    return Err(VhostUserError::Connect {
                        path: path.to_path_buf(),
                        source,
                    })
                }
            }
        };
        Self::from_stream(stream, queue_count)
    }

    /// Negotiates on a connected socket: features, owner, protocol features, queue count.
    pub fn from_stream(stream: UnixStream, queue_count: usize) -> Result<Self, VhostUserError> {
        stream
            .set_read_timeout(Some(STARTUP_TIMEOUT))
            .and_then(|()| stream.set_write_timeout(Some(REQUEST_TIMEOUT)))
            .map_err(VhostUserError::Socket)?;
        let timeouts = stream.try_clone().map_err(VhostUserError::Socket)?;
        let socket = OwnedFd::from(stream.try_clone().map_err(VhostUserError::Socket)?);
        let mut frontend = Frontend::from_stream(stream, queue_count as u64);
        let features = request("GET_FEATURES", frontend.get_features())?;
        timeouts
            .set_read_timeout(Some(REQUEST_TIMEOUT))
            .map_err(VhostUserError::Socket)?;
        if features & VHOST_USER_F_PROTOCOL_FEATURES == 0 {
            return Err(VhostUserError::NoProtocolFeatures);
        }
        request("SET_OWNER", frontend.set_owner())?;
        let offered = request("GET_PROTOCOL_FEATURES", frontend.get_protocol_features())?;
        let protocol_features = offered & WANTED_PROTOCOL_FEATURES;
        request(
            "SET_PROTOCOL_FEATURES",
            frontend.set_protocol_features(protocol_features),
        )?;
        if protocol_features.contains(VhostUserProtocolFeatures::MQ) {
            let backend = request("GET_QUEUE_NUM", frontend.get_queue_num())?;
            if backend < queue_count as u64 {
                return Err(VhostUserError::QueueCount {
                    backend,
                    device: queue_count,
                });
            }
        }
        Ok(VhostUserConnection {
            frontend,
            socket,
            backend_features: features & !VHOST_USER_F_PROTOCOL_FEATURES,
            protocol_features,
            queue_count,
            started: false,
        })
    }

    /// The virtio features the backend offers the guest.
    pub fn backend_features(&self) -> u64 {
        self.backend_features
    }

    /// The protocol features both sides use.
    pub fn protocol_features(&self) -> VhostUserProtocolFeatures {
        self.protocol_features
    }

    /// Whether the rings run at the backend.
    pub fn is_started(&self) -> bool {
        self.started
    }

    /// Hands the backend guest memory and `queues` (kick: each queue's eventfd; call: its MSI-X
    /// vector's irqfd from `interrupt`) and enables them.
    pub fn start(
        &mut self,
        memory: &GuestMemoryMmap,
        interrupt: &dyn VirtioInterrupt,
        queues: &[DeviceQueue],
        acked_features: u64,
    ) -> Result<(), VhostUserError> {
        request(
            "SET_FEATURES",
            self.frontend
                .set_features(acked_features | VHOST_USER_F_PROTOCOL_FEATURES),
        )?;
        let regions = memory
            .iter()
            .map(|region| {
                VhostUserMemoryRegionInfo::from_guest_region(region).map_err(|_| {
                    VhostUserError::MemoryNotShareable {
                        address: vm_memory::GuestMemoryRegion::start_addr(region).0,
                    }
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        request("SET_MEM_TABLE", self.frontend.set_mem_table(&regions))?;
        for queue in queues {
            self.start_queue(memory, interrupt, queue)?;
        }
        self.started = true;
        Ok(())
    }

    fn start_queue(
        &mut self,
        memory: &GuestMemoryMmap,
        interrupt: &dyn VirtioInterrupt,
        queue: &DeviceQueue,
    ) -> Result<(), VhostUserError> {
        let index = queue.index;
        let at = usize::from(index);
        let ring = &queue.queue;
        // The backend maps the same memory and translates our addresses into its own.
        let host = |address: u64| {
            memory
                .get_host_address(GuestAddress(address))
                .map(|p| p as u64)
                .map_err(|_| VhostUserError::RingOutsideMemory { queue: index })
        };
        let config = VringConfigData {
            queue_max_size: ring.max_size(),
            queue_size: ring.size(),
            flags: 0,
            desc_table_addr: host(ring.desc_table())?,
            used_ring_addr: host(ring.used_ring())?,
            avail_ring_addr: host(ring.avail_ring())?,
            log_addr: None,
        };
        let call = interrupt
            .queue_irqfd(index)
            .ok_or(VhostUserError::NoVector { queue: index })?;
        request("SET_VRING_NUM", self.frontend.set_vring_num(at, ring.size()))?;
        request("SET_VRING_ADDR", self.frontend.set_vring_addr(at, &config))?;
        request(
            "SET_VRING_BASE",
            self.frontend.set_vring_base(at, ring.next_avail()),
        )?;
        request("SET_VRING_CALL", self.frontend.set_vring_call(at, call))?;
        request("SET_VRING_KICK", self.frontend.set_vring_kick(at, &queue.event))?;
        request("SET_VRING_ENABLE", self.frontend.set_vring_enable(at, true))?;
        Ok(())
    }

    /// Stops the rings at the backend and takes back where each stopped (`GET_VRING_BASE`,
    /// into the queue's next available index).
    pub fn stop(&mut self, queues: &mut [DeviceQueue]) -> Result<(), VhostUserError> {
        if !self.started {
            return Ok(());
        }
        self.started = false;
        for queue in queues.iter_mut() {
            let at = usize::from(queue.index);
            request("SET_VRING_ENABLE", self.frontend.set_vring_enable(at, false))?;
            let base = request("GET_VRING_BASE", self.frontend.get_vring_base(at))?;
            // The ring's indices are 16 bits; the message carries 32.
            queue.queue.set_next_avail(base as u16);
        }
        Ok(())
    }

    /// The number of queues negotiated.
    pub fn queue_count(&self) -> usize {
        self.queue_count
    }
}

/// What the VMM does with a device's requests once its backend is gone: answers each chain
/// (returning the bytes it wrote into it), so the guest sees errors rather than requests that
/// never complete.
pub trait OrphanedQueues: Send {
    fn answer(&mut self, chain: DescriptorChain<&GuestMemoryMmap>, memory: &GuestMemoryMmap) -> u32;
}

/// Answers everything available on `queue`, then re-enables notifications (with
/// `RING_EVENT_IDX` the driver kicks only past the index the device last published, which the
/// dead backend left behind) and answers what came meanwhile; returns whether the driver wants
/// an interrupt. A ring outside guest memory ends the pass.
pub fn drain<Q: QueueT>(
    queue: &mut Q,
    memory: &GuestMemoryMmap,
    answer: &mut dyn FnMut(DescriptorChain<&GuestMemoryMmap>) -> u32,
) -> bool {
    let mut used_any = false;
    // Bounded: a few passes over the ring's size per call, whatever the driver claims.
    let mut budget = 4 * usize::from(queue.size()) + 4;
    loop {
        if queue.disable_notification(memory).is_err() {
            break;
        }
        while budget > 0 {
            budget -= 1;
            let Some(chain) = queue.pop_descriptor_chain(memory) else {
                break;
            };
            let head = chain.head_index();
            let written = answer(chain);
            if queue.add_used(memory, head, written).is_err() {
                return used_any;
            }
            used_any = true;
        }
        // `true`: more arrived while notifications were off.
        match queue.enable_notification(memory) {
            Ok(true) if budget > 0 => continue,
            _ => break,
        }
    }
    used_any && queue.needs_notification(memory).unwrap_or(true)
}

const SOCKET_TOKEN: u64 = 0;
/// Queue `i`'s kick eventfd is token `QUEUE_TOKEN_BASE + i` once the worker serves the queues.
const QUEUE_TOKEN_BASE: u64 = 1;

/// The worker's event handler: the socket's hangup, then (with [`OrphanedQueues`]) the queues.
struct HangupWatch<'a> {
    name: &'static str,
    socket: RawFd,
    interrupt: &'a Arc<dyn VirtioInterrupt>,
    memory: &'a GuestMemoryMmap,
    queues: &'a mut [DeviceQueue],
    orphan: Option<Box<dyn OrphanedQueues>>,
    hung_up: bool,
}

impl HangupWatch<'_> {
    /// The backend is gone: the queues restart from what the used rings say it completed, and
    /// their kicks come to this worker, which answers through the device's [`OrphanedQueues`].
    fn take_over(&mut self, event_loop: &EventLoop) {
        if self.orphan.is_none() {
            return;
        }
        for queue in self.queues.iter_mut() {
            match queue
                .queue
                .used_idx(self.memory, std::sync::atomic::Ordering::Acquire)
            {
                Ok(used) => {
                    queue.queue.set_next_avail(used.0);
                    queue.queue.set_next_used(used.0);
                }
                Err(e) => {
                    warn_ratelimited!(
                        device = self.name,
                        "vhost-user: queue {}'s used ring is unreadable: {e}",
                        queue.index
                    );
                    continue;
                }
            }
            let token = QUEUE_TOKEN_BASE + u64::from(queue.index);
            if let Err(e) = event_loop.add(queue.event.as_raw_fd(), token, EventSet::IN) {
                tracing::error!(
                    device = self.name,
                    "vhost-user: cannot watch queue {}: {e}",
                    queue.index
                );
            }
        }
        for index in 0..self.queues.len() {
            self.answer_queue(index);
        }
    }

    fn answer_queue(&mut self, index: usize) {
        let (Some(orphan), Some(queue)) = (self.orphan.as_mut(), self.queues.get_mut(index)) else {
            return;
        };
        let _ = queue.event.read();
        let memory = self.memory;
        let notify = drain(&mut queue.queue, memory, &mut |chain| {
            orphan.answer(chain, memory)
        });
        if notify {
            self.interrupt.signal_used_queue(queue.index);
        }
    }
}

impl EventHandler for HangupWatch<'_> {
    fn handle_event(&mut self, event_loop: &EventLoop, token: u64, _events: EventSet) {
        if token >= QUEUE_TOKEN_BASE {
            self.answer_queue((token - QUEUE_TOKEN_BASE) as usize);
            return;
        }
        warn_ratelimited!(
            device = self.name,
            "vhost-user: the backend hung up (its daemon exited or was killed); the device needs a reset, and its requests fail until the VM restarts"
        );
        self.hung_up = true;
        let _ = event_loop.remove(self.socket);
        self.interrupt.signal_needs_reset();
        self.take_over(event_loop);
    }
}

/// The body of a vhost-user device's worker `v_<name>`: starts the rings at the backend, watches
/// the socket until told to stop, then stops the rings (so the queues come back with the
/// backend's positions) and hands the queues and the connection back. With `orphan`, a backend
/// that hangs up (or never took the rings) leaves the queues to the worker, which answers them
/// through it.
pub fn worker_body(
    name: &'static str,
    queues: Vec<DeviceQueue>,
    activation: &Activation,
    acked_features: u64,
    orphan: Option<Box<dyn OrphanedQueues>>,
) -> WorkerBody<VhostUserConnection> {
    let Activation { memory, interrupt } = activation.clone();
    Box::new(move |mut connection, kill| {
        let mut queues = queues;
        let mut broken = false;
        if let Err(e) = connection.start(&memory, &*interrupt, &queues, acked_features) {
            warn_ratelimited!(
                device = name,
                "vhost-user: cannot start the rings: {e}; the device needs a reset"
            );
            interrupt.signal_needs_reset();
            broken = true;
        }
        // No copies of descriptors here: the worker's seccomp filter has no `dup`/`fcntl`.
        let socket = connection.socket.as_raw_fd();
        let mut watch = HangupWatch {
            name,
            socket,
            interrupt: &interrupt,
            memory: &memory,
            queues: &mut queues,
            orphan,
            hung_up: broken,
        };
        match EventLoop::new(&kill) {
            Ok(event_loop) => {
                if broken {
                    // The rings never started at the backend: the worker answers from the start.
                    watch.take_over(&event_loop);
                } else {
                    let hangups = EventSet::HANG_UP | EventSet::READ_HANG_UP;
                    if let Err(e) = event_loop.add(socket, SOCKET_TOKEN, hangups) {
                        tracing::error!(
                            device = name,
                            "vhost-user: cannot watch the backend's socket: {e}"
                        );
                    }
                }
                event_loop.run(&kill, &mut watch);
            }
            Err(e) => tracing::error!(
                device = name,
                "vhost-user: cannot create the worker's event loop: {e}"
            ),
        }
        debug_assert_ne!(SOCKET_TOKEN, KILL_TOKEN);
        if watch.hung_up {
            connection.started = false;
        } else if let Err(e) = connection.stop(&mut queues) {
            warn_ratelimited!(device = name, "vhost-user: cannot stop the rings: {e}");
        }
        (queues, connection)
    })
}

/// The queues a vhost-user device hands over must be all of them, in order: the backend
/// numbers them as the device does.
pub fn check_queues(queues: &[DeviceQueue], count: usize) -> Result<(), VirtioError> {
    for expected in 0..count {
        match queues.get(expected) {
            Some(q) if usize::from(q.index) == expected => {}
            _ => {
                return Err(VirtioError::BadQueue {
                    index: expected as u16,
                })
            }
        }
    }
    if queues.len() != count {
        return Err(VirtioError::BadQueue { index: count as u16 });
    }
    Ok(())
}
