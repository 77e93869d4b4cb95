//! blk_throughput: the virtio-blk backend's own throughput, next to the host's raw file
//! throughput, on one image file.
//!
//! A test driver plays the guest: it lays a split virtqueue (256 entries) out in a
//! `GuestMemoryMmap`, fills it with read or write requests (header, one data buffer, status
//! byte), and has the device answer them synchronously with `process_queue` and the device's
//! `RequestHandler` on a `FileDisk`, exactly as the `v_blk` worker does after a notification,
//! with no vCPU, KVM or interrupt in the way. The same offsets and sizes are then read or
//! written with plain `pread`/`pwrite` on the file (with `O_DIRECT` for the uncached mode):
//! the host's raw throughput, the reference.
//!
//! Workloads: sequential 64 KiB and random 4 KiB (4 KiB-aligned, over the whole file), reads and
//! writes, queue depth 1 and 32, for `cache=cached` (page cache; the file is read once first so
//! reads are page-cache hits) and `cache=uncached` (`O_DIRECT`: every read and write reaches the
//! host's disk). Queue depth N: the driver makes N requests available, notifies once, and waits
//! until the device has answered all N (the device runs one request at a time, so nothing more
//! can be in flight). The host reference does one `pread`/`pwrite` at a time: that is what the
//! device does, so it is the device's ceiling at any queue depth.
//!
//! Two measurements look at queue depth 32 beyond that design (they do not change the device):
//! - host, 32 threads: 32 threads, each doing `pread`/`pwrite` one at a time, so 32 are always
//!   outstanding: what the host's file gives at queue depth 32 (io_uring's ceiling too);
//! - device, thread pool: the driver keeps 32 requests available; a dispatcher pops chains from
//!   the same queue and hands them to a pool of threads, each with the device's `RequestHandler`
//!   over a shared file descriptor (positional I/O, `O_DIRECT` with its own aligned bounce
//!   buffer), and puts them in the used ring as they complete, out of order: a sketch of a
//!   thread-pool backend.
//!
//! Usage (run.py part 4 runs it; `--release` matters):
//!
//! ```text
//! cargo run --release -p virtkit-devices --example blk_throughput -- \
//!     --file bench/out/blk-throughput.img [--size-mib 1024] [--seconds 0.4] [--reps 7] \
//!     [--pool-threads 32] [--keep]
//! ```
//!
//! The file is created (filled with data, so no hole or unwritten extent is read) and removed at
//! the end unless `--keep`; it must be on a filesystem that supports `O_DIRECT` (not tmpfs). One
//! `BLKTHR {json}` line per measurement goes to stdout, a table to stderr.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::num::Wrapping;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use virtio_bindings::bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::{Queue, QueueOwnedT, QueueT};
use virtkit_devices::block::request::DiskLimits;
use virtkit_devices::block::{
    process_queue, BlockMetrics, CacheMode, DiskBackend, FileDisk, MemoryDisk, RequestHandler, SyncMode,
    DIRECT_IO_ALIGN,
};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

// Guest memory layout.
const QUEUE_SIZE: u16 = 256;
const DESC_TABLE: u64 = 0x0;
const AVAIL_RING: u64 = 0x1000;
const USED_RING: u64 = 0x2000;
const HEADERS: u64 = 0x4000;
const STATUS: u64 = 0x6000;
const DATA: u64 = 0x10_0000;
const MAX_BLOCK: u64 = 64 << 10;
const MAX_DEPTH: usize = 64;
const MEM_SIZE: usize = (DATA + MAX_DEPTH as u64 * MAX_BLOCK) as usize;

const VIRTIO_BLK_T_IN: u32 = 0;
const VIRTIO_BLK_T_OUT: u32 = 1;
const STATUS_OK: u8 = 0;
const SECTOR: u64 = 512;
/// Size of the in-memory disk of the device-only measurement.
const MEMORY_DISK: usize = 256 << 20;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Op {
    Read,
    Write,
}

impl Op {
    fn name(self) -> &'static str {
        match self {
            Op::Read => "read",
            Op::Write => "write",
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Pattern {
    /// 64 KiB requests one after the other, wrapping at the end of the file.
    Seq64k,
    /// 4 KiB requests at random 4 KiB-aligned offsets.
    Rand4k,
}

impl Pattern {
    fn name(self) -> &'static str {
        match self {
            Pattern::Seq64k => "seq64k",
            Pattern::Rand4k => "rand4k",
        }
    }

    fn block(self) -> u64 {
        match self {
            Pattern::Seq64k => 64 << 10,
            Pattern::Rand4k => 4 << 10,
        }
    }
}

/// The offsets of one measurement: the same sequence for the host and the device.
#[derive(Clone)]
struct Offsets {
    pattern: Pattern,
    size: u64,
    next: u64,
    state: u64,
    /// Sequential streams of parallel threads: each takes every `stride`-th block.
    stride: u64,
}

impl Offsets {
    fn new(pattern: Pattern, size: u64, stream: u64, streams: u64) -> Offsets {
        Offsets {
            pattern,
            size,
            next: stream * pattern.block(),
            state: 0x9e37_79b9_7f4a_7c15 ^ (stream.wrapping_add(1).wrapping_mul(0xbf58_476d_1ce4_e5b9)),
            stride: streams,
        }
    }

    fn next(&mut self) -> u64 {
        let block = self.pattern.block();
        match self.pattern {
            Pattern::Seq64k => {
                let at = self.next;
                self.next += block * self.stride;
                if self.next + block > self.size {
                    self.next %= self.size - self.size % block;
                }
                at
            }
            Pattern::Rand4k => {
                // xorshift64*
                self.state ^= self.state >> 12;
                self.state ^= self.state << 25;
                self.state ^= self.state >> 27;
                let r = self.state.wrapping_mul(0x2545_f491_4f6c_dd1d);
                (r % (self.size / block)) * block
            }
        }
    }
}

/// A buffer aligned for `O_DIRECT` (over-allocated, then a window at the aligned offset).
struct Aligned {
    storage: Vec<u8>,
    start: usize,
    len: usize,
}

impl Aligned {
    fn new(len: usize, fill: u8) -> Aligned {
        let storage = vec![fill; len + DIRECT_IO_ALIGN];
        let start = storage.as_ptr().align_offset(DIRECT_IO_ALIGN);
        Aligned { storage, start, len }
    }

    fn get(&mut self) -> &mut [u8] {
        &mut self.storage[self.start..self.start + self.len]
    }
}

fn open_raw(path: &PathBuf, direct: bool) -> io::Result<File> {
    let mut options = OpenOptions::new();
    options.read(true).write(true);
    if direct {
        options.custom_flags(libc::O_DIRECT);
    }
    options.open(path)
}

// ---------------------------------------------------------------------------------------------
// The driver: the guest's side of the queue.

struct Driver {
    mem: GuestMemoryMmap,
    queue: Queue,
    avail_idx: Wrapping<u16>,
    used_seen: Wrapping<u16>,
    op: Op,
    /// The used length every answered request must have: data and status for a read, the status
    /// for a write.
    used_len: u32,
}

impl Driver {
    /// A queue with `depth` request slots; slot `s` is the chain of descriptors 3s (header),
    /// 3s + 1 (data, `block` bytes), 3s + 2 (status).
    fn new(depth: usize, block: u64, op: Op) -> Driver {
        assert!(depth <= MAX_DEPTH && block <= MAX_BLOCK);
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).expect("guest memory");
        let data_flags = match op {
            Op::Read => VRING_DESC_F_WRITE as u16,
            Op::Write => 0,
        };
        for slot in 0..depth as u64 {
            let head = 3 * slot as u16;
            let descs = [
                (HEADERS + 16 * slot, 16, VRING_DESC_F_NEXT as u16, head + 1),
                (
                    DATA + MAX_BLOCK * slot,
                    block as u32,
                    data_flags | VRING_DESC_F_NEXT as u16,
                    head + 2,
                ),
                (STATUS + slot, 1, VRING_DESC_F_WRITE as u16, 0),
            ];
            for (i, (addr, len, flags, next)) in descs.into_iter().enumerate() {
                let mut raw = [0u8; 16];
                raw[..8].copy_from_slice(&addr.to_le_bytes());
                raw[8..12].copy_from_slice(&u32::to_le_bytes(len));
                raw[12..14].copy_from_slice(&flags.to_le_bytes());
                raw[14..16].copy_from_slice(&next.to_le_bytes());
                let at = DESC_TABLE + 16 * (u64::from(head) + i as u64);
                mem.write_slice(&raw, GuestAddress(at)).expect("descriptor");
            }
        }
        // Something other than zeros to write.
        let pattern: Vec<u8> = (0..MAX_BLOCK).map(|i| (i * 7 + 13) as u8).collect();
        for slot in 0..depth as u64 {
            mem.write_slice(&pattern, GuestAddress(DATA + MAX_BLOCK * slot))
                .expect("data");
        }
        let mut queue = Queue::new(QUEUE_SIZE).expect("queue");
        queue.set_size(QUEUE_SIZE);
        queue.set_desc_table_address(Some(DESC_TABLE as u32), Some(0));
        queue.set_avail_ring_address(Some(AVAIL_RING as u32), Some(0));
        queue.set_used_ring_address(Some(USED_RING as u32), Some(0));
        // As Linux negotiates it.
        queue.set_event_idx(true);
        queue.set_ready(true);
        assert!(queue.is_valid(&mem), "the queue layout is valid");
        Driver {
            mem,
            queue,
            avail_idx: Wrapping(0),
            used_seen: Wrapping(0),
            op,
            used_len: match op {
                Op::Read => block as u32 + 1,
                Op::Write => 1,
            },
        }
    }

    /// Makes slot's request for `offset` available (the index is published by `publish`).
    fn post(&mut self, slot: usize, offset: u64) {
        let slot = slot as u64;
        let kind = match self.op {
            Op::Read => VIRTIO_BLK_T_IN,
            Op::Write => VIRTIO_BLK_T_OUT,
        };
        let mut header = [0u8; 16];
        header[..4].copy_from_slice(&kind.to_le_bytes());
        header[8..].copy_from_slice(&(offset / SECTOR).to_le_bytes());
        let mem = &self.mem;
        mem.write_slice(&header, GuestAddress(HEADERS + 16 * slot))
            .expect("header");
        mem.write_obj(0xffu8, GuestAddress(STATUS + slot))
            .expect("status");
        let ring = AVAIL_RING + 4 + 2 * u64::from(self.avail_idx.0 % QUEUE_SIZE);
        mem.write_obj(3 * slot as u16, GuestAddress(ring))
            .expect("avail ring");
        self.avail_idx += 1;
    }

    /// Publishes the available index (the driver's `idx` store before its notification).
    fn publish(&self) {
        std::sync::atomic::fence(Ordering::Release);
        self.mem
            .write_obj(self.avail_idx.0, GuestAddress(AVAIL_RING + 2))
            .expect("avail idx");
    }

    /// The slots the device completed since the last call; checks each status is OK.
    fn reap(&mut self, done: &mut Vec<usize>) {
        let used: u16 = self.mem.read_obj(GuestAddress(USED_RING + 2)).expect("used idx");
        std::sync::atomic::fence(Ordering::Acquire);
        while self.used_seen.0 != used {
            let at = USED_RING + 4 + 8 * u64::from(self.used_seen.0 % QUEUE_SIZE);
            let id: u32 = self.mem.read_obj(GuestAddress(at)).expect("used id");
            let len: u32 = self.mem.read_obj(GuestAddress(at + 4)).expect("used len");
            let slot = (id / 3) as usize;
            let status: u8 = self
                .mem
                .read_obj(GuestAddress(STATUS + slot as u64))
                .expect("status");
            assert_eq!(
                (status, len),
                (STATUS_OK, self.used_len),
                "request in slot {slot}: status and used length"
            );
            done.push(slot);
            self.used_seen += 1;
        }
    }
}

fn limits(size: u64) -> DiskLimits {
    DiskLimits {
        capacity_sectors: size / SECTOR,
        read_only: false,
        max_discard_sectors: 0,
        max_discard_segments: 0,
        max_write_zeroes_sectors: 0,
        max_write_zeroes_segments: 0,
    }
}

fn handler<B: DiskBackend>(disk: B) -> RequestHandler<B> {
    let limits = limits(disk.capacity());
    RequestHandler::new(disk, limits, [0; 20], Arc::new(BlockMetrics::default()))
}

// ---------------------------------------------------------------------------------------------
// Measurements

struct Rate {
    ops: u64,
    secs: f64,
    block: u64,
}

impl Rate {
    fn mbps(&self) -> f64 {
        (self.ops * self.block) as f64 / 1e6 / self.secs
    }

    fn iops(&self) -> f64 {
        self.ops as f64 / self.secs
    }
}

struct Setup {
    path: PathBuf,
    size: u64,
    duration: Duration,
}

/// The device on the image, one request at a time: `depth` requests per notification.
fn device_serial(setup: &Setup, cache: CacheMode, pattern: Pattern, op: Op, depth: usize) -> Rate {
    let disk = FileDisk::open(&setup.path, false, cache, SyncMode::Full).expect("open the image");
    device_run(setup.duration, disk, pattern, op, depth)
}

/// The device on a disk in memory: its own cost per request, with no file I/O.
fn device_memory(duration: Duration, pattern: Pattern, op: Op, depth: usize) -> Rate {
    let mut disk = MemoryDisk::new(MEMORY_DISK);
    // Every page touched before the clock starts.
    disk.data.fill(0x3c);
    device_run(duration, disk, pattern, op, depth)
}

fn device_run<B: DiskBackend>(duration: Duration, disk: B, pattern: Pattern, op: Op, depth: usize) -> Rate {
    let size = disk.capacity();
    let mut h = handler(disk);
    let mut driver = Driver::new(depth, pattern.block(), op);
    let mut offsets = Offsets::new(pattern, size, 0, 1);
    let mut done = Vec::with_capacity(depth);
    let mut ops = 0u64;
    let start = Instant::now();
    let deadline = start + duration;
    loop {
        for slot in 0..depth {
            driver.post(slot, offsets.next());
        }
        driver.publish();
        process_queue(&mut driver.queue, &driver.mem, &mut h).expect("the queue works");
        done.clear();
        driver.reap(&mut done);
        assert_eq!(done.len(), depth, "every request was answered");
        ops += depth as u64;
        if Instant::now() >= deadline {
            break;
        }
    }
    Rate {
        ops,
        secs: start.elapsed().as_secs_f64(),
        block: pattern.block(),
    }
}

/// The host: `pread`/`pwrite` of the same offsets, one at a time on `threads` threads.
fn host(setup: &Setup, cache: CacheMode, pattern: Pattern, op: Op, threads: usize) -> Rate {
    let direct = cache == CacheMode::Uncached;
    let file = open_raw(&setup.path, direct).expect("open the image");
    let block = pattern.block();
    let total = AtomicU64::new(0);
    let start = Instant::now();
    let deadline = start + setup.duration;
    std::thread::scope(|s| {
        for t in 0..threads {
            let (file, total) = (&file, &total);
            s.spawn(move || {
                let mut offsets = Offsets::new(pattern, setup.size, t as u64, threads as u64);
                let mut buf = Aligned::new(block as usize, 0x5a);
                let buf = buf.get();
                let mut ops = 0u64;
                loop {
                    for _ in 0..32 {
                        let at = offsets.next();
                        match op {
                            Op::Read => file.read_exact_at(buf, at).expect("pread"),
                            Op::Write => file.write_all_at(buf, at).expect("pwrite"),
                        }
                        ops += 1;
                    }
                    if Instant::now() >= deadline {
                        break;
                    }
                }
                total.fetch_add(ops, Ordering::Relaxed);
            });
        }
    });
    Rate {
        ops: total.load(Ordering::Relaxed),
        secs: start.elapsed().as_secs_f64(),
        block,
    }
}

/// Positional I/O on a shared descriptor: each pool thread's backend.
struct SharedFile {
    file: Arc<File>,
    capacity: u64,
    direct: bool,
    bounce: Vec<u8>,
}

impl SharedFile {
    fn window(&mut self, offset: u64, len: usize) -> io::Result<&mut [u8]> {
        let mask = DIRECT_IO_ALIGN - 1;
        if offset & mask as u64 != 0 || len & mask != 0 {
            return Err(io::Error::other(
                "the pool sketch takes 4 KiB-aligned requests only",
            ));
        }
        if self.bounce.len() < len + DIRECT_IO_ALIGN {
            self.bounce.resize(len + DIRECT_IO_ALIGN, 0);
        }
        let start = self.bounce.as_ptr().align_offset(DIRECT_IO_ALIGN);
        Ok(&mut self.bounce[start..start + len])
    }
}

impl DiskBackend for SharedFile {
    fn capacity(&self) -> u64 {
        self.capacity
    }

    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        if !self.direct {
            return self.file.read_exact_at(buf, offset);
        }
        let file = self.file.clone();
        let window = self.window(offset, buf.len())?;
        file.read_exact_at(window, offset)?;
        buf.copy_from_slice(window);
        Ok(())
    }

    fn write_at(&mut self, offset: u64, buf: &[u8]) -> io::Result<()> {
        if !self.direct {
            return self.file.write_all_at(buf, offset);
        }
        let file = self.file.clone();
        let window = self.window(offset, buf.len())?;
        window.copy_from_slice(buf);
        file.write_all_at(window, offset)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.sync_data()
    }

    fn discard(&mut self, _offset: u64, _len: u64) -> io::Result<()> {
        Err(io::ErrorKind::Unsupported.into())
    }

    fn write_zeroes(&mut self, _offset: u64, _len: u64, _may_unmap: bool) -> io::Result<()> {
        Err(io::ErrorKind::Unsupported.into())
    }
}

/// The device's request code on a pool of `threads` threads, `depth` requests always
/// available: a dispatcher pops chains and puts completions in the used ring out of order.
fn device_pool(
    setup: &Setup,
    cache: CacheMode,
    pattern: Pattern,
    op: Op,
    depth: usize,
    threads: usize,
) -> Rate {
    let direct = cache == CacheMode::Uncached;
    let file = Arc::new(open_raw(&setup.path, direct).expect("open the image"));
    let mut driver = Driver::new(depth, pattern.block(), op);
    let mut offsets = Offsets::new(pattern, setup.size, 0, 1);
    let Driver { mem, queue, .. } = &mut driver;
    let mem = mem.clone();
    // The driver's view and the device's queue are separate from here on.
    let mut queue = std::mem::replace(queue, Queue::new(QUEUE_SIZE).expect("queue"));
    let (job_tx, job_rx) = mpsc::channel();
    let job_rx = Arc::new(Mutex::new(job_rx));
    let (done_tx, done_rx) = mpsc::channel::<(u16, u32)>();
    let stop = AtomicBool::new(false);
    let mut ops = 0u64;
    let start = Instant::now();
    let deadline = start + setup.duration;
    std::thread::scope(|s| {
        for _ in 0..threads {
            let (job_rx, done_tx, file, mem) = (job_rx.clone(), done_tx.clone(), file.clone(), &mem);
            s.spawn(move || {
                let backend = SharedFile {
                    capacity: setup.size,
                    file,
                    direct,
                    bounce: Vec::new(),
                };
                let mut h = handler(backend);
                loop {
                    let job = job_rx.lock().expect("job queue").recv();
                    let Ok(chain) = job else { break };
                    let chain: virtio_queue::DescriptorChain<&GuestMemoryMmap> = chain;
                    let head = chain.head_index();
                    let used = h.handle(chain, mem);
                    if done_tx.send((head, used)).is_err() {
                        break;
                    }
                }
            });
        }
        drop(done_tx);
        for slot in 0..depth {
            driver.post(slot, offsets.next());
        }
        driver.publish();
        let mut outstanding = 0usize;
        let mut done = Vec::with_capacity(depth);
        loop {
            // The device: pop what is available, hand it to the pool.
            let chains: Vec<_> = queue.iter(&mem).expect("the queue works").collect();
            for chain in chains {
                outstanding += 1;
                job_tx.send(chain).expect("pool alive");
            }
            if outstanding == 0 {
                break;
            }
            // Completions, as they come.
            let first = done_rx.recv().expect("pool alive");
            for (head, used) in std::iter::once(first).chain(done_rx.try_iter()) {
                queue.add_used(&mem, head, used).expect("used ring");
                outstanding -= 1;
            }
            // The driver: count them and make the slots available again.
            done.clear();
            driver.reap(&mut done);
            ops += done.len() as u64;
            if !stop.load(Ordering::Relaxed) && Instant::now() >= deadline {
                stop.store(true, Ordering::Relaxed);
            }
            if !stop.load(Ordering::Relaxed) {
                for &slot in &done {
                    driver.post(slot, offsets.next());
                }
                driver.publish();
            }
        }
        drop(job_tx);
    });
    Rate {
        ops,
        secs: start.elapsed().as_secs_f64(),
        block: pattern.block(),
    }
}

// ---------------------------------------------------------------------------------------------
// Setup and checks

fn create_image(path: &PathBuf, size: u64) -> io::Result<()> {
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)?;
    let chunk: Vec<u8> = (0..1u64 << 20)
        .map(|i| (i.wrapping_mul(131) >> 3) as u8)
        .collect();
    let mut done = 0;
    while done < size {
        let n = (size - done).min(chunk.len() as u64) as usize;
        file.write_all(&chunk[..n])?;
        done += n as u64;
    }
    file.sync_all()
}

/// Reads the whole file through the page cache, so the cached runs hit it.
fn warm(path: &PathBuf) -> io::Result<()> {
    let file = File::open(path)?;
    let mut buf = vec![0u8; 1 << 20];
    let mut at = 0;
    loop {
        let n = file.read_at(&mut buf, at)?;
        if n == 0 {
            return Ok(());
        }
        at += n as u64;
    }
}

/// The device reads what the host reads and writes what the host then reads back.
fn check(setup: &Setup, cache: CacheMode) {
    let mut h = handler(FileDisk::open(&setup.path, false, cache, SyncMode::Full).expect("open"));
    let raw = open_raw(&setup.path, false).expect("open");
    let at = (setup.size / 2) & !0xffff;
    for op in [Op::Read, Op::Write] {
        let mut driver = Driver::new(1, 64 << 10, op);
        if op == Op::Write {
            let data: Vec<u8> = (0..64u32 << 10).map(|i| (i * 3 + 1) as u8).collect();
            driver.mem.write_slice(&data, GuestAddress(DATA)).expect("data");
        }
        driver.post(0, at);
        driver.publish();
        process_queue(&mut driver.queue, &driver.mem, &mut h).expect("queue");
        let mut done = Vec::new();
        driver.reap(&mut done);
        assert_eq!(done, [0]);
        let mut guest = vec![0u8; 64 << 10];
        driver
            .mem
            .read_slice(&mut guest, GuestAddress(DATA))
            .expect("data");
        let mut host = vec![0u8; 64 << 10];
        raw.read_exact_at(&mut host, at).expect("pread");
        assert!(
            guest == host,
            "device {} and host disagree ({cache:?})",
            op.name()
        );
    }
}

// ---------------------------------------------------------------------------------------------

struct Args {
    file: PathBuf,
    size: u64,
    seconds: f64,
    reps: usize,
    pool_threads: usize,
    keep: bool,
    /// Only the workloads whose `cache:pattern:op` name contains this.
    only: Option<String>,
}

fn args() -> Args {
    let mut a = Args {
        file: PathBuf::from("bench/out/blk-throughput.img"),
        size: 1 << 30,
        seconds: 0.4,
        reps: 7,
        pool_threads: 32,
        keep: false,
        only: None,
    };
    let mut it = std::env::args().skip(1);
    let usage = "usage: blk_throughput [--file PATH] [--size-mib N] [--seconds S] [--reps N] \
                 [--pool-threads N] [--keep] [--only TEXT]";
    while let Some(arg) = it.next() {
        let mut value = || {
            it.next()
                .unwrap_or_else(|| panic!("{arg} needs a value; {usage}"))
        };
        match arg.as_str() {
            "--file" => a.file = PathBuf::from(value()),
            "--size-mib" => a.size = value().parse::<u64>().expect("--size-mib N") << 20,
            "--seconds" => a.seconds = value().parse().expect("--seconds S"),
            "--reps" => a.reps = value().parse().expect("--reps N"),
            "--pool-threads" => a.pool_threads = value().parse().expect("--pool-threads N"),
            "--keep" => a.keep = true,
            "--only" => a.only = Some(value()),
            _ => {
                eprintln!("{usage}");
                std::process::exit(2);
            }
        }
    }
    assert!(a.size >= 16 << 20 && a.reps >= 1 && a.seconds > 0.0 && a.pool_threads >= 1);
    a
}

/// What one line of results is about.
struct Measured<'a> {
    cache: &'a str,
    pattern: Pattern,
    op: Op,
    who: &'a str,
    depth: usize,
    threads: usize,
    seconds: f64,
}

impl Measured<'_> {
    /// One `BLKTHR {json}` line on stdout (medians and every run), one table line on stderr.
    fn report(&self, rates: &[Rate]) {
        let mbps: Vec<f64> = rates.iter().map(Rate::mbps).collect();
        let iops: Vec<f64> = rates.iter().map(Rate::iops).collect();
        let list = |xs: &[f64]| xs.iter().map(|x| format!("{x:.1}")).collect::<Vec<_>>().join(",");
        let (cache, who, depth, threads) = (self.cache, self.who, self.depth, self.threads);
        println!(
            "BLKTHR {{\"cache\":\"{cache}\",\"pattern\":\"{}\",\"op\":\"{}\",\"who\":\"{who}\",\
             \"depth\":{depth},\"threads\":{threads},\"block\":{},\"seconds\":{},\"mbps\":{:.2},\
             \"iops\":{:.1},\"mbps_runs\":[{}],\"iops_runs\":[{}]}}",
            self.pattern.name(),
            self.op.name(),
            self.pattern.block(),
            self.seconds,
            median(mbps.clone()),
            median(iops.clone()),
            list(&mbps),
            list(&iops),
        );
        let _ = io::stdout().flush();
        eprintln!(
            "{cache:>8} {:>6} {:>5} {who:>11} qd {depth:>2} threads {threads:>2}: {:>8.1} MB/s \
             {:>9.0} IOPS  (runs: {} MB/s)",
            self.pattern.name(),
            self.op.name(),
            median(mbps.clone()),
            median(iops),
            list(&mbps)
        );
    }
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    let n = xs.len();
    if n % 2 == 1 {
        xs[n / 2]
    } else {
        (xs[n / 2 - 1] + xs[n / 2]) / 2.0
    }
}

fn main() {
    let a = args();
    let setup = Setup {
        path: a.file.clone(),
        size: a.size,
        duration: Duration::from_secs_f64(a.seconds),
    };
    eprintln!(
        "blk_throughput: writing {} MiB to {}",
        a.size >> 20,
        a.file.display()
    );
    if let Err(e) = create_image(&a.file, a.size) {
        eprintln!("blk_throughput: cannot create {}: {e}", a.file.display());
        std::process::exit(1);
    }
    let depth_hi = 32;
    for cache in [CacheMode::Uncached, CacheMode::Cached] {
        let cache_name = match cache {
            CacheMode::Cached => "cached",
            CacheMode::Uncached => "uncached",
        };
        if cache == CacheMode::Cached {
            warm(&a.file).expect("read the image");
        }
        check(&setup, cache);
        for pattern in [Pattern::Seq64k, Pattern::Rand4k] {
            for op in [Op::Read, Op::Write] {
                let name = format!("{cache_name}:{}:{}", pattern.name(), op.name());
                if a.only.as_ref().is_some_and(|only| !name.contains(only.as_str())) {
                    continue;
                }
                type Run<'a> = (&'a str, usize, usize, Box<dyn Fn() -> Rate + 'a>);
                let setup = &setup;
                let runs: Vec<Run> = vec![
                    ("host", 1, 1, Box::new(move || host(setup, cache, pattern, op, 1))),
                    (
                        "device",
                        1,
                        1,
                        Box::new(move || device_serial(setup, cache, pattern, op, 1)),
                    ),
                    (
                        "device",
                        depth_hi,
                        1,
                        Box::new(move || device_serial(setup, cache, pattern, op, depth_hi)),
                    ),
                    (
                        "host",
                        depth_hi,
                        depth_hi,
                        Box::new(move || host(setup, cache, pattern, op, depth_hi)),
                    ),
                    (
                        "device-pool",
                        depth_hi,
                        a.pool_threads,
                        Box::new(move || device_pool(setup, cache, pattern, op, depth_hi, a.pool_threads)),
                    ),
                ];
                let mut results: Vec<Vec<Rate>> = runs.iter().map(|_| Vec::new()).collect();
                for rep in 0..a.reps {
                    // Take turns; the order rotates each repetition.
                    for k in 0..runs.len() {
                        let i = (k + rep) % runs.len();
                        results[i].push((runs[i].3)());
                    }
                }
                for ((who, depth, threads, _), rates) in runs.iter().zip(results) {
                    let what = Measured {
                        cache: cache_name,
                        pattern,
                        op,
                        who,
                        depth: *depth,
                        threads: *threads,
                        seconds: a.seconds,
                    };
                    what.report(&rates);
                }
            }
        }
    }
    // The device's own cost: the same requests against a disk in memory.
    for pattern in [Pattern::Seq64k, Pattern::Rand4k] {
        for op in [Op::Read, Op::Write] {
            let name = format!("memory:{}:{}", pattern.name(), op.name());
            if a.only.as_ref().is_some_and(|only| !name.contains(only.as_str())) {
                continue;
            }
            for depth in [1, depth_hi] {
                let rates: Vec<Rate> = (0..a.reps)
                    .map(|_| device_memory(setup.duration, pattern, op, depth))
                    .collect();
                let what = Measured {
                    cache: "memory",
                    pattern,
                    op,
                    who: "device",
                    depth,
                    threads: 1,
                    seconds: a.seconds,
                };
                what.report(&rates);
            }
        }
    }
    if !a.keep {
        let _ = std::fs::remove_file(&a.file);
    }
}
