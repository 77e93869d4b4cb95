//! The thread-pool candidate: a `DiskBackend` whose reads, writes and flushes run on a pool of
//! threads doing `pread`/`pwrite`/`fdatasync` on one shared descriptor (what QEMU calls
//! `aio=threads`), completing out of order, moving data straight to and from guest memory like
//! the io_uring engine. The device's request layer and queue loop are the
//! same as with io_uring; only the engine differs.

use std::fs::File;
use std::io;
use std::os::fd::AsFd;
use std::os::unix::fs::FileExt;
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;

use virtkit_devices::block::{DiskBackend, DiskCompletion, DiskOp, Started, DIRECT_IO_ALIGN};

pub struct PoolDisk {
    file: Arc<File>,
    direct: bool,
    capacity: u64,
    jobs: Option<mpsc::Sender<(u64, DiskOp)>>,
    done: mpsc::Receiver<DiskCompletion>,
    in_flight: usize,
    threads: Vec<JoinHandle<()>>,
}

/// Runs one op on the shared file (aligned buffers and offsets, so `O_DIRECT` takes them).
fn run(file: &File, tag: u64, op: DiskOp) -> DiskCompletion {
    let (result, buffer) = match op {
        DiskOp::ReadGuest { offset, io } => (
            all(io.len(), |done| io.preadv2(file.as_fd(), offset, done, 0)),
            None,
        ),
        DiskOp::WriteGuest { offset, io } => (
            all(io.len(), |done| io.pwritev2(file.as_fd(), offset, done, 0)),
            None,
        ),
        DiskOp::Read { offset, mut buffer } => {
            (file.read_exact_at(buffer.as_mut_slice(), offset), Some(buffer))
        }
        DiskOp::Write { offset, buffer } => (file.write_all_at(buffer.as_slice(), offset), Some(buffer)),
        DiskOp::Flush => (file.sync_data(), None),
    };
    DiskCompletion { tag, result, buffer }
}

/// Repeats a transfer until `len` bytes moved.
fn all(len: usize, mut once: impl FnMut(usize) -> io::Result<usize>) -> io::Result<()> {
    let mut done = 0;
    while done < len {
        match once(done) {
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

impl PoolDisk {
    pub fn new(file: File, direct: bool, capacity: u64, threads: usize) -> PoolDisk {
        let file = Arc::new(file);
        let (jobs, queue) = mpsc::channel::<(u64, DiskOp)>();
        let queue = Arc::new(Mutex::new(queue));
        let (done_tx, done) = mpsc::channel();
        let threads = (0..threads)
            .map(|_| {
                let (file, queue, done_tx) = (file.clone(), queue.clone(), done_tx.clone());
                std::thread::spawn(move || loop {
                    let job = queue.lock().expect("job queue").recv();
                    let Ok((tag, op)) = job else { return };
                    if done_tx.send(run(&file, tag, op)).is_err() {
                        return;
                    }
                })
            })
            .collect();
        PoolDisk {
            file,
            direct,
            capacity,
            jobs: Some(jobs),
            done,
            in_flight: 0,
            threads,
        }
    }
}

impl Drop for PoolDisk {
    fn drop(&mut self) {
        self.jobs.take();
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

impl DiskBackend for PoolDisk {
    fn capacity(&self) -> u64 {
        self.capacity
    }

    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.file.read_exact_at(buf, offset)
    }

    fn write_at(&mut self, offset: u64, buf: &[u8]) -> io::Result<()> {
        self.file.write_all_at(buf, offset)
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

    fn start(&mut self, tag: u64, op: DiskOp) -> Started {
        let Some(jobs) = self.jobs.as_ref() else {
            return Started::Done(run(&self.file, tag, op));
        };
        match jobs.send((tag, op)) {
            Ok(()) => {
                self.in_flight += 1;
                Started::InFlight
            }
            Err(mpsc::SendError((tag, op))) => Started::Done(run(&self.file, tag, op)),
        }
    }

    fn reap(&mut self, done: &mut Vec<DiskCompletion>, wait: bool) {
        if wait && self.in_flight > 0 {
            if let Ok(completion) = self.done.recv() {
                done.push(completion);
                self.in_flight -= 1;
            }
        }
        for completion in self.done.try_iter() {
            done.push(completion);
            self.in_flight -= 1;
        }
    }

    fn in_flight(&self) -> usize {
        self.in_flight
    }

    /// Guest memory straight to and from the file, as the io_uring engine does.
    fn guest_io_alignment(&self) -> Option<usize> {
        Some(if self.direct { DIRECT_IO_ALIGN } else { 1 })
    }
}
