//! The balloon's queue logic, pure: inflate and deflate buffers of PFNs, the statistics buffer
//! the device holds between requests, and free page reports. No thread, no KVM: tests and the
//! fuzzer drive it on test memory.
//!
//! Every address comes from the guest and is checked: a PFN whose page is not wholly inside
//! one region of guest memory, or the part of a reported range outside memory, is skipped with
//! a rate-limited warning; nothing the guest writes can make it panic.

use std::sync::Arc;
use std::time::SystemTime;

use virtio_queue::{DescriptorChain, Queue, QueueOwnedT, QueueT};
use virtkit_virtio::{warn_ratelimited, QueueError};
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

use super::discard::{MemoryDiscard, DISCARD_ALIGN};
use super::handle::BALLOON_PAGE_SIZE;
use super::metrics::BalloonMetrics;
use super::stats::{BalloonStatistics, MAX_STATS_LEN};

/// `VIRTIO_BALLOON_PFN_SHIFT`: PFNs count 4 KiB pages.
pub const PFN_SHIFT: u32 = 12;
/// Bytes of PFNs read from guest memory at a time.
const PFN_CHUNK: usize = 1024;
/// Most bytes of PFNs read from one chain: 256 Ki pages (1 GiB). Linux sends at most 256 PFNs
/// a buffer; the cap keeps a chain of huge descriptors from holding the worker for long.
pub const MAX_PFN_BYTES_PER_CHAIN: u64 = 1 << 20;

/// Contiguous valid pages waiting to be discarded together.
#[derive(Debug, Clone, Copy)]
struct Run {
    start: u64,
    len: u64,
    /// Start of the region it lies in: a run never crosses regions.
    region: u64,
}

/// Answers the balloon's queues.
pub struct BalloonHandler<D> {
    pub discard: D,
    metrics: Arc<BalloonMetrics>,
    /// The statistics buffer the guest posted, held until the next request (its head index).
    stats_head: Option<u16>,
}

impl<D: MemoryDiscard> BalloonHandler<D> {
    pub fn new(discard: D, metrics: Arc<BalloonMetrics>) -> BalloonHandler<D> {
        BalloonHandler {
            discard,
            metrics,
            stats_head: None,
        }
    }

    pub fn metrics(&self) -> &Arc<BalloonMetrics> {
        &self.metrics
    }

    /// The statistics buffer held, if any.
    pub fn stats_head(&self) -> Option<u16> {
        self.stats_head
    }

    /// Sets the statistics buffer held (after a restore), or forgets it (reset).
    pub fn set_stats_head(&mut self, head: Option<u16>) {
        self.stats_head = head;
    }

    /// Takes every inflate buffer: discards the pages they list. Returns whether the driver
    /// must be interrupted.
    pub fn process_inflate(&mut self, queue: &mut Queue, mem: &GuestMemoryMmap) -> Result<bool, QueueError> {
        for_each_chain(queue, mem, |chain| {
            self.pfns(chain, mem, true);
            Some(0)
        })
    }

    /// Takes every deflate buffer: counts the pages (they fault back in when the guest uses
    /// them). Returns whether the driver must be interrupted.
    pub fn process_deflate(&mut self, queue: &mut Queue, mem: &GuestMemoryMmap) -> Result<bool, QueueError> {
        for_each_chain(queue, mem, |chain| {
            self.pfns(chain, mem, false);
            Some(0)
        })
    }

    /// Takes every free page report: discards the ranges. Returns whether the driver must be
    /// interrupted.
    pub fn process_reporting(
        &mut self,
        queue: &mut Queue,
        mem: &GuestMemoryMmap,
    ) -> Result<bool, QueueError> {
        for_each_chain(queue, mem, |chain| {
            for desc in chain {
                self.report(mem, desc.addr(), u64::from(desc.len()));
            }
            Some(0)
        })
    }

    /// Takes the statistics buffers the guest posted: reads each, holds the last one (an
    /// earlier one still held goes back at once, used), and returns the newest statistics
    /// with whether the driver must be interrupted.
    pub fn process_stats(
        &mut self,
        queue: &mut Queue,
        mem: &GuestMemoryMmap,
    ) -> Result<(bool, Option<BalloonStatistics>), QueueError> {
        let mut newest = None;
        let mut returned = Vec::new();
        let notify = for_each_chain(queue, mem, |chain| {
            let head = chain.head_index();
            newest = Some(self.read_stats(chain, mem));
            if let Some(old) = self.stats_head.replace(head) {
                returned.push(old);
            }
            None
        })?;
        if returned.is_empty() {
            return Ok((notify, newest));
        }
        for head in returned {
            queue.add_used(mem, head, 0).map_err(QueueError::Broken)?;
        }
        let notify = queue.needs_notification(mem).map_err(QueueError::Broken)? || notify;
        Ok((notify, newest))
    }

    /// Hands the held statistics buffer back (used, length 0) so that the guest refills it with
    /// fresh statistics. Returns whether the driver must be interrupted; `false` with no buffer
    /// held.
    pub fn request_stats(&mut self, queue: &mut Queue, mem: &GuestMemoryMmap) -> Result<bool, QueueError> {
        let Some(head) = self.stats_head.take() else {
            return Ok(false);
        };
        if usize::from(head) >= usize::from(queue.size()) {
            // Restored from a snapshot that does not fit this queue.
            warn_ratelimited!("virtio-balloon: held statistics buffer {head} is not in the queue");
            return Ok(false);
        }
        queue.add_used(mem, head, 0).map_err(QueueError::Broken)?;
        queue.needs_notification(mem).map_err(QueueError::Broken)
    }

    fn read_stats<M>(&mut self, chain: DescriptorChain<M>, mem: &GuestMemoryMmap) -> BalloonStatistics
    where
        M: std::ops::Deref,
        M::Target: vm_memory::GuestMemory,
    {
        let mut bytes = Vec::new();
        for desc in chain {
            if desc.is_write_only() {
                BalloonMetrics::add(&self.metrics.skipped_descriptors, 1);
                continue;
            }
            let want = (desc.len() as usize).min(MAX_STATS_LEN - bytes.len());
            let start = bytes.len();
            bytes.resize(start + want, 0);
            if mem.read_slice(&mut bytes[start..], desc.addr()).is_err() {
                BalloonMetrics::add(&self.metrics.skipped_descriptors, 1);
                warn_ratelimited!(
                    "virtio-balloon: statistics buffer at {:#x} is outside guest memory",
                    desc.addr().0
                );
                bytes.truncate(start);
            }
            if bytes.len() >= MAX_STATS_LEN {
                break;
            }
        }
        BalloonMetrics::add(&self.metrics.stats_reports, 1);
        BalloonStatistics::parse(&bytes, SystemTime::now())
    }

    /// Walks the PFN arrays of an inflate (`discard`) or deflate chain.
    fn pfns<M>(&mut self, chain: DescriptorChain<M>, mem: &GuestMemoryMmap, discard: bool)
    where
        M: std::ops::Deref,
        M::Target: vm_memory::GuestMemory,
    {
        let mut run: Option<Run> = None;
        let mut buf = [0u8; PFN_CHUNK];
        let mut budget = MAX_PFN_BYTES_PER_CHAIN;
        for desc in chain {
            if desc.is_write_only() {
                BalloonMetrics::add(&self.metrics.skipped_descriptors, 1);
                warn_ratelimited!("virtio-balloon: device-writable descriptor in a PFN buffer skipped");
                continue;
            }
            // A trailing partial PFN is ignored.
            let mut len = u64::from(desc.len() & !3);
            if len > budget {
                BalloonMetrics::add(&self.metrics.skipped_descriptors, 1);
                warn_ratelimited!(
                    "virtio-balloon: PFN buffers longer than {MAX_PFN_BYTES_PER_CHAIN} bytes in one chain; the rest is ignored"
                );
                len = budget;
            }
            budget -= len;
            let mut offset = 0u64;
            while offset < len {
                let n = (len - offset).min(PFN_CHUNK as u64) as usize;
                let Some(at) = desc.addr().checked_add(offset) else {
                    BalloonMetrics::add(&self.metrics.skipped_descriptors, 1);
                    warn_ratelimited!("virtio-balloon: PFN buffer runs past the address space");
                    break;
                };
                if mem.read_slice(&mut buf[..n], at).is_err() {
                    BalloonMetrics::add(&self.metrics.skipped_descriptors, 1);
                    warn_ratelimited!(
                        "virtio-balloon: PFN buffer at {:#x} is outside guest memory",
                        at.0
                    );
                    break;
                }
                for pfn in buf[..n].chunks_exact(4) {
                    let pfn = u32::from_le_bytes([pfn[0], pfn[1], pfn[2], pfn[3]]);
                    run = self.page(mem, pfn, run, discard);
                }
                offset += n as u64;
            }
        }
        if let Some(run) = run {
            self.flush(mem, run, discard);
        }
    }

    /// Adds page `pfn` to `run` (or flushes `run` and starts a new one); skips a page outside
    /// guest memory.
    fn page(&mut self, mem: &GuestMemoryMmap, pfn: u32, run: Option<Run>, discard: bool) -> Option<Run> {
        let addr = u64::from(pfn) << PFN_SHIFT;
        let region = mem
            .find_region(GuestAddress(addr))
            .filter(|r| r.last_addr().0 >= addr + (BALLOON_PAGE_SIZE - 1))
            .map(|r| r.start_addr().0);
        let Some(region) = region else {
            BalloonMetrics::add(&self.metrics.invalid_ranges, 1);
            warn_ratelimited!("virtio-balloon: PFN {pfn:#x} is outside guest memory; skipped");
            return run;
        };
        match run {
            Some(mut r) if r.region == region && r.start + r.len == addr => {
                r.len += BALLOON_PAGE_SIZE;
                Some(r)
            }
            other => {
                if let Some(r) = other {
                    self.flush(mem, r, discard);
                }
                Some(Run {
                    start: addr,
                    len: BALLOON_PAGE_SIZE,
                    region,
                })
            }
        }
    }

    fn flush(&mut self, mem: &GuestMemoryMmap, run: Run, discard: bool) {
        let pages = run.len / BALLOON_PAGE_SIZE;
        if !discard {
            BalloonMetrics::add(&self.metrics.deflated_pages, pages);
            return;
        }
        BalloonMetrics::add(&self.metrics.inflated_pages, pages);
        if let Err(e) = self.discard.discard(mem, GuestAddress(run.start), run.len) {
            BalloonMetrics::add(&self.metrics.discard_failures, 1);
            warn_ratelimited!("virtio-balloon: cannot discard inflated pages: {e}");
        }
    }

    /// Discards the whole 4 KiB pages of a reported range that lie in guest memory.
    fn report(&mut self, mem: &GuestMemoryMmap, addr: GuestAddress, len: u64) {
        let start = addr.0.checked_next_multiple_of(DISCARD_ALIGN);
        let end = addr.0.saturating_add(len) & !(DISCARD_ALIGN - 1);
        let Some(start) = start.filter(|&s| s < end) else {
            if len != 0 {
                tracing::trace!("virtio-balloon: reported range without a whole page ignored");
            }
            return;
        };
        let mut covered = 0;
        for region in mem.iter() {
            let r_start = region.start_addr().0;
            let r_end = r_start.saturating_add(region.len());
            let e = end.min(r_end) & !(DISCARD_ALIGN - 1);
            let Some(s) = start
                .max(r_start)
                .checked_next_multiple_of(DISCARD_ALIGN)
                .filter(|&s| s < e)
            else {
                continue;
            };
            covered += e - s;
            match self.discard.discard(mem, GuestAddress(s), e - s) {
                Ok(()) => BalloonMetrics::add(&self.metrics.reported_bytes, e - s),
                Err(err) => {
                    BalloonMetrics::add(&self.metrics.discard_failures, 1);
                    warn_ratelimited!("virtio-balloon: cannot discard reported free memory: {err}");
                }
            }
        }
        if covered < end - start {
            BalloonMetrics::add(&self.metrics.invalid_ranges, 1);
            warn_ratelimited!(
                "virtio-balloon: reported range {start:#x}..{end:#x} is partly outside guest memory; that part is skipped"
            );
        }
    }
}

/// Pops every available chain and gives it to `f`, which answers it (`Some(used length)`) or
/// keeps it (`None`). Returns whether the driver must be interrupted.
fn for_each_chain<F>(queue: &mut Queue, mem: &GuestMemoryMmap, mut f: F) -> Result<bool, QueueError>
where
    F: FnMut(DescriptorChain<&GuestMemoryMmap>) -> Option<u32>,
{
    let mut used = false;
    let mut idle_passes = 0;
    loop {
        queue.disable_notification(mem).map_err(QueueError::Broken)?;
        let mut progress = false;
        // At most a queue's worth per pass: a driver repeating heads cannot keep us here.
        for _ in 0..queue.size() {
            let chain = match queue.iter(mem) {
                Ok(mut available) => available.next(),
                Err(e) => return Err(QueueError::Broken(e)),
            };
            let Some(chain) = chain else { break };
            progress = true;
            let head = chain.head_index();
            if let Some(len) = f(chain) {
                queue.add_used(mem, head, len).map_err(QueueError::Broken)?;
                used = true;
            }
        }
        if !queue.enable_notification(mem).map_err(QueueError::Broken)? {
            break;
        }
        // More is available, yet passes find nothing: the ring cannot be read.
        idle_passes = if progress { 0 } else { idle_passes + 1 };
        if idle_passes >= 2 {
            return Err(QueueError::Stalled);
        }
    }
    Ok(used && queue.needs_notification(mem).map_err(QueueError::Broken)?)
}
