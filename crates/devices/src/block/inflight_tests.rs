//! Requests in flight: completion out of order, flushes ordered after earlier writes, the
//! outstanding limit against a hostile driver, reset and sleep waiting for I/O in flight, and the
//! io_uring engine against a model on real files.

use std::collections::VecDeque;
use std::ops::Range;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use virtio_bindings::bindings::virtio_ring::VRING_DESC_F_WRITE;
use virtio_queue::mock::MockSplitQueue;
use virtio_queue::{Queue, QueueT};
use virtkit_virtio::testing::{chain_at, memory, memory_with_regions, RecordingInterrupt, Signal};
use virtkit_virtio::VirtioDevice;
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::request::{status, types};
use super::test_support::{activate, limits, pattern, TempImage, XorShift};
use super::*;

const MEM_SIZE: usize = 32 << 20;
/// Request `i` has its header at `HEADERS + 16 i`, status at `STATUSES + i`, data at
/// `DATA + 2 MiB i`.
const HEADERS: u64 = 0x10_0000;
const STATUSES: u64 = 0x18_0000;
const DATA: u64 = 0x20_0000;
const DATA_STRIDE: u64 = 2 << 20;
/// The used ring, away from the mock's (which overlaps the end of its available ring).
const USED_RING: u64 = 0x8000;
const DISK_SIZE: usize = 8 << 20;
const R: u16 = 0;
const W: u16 = VRING_DESC_F_WRITE as u16;

fn handler<B: DiskBackend>(disk: B) -> RequestHandler<B> {
    RequestHandler::new(
        disk,
        limits(DISK_SIZE, false),
        [0; 20],
        Arc::new(BlockMetrics::default()),
    )
}

/// A request: its kind, sector, and data length (split into `pieces` descriptors).
#[derive(Clone, Copy)]
struct Req {
    kind: u32,
    sector: u64,
    len: u32,
    pieces: u32,
}

impl Req {
    const FLUSH: Req = Req {
        kind: types::FLUSH,
        sector: 0,
        len: 0,
        pieces: 0,
    };

    fn read(sector: u64, len: u32, pieces: u32) -> Req {
        Req {
            kind: types::IN,
            sector,
            len,
            pieces,
        }
    }

    fn write(sector: u64, len: u32, pieces: u32) -> Req {
        Req {
            kind: types::OUT,
            ..Req::read(sector, len, pieces)
        }
    }
}

/// Where the data of request `i` lies in guest memory, piece by piece, with each piece's range
/// of the data: `req.pieces` pieces of equal length (the last takes the rest), each 4 KiB beyond
/// the end of the one before, so they are not contiguous in guest memory.
fn data_pieces(i: u64, req: Req) -> impl Iterator<Item = (GuestAddress, Range<usize>)> {
    let piece = req.len / req.pieces.max(1);
    (0..req.pieces).map(move |p| {
        let len = if p + 1 == req.pieces {
            req.len - piece * p
        } else {
            piece
        };
        let at = DATA + DATA_STRIDE * i + u64::from(p) * (u64::from(piece) + 4096);
        let start = (piece * p) as usize;
        (GuestAddress(at), start..start + len as usize)
    })
}

/// Lays request `i` out (header, data, status) as a chain at descriptor `base` and makes it
/// available; returns its head.
fn post(vq: &MockSplitQueue<GuestMemoryMmap>, mem: &GuestMemoryMmap, i: u64, base: u16, req: Req) -> u16 {
    let header = HEADERS + 16 * i;
    mem.write_obj(req.kind, GuestAddress(header)).unwrap();
    mem.write_obj(0u32, GuestAddress(header + 4)).unwrap();
    mem.write_obj(req.sector, GuestAddress(header + 8)).unwrap();
    mem.write_obj(0xffu8, GuestAddress(STATUSES + i)).unwrap();
    let data_flags = if req.kind == types::IN { W } else { R };
    let mut descs = vec![(header, 16, R)];
    for (at, range) in data_pieces(i, req) {
        descs.push((at.raw_value(), range.len() as u32, data_flags));
    }
    descs.push((STATUSES + i, 1, W));
    vq.add_desc_chains(&chain_at(&descs, base), base).unwrap();
    base
}

/// The guest bytes of request `i`'s data.
fn guest_data(mem: &GuestMemoryMmap, i: u64, req: Req) -> Vec<u8> {
    let mut out = vec![0u8; req.len as usize];
    for (at, range) in data_pieces(i, req) {
        mem.read_slice(&mut out[range], at).unwrap();
    }
    out
}

fn set_guest_data(mem: &GuestMemoryMmap, i: u64, req: Req, data: &[u8]) {
    for (at, range) in data_pieces(i, req) {
        mem.write_slice(&data[range], at).unwrap();
    }
}

/// The device's queue for the mock's rings, with the used ring at [`USED_RING`].
fn queue_of(vq: &MockSplitQueue<GuestMemoryMmap>) -> Queue {
    let mut queue: Queue = vq.create_queue().unwrap();
    queue.set_used_ring_address(Some(USED_RING as u32), Some(0));
    queue
}

/// The used ring's entries from `from` on: (head, length).
fn used_entries(mem: &GuestMemoryMmap, vq: &MockSplitQueue<GuestMemoryMmap>, from: u16) -> Vec<(u16, u32)> {
    let used = GuestAddress(USED_RING);
    let idx: u16 = mem.read_obj(used.unchecked_add(2)).unwrap();
    let size = vq.create_queue::<Queue>().unwrap().size();
    (from..idx)
        .map(|k| {
            let at = used.unchecked_add(4 + 8 * u64::from(k % size));
            let id: u32 = mem.read_obj(at).unwrap();
            let len: u32 = mem.read_obj(at.unchecked_add(4)).unwrap();
            (id as u16, len)
        })
        .collect()
}

fn status_of(mem: &GuestMemoryMmap, i: u64) -> u8 {
    mem.read_obj(GuestAddress(STATUSES + i)).unwrap()
}

/// A backend that holds every op until the test releases it, and logs what happens.
struct HeldDisk {
    inner: MemoryDisk,
    held: Vec<(u64, DiskOp)>,
    done: Vec<DiskCompletion>,
    log: Vec<String>,
}

impl HeldDisk {
    fn new() -> HeldDisk {
        HeldDisk {
            inner: MemoryDisk::new(DISK_SIZE),
            held: Vec::new(),
            done: Vec::new(),
            log: Vec::new(),
        }
    }

    fn name(op: &DiskOp) -> String {
        match op {
            DiskOp::Read { offset, .. } | DiskOp::ReadGuest { offset, .. } => format!("read {offset}"),
            DiskOp::Write { offset, .. } | DiskOp::WriteGuest { offset, .. } => format!("write {offset}"),
            DiskOp::Flush => "flush".into(),
        }
    }

    /// Runs the held op at `index` of the ops held now.
    fn release(&mut self, index: usize) {
        let (tag, op) = self.held.remove(index);
        self.log.push(format!("done {}", Self::name(&op)));
        let completion = run_now(&mut self.inner, tag, op);
        self.done.push(completion);
    }

    fn held(&self) -> Vec<String> {
        self.held.iter().map(|(_, op)| Self::name(op)).collect()
    }
}

impl DiskBackend for HeldDisk {
    fn capacity(&self) -> u64 {
        self.inner.capacity()
    }
    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> std::io::Result<()> {
        self.inner.read_at(offset, buf)
    }
    fn write_at(&mut self, offset: u64, buf: &[u8]) -> std::io::Result<()> {
        self.inner.write_at(offset, buf)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
    fn discard(&mut self, offset: u64, len: u64) -> std::io::Result<()> {
        self.inner.discard(offset, len)
    }
    fn write_zeroes(&mut self, offset: u64, len: u64, may_unmap: bool) -> std::io::Result<()> {
        self.inner.write_zeroes(offset, len, may_unmap)
    }
    fn start(&mut self, tag: u64, op: DiskOp) -> Started {
        self.log.push(format!("start {}", Self::name(&op)));
        self.held.push((tag, op));
        Started::InFlight
    }
    fn reap(&mut self, done: &mut Vec<DiskCompletion>, _wait: bool) {
        done.append(&mut self.done);
    }
    fn in_flight(&self) -> usize {
        self.held.len() + self.done.len()
    }
}

#[test]
fn requests_complete_out_of_order_with_their_own_heads_and_lengths() {
    let mem = memory(MEM_SIZE);
    let vq = MockSplitQueue::new(&mem, 16);
    let mut queue = queue_of(&vq);
    let mut h = handler(HeldDisk::new());
    h.disk.inner.data[..512].copy_from_slice(&pattern(512, 1));
    h.disk.inner.data[8192..8192 + 1536].copy_from_slice(&pattern(1536, 2));
    let reqs = [
        Req::read(0, 512, 1),
        Req::write(4, 1024, 2),
        Req::read(16, 1536, 3),
    ];
    set_guest_data(&mem, 1, reqs[1], &pattern(1024, 3));
    let heads: Vec<u16> = reqs
        .iter()
        .enumerate()
        .map(|(i, &req)| post(&vq, &mem, i as u64, 5 * i as u16, req))
        .collect();
    assert!(
        !process_queue(&mut queue, &mem, &mut h).unwrap(),
        "nothing completed yet"
    );
    assert_eq!(h.disk.held(), ["read 0", "write 2048", "read 8192"]);
    assert_eq!(h.outstanding(), 3);
    assert!(used_entries(&mem, &vq, 0).is_empty());

    // The last first, then the first, then the middle one.
    h.disk.release(2);
    assert!(complete_requests(&mut queue, &mem, &mut h).unwrap());
    h.disk.release(0);
    h.disk.release(0);
    complete_requests(&mut queue, &mem, &mut h).unwrap();
    assert_eq!(
        used_entries(&mem, &vq, 0),
        [(heads[2], 1536 + 1), (heads[0], 512 + 1), (heads[1], 1)],
        "each used entry names its own head and length"
    );
    for i in 0..3 {
        assert_eq!(status_of(&mem, i), status::OK);
    }
    assert_eq!(guest_data(&mem, 0, reqs[0]), pattern(512, 1));
    assert_eq!(guest_data(&mem, 2, reqs[2]), pattern(1536, 2));
    assert_eq!(&h.disk.inner.data[2048..3072], &pattern(1024, 3)[..]);
    assert_eq!(h.outstanding(), 0);
}

#[test]
fn a_flush_starts_only_after_every_earlier_write_completed() {
    let mem = memory(MEM_SIZE);
    let vq = MockSplitQueue::new(&mem, 16);
    let mut queue = queue_of(&vq);
    let mut h = handler(HeldDisk::new());
    let write = |sector| Req::write(sector, 4096, 1);
    post(&vq, &mem, 0, 0, write(0));
    post(&vq, &mem, 1, 4, write(8));
    post(&vq, &mem, 2, 8, Req::FLUSH);
    post(&vq, &mem, 3, 12, write(16));
    process_queue(&mut queue, &mem, &mut h).unwrap();
    assert_eq!(
        h.disk.held(),
        ["write 0", "write 4096"],
        "the flush waits, and what follows it"
    );

    h.disk.release(1);
    complete_requests(&mut queue, &mem, &mut h).unwrap();
    assert_eq!(h.disk.held(), ["write 0"], "one earlier write is still in flight");
    assert_eq!(used_entries(&mem, &vq, 0), [(4, 1)]);

    h.disk.release(0);
    complete_requests(&mut queue, &mem, &mut h).unwrap();
    assert_eq!(
        h.disk.held(),
        ["flush", "write 8192"],
        "the flush started, then the later write"
    );
    h.disk.release(1);
    h.disk.release(0);
    complete_requests(&mut queue, &mem, &mut h).unwrap();
    assert_eq!(used_entries(&mem, &vq, 0), [(4, 1), (0, 1), (12, 1), (8, 1)]);
    let log = h.disk.log.join(", ");
    let flush_at = log.find("start flush").unwrap();
    assert!(log.find("done write 0").unwrap() < flush_at, "{log}");
    assert!(log.find("done write 4096").unwrap() < flush_at, "{log}");
    assert_eq!(h.disk.inner.flushes, 1);
    assert!((0..4).all(|i| status_of(&mem, i) == status::OK));
}

#[test]
fn a_driver_repeating_heads_cannot_get_more_than_a_queue_of_requests_outstanding() {
    let mem = memory(MEM_SIZE);
    let vq = MockSplitQueue::new(&mem, 16);
    let mut queue = queue_of(&vq);
    let mut h = handler(HeldDisk::new());
    post(&vq, &mem, 0, 0, Req::read(0, 512, 1));
    // The same head 31 more times: 32 entries, twice the queue size, made available in two
    // steps (the ring holds 16 at a time).
    let ring = |k: u16| vq.avail_addr().unchecked_add(4 + 2 * u64::from(k % 16));
    for k in 1..16 {
        mem.write_obj(0u16, ring(k)).unwrap();
    }
    mem.write_obj(16u16, vq.avail_addr().unchecked_add(2)).unwrap();
    process_queue(&mut queue, &mem, &mut h).unwrap();
    mem.write_obj(32u16, vq.avail_addr().unchecked_add(2)).unwrap();
    process_queue(&mut queue, &mem, &mut h).unwrap();
    assert_eq!(h.outstanding(), 16, "held to the queue size");
    assert_eq!(h.disk.held().len(), 16);
    while !h.disk.held.is_empty() {
        h.disk.release(0);
    }
    complete_requests(&mut queue, &mem, &mut h).unwrap();
    assert_eq!(h.outstanding(), 16, "the other 16 were taken once there was room");
    while !h.disk.held.is_empty() {
        h.disk.release(0);
    }
    complete_requests(&mut queue, &mem, &mut h).unwrap();
    assert_eq!(h.outstanding(), 0);
    assert_eq!(used_entries(&mem, &vq, 0).len(), 32);
}

#[test]
fn a_drain_does_not_hang_on_lost_io_and_a_late_completion_is_not_taken_for_a_new_request() {
    let mem = memory(MEM_SIZE);
    let vq = MockSplitQueue::new(&mem, 16);
    let mut queue = queue_of(&vq);
    let mut h = handler(HeldDisk::new());
    h.disk.inner.data[..512].copy_from_slice(&pattern(512, 5));
    let read = Req::read(0, 512, 1);
    post(&vq, &mem, 0, 0, read);
    process_queue(&mut queue, &mem, &mut h).unwrap();
    assert_eq!(h.disk.held().len(), 1);
    // The disk never completes it (HeldDisk does not block when asked to wait).
    drain_queue(&mut queue, &mem, &mut h).unwrap();
    assert_eq!(h.outstanding(), 0, "given up, not hung");
    assert!(used_entries(&mem, &vq, 0).is_empty(), "nothing answered for it");

    // A new request takes the same slot; then the old op completes late, then the new one.
    post(&vq, &mem, 1, 4, Req::read(8, 512, 1));
    process_queue(&mut queue, &mem, &mut h).unwrap();
    h.disk.release(0);
    complete_requests(&mut queue, &mem, &mut h).unwrap();
    assert!(
        used_entries(&mem, &vq, 0).is_empty(),
        "the late completion answered nothing"
    );
    assert_eq!(h.outstanding(), 1);
    h.disk.release(0);
    complete_requests(&mut queue, &mem, &mut h).unwrap();
    assert_eq!(used_entries(&mem, &vq, 0), [(4, 513)]);
    assert_eq!(
        guest_data(&mem, 1, read),
        vec![0u8; 512],
        "sector 8 of the disk, not sector 0"
    );
}

/// A backend whose ops complete on a thread of their own after a delay, signalling an eventfd:
/// what the worker sees from io_uring, slow enough that a reset comes while they are in flight.
struct SlowDisk {
    disk: Arc<Mutex<MemoryDisk>>,
    to_thread: Option<mpsc::Sender<(u64, DiskOp)>>,
    from_thread: mpsc::Receiver<DiskCompletion>,
    event: EventFd,
    in_flight: usize,
    /// Ops started so far, seen from the test.
    started: Arc<AtomicUsize>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl SlowDisk {
    /// Ops complete in batches of `batch` (the thread waits for that many), `delay` after the
    /// batch is complete.
    fn new(delay: Duration, batch: usize) -> SlowDisk {
        let disk = Arc::new(Mutex::new(MemoryDisk::new(DISK_SIZE)));
        let event = EventFd::new(EFD_NONBLOCK).unwrap();
        let (to_thread, jobs) = mpsc::channel::<(u64, DiskOp)>();
        let (done, from_thread) = mpsc::channel();
        let (theirs, signal) = (disk.clone(), event.try_clone().unwrap());
        let thread = std::thread::spawn(move || {
            let mut pending = VecDeque::new();
            while let Ok(job) = jobs.recv() {
                pending.push_back(job);
                while pending.len() < batch {
                    match jobs.recv() {
                        Ok(job) => pending.push_back(job),
                        Err(_) => break,
                    }
                }
                std::thread::sleep(delay);
                // The newest first: out of order. One signal for the batch, as io_uring's
                // eventfd gives when completions land together.
                while let Some((tag, op)) = pending.pop_back() {
                    let completion = run_now(&mut *theirs.lock().unwrap(), tag, op);
                    if done.send(completion).is_err() {
                        return;
                    }
                }
                signal.write(1).unwrap();
            }
        });
        SlowDisk {
            disk,
            to_thread: Some(to_thread),
            from_thread,
            event,
            in_flight: 0,
            started: Arc::new(AtomicUsize::new(0)),
            thread: Some(thread),
        }
    }
}

impl Drop for SlowDisk {
    fn drop(&mut self) {
        self.to_thread.take();
        if let Some(thread) = self.thread.take() {
            thread.join().unwrap();
        }
    }
}

impl DiskBackend for SlowDisk {
    fn capacity(&self) -> u64 {
        DISK_SIZE as u64
    }
    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> std::io::Result<()> {
        self.disk.lock().unwrap().read_at(offset, buf)
    }
    fn write_at(&mut self, offset: u64, buf: &[u8]) -> std::io::Result<()> {
        self.disk.lock().unwrap().write_at(offset, buf)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.disk.lock().unwrap().flush()
    }
    fn discard(&mut self, offset: u64, len: u64) -> std::io::Result<()> {
        self.disk.lock().unwrap().discard(offset, len)
    }
    fn write_zeroes(&mut self, offset: u64, len: u64, may_unmap: bool) -> std::io::Result<()> {
        self.disk.lock().unwrap().write_zeroes(offset, len, may_unmap)
    }
    fn start(&mut self, tag: u64, op: DiskOp) -> Started {
        self.in_flight += 1;
        self.started.fetch_add(1, Ordering::SeqCst);
        self.to_thread.as_ref().unwrap().send((tag, op)).unwrap();
        Started::InFlight
    }
    fn reap(&mut self, done: &mut Vec<DiskCompletion>, wait: bool) {
        if wait && self.in_flight > 0 {
            if let Ok(c) = self.from_thread.recv() {
                done.push(c);
                self.in_flight -= 1;
            }
        }
        for c in self.from_thread.try_iter() {
            done.push(c);
            self.in_flight -= 1;
        }
    }
    fn in_flight(&self) -> usize {
        self.in_flight
    }
    fn completion_event(&self) -> Option<&EventFd> {
        Some(&self.event)
    }
}

/// Starts a `Block` on a `SlowDisk`, posts `reqs`, kicks, and waits until the disk has them all.
fn slow_block_with_requests(
    mem: &GuestMemoryMmap,
    vq: &MockSplitQueue<GuestMemoryMmap>,
    reqs: &[Req],
) -> (Block<SlowDisk>, Arc<RecordingInterrupt>, Arc<AtomicUsize>) {
    let disk = SlowDisk::new(Duration::from_millis(300), reqs.len());
    let started = disk.started.clone();
    disk.disk.lock().unwrap().data[..DISK_SIZE].copy_from_slice(&pattern(DISK_SIZE, 9));
    let mut block = Block::new(disk, false, None).unwrap();
    let (kick, interrupt) = activate(&mut block, mem, queue_of(vq));
    for (i, &req) in reqs.iter().enumerate() {
        if req.kind == types::OUT {
            set_guest_data(mem, i as u64, req, &pattern(req.len as usize, 40 + i as u8));
        }
        post(vq, mem, i as u64, 4 * i as u16, req);
    }
    kick.write(1).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while started.load(Ordering::SeqCst) < reqs.len() {
        assert!(
            std::time::Instant::now() < deadline,
            "the worker did not start the requests"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    (block, interrupt, started)
}

fn slow_requests() -> Vec<Req> {
    vec![
        Req::read(0, 4096, 1),
        Req::write(64, 8192, 2),
        Req::read(128, 512, 1),
        Req::write(256, 4096, 1),
    ]
}

fn check_slow_requests_answered(mem: &GuestMemoryMmap, vq: &MockSplitQueue<GuestMemoryMmap>, reqs: &[Req]) {
    let used = used_entries(mem, vq, 0);
    assert_eq!(
        used.len(),
        reqs.len(),
        "every request in flight was answered: {used:?}"
    );
    for (i, &req) in reqs.iter().enumerate() {
        assert_eq!(status_of(mem, i as u64), status::OK, "request {i}");
        let expected_len = if req.kind == types::IN { req.len + 1 } else { 1 };
        assert!(
            used.contains(&(4 * i as u16, expected_len)),
            "request {i} in {used:?}"
        );
        if req.kind == types::IN {
            let at = (req.sector * 512) as usize;
            assert_eq!(
                guest_data(mem, i as u64, req),
                &pattern(DISK_SIZE, 9)[at..at + req.len as usize]
            );
        }
    }
}

#[test]
fn reset_waits_for_requests_in_flight_and_answers_them() {
    let mem = memory(MEM_SIZE);
    let vq = MockSplitQueue::new(&mem, 16);
    let reqs = slow_requests();
    let (mut block, _interrupt, _) = slow_block_with_requests(&mem, &vq, &reqs);
    // The disk holds them for 300 ms; the reset comes now.
    let queues = block.reset().expect("the queue comes back");
    assert_eq!(queues[0].queue.next_used(), reqs.len() as u16);
    check_slow_requests_answered(&mem, &vq, &reqs);
    let disk = block.disk().expect("the disk came back");
    assert_eq!(disk.in_flight(), 0);
    let data = disk.disk.lock().unwrap();
    for (i, &req) in reqs.iter().enumerate() {
        if req.kind == types::OUT {
            let at = (req.sector * 512) as usize;
            assert_eq!(
                &data.data[at..at + req.len as usize],
                &pattern(req.len as usize, 40 + i as u8)[..],
                "write {i} reached the disk before the reset returned"
            );
        }
    }
}

#[test]
fn sleep_waits_for_requests_in_flight_so_a_snapshot_sees_none() {
    let mem = memory(MEM_SIZE);
    let vq = MockSplitQueue::new(&mem, 16);
    let reqs = slow_requests();
    let (mut block, interrupt, _) = slow_block_with_requests(&mem, &vq, &reqs);
    let queues = block.sleep().unwrap().expect("the queue comes back");
    assert_eq!(queues[0].queue.next_used(), reqs.len() as u16);
    check_slow_requests_answered(&mem, &vq, &reqs);
    assert!(
        interrupt.signals().contains(&Signal::UsedQueue(0)),
        "the driver heard of them"
    );
    assert!(block.snapshot().is_ok(), "asleep with nothing in flight");
    block.wake(Some(queues)).unwrap();
    assert!(block.reset().is_some());
}

#[test]
fn the_worker_interrupts_once_per_batch_of_completions() {
    let mem = memory(MEM_SIZE);
    let vq = MockSplitQueue::new(&mem, 16);
    let reqs = slow_requests();
    let (mut block, interrupt, _) = slow_block_with_requests(&mem, &vq, &reqs);
    // All four complete together after the delay: one wake-up of the worker, one interrupt.
    assert!(interrupt.wait_for(Signal::UsedQueue(0), Duration::from_secs(10)));
    std::thread::sleep(Duration::from_millis(100));
    let signals = interrupt
        .signals()
        .iter()
        .filter(|s| **s == Signal::UsedQueue(0))
        .count();
    assert_eq!(signals, 1, "interrupts for a batch of 4 completions");
    assert_eq!(used_entries(&mem, &vq, 0).len(), 4);
    block.reset();
}

// The io_uring engine on real files, against a model.

/// Rounds of up to 12 requests in flight at once (reads, writes, flushes; aligned and not;
/// several descriptors; some over 1 MiB), answered by `disk`; checks every status, used length
/// and byte against a model disk.
fn random_requests_match_a_model(disk: FileDisk, seed: u64) {
    // Two regions, adjacent in guest addresses but separate mappings: buffers of later requests
    // straddle the boundary at 16 MiB (one I/O vector per region).
    let half = MEM_SIZE / 2;
    let mem = memory_with_regions(&[(0, half), (half as u64, half)]);
    let mut model = vec![0u8; DISK_SIZE];
    let mut rng = XorShift(seed);
    let mut h = handler(disk);
    for round in 0..40u64 {
        // Up to 5 descriptors a request (header, 3 pieces, status), 6 apart.
        let vq = MockSplitQueue::new(&mem, 128);
        let mut queue = queue_of(&vq);
        let n = 1 + rng.next() % 12;
        let mut reqs = Vec::new();
        let mut written: Vec<(u64, u64)> = Vec::new();
        for i in 0..n {
            let kind = match rng.next() % 8 {
                0..=3 => types::IN,
                4..=6 => types::OUT,
                _ => types::FLUSH,
            };
            let big = rng.next().is_multiple_of(10);
            let len = if kind == types::FLUSH {
                0
            } else if big {
                (1 << 20) + 4096 * (1 + rng.next() % 64)
            } else if rng.next().is_multiple_of(2) {
                4096 * (1 + rng.next() % 16)
            } else {
                512 * (1 + rng.next() % 24)
            } as u32;
            let unaligned = rng.next().is_multiple_of(3);
            let max = (DISK_SIZE as u64 - u64::from(len)) / 512;
            let mut sector = rng.next() % max;
            if !unaligned {
                sector &= !7;
            }
            // Reads and writes in one round never overlap a write (order among requests in
            // flight is the driver's to keep).
            let range = (sector * 512, sector * 512 + u64::from(len));
            let overlaps = written.iter().any(|&(a, b)| range.0 < b && a < range.1);
            if overlaps {
                continue;
            }
            let pieces = if len == 0 { 0 } else { 1 + (rng.next() % 3) as u32 };
            let req = Req {
                kind,
                sector,
                len,
                pieces,
            };
            let slot = reqs.len() as u64;
            if kind == types::OUT {
                let data = pattern(len as usize, (round * 16 + i) as u8);
                set_guest_data(&mem, slot, req, &data);
                model[range.0 as usize..range.1 as usize].copy_from_slice(&data);
            }
            if kind != types::FLUSH {
                written.push(range);
            }
            post(&vq, &mem, slot, 6 * slot as u16, req);
            reqs.push(req);
        }
        let mut interrupts = process_queue(&mut queue, &mem, &mut h).unwrap();
        let mut guard = 0;
        while h.outstanding() > 0 {
            interrupts |= complete_requests(&mut queue, &mem, &mut h).unwrap();
            guard += 1;
            assert!(guard < 10_000, "requests never completed");
        }
        assert!(interrupts || reqs.is_empty());
        for (i, &req) in reqs.iter().enumerate() {
            assert_eq!(status_of(&mem, i as u64), status::OK, "round {round} request {i}");
            if req.kind == types::IN {
                let at = (req.sector * 512) as usize;
                assert!(
                    guest_data(&mem, i as u64, req) == model[at..at + req.len as usize],
                    "round {round}: read {i} ({} bytes at sector {}) differs from the model",
                    req.len,
                    req.sector
                );
            }
        }
    }
    let mut disk = h.into_disk();
    let mut back = vec![0u8; DISK_SIZE];
    disk.read_at(0, &mut back).unwrap();
    assert!(back == model, "the image differs from the model");
}

fn file_disk(image: &TempImage, cache: CacheMode) -> Option<FileDisk> {
    let disk = match FileDisk::open_with_engine(&image.0, false, cache, SyncMode::Full, IoEngine::IoUring) {
        Ok(disk) => disk,
        Err(e) => {
            println!("SKIPPED: cannot open the image {cache:?}: {e}");
            return None;
        }
    };
    if disk.engine() != IoEngine::IoUring {
        println!("SKIPPED: this kernel refuses io_uring (kernel.io_uring_disabled or seccomp)");
        return None;
    }
    Some(disk)
}

#[test]
fn io_uring_cached_answers_random_requests_in_flight_like_a_model() {
    let image = TempImage::new("uring-cached", DISK_SIZE as u64);
    if let Some(disk) = file_disk(&image, CacheMode::Cached) {
        random_requests_match_a_model(disk, 0x1234_5678_9abc_def1);
    }
}

#[test]
fn io_uring_uncached_answers_random_requests_in_flight_like_a_model() {
    let image = TempImage::new("uring-direct", DISK_SIZE as u64);
    if let Some(disk) = file_disk(&image, CacheMode::Uncached) {
        random_requests_match_a_model(disk, 0x0fed_cba9_8765_4321);
    }
}

#[test]
fn io_uring_uncached_with_4k_blocks_mixes_read_modify_writes_with_io_in_flight_like_a_model() {
    // 512-byte sectors on 4 KiB O_DIRECT blocks: unaligned requests are read-modify-writes done
    // after the I/O in flight, aligned ones go to io_uring.
    let image = TempImage::new("uring-direct-4k", DISK_SIZE as u64);
    if let Some(mut disk) = file_disk(&image, CacheMode::Uncached) {
        disk.force_direct_alignment(DIRECT_IO_ALIGN);
        random_requests_match_a_model(disk, 0x5555_aaaa_1234_9876);
    }
}

#[test]
fn io_uring_flush_with_sync_full_syncs_and_with_sync_none_completes_at_once() {
    let image = TempImage::new("uring-flush", 1 << 20);
    for sync in [SyncMode::Full, SyncMode::None] {
        let Ok(mut disk) =
            FileDisk::open_with_engine(&image.0, false, CacheMode::Cached, sync, IoEngine::IoUring)
        else {
            panic!("open the image");
        };
        if disk.engine() != IoEngine::IoUring {
            println!("SKIPPED: this kernel refuses io_uring");
            return;
        }
        let mut buffer = IoBuffer::new(4096);
        buffer.as_mut_slice().fill(0x5a);
        // Through the page cache the write may complete at once (no non-blocking buffered
        // writes on this filesystem) or in the background.
        let mut done = Vec::new();
        match disk.start(1, DiskOp::Write { offset: 0, buffer }) {
            Started::Done(c) => done.push(c),
            Started::InFlight => {
                while done.is_empty() {
                    disk.reap(&mut done, true);
                }
            }
        }
        assert!(done[0].result.is_ok());
        match (sync, disk.start(2, DiskOp::Flush)) {
            (SyncMode::Full, Started::InFlight) => {
                done.clear();
                while done.is_empty() {
                    disk.reap(&mut done, true);
                }
                assert_eq!(done[0].tag, 2);
                assert!(done[0].result.is_ok());
            }
            (SyncMode::None, Started::Done(c)) => assert!(c.result.is_ok()),
            (sync, other) => panic!("{sync:?}: flush {other:?}"),
        }
        assert_eq!(disk.in_flight(), 0);
    }
}
