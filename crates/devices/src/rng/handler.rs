//! The queue loop, pure: each buffer the driver makes available gets as many random bytes as it
//! holds (up to [`MAX_REQUEST_BYTES`]) and the limiter allows. A buffer may get fewer bytes than
//! it holds, as the specification allows; the used length says how many. With the limiter empty
//! the loop stops before popping, leaving the buffers in the ring, and says how long to wait.

use std::sync::Arc;
use std::time::{Duration, Instant};

use virtio_queue::{DescriptorChain, Queue, QueueOwnedT, QueueT};
use virtkit_virtio::{warn_ratelimited, QueueError};
use vm_memory::{Bytes, GuestMemory, GuestMemoryMmap, Permissions};

use super::limiter::TokenBucket;
use super::metrics::RngMetrics;
use super::source::EntropySource;

/// Most bytes one buffer gets: bounds the host buffer a guest can make the device fill at once.
/// Linux's driver asks for at most a few hundred bytes at a time.
pub const MAX_REQUEST_BYTES: usize = 64 << 10;

/// What a pass over the queue did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fill {
    /// The driver must be interrupted (buffers were used and it asked to hear of it).
    pub interrupt: bool,
    /// The limiter ran dry with buffers still available: pass again after this long, without
    /// waiting for a notification.
    pub again_after: Option<Duration>,
}

/// The device's state between passes: the source, the limiter and a reusable buffer.
pub struct EntropyHandler<S> {
    pub source: S,
    limiter: Option<TokenBucket>,
    metrics: Arc<RngMetrics>,
    buffer: Vec<u8>,
}

impl<S: EntropySource> EntropyHandler<S> {
    pub fn new(source: S, limiter: Option<TokenBucket>, metrics: Arc<RngMetrics>) -> Self {
        EntropyHandler {
            source,
            limiter,
            metrics,
            buffer: Vec::new(),
        }
    }

    /// Bytes the limiter grants now, out of `want` (0: wait for the timer).
    fn allowance(&mut self, want: u64, now: Instant) -> u64 {
        match &mut self.limiter {
            Some(bucket) => bucket.take_grant(want, now),
            None => want,
        }
    }

    /// Fills one chain; returns the used length.
    fn fill<M>(&mut self, chain: DescriptorChain<M>, mem: &GuestMemoryMmap, budget: u64) -> u32
    where
        M: std::ops::Deref,
        M::Target: GuestMemory,
    {
        let mut segments = Vec::new();
        let mut capacity: u64 = 0;
        for desc in chain {
            if !desc.is_write_only() {
                RngMetrics::add(&self.metrics.bad_chains, 1);
                warn_ratelimited!("virtio-rng: a buffer the device may only read; answered empty");
                return 0;
            }
            if !mem.check_range(desc.addr(), desc.len() as usize, Permissions::Write) {
                RngMetrics::add(&self.metrics.bad_chains, 1);
                warn_ratelimited!(
                    "virtio-rng: buffer {:#x}+{:#x} is not in guest memory; answered empty",
                    desc.addr().0,
                    desc.len()
                );
                return 0;
            }
            segments.push((desc.addr(), desc.len()));
            capacity += u64::from(desc.len());
        }
        let total = capacity.min(budget).min(MAX_REQUEST_BYTES as u64) as usize;
        self.buffer.resize(total, 0);
        if let Err(e) = self.source.fill(&mut self.buffer) {
            warn_ratelimited!("virtio-rng: the host's entropy source failed: {e}; answered empty");
            return 0;
        }
        let mut written = 0usize;
        for (addr, len) in segments {
            if written == total {
                break;
            }
            let n = (len as usize).min(total - written);
            // Checked above; a failure here would be memory that vanished, so stop short.
            if mem.write_slice(&self.buffer[written..written + n], addr).is_err() {
                break;
            }
            written += n;
        }
        RngMetrics::add(&self.metrics.bytes, written as u64);
        written as u32
    }
}

/// Answers available buffers until the ring is empty or the limiter is. Pure: `now` is the time
/// the limiter refills against.
pub fn process_queue<S: EntropySource>(
    queue: &mut Queue,
    mem: &GuestMemoryMmap,
    handler: &mut EntropyHandler<S>,
    now: Instant,
) -> Result<Fill, QueueError> {
    let mut used = false;
    let mut idle_passes = 0;
    loop {
        queue.disable_notification(mem).map_err(QueueError::Broken)?;
        let mut progress = false;
        loop {
            let budget = handler.allowance(MAX_REQUEST_BYTES as u64, now);
            if budget == 0 {
                // Leave the buffers in the ring; the timer brings the worker back.
                RngMetrics::add(&handler.metrics.throttled, 1);
                let wait = handler
                    .limiter
                    .as_ref()
                    .map(TokenBucket::time_to_next_grant)
                    .unwrap_or_default();
                queue.enable_notification(mem).map_err(QueueError::Broken)?;
                return Ok(Fill {
                    interrupt: used && queue.needs_notification(mem).map_err(QueueError::Broken)?,
                    again_after: Some(wait),
                });
            }
            let chain = match queue.iter(mem) {
                Ok(mut available) => available.next(),
                Err(e) => return Err(QueueError::Broken(e)),
            };
            let Some(chain) = chain else {
                handler.give_back(budget);
                break;
            };
            progress = true;
            let head = chain.head_index();
            let len = handler.fill(chain, mem, budget);
            handler.give_back(budget - u64::from(len));
            RngMetrics::add(&handler.metrics.requests, 1);
            queue.add_used(mem, head, len).map_err(QueueError::Broken)?;
            used = true;
        }
        if !queue.enable_notification(mem).map_err(QueueError::Broken)? {
            break;
        }
        idle_passes = if progress { 0 } else { idle_passes + 1 };
        if idle_passes >= 2 {
            return Err(QueueError::Stalled);
        }
    }
    Ok(Fill {
        interrupt: used && queue.needs_notification(mem).map_err(QueueError::Broken)?,
        again_after: None,
    })
}

impl<S> EntropyHandler<S> {
    /// Returns bytes taken from the limiter and not handed out.
    fn give_back(&mut self, unused: u64) {
        if let Some(bucket) = &mut self.limiter {
            bucket.put_back(unused);
        }
    }
}
