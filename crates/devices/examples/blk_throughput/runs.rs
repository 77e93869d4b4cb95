//! The measurements: the host's own `pread`/`pwrite`, and the device with each I/O engine
//! candidate, on the same file, offsets and sizes.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use virtkit_devices::block::{
    complete_requests, process_queue, CacheMode, DiskBackend, FileDisk, IoBuffer, IoEngine, MemoryDisk,
    SyncMode,
};

use crate::driver::{handler, open_raw, Driver, Offsets, Op, Pattern, MEMORY_DISK};
use crate::pool::PoolDisk;

pub struct Rate {
    pub ops: u64,
    pub secs: f64,
    pub block: u64,
}

impl Rate {
    pub fn mbps(&self) -> f64 {
        (self.ops * self.block) as f64 / 1e6 / self.secs
    }

    pub fn iops(&self) -> f64 {
        self.ops as f64 / self.secs
    }
}

pub struct Setup {
    pub path: PathBuf,
    pub size: u64,
    pub duration: Duration,
}

/// An I/O engine candidate for the device.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    /// `pread`/`pwrite` on the worker thread, one request at a time (`IoEngine::Sync`).
    Sync,
    /// io_uring on the worker thread (`IoEngine::IoUring`).
    IoUring,
    /// A pool of this many threads doing `pread`/`pwrite` ([`PoolDisk`]).
    Pool(usize),
}

impl Engine {
    /// The name in the results (`who`).
    pub fn who(self) -> &'static str {
        match self {
            Engine::Sync => "device-sync",
            Engine::IoUring => "device-io_uring",
            Engine::Pool(_) => "device-pool",
        }
    }

    pub fn threads(self) -> usize {
        match self {
            Engine::Pool(n) => n,
            _ => 1,
        }
    }
}

/// The device on the image with `engine`, the driver keeping `depth` requests available.
pub fn device(
    setup: &Setup,
    cache: CacheMode,
    engine: Engine,
    pattern: Pattern,
    op: Op,
    depth: usize,
) -> Rate {
    let file_disk = |engine| {
        let disk = FileDisk::open_with_engine(&setup.path, false, cache, SyncMode::Full, engine)
            .expect("open the image");
        assert_eq!(disk.engine(), engine, "the engine is available");
        disk
    };
    match engine {
        Engine::Sync => device_run(setup.duration, file_disk(IoEngine::Sync), pattern, op, depth),
        Engine::IoUring => device_run(setup.duration, file_disk(IoEngine::IoUring), pattern, op, depth),
        Engine::Pool(threads) => {
            let direct = cache == CacheMode::Uncached;
            let file = open_raw(&setup.path, direct).expect("open the image");
            device_run(
                setup.duration,
                PoolDisk::new(file, direct, setup.size, threads),
                pattern,
                op,
                depth,
            )
        }
    }
}

/// The device on a disk in memory: its own cost per request, with no file I/O.
pub fn device_memory(duration: Duration, pattern: Pattern, op: Op, depth: usize) -> Rate {
    let mut disk = MemoryDisk::new(MEMORY_DISK);
    // Every page touched before the clock starts.
    disk.data.fill(0x3c);
    device_run(duration, disk, pattern, op, depth)
}

/// The driver keeps `depth` requests available: each answered one is replaced by the next at
/// once (one notification per batch of replacements), as a guest with a queue depth does. The
/// device runs its queue loop as the `v_blk` worker does: on a notification, and when the backend
/// has completions (here: waiting for them instead of sleeping in epoll).
pub fn device_run<B: DiskBackend>(
    duration: Duration,
    disk: B,
    pattern: Pattern,
    op: Op,
    depth: usize,
) -> Rate {
    let size = disk.capacity();
    let mut h = handler(disk);
    let mut driver = Driver::new(depth, pattern.block(), op);
    let mut offsets = Offsets::new(pattern, size, 0, 1);
    let mut done = Vec::with_capacity(depth);
    let mut ops = 0u64;
    for slot in 0..depth {
        driver.post(slot, offsets.next());
    }
    driver.publish();
    let mut in_ring = depth;
    let start = Instant::now();
    let deadline = start + duration;
    let mut stopping = false;
    while in_ring > 0 {
        process_queue(&mut driver.queue, &driver.mem, &mut h).expect("the queue works");
        done.clear();
        driver.reap(&mut done);
        if done.is_empty() {
            complete_requests(&mut driver.queue, &driver.mem, &mut h).expect("the queue works");
            driver.reap(&mut done);
        }
        ops += done.len() as u64;
        in_ring -= done.len();
        stopping = stopping || Instant::now() >= deadline;
        if !stopping && !done.is_empty() {
            for &slot in &done {
                driver.post(slot, offsets.next());
            }
            driver.publish();
            in_ring += done.len();
        }
    }
    Rate {
        ops,
        secs: start.elapsed().as_secs_f64(),
        block: pattern.block(),
    }
}

/// The host: `pread`/`pwrite` of the same offsets, one at a time on `threads` threads.
pub fn host(setup: &Setup, cache: CacheMode, pattern: Pattern, op: Op, threads: usize) -> Rate {
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
                use std::os::unix::fs::FileExt;
                let mut offsets = Offsets::new(pattern, setup.size, t as u64, threads as u64);
                // Aligned, so `O_DIRECT` takes it.
                let mut buf = IoBuffer::new(block as usize);
                let buf = buf.as_mut_slice();
                buf.fill(0x5a);
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
