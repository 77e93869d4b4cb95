//! net_throughput: the virtio-net device's throughput of 64 KiB frames, each way, on one core
//! (`--frame` for other sizes: 1514 is a frame of the usual MTU).
//!
//! A test driver plays the guest: it lays the tx and rx split virtqueues (256 entries each,
//! `EVENT_IDX`, as Linux negotiates them) out in a `GuestMemoryMmap` and has the device's own
//! queue logic ([`NetHandler::process_tx`], [`NetHandler::process_rx`], what the `v_net` worker
//! runs on each pass) move frames between guest memory and a backend, on the calling thread: no
//! vCPU, KVM, epoll or interrupt in the way.
//!
//! - **tx** (guest to backend): `--tx-depth` chains always available, each a 12-byte
//!   virtio-net header descriptor and the frame in descriptors of `--tx-seg-kib` KiB; a
//!   used chain is made available again at once.
//! - **rx** (backend to guest): the ring full of device-writable buffers of `--rx-buf` bytes
//!   (mergeable rx buffers, as Linux's `virtio_net` posts them: at most a page each), a frame
//!   spread over as many as it needs; the driver checks each frame's `num_buffers` and length
//!   and gives the buffers back.
//!
//! Backends:
//! - **stream**: the real [`StreamBackend`] on one end of a `socketpair(AF_UNIX, SOCK_STREAM)`
//!   (passt's and QEMU's framing, a 4-byte big-endian length before each frame); a peer thread
//!   on the other end reads and checks the frames (tx) or writes them as fast as the socket
//!   takes them (rx). When the device would block, the driver waits in `poll` for the socket as
//!   the worker waits in epoll.
//! - **null**: takes every frame and gives a frame whenever asked, without touching its bytes:
//!   what is left is the device's own cost (its copies to and from guest memory and its ring
//!   handling).
//!
//! Each figure is the median of `--reps` runs of `--seconds`, measurements taking turns; the
//! device thread's CPU time (`CLOCK_THREAD_CPUTIME_ID`) is reported next to it, so the figure
//! per busy core is known. Before measuring, one frame each way through the stream backend is
//! compared byte for byte.
//!
//! Usage (run.py part 6 runs it; `--release` matters):
//!
//! ```text
//! cargo run --release -p virtkit-devices --example net_throughput -- \
//!     [--frame 65536] [--seconds 0.5] [--reps 7] [--tx-depth 48] [--tx-seg-kib 16] \
//!     [--rx-buf 4096] [--only TEXT]
//! ```
//!
//! One `NETTHR {json}` line per measurement goes to stdout, a table to stderr.

use std::io::{self, IoSlice, Read, Write};
use std::num::Wrapping;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::os::unix::net::{UnixDatagram, UnixStream};
use std::sync::atomic::{fence, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use virtio_bindings::bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::{Queue, QueueT};
use virtkit_devices::net::{NetBackend, NetHandler, NetMetrics, StreamBackend, VNET_HDR_LEN};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

/// The longest frame a measurement moves (Ethernet frame bytes, without the virtio-net header):
/// the guest memory layout's slot for one.
const MAX_FRAME: usize = 64 << 10;
/// The frame every measurement moves (`--frame`, 64 KiB by default), set once at start.
static FRAME_LEN: std::sync::OnceLock<usize> = std::sync::OnceLock::new();

fn frame_len() -> usize {
    *FRAME_LEN.get().expect("set at start")
}
const QUEUE_SIZE: u16 = 256;
/// Guest memory layout: the two queues' rings, the tx headers, the tx frames, the rx buffers.
const TX_RING: u64 = 0x0;
const RX_RING: u64 = 0x4000;
const TX_HEADERS: u64 = 0x8000;
const TX_DATA: u64 = 0x10_0000;
const MAX_TX_DEPTH: usize = 128;
const RX_DATA: u64 = TX_DATA + (MAX_TX_DEPTH * MAX_FRAME) as u64;
const MAX_RX_BUF: usize = 64 << 10;
const MEM_SIZE: usize = RX_DATA as usize + QUEUE_SIZE as usize * MAX_RX_BUF;
/// `num_buffers` in the virtio-net header.
const NUM_BUFFERS_AT: usize = 10;

// ---------------------------------------------------------------------------------------------
// The guest's side: one split virtqueue

struct Ring {
    desc: u64,
    avail: u64,
    used: u64,
    queue: Queue,
    avail_idx: Wrapping<u16>,
    used_seen: Wrapping<u16>,
}

impl Ring {
    /// Descriptor table at `base`, available ring a page on, used ring two pages on.
    fn new(mem: &GuestMemoryMmap, base: u64) -> Ring {
        let (desc, avail, used) = (base, base + 0x1000, base + 0x2000);
        let mut queue = Queue::new(QUEUE_SIZE).expect("queue");
        queue.set_size(QUEUE_SIZE);
        queue.set_desc_table_address(Some(desc as u32), Some(0));
        queue.set_avail_ring_address(Some(avail as u32), Some(0));
        queue.set_used_ring_address(Some(used as u32), Some(0));
        queue.set_event_idx(true);
        queue.set_ready(true);
        assert!(queue.is_valid(mem), "the queue layout is valid");
        Ring {
            desc,
            avail,
            used,
            queue,
            avail_idx: Wrapping(0),
            used_seen: Wrapping(0),
        }
    }

    fn write_desc(&self, mem: &GuestMemoryMmap, index: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let mut raw = [0u8; 16];
        raw[..8].copy_from_slice(&addr.to_le_bytes());
        raw[8..12].copy_from_slice(&len.to_le_bytes());
        raw[12..14].copy_from_slice(&flags.to_le_bytes());
        raw[14..16].copy_from_slice(&next.to_le_bytes());
        mem.write_slice(&raw, GuestAddress(self.desc + 16 * u64::from(index)))
            .expect("descriptor");
    }

    /// Makes the chain at `head` available (seen by the device after `publish`).
    fn offer(&mut self, mem: &GuestMemoryMmap, head: u16) {
        let at = self.avail + 4 + 2 * u64::from(self.avail_idx.0 % QUEUE_SIZE);
        mem.write_obj(head, GuestAddress(at)).expect("avail ring");
        self.avail_idx += 1;
    }

    /// The driver's `idx` store before it would notify.
    fn publish(&self, mem: &GuestMemoryMmap) {
        fence(Ordering::Release);
        mem.write_obj(self.avail_idx.0, GuestAddress(self.avail + 2))
            .expect("avail idx");
    }

    /// The next used entry (head, length), if the device has put one there.
    fn next_used(&mut self, mem: &GuestMemoryMmap) -> Option<(u16, u32)> {
        let idx: u16 = mem.read_obj(GuestAddress(self.used + 2)).expect("used idx");
        if idx == self.used_seen.0 {
            return None;
        }
        fence(Ordering::Acquire);
        let at = self.used + 4 + 8 * u64::from(self.used_seen.0 % QUEUE_SIZE);
        let id: u32 = mem.read_obj(GuestAddress(at)).expect("used id");
        let len: u32 = mem.read_obj(GuestAddress(at + 4)).expect("used len");
        self.used_seen += 1;
        Some((id as u16, len))
    }
}

fn memory() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).expect("guest memory")
}

/// A frame whose bytes say where they are.
fn frame_bytes(seed: u8) -> Vec<u8> {
    (0..frame_len())
        .map(|i| ((i as u32).wrapping_mul(2_654_435_761) >> 24) as u8 ^ seed)
        .collect()
}

/// The tx queue with `depth` chains laid out: chain `s` is a header descriptor and the frame
/// at `TX_DATA + s * MAX_FRAME` in descriptors of `seg` bytes.
struct TxDriver {
    ring: Ring,
    depth: usize,
}

impl TxDriver {
    fn new(mem: &GuestMemoryMmap, depth: usize, seg: usize) -> TxDriver {
        let per_chain = 1 + frame_len().div_ceil(seg);
        assert!(depth <= MAX_TX_DEPTH && depth * per_chain <= usize::from(QUEUE_SIZE));
        let ring = Ring::new(mem, TX_RING);
        let frame = frame_bytes(0);
        for slot in 0..depth {
            let head = (slot * per_chain) as u16;
            let next = VRING_DESC_F_NEXT as u16;
            // A header of zeros: no offload asked for.
            ring.write_desc(
                mem,
                head,
                TX_HEADERS + 16 * slot as u64,
                VNET_HDR_LEN as u32,
                next,
                head + 1,
            );
            let data = TX_DATA + (slot * MAX_FRAME) as u64;
            mem.write_slice(&frame, GuestAddress(data)).expect("frame");
            for piece in 0..per_chain - 1 {
                let index = head + 1 + piece as u16;
                let len = seg.min(frame_len() - piece * seg);
                let last = piece == per_chain - 2;
                ring.write_desc(
                    mem,
                    index,
                    data + (piece * seg) as u64,
                    len as u32,
                    if last { 0 } else { next },
                    if last { 0 } else { index + 1 },
                );
            }
        }
        let mut driver = TxDriver { ring, depth };
        for slot in 0..depth {
            driver.ring.offer(mem, (slot * per_chain) as u16);
        }
        driver.ring.publish(mem);
        driver
    }

    /// Makes every used chain available again; returns how many there were.
    fn recycle(&mut self, mem: &GuestMemoryMmap) -> usize {
        let mut n = 0;
        while let Some((head, len)) = self.ring.next_used(mem) {
            assert_eq!(len, 0, "a tx chain is used with length 0");
            self.ring.offer(mem, head);
            n += 1;
        }
        if n > 0 {
            self.ring.publish(mem);
        }
        assert!(n <= self.depth);
        n
    }
}

/// The rx queue full of one-descriptor buffers of `buf` bytes.
struct RxDriver {
    ring: Ring,
    buf: usize,
    /// Buffers left of the frame being received, and its bytes so far.
    left: u16,
    got: usize,
}

impl RxDriver {
    fn new(mem: &GuestMemoryMmap, buf: usize) -> RxDriver {
        assert!((VNET_HDR_LEN..=MAX_RX_BUF).contains(&buf));
        let mut ring = Ring::new(mem, RX_RING);
        for i in 0..QUEUE_SIZE {
            ring.write_desc(mem, i, buf_addr(i), buf as u32, VRING_DESC_F_WRITE as u16, 0);
            ring.offer(mem, i);
        }
        ring.publish(mem);
        RxDriver {
            ring,
            buf,
            left: 0,
            got: 0,
        }
    }

    /// Takes the used buffers, checks each whole frame (its `num_buffers` and length) and gives
    /// the buffers back; returns (frames completed, buffers given back).
    fn recycle(&mut self, mem: &GuestMemoryMmap) -> (usize, usize) {
        let (mut frames, mut buffers) = (0, 0);
        while let Some((head, len)) = self.ring.next_used(mem) {
            assert!(len as usize <= self.buf);
            if self.left == 0 {
                let n: u16 = mem
                    .read_obj(GuestAddress(buf_addr(head) + NUM_BUFFERS_AT as u64))
                    .expect("header");
                assert!(n >= 1, "num_buffers of a frame is at least 1");
                self.left = n;
                self.got = 0;
            }
            self.got += len as usize;
            self.left -= 1;
            if self.left == 0 {
                assert_eq!(
                    self.got,
                    VNET_HDR_LEN + frame_len(),
                    "a frame's bytes over its buffers"
                );
                frames += 1;
            }
            self.ring.offer(mem, head);
            buffers += 1;
        }
        if buffers > 0 {
            self.ring.publish(mem);
        }
        (frames, buffers)
    }
}

fn buf_addr(index: u16) -> u64 {
    RX_DATA + u64::from(index) * MAX_RX_BUF as u64
}

// ---------------------------------------------------------------------------------------------
// Backends and their peers

/// Takes every frame; gives a frame of `--frame` bytes whenever asked, leaving the buffer as it
/// is (no copy: the device's own cost is what is measured).
struct NullBackend {
    fd: UnixDatagram,
}

impl NetBackend for NullBackend {
    fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
    fn send(&mut self, _frame: &[IoSlice<'_>]) -> io::Result<()> {
        Ok(())
    }
    fn recv(&mut self, _buf: &mut [u8]) -> io::Result<usize> {
        Ok(frame_len())
    }
}

/// What a peer thread did.
#[derive(Debug, Default)]
struct PeerCount {
    frames: u64,
    bad: u64,
    cpu_s: f64,
}

/// Reads length-prefixed frames until end of file, counting them (and those not of `--frame`
/// bytes).
fn drain(mut peer: UnixStream) -> PeerCount {
    let mut count = PeerCount::default();
    let mut buf = vec![0u8; 1 << 20];
    let mut prefix = [0u8; 4];
    let mut have_prefix = 0usize;
    let mut left = 0usize;
    loop {
        let n = match peer.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let mut at = 0;
        while at < n {
            if left > 0 {
                let k = left.min(n - at);
                left -= k;
                at += k;
                if left == 0 {
                    count.frames += 1;
                }
                continue;
            }
            prefix[have_prefix] = buf[at];
            have_prefix += 1;
            at += 1;
            if have_prefix == 4 {
                have_prefix = 0;
                left = u32::from_be_bytes(prefix) as usize;
                if left != frame_len() {
                    count.bad += 1;
                }
                if left == 0 {
                    count.frames += 1;
                }
            }
        }
    }
    count.cpu_s = thread_cpu_s();
    count
}

/// Writes length-prefixed frames as fast as the socket takes them, until the device's end is
/// gone.
fn feed(mut peer: UnixStream) -> PeerCount {
    // At least 256 KiB per write, as a peer with much to send writes.
    let per_write = (256 << 10) / frame_len() + 1;
    let mut batch = Vec::new();
    for seed in 0..per_write {
        batch.extend_from_slice(&(frame_len() as u32).to_be_bytes());
        batch.extend_from_slice(&frame_bytes(seed as u8));
    }
    let mut count = PeerCount::default();
    while peer.write_all(&batch).is_ok() {
        count.frames += per_write as u64;
    }
    count.cpu_s = thread_cpu_s();
    count
}

fn thread_cpu_s() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec for the call to fill; the clock id is a constant.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_THREAD_CPUTIME_ID)");
    ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
}

/// Waits up to 100 ms for `fd` to be ready for `events` (as the worker waits in epoll).
fn wait_for(fd: RawFd, events: libc::c_short) {
    let mut p = libc::pollfd {
        fd,
        events,
        revents: 0,
    };
    // SAFETY: one valid pollfd, its length 1.
    unsafe { libc::poll(&mut p, 1, 100) };
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Dir {
    Tx,
    Rx,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    Null,
    Stream,
}

impl Dir {
    fn name(self) -> &'static str {
        match self {
            Dir::Tx => "tx",
            Dir::Rx => "rx",
        }
    }
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Null => "null",
            Kind::Stream => "stream",
        }
    }
}

/// A backend, the descriptor the driver waits on when the device would block (a duplicate of
/// the backend's), and the thread on the other end.
struct Attached {
    backend: Box<dyn NetBackend>,
    watch: Option<UnixStream>,
    peer: Option<JoinHandle<PeerCount>>,
}

fn backend(kind: Kind, dir: Dir) -> Attached {
    match kind {
        Kind::Null => Attached {
            backend: Box::new(NullBackend {
                fd: UnixDatagram::unbound().expect("socket"),
            }),
            watch: None,
            peer: None,
        },
        Kind::Stream => {
            let (ours, peer) = UnixStream::pair().expect("socketpair");
            let watch = ours.try_clone().expect("dup");
            let thread = match dir {
                Dir::Tx => thread::spawn(move || drain(peer)),
                Dir::Rx => thread::spawn(move || feed(peer)),
            };
            Attached {
                backend: Box::new(StreamBackend::new(ours).expect("stream backend")),
                watch: Some(watch),
                peer: Some(thread),
            }
        }
    }
}

/// One measurement's result.
struct Rate {
    frames: u64,
    wall_s: f64,
    cpu_s: f64,
    passes: u64,
    waits: u64,
    peer_cpu_s: f64,
}

impl Rate {
    fn gbps(&self) -> f64 {
        (self.frames * frame_len() as u64 * 8) as f64 / self.wall_s / 1e9
    }
    fn busy(&self) -> f64 {
        self.cpu_s / self.wall_s
    }
}

struct Args {
    frame: usize,
    seconds: f64,
    reps: usize,
    tx_depth: usize,
    tx_seg: usize,
    rx_buf: usize,
    only: Option<String>,
}

fn measure(args: &Args, dir: Dir, kind: Kind) -> Rate {
    let mem = memory();
    let metrics = Arc::new(NetMetrics::default());
    let Attached { backend, watch, peer } = backend(kind, dir);
    let mut handler = NetHandler::new(backend, metrics.clone());
    handler.set_mergeable(true);
    let wait_fd = watch.as_ref().map(|w| w.as_raw_fd());
    let (mut frames, mut passes, mut waits) = (0u64, 0u64, 0u64);
    let seconds = Duration::from_secs_f64(args.seconds);
    let (wall_s, cpu_s);
    match dir {
        Dir::Tx => {
            let mut tx = TxDriver::new(&mem, args.tx_depth, args.tx_seg);
            let (t0, c0) = (Instant::now(), thread_cpu_s());
            while t0.elapsed() < seconds {
                handler.process_tx(&mut tx.ring.queue, &mem).expect("tx queue");
                passes += 1;
                let n = tx.recycle(&mem);
                frames += n as u64;
                if n == 0 {
                    // Nothing went: the backend would block.
                    waits += 1;
                    wait_for(wait_fd.expect("only the stream backend blocks"), libc::POLLOUT);
                }
            }
            (wall_s, cpu_s) = (t0.elapsed().as_secs_f64(), thread_cpu_s() - c0);
            assert_eq!(
                NetMetrics::get(&metrics.tx_frames),
                frames,
                "frames the backend took"
            );
        }
        Dir::Rx => {
            let mut rx = RxDriver::new(&mem, args.rx_buf);
            let (t0, c0) = (Instant::now(), thread_cpu_s());
            while t0.elapsed() < seconds {
                handler.process_rx(&mut rx.ring.queue, &mem).expect("rx queue");
                passes += 1;
                let (f, buffers) = rx.recycle(&mem);
                frames += f as u64;
                if buffers > 0 {
                    // The guest's refill and its notification.
                    handler.rx_buffers_added();
                } else {
                    waits += 1;
                    wait_for(wait_fd.expect("only the stream backend runs dry"), libc::POLLIN);
                }
            }
            (wall_s, cpu_s) = (t0.elapsed().as_secs_f64(), thread_cpu_s() - c0);
            let dropped = NetMetrics::get(&metrics.rx_dropped);
            assert_eq!(dropped, 0, "rx frames dropped");
        }
    }
    drop(handler);
    drop(watch);
    let peer_count = peer.map(|p| p.join().expect("peer thread"));
    if let (Dir::Tx, Some(p)) = (dir, &peer_count) {
        assert_eq!(p.bad, 0, "frames of the wrong length at the peer");
        // What a socket that would block left in the backend's staging buffer when the time
        // was up (a 64 KiB batch and a frame at most) is lost with it.
        let held = (2 * MAX_FRAME) as u64 / frame_len() as u64 + 1;
        assert!(
            p.frames + held >= frames,
            "the peer got {} of {frames} frames",
            p.frames
        );
    }
    Rate {
        frames,
        wall_s,
        cpu_s,
        passes,
        waits,
        peer_cpu_s: peer_count.map_or(0.0, |p| p.cpu_s),
    }
}

/// One frame each way through the stream backend, compared byte for byte.
fn check(args: &Args) {
    // tx: the frame of slot 0 reaches the peer with its prefix.
    let mem = memory();
    let (ours, mut peer) = UnixStream::pair().expect("socketpair");
    let mut handler = NetHandler::new(
        Box::new(StreamBackend::new(ours).expect("backend")),
        Arc::new(NetMetrics::default()),
    );
    handler.set_mergeable(true);
    let mut tx = TxDriver::new(&mem, 1, args.tx_seg);
    handler.process_tx(&mut tx.ring.queue, &mem).expect("tx");
    let mut got = vec![0u8; 4 + frame_len()];
    peer.read_exact(&mut got).expect("peer read");
    assert_eq!(&got[..4], &(frame_len() as u32).to_be_bytes());
    assert!(got[4..] == frame_bytes(0)[..], "the tx frame arrived intact");
    assert_eq!(tx.recycle(&mem), 1);

    // rx: a frame from the peer lands over the guest's buffers behind a header.
    let sent = frame_bytes(0x5a);
    peer.write_all(&(frame_len() as u32).to_be_bytes())
        .expect("peer write");
    peer.write_all(&sent).expect("peer write");
    let mut rx = RxDriver::new(&mem, args.rx_buf);
    let mut received = Vec::new();
    for _ in 0..100 {
        handler.process_rx(&mut rx.ring.queue, &mem).expect("rx");
        let start = rx.ring.used_seen;
        let idx: u16 = mem.read_obj(GuestAddress(rx.ring.used + 2)).expect("used idx");
        let mut at = start;
        while at.0 != idx {
            let e = rx.ring.used + 4 + 8 * u64::from(at.0 % QUEUE_SIZE);
            let id: u32 = mem.read_obj(GuestAddress(e)).expect("id");
            let len: u32 = mem.read_obj(GuestAddress(e + 4)).expect("len");
            let mut bytes = vec![0u8; len as usize];
            mem.read_slice(&mut bytes, GuestAddress(buf_addr(id as u16)))
                .expect("buffer");
            received.extend_from_slice(&bytes);
            at += 1;
        }
        if rx.recycle(&mem).0 == 1 {
            break;
        }
        thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(
        received.len(),
        VNET_HDR_LEN + frame_len(),
        "one whole frame received"
    );
    assert!(
        received[VNET_HDR_LEN..] == sent[..],
        "the rx frame arrived intact"
    );
}

fn args() -> Args {
    let mut a = Args {
        frame: MAX_FRAME,
        seconds: 0.5,
        reps: 7,
        tx_depth: 48,
        tx_seg: 16 << 10,
        rx_buf: 4096,
        only: None,
    };
    let usage = "usage: net_throughput [--frame BYTES] [--seconds S] [--reps N] [--tx-depth N] \
                 [--tx-seg-kib N] [--rx-buf BYTES] [--only TEXT]";
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = || {
            it.next()
                .unwrap_or_else(|| panic!("{arg} needs a value; {usage}"))
        };
        match arg.as_str() {
            "--frame" => a.frame = value().parse().expect("--frame BYTES"),
            "--seconds" => a.seconds = value().parse().expect("--seconds S"),
            "--reps" => a.reps = value().parse().expect("--reps N"),
            "--tx-depth" => a.tx_depth = value().parse().expect("--tx-depth N"),
            "--tx-seg-kib" => a.tx_seg = value().parse::<usize>().expect("--tx-seg-kib N") << 10,
            "--rx-buf" => a.rx_buf = value().parse().expect("--rx-buf BYTES"),
            "--only" => a.only = Some(value()),
            _ => {
                eprintln!("{usage}");
                std::process::exit(2);
            }
        }
    }
    assert!(
        (60..=MAX_FRAME).contains(&a.frame),
        "--frame between 60 and {MAX_FRAME} bytes"
    );
    FRAME_LEN.set(a.frame).expect("set once");
    let per_chain = 1 + frame_len().div_ceil(a.tx_seg.max(1));
    assert!(
        a.seconds > 0.0 && a.reps >= 1 && a.tx_seg >= 1024 && a.tx_depth >= 1,
        "{usage}"
    );
    assert!(
        a.tx_depth <= MAX_TX_DEPTH && a.tx_depth * per_chain <= usize::from(QUEUE_SIZE),
        "--tx-depth {} chains of {per_chain} descriptors do not fit a ring of {QUEUE_SIZE}",
        a.tx_depth
    );
    assert!(
        (VNET_HDR_LEN..=MAX_RX_BUF).contains(&a.rx_buf),
        "--rx-buf between {VNET_HDR_LEN} and {MAX_RX_BUF}"
    );
    a
}

fn median(xs: &[f64]) -> f64 {
    let mut s = xs.to_vec();
    s.sort_by(f64::total_cmp);
    let n = s.len();
    if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    }
}

fn main() {
    let args = args();
    check(&args);
    let cases: Vec<(Dir, Kind)> = [Dir::Tx, Dir::Rx]
        .into_iter()
        .flat_map(|d| [Kind::Null, Kind::Stream].map(|k| (d, k)))
        .filter(|(d, k)| {
            args.only
                .as_ref()
                .is_none_or(|o| format!("{}:{}", d.name(), k.name()).contains(o.as_str()))
        })
        .collect();
    let mut rates: Vec<Vec<Rate>> = cases.iter().map(|_| Vec::new()).collect();
    for _ in 0..args.reps {
        for (i, &(dir, kind)) in cases.iter().enumerate() {
            rates[i].push(measure(&args, dir, kind));
        }
    }
    let per_chain = 1 + frame_len().div_ceil(args.tx_seg);
    eprintln!(
        "{:<4} {:<7} {:>10} {:>22} {:>10} {:>14} {:>10}",
        "dir", "backend", "Gbit/s", "(min-max)", "core busy", "Gbit/s per core", "µs/frame"
    );
    for (i, &(dir, kind)) in cases.iter().enumerate() {
        let r = &rates[i];
        let gbps: Vec<f64> = r.iter().map(Rate::gbps).collect();
        let busy: Vec<f64> = r.iter().map(Rate::busy).collect();
        let per_core: Vec<f64> = r.iter().map(|x| x.gbps() / x.busy().max(1e-9)).collect();
        let us: Vec<f64> = r.iter().map(|x| x.cpu_s / x.frames.max(1) as f64 * 1e6).collect();
        let list = |xs: &[f64]| xs.iter().map(|x| format!("{x:.3}")).collect::<Vec<_>>().join(",");
        let sum = |f: fn(&Rate) -> u64| r.iter().map(f).sum::<u64>();
        println!(
            "NETTHR {{\"dir\":\"{}\",\"backend\":\"{}\",\"frame\":{},\"seconds\":{},\"reps\":{},\
             \"tx_depth\":{},\"tx_descriptors\":{per_chain},\"rx_buf\":{},\"gbps\":{:.3},\
             \"mfps\":{:.4},\"busy\":{:.3},\"gbps_per_core\":{:.3},\"us_per_frame\":{:.3},\"peer_busy\":{:.3},\
             \"frames\":{},\"passes\":{},\"waits\":{},\"gbps_runs\":[{}],\"busy_runs\":[{}]}}",
            dir.name(),
            kind.name(),
            frame_len(),
            args.seconds,
            args.reps,
            args.tx_depth,
            args.rx_buf,
            median(&gbps),
            median(&r.iter().map(|x| x.frames as f64 / x.wall_s / 1e6).collect::<Vec<_>>()),
            median(&busy),
            median(&per_core),
            median(&us),
            median(&r.iter().map(|x| x.peer_cpu_s / x.wall_s).collect::<Vec<_>>()),
            sum(|x| x.frames),
            sum(|x| x.passes),
            sum(|x| x.waits),
            list(&gbps),
            list(&busy),
        );
        let (lo, hi) = (
            gbps.iter().copied().fold(f64::INFINITY, f64::min),
            gbps.iter().copied().fold(0.0, f64::max),
        );
        eprintln!(
            "{:<4} {:<7} {:>10.2} {:>22} {:>9.0}% {:>14.2} {:>10.2}",
            dir.name(),
            kind.name(),
            median(&gbps),
            format!("({lo:.2}-{hi:.2})"),
            median(&busy) * 100.0,
            median(&per_core),
            median(&us)
        );
    }
}
