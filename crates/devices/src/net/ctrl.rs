//! The control queue of a multiqueue card (virtio 1.2, 5.1.6.5): each command is one chain, a
//! device-readable `class`, `command` and its data, then one device-writable ack byte. The
//! device offers `VIRTIO_NET_F_CTRL_VQ` only with `VIRTIO_NET_F_MQ`, so the one command a driver
//! may send is `VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET` (how many queue pairs it uses); anything else is
//! answered `VIRTIO_NET_ERR`, and a malformed chain is used with nothing written.

use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::Arc;

use virtio_queue::{Queue, QueueT};
use virtkit_virtio::{warn_ratelimited, DeviceQueue, QueueError};
use vm_memory::{Bytes, GuestAddress, GuestMemory, GuestMemoryMmap, Permissions};

use super::chain::{pop, Chain, ChainError};

/// `VIRTIO_NET_CTRL_MQ` and its `VQ_PAIRS_SET` command.
const CLASS_MQ: u8 = 4;
const MQ_VQ_PAIRS_SET: u8 = 0;
const ACK_OK: u8 = 0;
const ACK_ERR: u8 = 1;
/// Longest command read (class, command, data): the longest a driver sends to a device without
/// `CTRL_RX`/`CTRL_MAC_ADDR`/`CTRL_VLAN` is 4 bytes; a longer chain is refused, not read.
const MAX_COMMAND: usize = 64;

/// The control queue and what its commands change.
#[derive(Debug)]
pub(crate) struct CtrlQueue {
    pub queue: DeviceQueue,
    pub max_pairs: u16,
    /// The pairs the driver uses (`VQ_PAIRS_SET`); every pair until it says.
    pub active_pairs: Arc<AtomicU16>,
}

impl CtrlQueue {
    /// Answers every waiting command; whether a chain was used.
    pub fn process(&mut self, mem: &GuestMemoryMmap) -> Result<bool, QueueError> {
        process(&mut self.queue.queue, mem, self.max_pairs, &self.active_pairs)
    }
}

pub(crate) fn process(
    queue: &mut Queue,
    mem: &GuestMemoryMmap,
    max_pairs: u16,
    active_pairs: &AtomicU16,
) -> Result<bool, QueueError> {
    let mut used = false;
    while let Some(chain) = pop(queue, mem)? {
        let head = chain.head_index();
        let len = match answer(chain, mem, max_pairs, active_pairs) {
            Ok(len) => len,
            Err(e) => {
                warn_ratelimited!("virtio-net: a control command refused: {e}");
                0
            }
        };
        queue.add_used(mem, head, len)?;
        used = true;
    }
    Ok(used)
}

/// Reads one command, carries it out and writes its ack; the bytes written (1).
fn answer(
    chain: Chain<'_>,
    mem: &GuestMemoryMmap,
    max_pairs: u16,
    active_pairs: &AtomicU16,
) -> Result<u32, ChainError> {
    let mut command = [0u8; MAX_COMMAND];
    let mut len = 0usize;
    let mut ack: Option<GuestAddress> = None;
    let mut last_has_next = false;
    for desc in chain {
        last_has_next = desc.has_next();
        let out_of_range = ChainError::OutOfRange {
            addr: desc.addr().0,
            len: desc.len(),
        };
        if desc.is_write_only() {
            // The ack is the first writable byte; the spec puts nothing after it.
            if ack.is_none() && desc.len() > 0 {
                if !mem.check_range(desc.addr(), 1, Permissions::Write) {
                    return Err(out_of_range);
                }
                ack = Some(desc.addr());
            }
            continue;
        }
        if ack.is_some() {
            return Err(ChainError::ReadableInRx);
        }
        let n = desc.len() as usize;
        if len + n > MAX_COMMAND {
            return Err(ChainError::TooLong((len + n) as u64, MAX_COMMAND));
        }
        mem.read_slice(&mut command[len..len + n], desc.addr())
            .map_err(|_| out_of_range)?;
        len += n;
    }
    if last_has_next {
        return Err(ChainError::Truncated);
    }
    let ack = ack.ok_or(ChainError::NoAck)?;
    let status = execute(&command[..len], max_pairs, active_pairs);
    mem.write_obj(status, ack)
        .map_err(|_| ChainError::OutOfRange { addr: ack.0, len: 1 })?;
    Ok(1)
}

fn execute(command: &[u8], max_pairs: u16, active_pairs: &AtomicU16) -> u8 {
    match *command {
        [CLASS_MQ, MQ_VQ_PAIRS_SET, lo, hi] => {
            let pairs = u16::from_le_bytes([lo, hi]);
            if (1..=max_pairs).contains(&pairs) {
                active_pairs.store(pairs, Ordering::Release);
                tracing::debug!(pairs, "virtio-net: the driver uses {pairs} queue pairs");
                ACK_OK
            } else {
                ACK_ERR
            }
        }
        _ => ACK_ERR,
    }
}
