//! The io_uring engine of a [`super::FileDisk`]: reads, writes and `fdatasync`s of one file run in
//! the kernel while the worker goes on taking requests, and complete in any order.
//!
//! Memory handed to the kernel is the device's own [`super::IoBuffer`]s, or guest memory named by
//! a [`super::GuestIo`] (which keeps it mapped; see `guest_io`). An op — its buffer or its
//! `GuestIo` — lives in `ops[slot]` from the moment its address goes into a submission entry until
//! its completion entry has been read from the ring; nothing else can reach it in between (the
//! table is private), its heap storage never moves (an `IoBuffer` is a `Vec` that is never
//! resized, and so are a `GuestIo`'s vectors), and dropping the engine first waits for every op in
//! flight — or, if the ring itself fails, leaks their buffers rather than free memory the kernel
//! may still write.

use std::io;
use std::os::fd::{AsRawFd, RawFd};

use io_uring::{opcode, squeue, types, IoUring};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::backend::{DiskCompletion, DiskOp};

/// Submission queue entries; the completion queue gets twice as many.
const RING_ENTRIES: u32 = 256;

struct Op {
    tag: u64,
    op: DiskOp,
    /// Bytes already transferred (a short read or write is continued from here).
    done: usize,
}

pub(crate) struct Uring {
    ring: IoUring,
    /// The file every op is on. Its owner keeps it open for the engine's whole life (a
    /// `FileDisk` declares its engine before its file, so the engine is dropped first).
    fd: RawFd,
    /// Written by the kernel for each completion; the worker sleeps on it in epoll.
    event: EventFd,
    ops: Vec<Option<Op>>,
    free: Vec<usize>,
    in_flight: usize,
    /// Completions found while waiting for something else (a drain), handed out by `reap`.
    ready: Vec<DiskCompletion>,
    /// Completion entries read from the ring, processed after the ring is released.
    scratch: Vec<(u64, i32)>,
}

impl std::fmt::Debug for Uring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Uring")
            .field("in_flight", &self.in_flight)
            .finish()
    }
}

impl Uring {
    /// A ring with its completion eventfd; fails where the kernel refuses io_uring
    /// (`kernel.io_uring_disabled`, a seccomp filter, an old kernel).
    pub fn new(fd: RawFd) -> io::Result<Uring> {
        let ring = IoUring::new(RING_ENTRIES)?;
        let event = EventFd::new(EFD_NONBLOCK)?;
        ring.submitter().register_eventfd(event.as_raw_fd())?;
        Ok(Uring {
            ring,
            fd,
            event,
            ops: Vec::new(),
            free: Vec::new(),
            in_flight: 0,
            ready: Vec::new(),
            scratch: Vec::new(),
        })
    }

    pub fn completion_event(&self) -> &EventFd {
        &self.event
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight
    }

    /// Queues `op` (submitted by the next `submit` or `reap`), whose first `done` bytes were
    /// already transferred; its completion carries `tag`.
    pub fn start(&mut self, tag: u64, op: DiskOp, done: usize) {
        // Never more in flight than the completion queue holds.
        let limit = self.ring.params().cq_entries() as usize;
        while self.in_flight >= limit {
            if self.harvest() == 0 && self.wait_one().is_err() {
                break;
            }
        }
        let slot = self.free.pop().unwrap_or_else(|| {
            self.ops.push(None);
            self.ops.len() - 1
        });
        self.ops[slot] = Some(Op { tag, op, done });
        self.in_flight += 1;
        self.push(slot);
    }

    /// Puts slot's op (or what is left of it) in the submission queue.
    fn push(&mut self, slot: usize) {
        let Some(op) = self.ops[slot].as_mut() else {
            return;
        };
        let fd = types::Fd(self.fd);
        let done = op.done;
        let entry = match &mut op.op {
            DiskOp::Flush => opcode::Fsync::new(fd).flags(types::FsyncFlags::DATASYNC).build(),
            DiskOp::Read { offset, buffer } => {
                let rest = &mut buffer.as_mut_slice()[done..];
                opcode::Read::new(fd, rest.as_mut_ptr(), rest.len() as u32)
                    .offset(*offset + done as u64)
                    .build()
            }
            DiskOp::Write { offset, buffer } => {
                let rest = &buffer.as_slice()[done..];
                opcode::Write::new(fd, rest.as_ptr(), rest.len() as u32)
                    .offset(*offset + done as u64)
                    .build()
            }
            DiskOp::ReadGuest { offset, io } => {
                let (vectors, count) = io.kernel_vectors(done);
                opcode::Readv::new(fd, vectors, count)
                    .offset(*offset + done as u64)
                    .build()
            }
            DiskOp::WriteGuest { offset, io } => {
                let (vectors, count) = io.kernel_vectors(done);
                opcode::Writev::new(fd, vectors, count)
                    .offset(*offset + done as u64)
                    .build()
            }
        };
        let entry: squeue::Entry = entry.user_data(slot as u64);
        loop {
            // The entry points at `rest`, inside the `IoBuffer` owned by `ops[slot]`, or at the
            // vectors and the guest memory they name (the vectors held, and the memory kept
            // mapped, by the `GuestIo` owned by `ops[slot]`; see `guest_io`). An fsync entry
            // has no buffer. `Drop` waits for every op in flight, or leaks them if it cannot.
            // SAFETY: those buffers stay where they are (heap storage, never resized) and are
            // touched by nothing else until `harvest` takes this op's completion off the ring.
            let pushed = unsafe { self.ring.submission().push(&entry) };
            if pushed.is_ok() {
                return;
            }
            // The submission queue is full: hand it to the kernel and try again.
            if let Err(e) = self.enter(0) {
                // The kernel never got it: it completes with the error.
                self.finish(slot, Err(e));
                return;
            }
        }
    }

    /// Frees slot and hands its op's completion to `ready`; returns whether there was one.
    fn finish(&mut self, slot: usize, result: io::Result<()>) -> bool {
        let Some(op) = self.ops[slot].take() else {
            return false;
        };
        self.free.push(slot);
        self.in_flight -= 1;
        self.ready.push(op.op.completion(op.tag, result));
        true
    }

    /// `io_uring_enter`: submits what is queued and waits for `want` completions.
    fn enter(&mut self, want: usize) -> io::Result<()> {
        loop {
            match self.ring.submit_and_wait(want) {
                Ok(_) => return Ok(()),
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => {}
                // Completions are waiting to be read first.
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) || e.raw_os_error() == Some(libc::EAGAIN) => {
                    if self.harvest() == 0 {
                        return Err(e);
                    }
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Hands queued entries to the kernel (no system call if there are none).
    pub fn submit(&mut self) {
        if self.ring.submission().is_empty() {
            return;
        }
        if let Err(e) = self.enter(0) {
            tracing::warn!("virtio-blk: io_uring submission failed: {e}");
        }
    }

    /// Reads completion entries off the ring into `ready`; returns how many ops finished. A short
    /// transfer is continued and an interrupted one retried.
    fn harvest(&mut self) -> usize {
        self.scratch.clear();
        self.scratch
            .extend(self.ring.completion().map(|cqe| (cqe.user_data(), cqe.result())));
        let mut finished = 0;
        let mut entries = std::mem::take(&mut self.scratch);
        for &(slot, result) in &entries {
            let slot = slot as usize;
            let Some(op) = self.ops.get_mut(slot).and_then(Option::as_mut) else {
                tracing::warn!("virtio-blk: io_uring completion for no op ({slot})");
                continue;
            };
            let outcome = match (&mut op.op, result) {
                (_, r) if r == -libc::EINTR || r == -libc::EAGAIN => None,
                (_, r) if r < 0 => Some(Err(io::Error::from_raw_os_error(-r))),
                (DiskOp::Flush, _) => Some(Ok(())),
                // End of file: the rest reads as zeros.
                (read @ (DiskOp::Read { .. } | DiskOp::ReadGuest { .. }), 0) => Some(read.zero_from(op.done)),
                (_, 0) => Some(Err(io::ErrorKind::WriteZero.into())),
                (data, n) => {
                    op.done += n as usize;
                    (op.done >= data.len()).then_some(Ok(()))
                }
            };
            match outcome {
                None => self.push(slot),
                Some(result) => finished += usize::from(self.finish(slot, result)),
            }
        }
        entries.clear();
        self.scratch = entries;
        finished
    }

    /// Waits for at least one completion entry.
    fn wait_one(&mut self) -> io::Result<()> {
        self.enter(1)
    }

    /// Moves finished ops to `done`; with `wait`, blocks until at least one finished if any is in
    /// flight.
    /// The worker clears the completion eventfd when epoll reports it, before calling this, so a
    /// completion after the read wakes it again.
    pub fn reap(&mut self, done: &mut Vec<DiskCompletion>, wait: bool) {
        self.submit();
        loop {
            self.harvest();
            if !self.ready.is_empty() || !wait || self.in_flight == 0 {
                break;
            }
            if let Err(e) = self.wait_one() {
                tracing::warn!("virtio-blk: waiting for io_uring completions failed: {e}");
                break;
            }
        }
        done.append(&mut self.ready);
    }

    /// Waits until nothing is in flight; the completions wait in `ready` for the next `reap`.
    pub fn drain(&mut self) -> io::Result<()> {
        self.submit();
        while self.in_flight > 0 {
            self.harvest();
            if self.in_flight > 0 {
                self.wait_one()?;
            }
        }
        Ok(())
    }
}

impl Drop for Uring {
    fn drop(&mut self) {
        if self.in_flight == 0 {
            return;
        }
        if let Err(e) = self.drain() {
            tracing::error!(
                "virtio-blk: cannot wait for {} io_uring ops in flight: {e}; their buffers are leaked",
                self.in_flight
            );
            for op in self.ops.drain(..).flatten() {
                std::mem::forget(op.op);
            }
        }
    }
}
