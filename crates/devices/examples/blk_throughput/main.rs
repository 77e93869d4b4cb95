//! blk_throughput: the virtio-blk device's throughput with each I/O engine candidate, next to
//! the host's raw file throughput, on one image file.
//!
//! A test driver plays the guest: it lays a split virtqueue (256 entries, `EVENT_IDX`) out in a
//! `GuestMemoryMmap`, makes read or write requests available (header, one data buffer, status
//! byte) and has the device answer them with `process_queue`/`complete_requests` and the device's
//! `RequestHandler`, as the `v_blk` worker does after a notification or a completion, with no
//! vCPU, KVM or interrupt in the way. The same offsets and sizes are read or written with plain
//! `pread`/`pwrite` on the file (with `O_DIRECT` for the uncached mode): the host's raw
//! throughput, the reference.
//!
//! Workloads: sequential 64 KiB and random 4 KiB (4 KiB-aligned, over the whole file), reads and
//! writes, for `cache=cached` (page cache; the file is read once first so reads are page-cache
//! hits) and `cache=uncached` (`O_DIRECT`: every read and write reaches the host's disk).
//!
//! - **host**, 1 thread: `pread`/`pwrite` one at a time; **host**, 32 threads: 32 always
//!   outstanding, what the file gives at queue depth 32.
//! - **device** with each engine — `device-sync` (`pread`/`pwrite` on the worker, one request at
//!   a time), `device-io_uring` (the worker submits to io_uring and completes out of order),
//!   `device-pool` (a pool of threads doing `pread`/`pwrite`, `pool.rs`) — at queue depth 1 and
//!   32: the driver keeps that many requests available, replacing each answered one at once.
//! - **device on memory**: the device with an in-memory disk, its own cost per request.
//!
//! Each figure is the median of `--reps` runs of `--seconds`; the measurements of a workload
//! take turns (so a slow spell of a shared disk falls on all of them).
//!
//! Usage (run.py part 4 runs it; `--release` matters):
//!
//! ```text
//! cargo run --release -p virtkit-devices --example blk_throughput -- \
//!     --file bench/out/blk-throughput.img [--size-mib 1024] [--seconds 0.4] [--reps 7] \
//!     [--pool-threads 32] [--keep] [--only TEXT]
//! ```
//!
//! The file is created (filled with data, so no hole or unwritten extent is read) and removed at
//! the end unless `--keep`; it must be on a filesystem that supports `O_DIRECT` (not tmpfs). One
//! `BLKTHR {json}` line per measurement goes to stdout, a table to stderr.

mod driver;
mod pool;
mod runs;

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use virtkit_devices::block::{complete_requests, process_queue, CacheMode, FileDisk, IoEngine, SyncMode};
use vm_memory::{Bytes, GuestAddress};

use driver::{handler, open_raw, Driver, Op, Pattern, DATA};
use runs::{device, device_memory, host, Engine, Rate, Setup};

// ---------------------------------------------------------------------------------------------
// Setup and checks

fn create_image(path: &Path, size: u64) -> io::Result<()> {
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
fn warm(path: &Path) -> io::Result<()> {
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

/// With each engine, the device reads what the host reads and writes what the host then reads
/// back.
fn check(setup: &Setup, cache: CacheMode) {
    let raw = open_raw(&setup.path, false).expect("open");
    let at = (setup.size / 2) & !0xffff;
    for engine in [IoEngine::Sync, IoEngine::IoUring] {
        let disk =
            FileDisk::open_with_engine(&setup.path, false, cache, SyncMode::Full, engine).expect("open");
        let mut h = handler(disk);
        for (n, op) in [Op::Read, Op::Write].into_iter().enumerate() {
            let mut driver = Driver::new(1, 64 << 10, op);
            if op == Op::Write {
                let data: Vec<u8> = (0..64u32 << 10).map(|i| (i * 3 + n as u32 + 1) as u8).collect();
                driver.mem.write_slice(&data, GuestAddress(DATA)).expect("data");
            }
            driver.post(0, at);
            driver.publish();
            process_queue(&mut driver.queue, &driver.mem, &mut h).expect("queue");
            while h.outstanding() > 0 {
                complete_requests(&mut driver.queue, &driver.mem, &mut h).expect("queue");
            }
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
                "device {} and host disagree ({cache:?}, {engine:?})",
                op.name()
            );
        }
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
            "{cache:>8} {:>6} {:>5} {who:>15} qd {depth:>2} threads {threads:>2}: {:>8.1} MB/s \
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
    match FileDisk::open(&a.file, true, CacheMode::Uncached, SyncMode::Full) {
        Ok(disk) => eprintln!(
            "blk_throughput: O_DIRECT alignment {} bytes, engine {:?}",
            disk.direct_alignment(),
            disk.engine()
        ),
        Err(e) => eprintln!(
            "blk_throughput: cannot open {} with O_DIRECT: {e}",
            a.file.display()
        ),
    }
    let depth_hi = 32;
    let engines = [Engine::Sync, Engine::IoUring, Engine::Pool(a.pool_threads)];
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
                let mut runs: Vec<Run> = vec![
                    ("host", 1, 1, Box::new(move || host(setup, cache, pattern, op, 1))),
                    (
                        "host",
                        depth_hi,
                        depth_hi,
                        Box::new(move || host(setup, cache, pattern, op, depth_hi)),
                    ),
                ];
                for engine in engines {
                    for depth in [1, depth_hi] {
                        runs.push((
                            engine.who(),
                            depth,
                            engine.threads(),
                            Box::new(move || device(setup, cache, engine, pattern, op, depth)),
                        ));
                    }
                }
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
