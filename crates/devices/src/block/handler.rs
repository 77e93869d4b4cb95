//! Running requests against the disk and guest memory, and the queue loop: pure logic over a
//! queue, a backend and memory, with no thread and no KVM, so tests and the fuzzer drive it
//! directly.
//!
//! A read or write takes a slot and moves in pieces of at most [`CHUNK`] bytes: straight between
//! the disk and guest memory ([`GuestIo`]: the guest's buffers as the kernel's I/O vectors, built
//! by `vm-memory` from checked ranges) when the backend takes that and the buffers suit it, else
//! through host buffers from the disk's [`BufferPool`] copied with `vm-memory`'s bounds-checked
//! copies. The backend may run each piece in the background ([`DiskBackend::start`]), so
//! requests complete in any order, and each goes into the used ring with its own head and length
//! when its last piece completes. Requests start in the order they were popped; a flush starts
//! only once every write popped before it has completed.

use std::collections::VecDeque;
use std::sync::Arc;

use virtio_queue::{DescriptorChain, Queue, QueueOwnedT, QueueT};
use virtkit_virtio::{warn_ratelimited, QueueError};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::backend::{DiskBackend, DiskCompletion, DiskOp, Started};
use super::buffer::BufferPool;
use super::guest_io::{copy_from_guest, copy_to_guest, GuestIo};
use super::metrics::BlockMetrics;
use super::request::{
    parse_request, status, walk_chain, DiskLimits, Range, Request, Segment, ID_BYTES, SECTOR_SHIFT,
};

/// Largest piece of a request moved through one buffer at once.
const CHUNK: usize = 1 << 20;
/// Buffer bytes the requests in flight may hold; past it, a request waits for others to complete
/// before it starts (one always starts), so a guest cannot make the device allocate more.
const BUFFER_BUDGET: usize = 8 << 20;
/// Smallest piece moved straight between the disk and guest memory. Below it, copying through a
/// host buffer costs less than setting up the guest's I/O vectors (measured: random 4 KiB reads
/// from the page cache are ~10% faster copied, 64 KiB ones ~30% faster not; docs/BLOCK.md).
const GUEST_IO_MIN: usize = 16 << 10;
/// Bytes of free buffers kept for reuse.
const BUFFER_KEEP: usize = 8 << 20;

/// A read or write under way.
struct Transfer {
    write: bool,
    /// Disk offset of the request's first byte.
    offset: u64,
    data: Vec<Segment>,
    total: u64,
    /// Bytes moved so far (pieces completed).
    done: u64,
    /// Its first piece went to the backend (a write then counts as in flight for flushes).
    started: bool,
    /// Bytes of the piece in flight.
    piece: usize,
}

enum Job {
    Transfer(Transfer),
    Flush,
}

/// A request popped from the ring and not yet in the used ring.
struct Slot {
    head: u16,
    status: GuestAddress,
    job: Job,
}

/// Answers requests for one disk.
pub struct RequestHandler<B> {
    pub disk: B,
    limits: DiskLimits,
    serial: [u8; ID_BYTES],
    metrics: Arc<BlockMetrics>,
    pool: BufferPool,
    /// Requests under way, by tag (the index), with a free list.
    slots: Vec<Option<Slot>>,
    free_slots: Vec<usize>,
    /// Slots waiting to start, in the order they were popped.
    backlog: VecDeque<usize>,
    /// Slots in use: popped, not yet in the used ring.
    outstanding: usize,
    /// Write requests started and not yet completed: a flush waits for them.
    writes_in_flight: usize,
    /// Completions to process (from the backend, or from ops that ran at once).
    completions: Vec<DiskCompletion>,
    /// Completions being processed (kept empty between calls, for its allocation).
    batch: Vec<DiskCompletion>,
    /// Used-ring entries (head, length) of requests that completed, to publish.
    finished: Vec<(u16, u32)>,
    /// Entries were added to the used ring since the last interrupt decision.
    used_any: bool,
    /// Completions processed so far (how a drain sees progress).
    completed: u64,
    /// Bumped when requests are abandoned: a late completion of theirs carries an old
    /// generation in its tag and is ignored, never matched to a new request in the same slot.
    generation: u32,
}

impl<B: DiskBackend> RequestHandler<B> {
    pub fn new(
        disk: B,
        limits: DiskLimits,
        serial: [u8; ID_BYTES],
        metrics: Arc<BlockMetrics>,
    ) -> RequestHandler<B> {
        RequestHandler {
            disk,
            limits,
            serial,
            metrics,
            pool: BufferPool::new(BUFFER_KEEP),
            slots: Vec::new(),
            free_slots: Vec::new(),
            backlog: VecDeque::new(),
            outstanding: 0,
            writes_in_flight: 0,
            completions: Vec::new(),
            batch: Vec::new(),
            finished: Vec::new(),
            used_any: false,
            completed: 0,
            generation: 0,
        }
    }

    pub fn metrics(&self) -> &Arc<BlockMetrics> {
        &self.metrics
    }

    /// Takes back the disk.
    pub fn into_disk(self) -> B {
        self.disk
    }

    /// Requests popped from the ring and not yet answered in the used ring.
    pub fn outstanding(&self) -> usize {
        self.outstanding
    }

    /// Pops what is available (if `pop`) and starts it, and completes what finished, waiting for
    /// at least one completion first if `wait` and something is in flight. Returns whether the
    /// driver must be interrupted.
    fn step(
        &mut self,
        queue: &mut Queue,
        mem: &GuestMemoryMmap,
        pop: bool,
        wait: bool,
    ) -> Result<bool, QueueError> {
        self.collect(mem, wait);
        self.publish(queue, mem)?;
        if pop {
            self.pop_available(queue, mem)?;
        }
        self.pump(mem);
        self.disk.submit();
        // Ops that finished at once (page-cache hits under io_uring) are answered now.
        self.collect(mem, false);
        self.publish(queue, mem)?;
        let used = std::mem::take(&mut self.used_any);
        Ok(used && queue.needs_notification(mem).map_err(QueueError::Broken)?)
    }

    /// Pops available chains while fewer than a queue's worth are outstanding (a driver never
    /// has more; a hostile one repeating heads is held to it).
    fn pop_available(&mut self, queue: &mut Queue, mem: &GuestMemoryMmap) -> Result<(), QueueError> {
        let limit = usize::from(queue.size());
        let mut idle_passes = 0;
        loop {
            queue.disable_notification(mem).map_err(QueueError::Broken)?;
            let mut progress = false;
            while self.outstanding < limit {
                let chain = match queue.iter(mem) {
                    Ok(mut available) => available.next(),
                    Err(e) => return Err(QueueError::Broken(e)),
                };
                let Some(chain) = chain else { break };
                progress = true;
                if let Some((head, len)) = self.accept(chain, mem) {
                    queue.add_used(mem, head, len).map_err(QueueError::Broken)?;
                    self.used_any = true;
                }
            }
            if self.outstanding >= limit {
                // The rest stays in the ring until completions make room.
                return Ok(());
            }
            if !queue.enable_notification(mem).map_err(QueueError::Broken)? {
                return Ok(());
            }
            // More is available, yet a pass found nothing twice running: the ring cannot be read.
            idle_passes = if progress { 0 } else { idle_passes + 1 };
            if idle_passes >= 2 {
                return Err(QueueError::Stalled);
            }
        }
    }

    /// Takes one chain: answers it at once (bad chains and requests, `GET_ID`, discard,
    /// write-zeroes) with its used-ring entry, or queues it to start (`None`).
    fn accept<M>(&mut self, chain: DescriptorChain<M>, mem: &GuestMemoryMmap) -> Option<(u16, u32)>
    where
        M: std::ops::Deref,
        M::Target: vm_memory::GuestMemory,
    {
        BlockMetrics::add(&self.metrics.requests, 1);
        let head = chain.head_index();
        let chain = match walk_chain(chain, mem) {
            Ok(chain) => chain,
            Err(e) => {
                BlockMetrics::add(&self.metrics.broken_chains, 1);
                warn_ratelimited!("virtio-blk: request dropped: {e}");
                return Some((head, 0));
            }
        };
        let (code, written) = match parse_request(&chain, mem, &self.limits) {
            Ok(Request::Read { sector, data }) => {
                return self.queue(head, chain.status, transfer(false, sector, data))
            }
            Ok(Request::Write { sector, data }) => {
                return self.queue(head, chain.status, transfer(true, sector, data))
            }
            Ok(Request::Flush) => {
                BlockMetrics::add(&self.metrics.flushes, 1);
                return self.queue(head, chain.status, Job::Flush);
            }
            Ok(Request::GetId { data }) => self.get_id(&data, mem),
            Ok(Request::Discard(ranges)) => {
                BlockMetrics::add(&self.metrics.discards, 1);
                (self.ranges(&ranges, true), 0)
            }
            Ok(Request::WriteZeroes(ranges)) => {
                BlockMetrics::add(&self.metrics.write_zeroes, 1);
                (self.ranges(&ranges, false), 0)
            }
            Err(e) => {
                tracing::trace!("virtio-blk: request refused: {e}");
                (e.status(), 0)
            }
        };
        Some((head, self.answer(chain.status, code, written, mem)))
    }

    fn queue(&mut self, head: u16, status: GuestAddress, job: Job) -> Option<(u16, u32)> {
        let slot = Slot { head, status, job };
        let index = match self.free_slots.pop() {
            Some(index) => {
                self.slots[index] = Some(slot);
                index
            }
            None => {
                self.slots.push(Some(slot));
                self.slots.len() - 1
            }
        };
        self.outstanding += 1;
        self.backlog.push_back(index);
        None
    }

    /// Writes the status byte; returns the used length (`written` data bytes and the status).
    fn answer(&self, status_at: GuestAddress, code: u8, written: u32, mem: &GuestMemoryMmap) -> u32 {
        match code {
            status::IOERR => BlockMetrics::add(&self.metrics.io_errors, 1),
            status::UNSUPP => BlockMetrics::add(&self.metrics.unsupported, 1),
            _ => {}
        }
        // The status address was checked to be in guest memory.
        if mem.write_obj(code, status_at).is_err() {
            return written;
        }
        written + 1
    }

    /// Starts queued requests in order while they may: a flush once no earlier write is in
    /// flight, a transfer while the buffer budget allows (or nothing else is in flight).
    fn pump(&mut self, mem: &GuestMemoryMmap) {
        while let Some(&index) = self.backlog.front() {
            let running = self.outstanding - self.backlog.len();
            let ready = match self.slots.get(index).and_then(Option::as_ref).map(|s| &s.job) {
                Some(Job::Flush) => self.writes_in_flight == 0,
                Some(Job::Transfer(t)) => running == 0 || self.pool.lent() + piece(t) <= BUFFER_BUDGET,
                None => true,
            };
            if !ready {
                break;
            }
            self.backlog.pop_front();
            self.start(index, mem);
        }
    }

    /// Hands slot `index`'s next piece to the backend.
    fn start(&mut self, index: usize, mem: &GuestMemoryMmap) {
        let tag = self.tag(index);
        let Some(slot) = self.slots.get_mut(index).and_then(Option::as_mut) else {
            return;
        };
        let op = match &mut slot.job {
            Job::Flush => DiskOp::Flush,
            Job::Transfer(t) => {
                let n = piece(t);
                let offset = t.offset + t.done;
                t.piece = n;
                if t.write && !t.started {
                    self.writes_in_flight += 1;
                }
                t.started = true;
                // Straight between the disk and guest memory when the backend can and the
                // buffers suit it; through a host buffer otherwise.
                let guest = self
                    .disk
                    .guest_io_alignment()
                    .filter(|&align| {
                        n >= GUEST_IO_MIN && offset.is_multiple_of(align as u64) && n.is_multiple_of(align)
                    })
                    .and_then(|align| GuestIo::new(mem, &t.data, t.done, n, align));
                match guest {
                    Some(io) if t.write => DiskOp::WriteGuest { offset, io },
                    Some(io) => DiskOp::ReadGuest { offset, io },
                    None if t.write => {
                        let mut buffer = self.pool.take(n);
                        if copy_from_guest(mem, &t.data, t.done, buffer.as_mut_slice()).is_err() {
                            self.pool.give(buffer);
                            self.finish(index, status::IOERR, mem);
                            return;
                        }
                        DiskOp::Write { offset, buffer }
                    }
                    None => DiskOp::Read {
                        offset,
                        buffer: self.pool.take(n),
                    },
                }
            }
        };
        match self.disk.start(tag, op) {
            Started::InFlight => {}
            Started::Done(completion) => self.completions.push(completion),
        }
    }

    /// Processes completions until none is left, waiting first for one if `wait`.
    fn collect(&mut self, mem: &GuestMemoryMmap, wait: bool) {
        let mut wait = wait && self.disk.in_flight() > 0;
        let mut batch = std::mem::take(&mut self.batch);
        loop {
            if self.completions.is_empty() {
                self.disk.reap(&mut self.completions, wait);
                wait = false;
            }
            if self.completions.is_empty() {
                break;
            }
            std::mem::swap(&mut batch, &mut self.completions);
            for completion in batch.drain(..) {
                self.complete(completion, mem);
            }
            self.pump(mem);
            self.disk.submit();
        }
        self.batch = batch;
    }

    /// The backend's tag for slot `index`.
    fn tag(&self, index: usize) -> u64 {
        (u64::from(self.generation) << 32) | index as u64
    }

    fn complete(&mut self, completion: DiskCompletion, mem: &GuestMemoryMmap) {
        self.completed += 1;
        let index = (completion.tag & u64::from(u32::MAX)) as usize;
        let current = completion.tag >> 32 == u64::from(self.generation);
        let Some(slot) = self
            .slots
            .get_mut(index)
            .and_then(Option::as_mut)
            .filter(|_| current)
        else {
            tracing::warn!("virtio-blk: a completion for no request ({index})");
            if let Some(buffer) = completion.buffer {
                self.pool.give(buffer);
            }
            return;
        };
        match &mut slot.job {
            Job::Flush => {
                let code = io_status(completion.result, "flush");
                self.finish(index, code, mem);
            }
            Job::Transfer(t) => {
                let n = t.piece;
                // A host buffer's data still has to reach the guest; guest I/O is there already.
                let code = match (completion.result, &completion.buffer) {
                    (Err(e), _) => {
                        let what = if t.write { "write" } else { "read" };
                        warn_ratelimited!("virtio-blk: {what} at {:#x} failed: {e}", t.offset + t.done);
                        Some(status::IOERR)
                    }
                    (Ok(()), Some(buffer)) if !t.write => {
                        copy_to_guest(mem, &t.data, t.done, buffer.as_slice())
                            .err()
                            .map(|()| status::IOERR)
                    }
                    (Ok(()), _) => None,
                };
                if code.is_none() {
                    let counter = if t.write {
                        &self.metrics.write_bytes
                    } else {
                        &self.metrics.read_bytes
                    };
                    BlockMetrics::add(counter, n as u64);
                    t.done += n as u64;
                }
                let more = t.done < t.total;
                if let Some(buffer) = completion.buffer {
                    self.pool.give(buffer);
                }
                match code {
                    Some(code) => self.finish(index, code, mem),
                    None if more => self.start(index, mem),
                    None => self.finish(index, status::OK, mem),
                }
            }
        }
    }

    /// Answers slot `index` and frees it.
    fn finish(&mut self, index: usize, code: u8, mem: &GuestMemoryMmap) {
        let Some(slot) = self.slots.get_mut(index).and_then(Option::take) else {
            return;
        };
        self.free_slots.push(index);
        self.outstanding -= 1;
        let written = match &slot.job {
            Job::Transfer(t) if t.write && t.started => {
                self.writes_in_flight -= 1;
                0
            }
            // Read data reaches the guest piece by piece: what arrived counts.
            Job::Transfer(t) if !t.write => t.done as u32,
            _ => 0,
        };
        let len = self.answer(slot.status, code, written, mem);
        self.finished.push((slot.head, len));
    }

    fn publish(&mut self, queue: &mut Queue, mem: &GuestMemoryMmap) -> Result<(), QueueError> {
        for (head, len) in self.finished.drain(..) {
            queue.add_used(mem, head, len).map_err(QueueError::Broken)?;
            self.used_any = true;
        }
        Ok(())
    }

    /// Gives up on every request under way without answering it (the queue is broken or
    /// gone): waits for the backend's ops in flight, so no buffer is freed under the kernel, and
    /// forgets the rest.
    pub fn abandon(&mut self) {
        self.disk.reap(&mut self.completions, false);
        while self.disk.in_flight() > 0 {
            let before = self.disk.in_flight();
            self.disk.reap(&mut self.completions, true);
            if self.completions.is_empty() && self.disk.in_flight() == before {
                break;
            }
            self.completions.clear();
        }
        self.completions.clear();
        self.slots.clear();
        self.free_slots.clear();
        self.backlog.clear();
        self.finished.clear();
        self.outstanding = 0;
        self.writes_in_flight = 0;
        self.generation = self.generation.wrapping_add(1);
    }

    fn get_id(&mut self, data: &[Segment], mem: &GuestMemoryMmap) -> (u8, u32) {
        let mut rest: &[u8] = &self.serial;
        let mut written = 0u32;
        for segment in data {
            let n = rest.len().min(segment.len as usize);
            if mem.write_slice(&rest[..n], segment.addr).is_err() {
                return (status::IOERR, written);
            }
            rest = &rest[n..];
            written += n as u32;
        }
        (status::OK, written)
    }

    fn ranges(&mut self, ranges: &[Range], discard: bool) -> u8 {
        for range in ranges {
            let offset = range.sector << SECTOR_SHIFT;
            let len = u64::from(range.sectors) << SECTOR_SHIFT;
            let result = if discard {
                self.disk.discard(offset, len)
            } else {
                self.disk.write_zeroes(offset, len, range.unmap)
            };
            let code = io_status(result, if discard { "discard" } else { "write zeroes" });
            if code != status::OK {
                return code;
            }
        }
        status::OK
    }
}

fn transfer(write: bool, sector: u64, data: Vec<Segment>) -> Job {
    let total = data.iter().map(|s| u64::from(s.len)).sum();
    Job::Transfer(Transfer {
        write,
        offset: sector << SECTOR_SHIFT,
        data,
        total,
        done: 0,
        started: false,
        piece: 0,
    })
}

/// Size of a transfer's next piece.
fn piece(t: &Transfer) -> usize {
    (t.total - t.done).min(CHUNK as u64) as usize
}

fn io_status(result: std::io::Result<()>, what: &str) -> u8 {
    match result {
        Ok(()) => status::OK,
        Err(e) => {
            warn_ratelimited!("virtio-blk: {what} failed: {e}");
            status::IOERR
        }
    }
}

/// Pops every available request and starts it, and answers every request that has completed;
/// returns whether the driver must be interrupted. With a synchronous backend every request is
/// answered before it returns; with a background one, later calls (after its completion fd
/// becomes readable) answer the rest.
pub fn process_queue<B: DiskBackend>(
    queue: &mut Queue,
    mem: &GuestMemoryMmap,
    handler: &mut RequestHandler<B>,
) -> Result<bool, QueueError> {
    handler.step(queue, mem, true, false)
}

/// Waits for at least one request in flight to complete (if any is), then does what
/// [`process_queue`] does.
pub fn complete_requests<B: DiskBackend>(
    queue: &mut Queue,
    mem: &GuestMemoryMmap,
    handler: &mut RequestHandler<B>,
) -> Result<bool, QueueError> {
    handler.step(queue, mem, true, true)
}

/// Answers every request already popped, waiting for those in flight, and pops no more (a
/// stop: reset, sleep, snapshot). Returns whether the driver must be interrupted.
pub fn drain_queue<B: DiskBackend>(
    queue: &mut Queue,
    mem: &GuestMemoryMmap,
    handler: &mut RequestHandler<B>,
) -> Result<bool, QueueError> {
    let mut interrupt = false;
    while handler.outstanding > 0 {
        let before = handler.completed;
        interrupt |= handler.step(queue, mem, false, true)?;
        if handler.completed == before && handler.outstanding > 0 {
            // Waiting gave nothing: the backend lost its ops or cannot wait. Do not hang.
            tracing::error!(
                "virtio-blk: {} requests the disk backend cannot complete are dropped",
                handler.outstanding
            );
            handler.abandon();
        }
    }
    Ok(interrupt)
}
