//! Descriptor chains as the device sees them: popped from a queue, checked (direction, loops,
//! guest addresses) into a list of segments, and copied to or from host buffers. Every guest
//! address goes through vm-memory, which refuses what is outside guest memory.

use serde::{Deserialize, Serialize};
use virtio_queue::{DescriptorChain, Queue, QueueOwnedT, QueueT};
use virtkit_virtio::QueueError;
use vm_memory::{Bytes, GuestAddress, GuestMemory, GuestMemoryMmap, Permissions};

/// A chain the device refuses (returned with nothing done).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChainError {
    #[error("the descriptor chain is cut short (a loop, a bad next index or indirect table)")]
    Truncated,
    #[error("a device-writable descriptor in a tx chain")]
    WritableInTx,
    #[error("a device-readable descriptor in an rx chain")]
    ReadableInRx,
    #[error("guest buffer {addr:#x}+{len:#x} is not in guest memory")]
    OutOfRange { addr: u64, len: u32 },
    #[error("a chain of {0} bytes; the device takes at most {1}")]
    TooLong(u64, usize),
    #[error("a chain of {0} bytes is shorter than the virtio-net header")]
    TooShort(u64),
    #[error("a control command without a device-writable byte for its ack")]
    NoAck,
}

/// A guest buffer, checked to be in guest memory when the chain was walked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Segment {
    pub addr: u64,
    pub len: u32,
}

pub(crate) type Chain<'a> = DescriptorChain<&'a GuestMemoryMmap>;

/// The next available chain, with notifications re-enabled when the ring is empty (and checked
/// again after, so a buffer added meanwhile is not missed).
pub(crate) fn pop<'a>(queue: &mut Queue, mem: &'a GuestMemoryMmap) -> Result<Option<Chain<'a>>, QueueError> {
    for _ in 0..2 {
        queue.disable_notification(mem)?;
        if let Some(chain) = queue.iter(mem)?.next() {
            return Ok(Some(chain));
        }
        if !queue.enable_notification(mem)? {
            return Ok(None);
        }
    }
    // More is available, yet twice nothing could be read: the ring is outside guest memory.
    Err(QueueError::Stalled)
}

/// The chain's buffers, all in the direction the device wants (`writable`: device-writable)
/// and in guest memory, and their total length, at most `limit`. Zero-length descriptors are
/// left out.
pub(crate) fn walk(
    chain: Chain<'_>,
    mem: &GuestMemoryMmap,
    writable: bool,
    limit: usize,
) -> Result<(Vec<Segment>, u64), ChainError> {
    let mut segments = Vec::new();
    let mut total: u64 = 0;
    let mut last_has_next = false;
    for desc in chain {
        last_has_next = desc.has_next();
        if desc.is_write_only() != writable {
            return Err(if writable {
                ChainError::ReadableInRx
            } else {
                ChainError::WritableInTx
            });
        }
        if desc.len() == 0 {
            continue;
        }
        let access = if writable {
            Permissions::Write
        } else {
            Permissions::Read
        };
        if !mem.check_range(desc.addr(), desc.len() as usize, access) {
            return Err(ChainError::OutOfRange {
                addr: desc.addr().0,
                len: desc.len(),
            });
        }
        total += u64::from(desc.len());
        if total > limit as u64 {
            return Err(ChainError::TooLong(total, limit));
        }
        segments.push(Segment {
            addr: desc.addr().0,
            len: desc.len(),
        });
    }
    // The iterator stops early at a loop or a bad index, leaving "next" set on the last one.
    if last_has_next {
        return Err(ChainError::Truncated);
    }
    Ok((segments, total))
}

/// Reads the segments' bytes from byte `skip` on into `buf`; returns how many.
pub(crate) fn gather(
    mem: &GuestMemoryMmap,
    segments: &[Segment],
    mut skip: u64,
    buf: &mut [u8],
) -> Result<usize, ChainError> {
    let mut done = 0;
    for seg in segments {
        let len = u64::from(seg.len);
        if skip >= len {
            skip -= len;
            continue;
        }
        let n = ((len - skip) as usize).min(buf.len() - done);
        let out_of_range = ChainError::OutOfRange {
            addr: seg.addr,
            len: seg.len,
        };
        let addr = seg.addr.checked_add(skip).ok_or(out_of_range.clone())?;
        mem.read_slice(&mut buf[done..done + n], GuestAddress(addr))
            .map_err(|_| out_of_range)?;
        skip = 0;
        done += n;
        if done == buf.len() {
            break;
        }
    }
    Ok(done)
}

/// Writes `data` into the segments in order; returns how many bytes fit.
pub(crate) fn scatter(mem: &GuestMemoryMmap, segments: &[Segment], data: &[u8]) -> Result<usize, ChainError> {
    let mut done = 0;
    for seg in segments {
        if done == data.len() {
            break;
        }
        let n = (seg.len as usize).min(data.len() - done);
        mem.write_slice(&data[done..done + n], GuestAddress(seg.addr))
            .map_err(|_| ChainError::OutOfRange {
                addr: seg.addr,
                len: seg.len,
            })?;
        done += n;
    }
    Ok(done)
}
