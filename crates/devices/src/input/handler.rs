//! The queue loops, pure over a queue and guest memory:
//! - [`deliver_events`]: each waiting event into the next buffer of the event queue, one event
//!   per buffer, as Linux's driver posts them; events stay waiting while there is no buffer.
//! - [`consume_status`]: the driver's status events (keyboard LEDs) read and the buffers
//!   given back.
//!
//! A buffer the device may not write, one too short for an event or outside guest memory is
//! given back empty and the event waits for the next buffer.

use virtio_queue::{DescriptorChain, Queue, QueueOwnedT, QueueT};
use virtkit_virtio::{warn_ratelimited, QueueError};
use vm_memory::{Bytes, GuestMemory, GuestMemoryMmap, Permissions};

use super::event::{InputEvent, EVENT_SIZE, EV_LED};
use super::handle::{InputMetrics, Shared};

/// Writes `event` into `chain`'s writable buffers; the length written (0: refused).
fn write_event<M>(chain: DescriptorChain<M>, mem: &GuestMemoryMmap, event: InputEvent) -> u32
where
    M: std::ops::Deref,
    M::Target: GuestMemory,
{
    let bytes = event.to_bytes();
    let mut segments = Vec::new();
    let mut room = 0usize;
    for desc in chain {
        if !desc.is_write_only() || !mem.check_range(desc.addr(), desc.len() as usize, Permissions::Write) {
            return 0;
        }
        segments.push((desc.addr(), desc.len() as usize));
        room += desc.len() as usize;
        if room >= EVENT_SIZE {
            break;
        }
    }
    if room < EVENT_SIZE {
        return 0;
    }
    let mut written = 0;
    for (addr, len) in segments {
        let n = len.min(EVENT_SIZE - written);
        if mem.write_slice(&bytes[written..written + n], addr).is_err() {
            return 0;
        }
        written += n;
    }
    EVENT_SIZE as u32
}

/// Gives the driver the waiting events, as many as it has buffers for. Returns whether the
/// driver must be interrupted.
pub(super) fn deliver_pending(
    queue: &mut Queue,
    mem: &GuestMemoryMmap,
    shared: &Shared,
) -> Result<bool, QueueError> {
    let mut pending = shared.pending();
    let mut used = false;
    let mut idle_passes = 0;
    loop {
        queue.disable_notification(mem)?;
        let mut progress = false;
        while let Some(&event) = pending.front() {
            let chain = match queue.iter(mem) {
                Ok(mut available) => available.next(),
                Err(e) => return Err(QueueError::Broken(e)),
            };
            let Some(chain) = chain else { break };
            progress = true;
            let head = chain.head_index();
            let len = write_event(chain, mem, event);
            queue.add_used(mem, head, len)?;
            used = true;
            if len == 0 {
                InputMetrics::add(&shared.metrics.bad_chains, 1);
                warn_ratelimited!("virtio-input: an event buffer the device cannot write; given back empty");
            } else {
                pending.pop_front();
                InputMetrics::add(&shared.metrics.delivered, 1);
            }
        }
        let more_buffers = queue.enable_notification(mem)?;
        if pending.is_empty() || !more_buffers {
            break;
        }
        idle_passes = if progress { 0 } else { idle_passes + 1 };
        if idle_passes >= 2 {
            return Err(QueueError::Stalled);
        }
    }
    Ok(used && queue.needs_notification(mem)?)
}

/// Reads one status event from `chain`'s readable buffers (`None`: not a whole event).
fn read_status<M>(chain: DescriptorChain<M>, mem: &GuestMemoryMmap) -> Option<InputEvent>
where
    M: std::ops::Deref,
    M::Target: GuestMemory,
{
    let mut bytes = [0u8; EVENT_SIZE];
    let mut read = 0;
    for desc in chain {
        if desc.is_write_only() || !mem.check_range(desc.addr(), desc.len() as usize, Permissions::Read) {
            return None;
        }
        let n = (desc.len() as usize).min(EVENT_SIZE - read);
        mem.read_slice(&mut bytes[read..read + n], desc.addr()).ok()?;
        read += n;
        if read == EVENT_SIZE {
            return Some(InputEvent::from_bytes(bytes));
        }
    }
    None
}

/// Takes the driver's status events (LED changes); every buffer is given back with nothing
/// written. Returns whether the driver must be interrupted.
pub(super) fn consume_status_events(
    queue: &mut Queue,
    mem: &GuestMemoryMmap,
    shared: &Shared,
) -> Result<bool, QueueError> {
    let mut used = false;
    let mut idle_passes = 0;
    loop {
        queue.disable_notification(mem)?;
        let mut progress = false;
        loop {
            let chain = match queue.iter(mem) {
                Ok(mut available) => available.next(),
                Err(e) => return Err(QueueError::Broken(e)),
            };
            let Some(chain) = chain else { break };
            progress = true;
            let head = chain.head_index();
            match read_status(chain, mem) {
                Some(event) => {
                    InputMetrics::add(&shared.metrics.status_events, 1);
                    if event.kind == EV_LED {
                        shared.set_led(event.code, event.value != 0);
                    }
                    tracing::trace!(?event, "virtio-input: status");
                }
                None => {
                    InputMetrics::add(&shared.metrics.bad_chains, 1);
                    warn_ratelimited!("virtio-input: a status buffer the device cannot read; ignored");
                }
            }
            queue.add_used(mem, head, 0)?;
            used = true;
        }
        if !queue.enable_notification(mem)? {
            break;
        }
        idle_passes = if progress { 0 } else { idle_passes + 1 };
        if idle_passes >= 2 {
            return Err(QueueError::Stalled);
        }
    }
    Ok(used && queue.needs_notification(mem)?)
}

/// [`deliver_pending`] for a device's handle: the test and fuzz entry.
pub fn deliver_events(
    queue: &mut Queue,
    mem: &GuestMemoryMmap,
    handle: &super::InputHandle,
) -> Result<bool, QueueError> {
    deliver_pending(queue, mem, &handle.shared)
}

/// [`consume_status_events`] for a device's handle: the test and fuzz entry.
pub fn consume_status(
    queue: &mut Queue,
    mem: &GuestMemoryMmap,
    handle: &super::InputHandle,
) -> Result<bool, QueueError> {
    consume_status_events(queue, mem, &handle.shared)
}
