//! Running requests against the disk and guest memory, and the queue loop: pure logic over a
//! queue, a backend and memory, with no thread and no KVM, so tests and the fuzzer drive it
//! directly.

use std::sync::Arc;

use virtio_queue::{DescriptorChain, Queue, QueueOwnedT, QueueT};
use virtkit_virtio::warn_ratelimited;
use vm_memory::{Address, Bytes, GuestMemoryMmap};

use super::backend::DiskBackend;
use super::metrics::BlockMetrics;
use super::request::{
    parse_request, status, walk_chain, DiskLimits, Range, Request, Segment, ID_BYTES, SECTOR_SHIFT,
};

/// Largest piece of a request moved through the bounce buffer at once.
const CHUNK: usize = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error("the queue is broken")]
    Broken(#[source] virtio_queue::Error),
    #[error("the driver's available index runs ahead of what the ring holds")]
    Stalled,
}

/// Answers requests for one disk.
pub struct RequestHandler<B> {
    pub disk: B,
    limits: DiskLimits,
    serial: [u8; ID_BYTES],
    buffer: Vec<u8>,
    metrics: Arc<BlockMetrics>,
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
            buffer: Vec::new(),
            metrics,
        }
    }

    pub fn metrics(&self) -> &Arc<BlockMetrics> {
        &self.metrics
    }

    /// Takes back the disk.
    pub fn into_disk(self) -> B {
        self.disk
    }

    /// Answers one chain; returns the number of bytes written into it (the used length).
    pub fn handle<M>(&mut self, chain: DescriptorChain<M>, mem: &GuestMemoryMmap) -> u32
    where
        M: std::ops::Deref,
        M::Target: vm_memory::GuestMemory,
    {
        BlockMetrics::add(&self.metrics.requests, 1);
        let chain = match walk_chain(chain, mem) {
            Ok(chain) => chain,
            Err(e) => {
                BlockMetrics::add(&self.metrics.broken_chains, 1);
                warn_ratelimited!("virtio-blk: request dropped: {e}");
                return 0;
            }
        };
        let (code, written) = match parse_request(&chain, mem, &self.limits) {
            Ok(request) => self.execute(request, mem),
            Err(e) => {
                tracing::trace!("virtio-blk: request refused: {e}");
                (e.status(), 0)
            }
        };
        match code {
            status::IOERR => BlockMetrics::add(&self.metrics.io_errors, 1),
            status::UNSUPP => BlockMetrics::add(&self.metrics.unsupported, 1),
            _ => {}
        }
        // The status address was checked to be in guest memory.
        if mem.write_obj(code, chain.status).is_err() {
            return written;
        }
        written + 1
    }

    fn execute(&mut self, request: Request, mem: &GuestMemoryMmap) -> (u8, u32) {
        match request {
            Request::Read { sector, data } => self.read(sector, &data, mem),
            Request::Write { sector, data } => (self.write(sector, &data, mem), 0),
            Request::Flush => {
                BlockMetrics::add(&self.metrics.flushes, 1);
                let result = self.disk.flush();
                (io_status(result, "flush"), 0)
            }
            Request::GetId { data } => self.get_id(&data, mem),
            Request::Discard(ranges) => {
                BlockMetrics::add(&self.metrics.discards, 1);
                (self.ranges(&ranges, true), 0)
            }
            Request::WriteZeroes(ranges) => {
                BlockMetrics::add(&self.metrics.write_zeroes, 1);
                (self.ranges(&ranges, false), 0)
            }
        }
    }

    fn read(&mut self, sector: u64, data: &[Segment], mem: &GuestMemoryMmap) -> (u8, u32) {
        let mut offset = sector << SECTOR_SHIFT;
        let mut written = 0u32;
        for segment in data {
            let mut done = 0usize;
            while done < segment.len as usize {
                let n = CHUNK.min(segment.len as usize - done);
                self.buffer.resize(n.max(self.buffer.len()), 0);
                let buf = &mut self.buffer[..n];
                if let Err(e) = self.disk.read_at(offset, buf) {
                    warn_ratelimited!("virtio-blk: read at {offset:#x} failed: {e}");
                    return (status::IOERR, written);
                }
                // In guest memory: checked when the request was parsed.
                if mem
                    .write_slice(buf, segment.addr.unchecked_add(done as u64))
                    .is_err()
                {
                    return (status::IOERR, written);
                }
                offset += n as u64;
                done += n;
                written += n as u32;
                BlockMetrics::add(&self.metrics.read_bytes, n as u64);
            }
        }
        (status::OK, written)
    }

    fn write(&mut self, sector: u64, data: &[Segment], mem: &GuestMemoryMmap) -> u8 {
        let mut offset = sector << SECTOR_SHIFT;
        for segment in data {
            let mut done = 0usize;
            while done < segment.len as usize {
                let n = CHUNK.min(segment.len as usize - done);
                self.buffer.resize(n.max(self.buffer.len()), 0);
                let buf = &mut self.buffer[..n];
                if mem
                    .read_slice(buf, segment.addr.unchecked_add(done as u64))
                    .is_err()
                {
                    return status::IOERR;
                }
                if let Err(e) = self.disk.write_at(offset, buf) {
                    warn_ratelimited!("virtio-blk: write at {offset:#x} failed: {e}");
                    return status::IOERR;
                }
                offset += n as u64;
                done += n;
                BlockMetrics::add(&self.metrics.write_bytes, n as u64);
            }
        }
        status::OK
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

fn io_status(result: std::io::Result<()>, what: &str) -> u8 {
    match result {
        Ok(()) => status::OK,
        Err(e) => {
            warn_ratelimited!("virtio-blk: {what} failed: {e}");
            status::IOERR
        }
    }
}

/// Answers every available request; returns whether the driver must be interrupted.
pub fn process_queue<B: DiskBackend>(
    queue: &mut Queue,
    mem: &GuestMemoryMmap,
    handler: &mut RequestHandler<B>,
) -> Result<bool, QueueError> {
    let mut used_any = false;
    let mut idle_passes = 0;
    loop {
        queue.disable_notification(mem).map_err(QueueError::Broken)?;
        let mut progress = false;
        loop {
            let chain = match queue.iter(mem) {
                Ok(mut available) => available.next(),
                Err(e) => return Err(QueueError::Broken(e)),
            };
            let Some(chain) = chain else { break };
            let head = chain.head_index();
            let used = handler.handle(chain, mem);
            queue.add_used(mem, head, used).map_err(QueueError::Broken)?;
            used_any = true;
            progress = true;
        }
        if !queue.enable_notification(mem).map_err(QueueError::Broken)? {
            break;
        }
        // More is available, yet a pass found nothing twice running: the ring cannot be read.
        idle_passes = if progress { 0 } else { idle_passes + 1 };
        if idle_passes >= 2 {
            return Err(QueueError::Stalled);
        }
    }
    Ok(used_any && queue.needs_notification(mem).map_err(QueueError::Broken)?)
}
