//! The frontend against a real vhost-user backend built in the test with the
//! `vhost-user-backend` crate: a two-queue device that echoes each chain's readable bytes into
//! its writable ones. Guest memory is the memfd-backed memory VMs with vhost-user devices get.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use vhost::vhost_user::message::VhostUserProtocolFeatures;
use vhost::vhost_user::Listener;
use vhost_user_backend::{VhostUserBackendMut, VhostUserDaemon, VringRwLock, VringT};
use virtio_queue::{DescriptorChain, QueueT};
use virtkit_virtio::features::VERSION_1;
use virtkit_virtio::testing::{test_queues, used_elem, used_idx, QUEUE_AREA, TEST_MEMORY_SIZE};
use virtkit_virtio::{DeviceWorker, VirtioInterrupt};
use vm_memory::{Bytes, GuestAddress, GuestAddressSpace, GuestMemoryAtomic, GuestMemoryMmap};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::event::{new_event_consumer_and_notifier, EventConsumer, EventFlag, EventNotifier};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::*;

const QUEUES: usize = 2;

#[derive(Clone)]
struct Echo {
    memory: Arc<Mutex<Option<GuestMemoryAtomic<GuestMemoryMmap>>>>,
    features: u64,
    /// Set when the test "crashes" the backend: its ring threads outlive the connection in
    /// this library, and a dead daemon answers nothing.
    dead: Arc<AtomicBool>,
}

impl Echo {
    fn new(features: u64) -> Echo {
        Echo {
            memory: Arc::new(Mutex::new(None)),
            features,
            dead: Arc::new(AtomicBool::new(false)),
        }
    }
}

impl VhostUserBackendMut for Echo {
    type Bitmap = ();
    type Vring = VringRwLock;

    fn num_queues(&self) -> usize {
        QUEUES
    }
    fn max_queue_size(&self) -> usize {
        256
    }
    fn features(&self) -> u64 {
        self.features
    }
    fn protocol_features(&self) -> VhostUserProtocolFeatures {
        VhostUserProtocolFeatures::MQ
            | VhostUserProtocolFeatures::REPLY_ACK
            | VhostUserProtocolFeatures::CONFIG
    }
    fn set_event_idx(&mut self, _enabled: bool) {}
    fn exit_event(&self, _thread: usize) -> Option<(EventConsumer, EventNotifier)> {
        // Without one, the daemon's ring thread never ends and dropping the daemon waits forever.
        new_event_consumer_and_notifier(EventFlag::NONBLOCK).ok()
    }
    fn update_memory(&mut self, memory: GuestMemoryAtomic<GuestMemoryMmap>) -> std::io::Result<()> {
        *self.memory.lock().unwrap() = Some(memory);
        Ok(())
    }
    fn handle_event(
        &mut self,
        queue: u16,
        _events: EventSet,
        vrings: &[VringRwLock],
        _thread: usize,
    ) -> std::io::Result<()> {
        if self.dead.load(Ordering::Acquire) {
            return Ok(());
        }
        let memory = self
            .memory
            .lock()
            .unwrap()
            .clone()
            .expect("memory before kicks")
            .memory();
        let vring = &vrings[usize::from(queue)];
        loop {
            let chain = vring
                .get_mut()
                .get_queue_mut()
                .pop_descriptor_chain(memory.clone());
            let Some(chain) = chain else { break };
            let head = chain.head_index();
            let mut bytes = Vec::new();
            let mut written = 0u32;
            for desc in chain {
                if desc.is_write_only() {
                    let n = bytes.len().min(desc.len() as usize);
                    memory.write_slice(&bytes[..n], desc.addr()).unwrap();
                    written += n as u32;
                } else {
                    let mut buf = vec![0; desc.len() as usize];
                    memory.read_slice(&mut buf, desc.addr()).unwrap();
                    bytes.extend(buf);
                }
            }
            vring.add_used(head, written).unwrap();
        }
        vring.signal_used_queue().unwrap();
        Ok(())
    }
}

/// The backend's socket in a directory of its own, served by one connection's daemon.
struct Backend {
    dir: PathBuf,
    socket: PathBuf,
    dead: Arc<AtomicBool>,
    daemon: Arc<Mutex<VhostUserDaemon<Arc<Mutex<Echo>>>>>,
}

impl Backend {
    fn start(name: &str, features: u64) -> Backend {
        Backend::start_after(name, features, Duration::ZERO)
    }

    /// A backend whose socket is there at once but which accepts only after `delay`, as a
    /// daemon slow to start.
    fn start_after(name: &str, features: u64, delay: Duration) -> Backend {
        let dir = std::env::temp_dir().join(format!("virtkit-vhost-user-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let socket = dir.join("backend.sock");
        let echo = Echo::new(features);
        let dead = echo.dead.clone();
        let backend = Arc::new(Mutex::new(echo));
        let daemon = VhostUserDaemon::new(
            "echo".into(),
            backend,
            GuestMemoryAtomic::new(GuestMemoryMmap::new()),
        )
        .unwrap();
        let daemon = Arc::new(Mutex::new(daemon));
        let mut listener = Listener::new(&socket, true).unwrap();
        let serving = daemon.clone();
        std::thread::spawn(move || {
            std::thread::sleep(delay);
            // Accepts the one connection; its own thread serves it.
            let _ = serving.lock().unwrap().start(&mut listener);
        });
        Backend {
            dir,
            socket,
            dead,
            daemon,
        }
    }

    /// Cuts the connection, as a backend that crashed.
    fn hang_up(&self) {
        self.dead.store(true, Ordering::Release);
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if let Ok(daemon) = self.daemon.try_lock() {
                if let Some(handle) = daemon.shutdown_handle() {
                    handle.shutdown();
                    return;
                }
            }
            assert!(Instant::now() < deadline, "the backend never got its connection");
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// An MSI-X-like interrupt: one call eventfd per queue, and the NEEDS_RESET flag.
struct CallInterrupt {
    calls: Vec<EventFd>,
    needs_reset: AtomicBool,
    /// Used-queue interrupts the VMM sent itself (only after the backend is gone).
    vmm_signals: std::sync::atomic::AtomicU32,
}

impl CallInterrupt {
    fn new() -> Arc<CallInterrupt> {
        Arc::new(CallInterrupt {
            calls: (0..QUEUES).map(|_| EventFd::new(EFD_NONBLOCK).unwrap()).collect(),
            needs_reset: AtomicBool::new(false),
            vmm_signals: std::sync::atomic::AtomicU32::new(0),
        })
    }

    fn wait_call(&self, queue: usize) -> bool {
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if self.calls[queue].read().is_ok() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        false
    }

    fn wait_needs_reset(&self) -> bool {
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if self.needs_reset.load(Ordering::Acquire) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        false
    }
}

impl VirtioInterrupt for CallInterrupt {
    fn signal_used_queue(&self, _queue: u16) {
        self.vmm_signals.fetch_add(1, Ordering::AcqRel);
    }
    fn signal_config_changed(&self) {}
    fn signal_needs_reset(&self) {
        self.needs_reset.store(true, Ordering::Release);
    }
    fn queue_irqfd(&self, queue: u16) -> Option<&EventFd> {
        self.calls.get(usize::from(queue))
    }
}

fn shared_memory() -> GuestMemoryMmap {
    virtkit_machine::memory::create_shared_guest_memory(&[(GuestAddress(0), TEST_MEMORY_SIZE as u64)], &[])
        .unwrap()
}

const DATA_IN: u64 = 0x40_0000;
const DATA_OUT: u64 = 0x40_1000;

/// The driver's side: a two-descriptor chain (`payload` readable, 64 bytes writable) made
/// available in queue `index` (rings as `test_queues` lays them out), then a kick on `kick`.
fn post_echo(memory: &GuestMemoryMmap, (index, kick): (u16, &EventFd), payload: &[u8], avail_idx: u16) {
    let base = QUEUE_AREA + 0x1_0000 * u64::from(index);
    let data_in = DATA_IN + 0x1_0000 * u64::from(index);
    let data_out = DATA_OUT + 0x1_0000 * u64::from(index);
    memory.write_slice(payload, GuestAddress(data_in)).unwrap();
    let first = 2 * (avail_idx - 1);
    let descs = [
        (data_in, payload.len() as u32, 1u16, first + 1),
        (data_out, 64, 2u16, 0),
    ];
    for (k, (addr, len, flags, next)) in descs.into_iter().enumerate() {
        let at = GuestAddress(base + 16 * u64::from(first + k as u16));
        memory.write_obj(addr, at).unwrap();
        memory.write_obj(len, GuestAddress(at.0 + 8)).unwrap();
        memory.write_obj(flags, GuestAddress(at.0 + 12)).unwrap();
        memory.write_obj(next, GuestAddress(at.0 + 14)).unwrap();
    }
    let avail = base + 0x8000;
    memory
        .write_obj(first, GuestAddress(avail + 4 + 2 * u64::from(avail_idx - 1)))
        .unwrap();
    memory.write_obj(avail_idx, GuestAddress(avail + 2)).unwrap();
    kick.write(1).unwrap();
}

fn echoed(memory: &GuestMemoryMmap, queue: u16, n: usize) -> Vec<u8> {
    let mut out = vec![0; n];
    memory
        .read_slice(&mut out, GuestAddress(DATA_OUT + 0x1_0000 * u64::from(queue)))
        .unwrap();
    out
}

fn used_ring(queue: u16) -> GuestAddress {
    GuestAddress(QUEUE_AREA + 0x1_0000 * u64::from(queue) + 0xc000)
}

/// Waits for queue `queue`'s used index to reach `n` (the call eventfd may also be signalled
/// when it is set up, so it alone does not say an answer is there).
fn wait_used(memory: &GuestMemoryMmap, queue: u16, n: u16) -> bool {
    let deadline = Instant::now() + Duration::from_secs(5);
    while used_idx(memory, used_ring(queue)) < n {
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    true
}

#[test]
fn negotiation_offers_the_backends_features_and_takes_only_the_wanted_protocol_features() {
    let backend = Backend::start("negotiate", VERSION_1 | VHOST_USER_F_PROTOCOL_FEATURES);
    let connection = VhostUserConnection::connect(&backend.socket, QUEUES, Duration::from_secs(5)).unwrap();
    assert_eq!(
        connection.backend_features(),
        VERSION_1,
        "the protocol bit is not for the guest"
    );
    assert_eq!(
        connection.protocol_features(),
        VhostUserProtocolFeatures::MQ | VhostUserProtocolFeatures::REPLY_ACK,
        "CONFIG is offered but the device keeps its own configuration space"
    );
}

#[test]
fn a_backend_slower_to_start_than_one_request_may_take_still_negotiates() {
    let delay = REQUEST_TIMEOUT + Duration::from_secs(1);
    let backend = Backend::start_after("slow", VERSION_1 | VHOST_USER_F_PROTOCOL_FEATURES, delay);
    let started = Instant::now();
    let connection = VhostUserConnection::connect(&backend.socket, QUEUES, Duration::from_secs(5)).unwrap();
    assert!(started.elapsed() >= delay, "{:?}", started.elapsed());
    assert_eq!(connection.backend_features(), VERSION_1);
}

#[test]
fn a_backend_without_protocol_features_is_refused() {
    let backend = Backend::start("noprotocol", VERSION_1);
    let err = VhostUserConnection::connect(&backend.socket, QUEUES, Duration::from_secs(5)).unwrap_err();
    assert!(matches!(err, VhostUserError::NoProtocolFeatures), "{err:?}");
}

#[test]
fn connect_waits_for_the_socket_then_names_it() {
    let dir = std::env::temp_dir().join(format!("virtkit-vhost-user-none-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("nobody.sock");
    let started = Instant::now();
    let err = VhostUserConnection::connect(&path, 1, Duration::from_millis(200)).unwrap_err();
    assert!(
        started.elapsed() >= Duration::from_millis(200),
        "it retried for the whole wait"
    );
    assert!(err.to_string().contains("nobody.sock"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn requests_flow_between_guest_memory_and_the_backend_without_the_vmm() {
    let backend = Backend::start("echo", VERSION_1 | VHOST_USER_F_PROTOCOL_FEATURES);
    let connection = VhostUserConnection::connect(&backend.socket, QUEUES, Duration::from_secs(5)).unwrap();
    let memory = shared_memory();
    let interrupt = CallInterrupt::new();
    let mut worker = DeviceWorker::new("fs", connection);
    let queues = test_queues(&[256, 256]);
    let kicks: Vec<EventFd> = queues.iter().map(|q| q.event.try_clone().unwrap()).collect();
    let (one, two) = ((0, &kicks[0]), (1, &kicks[1]));
    worker
        .activate(memory.clone(), interrupt.clone(), queues, |queues, activation| {
            check_queues(&queues, QUEUES)?;
            Ok(worker_body("fs", queues, activation, VERSION_1, None))
        })
        .unwrap();

    post_echo(&memory, one, b"hello, backend", 1);
    assert!(wait_used(&memory, 0, 1), "an answer on queue 0");
    assert!(
        interrupt.wait_call(0),
        "the backend signalled queue 0's call eventfd"
    );
    assert_eq!(used_idx(&memory, used_ring(0)), 1);
    assert_eq!(used_elem(&memory, used_ring(0), 0), (0, 14));
    assert_eq!(echoed(&memory, 0, 14), b"hello, backend");

    post_echo(&memory, two, b"second queue", 1);
    assert!(wait_used(&memory, 1, 1), "an answer on queue 1");
    assert!(interrupt.wait_call(1));
    assert_eq!(echoed(&memory, 1, 12), b"second queue");

    // Sleep stops the rings and brings back where the backend got to; wake starts them there.
    let slept = worker.sleep().expect("queues come back");
    assert_eq!(
        slept.iter().map(|q| q.queue.next_avail()).collect::<Vec<_>>(),
        vec![1, 1]
    );
    worker
        .wake(Some(slept), |queues, activation| {
            Ok(worker_body("fs", queues, activation, VERSION_1, None))
        })
        .unwrap();
    post_echo(&memory, one, b"after wake", 2);
    assert!(wait_used(&memory, 0, 2), "an answer on queue 0");
    assert!(interrupt.wait_call(0));
    assert_eq!(used_idx(&memory, used_ring(0)), 2);
    assert_eq!(echoed(&memory, 0, 10), b"after wake");
    assert!(!interrupt.needs_reset.load(Ordering::Acquire));
    assert_eq!(
        interrupt.vmm_signals.load(Ordering::Acquire),
        0,
        "the backend interrupts through the call eventfds, never through the VMM"
    );

    let reset = worker.reset().expect("a reset hands the queues back");
    assert_eq!(reset[0].queue.next_avail(), 2);
}

#[test]
fn a_backend_that_hangs_up_sets_needs_reset_and_nothing_hangs() {
    let backend = Backend::start("hangup", VERSION_1 | VHOST_USER_F_PROTOCOL_FEATURES);
    let connection = VhostUserConnection::connect(&backend.socket, QUEUES, Duration::from_secs(5)).unwrap();
    let memory = shared_memory();
    let interrupt = CallInterrupt::new();
    let mut worker = DeviceWorker::new("fs", connection);
    worker
        .activate(
            memory,
            interrupt.clone(),
            test_queues(&[256, 256]),
            |queues, activation| Ok(worker_body("fs", queues, activation, VERSION_1, None)),
        )
        .unwrap();
    backend.hang_up();
    assert!(
        interrupt.wait_needs_reset(),
        "the driver is told the device needs a reset"
    );
    // Reset and a new activation return at once: nothing waits on the dead backend.
    let started = Instant::now();
    assert!(worker.reset().is_some());
    interrupt.needs_reset.store(false, Ordering::Release);
    worker
        .activate(
            shared_memory(),
            interrupt.clone(),
            test_queues(&[256, 256]),
            |queues, activation| Ok(worker_body("fs", queues, activation, VERSION_1, None)),
        )
        .unwrap();
    assert!(
        interrupt.wait_needs_reset(),
        "starting rings on a dead backend fails into NEEDS_RESET"
    );
    drop(worker.reset());
    assert!(
        started.elapsed() < REQUEST_TIMEOUT,
        "took {:?}",
        started.elapsed()
    );
}

#[test]
fn interrupts_without_a_vector_are_refused() {
    struct NoVectors;
    impl VirtioInterrupt for NoVectors {
        fn signal_used_queue(&self, _: u16) {}
        fn signal_config_changed(&self) {}
        fn signal_needs_reset(&self) {}
    }
    let backend = Backend::start("novector", VERSION_1 | VHOST_USER_F_PROTOCOL_FEATURES);
    let mut connection =
        VhostUserConnection::connect(&backend.socket, QUEUES, Duration::from_secs(5)).unwrap();
    let err = connection
        .start(&shared_memory(), &NoVectors, &test_queues(&[256, 256]), VERSION_1)
        .unwrap_err();
    assert!(matches!(err, VhostUserError::NoVector { queue: 0 }), "{err:?}");
    let anonymous = virtkit_virtio::testing::test_memory();
    let err = connection
        .start(
            &anonymous,
            &*CallInterrupt::new(),
            &test_queues(&[256, 256]),
            VERSION_1,
        )
        .unwrap_err();
    assert!(
        matches!(err, VhostUserError::MemoryNotShareable { address: 0 }),
        "{err:?}"
    );
}

/// Answers every orphaned chain with one byte, `E`.
struct OneByte;

impl OrphanedQueues for OneByte {
    fn answer(&mut self, chain: DescriptorChain<&GuestMemoryMmap>, memory: &GuestMemoryMmap) -> u32 {
        match chain.into_iter().find(|d| d.is_write_only()) {
            Some(desc) => {
                memory.write_obj(b'E', desc.addr()).unwrap();
                1
            }
            None => 0,
        }
    }
}

#[test]
fn after_a_hangup_the_worker_answers_the_queues_through_the_device() {
    let backend = Backend::start("orphan", VERSION_1 | VHOST_USER_F_PROTOCOL_FEATURES);
    let connection = VhostUserConnection::connect(&backend.socket, QUEUES, Duration::from_secs(5)).unwrap();
    let memory = shared_memory();
    let interrupt = CallInterrupt::new();
    let mut worker = DeviceWorker::new("fs", connection);
    let queues = test_queues(&[256, 256]);
    let kick = queues[0].event.try_clone().unwrap();
    worker
        .activate(memory.clone(), interrupt.clone(), queues, |queues, activation| {
            Ok(worker_body(
                "fs",
                queues,
                activation,
                VERSION_1,
                Some(Box::new(OneByte)),
            ))
        })
        .unwrap();
    post_echo(&memory, (0, &kick), b"before", 1);
    assert!(wait_used(&memory, 0, 1), "an answer on queue 0");
    assert!(interrupt.wait_call(0), "the backend answered while it lived");
    // The daemon dies with a request it took the kick of but never answered: the worker
    // answers it when the connection ends. (The test's daemon keeps reading the kick eventfd
    // after the hangup, which a dead process would not; so the request goes in before.)
    backend.dead.store(true, Ordering::Release);
    post_echo(&memory, (0, &kick), b"after", 2);
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(
        used_idx(&memory, used_ring(0)),
        1,
        "the dead daemon answered nothing"
    );
    backend.hang_up();
    assert!(interrupt.wait_needs_reset());
    assert!(
        wait_used(&memory, 0, 2),
        "the request in flight was answered by the worker"
    );
    assert_eq!(used_elem(&memory, used_ring(0), 1), (2, 1));
    assert_eq!(echoed(&memory, 0, 1), b"E");
    assert!(
        interrupt.vmm_signals.load(Ordering::Acquire) >= 1,
        "through the VMM's interrupt"
    );
    drop(worker.reset());
}
