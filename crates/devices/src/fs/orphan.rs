//! What the guest's requests get once virtiofsd is gone: an error, at once. Linux's virtiofs
//! driver does not act on DEVICE_NEEDS_RESET, so without an answer every request on the share
//! would wait forever (and `sync`, which asks the file system too, with it). The VMM takes the
//! queues back from the dead backend and answers each request with a FUSE reply header carrying
//! `-EIO` and the request's `unique`; requests with no reply (FORGET, BATCH_FORGET: no
//! device-writable buffer) are returned empty.
//!
//! This is the one place virtkit reads what the guest puts on a virtio-fs queue, so it reads as
//! little as it can: 16 bytes of the FUSE request header (length, opcode, unique), through
//! vm-memory. The fuzz entry is `fuzz::fuzz_orphaned_queue`.

use virtio_queue::DescriptorChain;
use vm_memory::{Bytes, GuestAddress, GuestMemory, GuestMemoryMmap, Permissions};

use crate::vhost_user::OrphanedQueues;

/// The errno the guest sees (EIO, as the issue asks: the share fails, the VM runs on).
pub const ORPHAN_ERRNO: i32 = libc::EIO;
/// `struct fuse_out_header`: len (u32), error (i32), unique (u64).
const OUT_HEADER_LEN: usize = 16;
/// The start of `struct fuse_in_header`: len (u32), opcode (u32), unique (u64).
const IN_HEADER_PREFIX: usize = 16;

/// One buffer of a chain, checked to be in guest memory.
#[derive(Debug, Clone, Copy)]
struct Buffer {
    addr: u64,
    len: u32,
}

/// The chain's device-readable and device-writable buffers (readable first, as virtio
/// requires; a readable one after a writable one makes the chain unanswerable).
fn split(
    chain: DescriptorChain<&GuestMemoryMmap>,
    memory: &GuestMemoryMmap,
) -> Option<(Vec<Buffer>, Vec<Buffer>)> {
    let (mut readable, mut writable) = (Vec::new(), Vec::new());
    let mut last_has_next = false;
    for desc in chain {
        last_has_next = desc.has_next();
        if desc.len() == 0 {
            continue;
        }
        let access = if desc.is_write_only() {
            Permissions::Write
        } else {
            Permissions::Read
        };
        if !memory.check_range(desc.addr(), desc.len() as usize, access) {
            return None;
        }
        let buffer = Buffer {
            addr: desc.addr().0,
            len: desc.len(),
        };
        if desc.is_write_only() {
            writable.push(buffer);
        } else if writable.is_empty() {
            readable.push(buffer);
        } else {
            return None;
        }
    }
    // The iterator stops early at a loop or a bad next index, leaving "next" set.
    (!last_has_next).then_some((readable, writable))
}

/// Copies up to `buf.len()` bytes from the start of `buffers`; returns how many.
fn gather(memory: &GuestMemoryMmap, buffers: &[Buffer], buf: &mut [u8]) -> usize {
    let mut done = 0;
    for b in buffers {
        let n = (b.len as usize).min(buf.len() - done);
        if memory
            .read_slice(&mut buf[done..done + n], GuestAddress(b.addr))
            .is_err()
        {
            return done;
        }
        done += n;
        if done == buf.len() {
            break;
        }
    }
    done
}

/// Writes `data` across `buffers`; returns how many bytes were written.
fn scatter(memory: &GuestMemoryMmap, buffers: &[Buffer], data: &[u8]) -> usize {
    let mut done = 0;
    for b in buffers {
        let n = (b.len as usize).min(data.len() - done);
        if memory
            .write_slice(&data[done..done + n], GuestAddress(b.addr))
            .is_err()
        {
            return done;
        }
        done += n;
        if done == data.len() {
            break;
        }
    }
    done
}

/// The reply to one request of a dead backend: the bytes written into the chain (0: no reply).
pub fn answer_with_error(
    chain: DescriptorChain<&GuestMemoryMmap>,
    memory: &GuestMemoryMmap,
    errno: i32,
) -> u32 {
    let Some((readable, writable)) = split(chain, memory) else {
        return 0;
    };
    let mut header = [0u8; IN_HEADER_PREFIX];
    if gather(memory, &readable, &mut header) < IN_HEADER_PREFIX {
        return 0;
    }
    let writable_len: u64 = writable.iter().map(|b| u64::from(b.len)).sum();
    if writable_len < OUT_HEADER_LEN as u64 {
        // FORGET and BATCH_FORGET have no reply buffer; anything else this short cannot take one.
        return 0;
    }
    let mut reply = [0u8; OUT_HEADER_LEN];
    reply[..4].copy_from_slice(&(OUT_HEADER_LEN as u32).to_le_bytes());
    reply[4..8].copy_from_slice(&(-errno).to_le_bytes());
    reply[8..16].copy_from_slice(&header[8..16]);
    scatter(memory, &writable, &reply) as u32
}

/// virtio-fs's [`OrphanedQueues`]: every request answered with `-EIO`.
#[derive(Debug, Default)]
pub struct FuseErrorReplies;

impl OrphanedQueues for FuseErrorReplies {
    fn answer(&mut self, chain: DescriptorChain<&GuestMemoryMmap>, memory: &GuestMemoryMmap) -> u32 {
        answer_with_error(chain, memory, ORPHAN_ERRNO)
    }
}

#[cfg(test)]
mod tests {
    use virtio_queue::desc::{split::Descriptor, RawDescriptor};
    use virtio_queue::mock::MockSplitQueue;
    use virtio_queue::Queue;
    use vm_memory::GuestAddress;

    use super::*;
    use crate::vhost_user::drain;

    const WRITE: u16 = virtio_bindings::bindings::virtio_ring::VRING_DESC_F_WRITE as u16;
    const NEXT: u16 = virtio_bindings::bindings::virtio_ring::VRING_DESC_F_NEXT as u16;

    fn request(memory: &GuestMemoryMmap, at: u64, opcode: u32, unique: u64) {
        memory.write_obj(40u32, GuestAddress(at)).unwrap();
        memory.write_obj(opcode, GuestAddress(at + 4)).unwrap();
        memory.write_obj(unique, GuestAddress(at + 8)).unwrap();
    }

    #[test]
    fn each_request_gets_eio_with_its_unique_and_forgets_get_nothing() {
        let memory = virtkit_virtio::testing::test_memory();
        let mock = MockSplitQueue::new(&memory, 16);
        // A LOOKUP (readable header, writable reply split over two buffers of 8), then a
        // FORGET (readable only).
        request(&memory, 0x10000, 1, 0xfeed_0001);
        request(&memory, 0x11000, 2, 0xfeed_0002);
        let descs = [
            RawDescriptor::from(Descriptor::new(0x10000, 40, NEXT, 1)),
            RawDescriptor::from(Descriptor::new(0x20000, 8, WRITE | NEXT, 2)),
            RawDescriptor::from(Descriptor::new(0x21000, 8, WRITE, 0)),
            RawDescriptor::from(Descriptor::new(0x11000, 40, 0, 0)),
        ];
        mock.build_multiple_desc_chains(&descs).unwrap();
        let mut queue: Queue = mock.create_queue().unwrap();
        let mut replies = FuseErrorReplies;
        drain(&mut queue, &memory, &mut |chain| replies.answer(chain, &memory));
        let used = mock.used_addr();
        assert_eq!(virtkit_virtio::testing::used_idx(&memory, used), 2);
        assert_eq!(virtkit_virtio::testing::used_elem(&memory, used, 0), (0, 16));
        assert_eq!(virtkit_virtio::testing::used_elem(&memory, used, 1), (3, 0));
        let len: u32 = memory.read_obj(GuestAddress(0x20000)).unwrap();
        let error: i32 = memory.read_obj(GuestAddress(0x20004)).unwrap();
        let unique: u64 = memory.read_obj(GuestAddress(0x21000)).unwrap();
        assert_eq!((len, error, unique), (16, -libc::EIO, 0xfeed_0001));
    }

    #[test]
    fn a_readable_buffer_after_a_writable_one_or_a_short_header_gets_no_reply() {
        let memory = virtkit_virtio::testing::test_memory();
        let mock = MockSplitQueue::new(&memory, 16);
        request(&memory, 0x10000, 1, 7);
        let descs = [
            RawDescriptor::from(Descriptor::new(0x20000, 16, WRITE | NEXT, 1)),
            RawDescriptor::from(Descriptor::new(0x10000, 40, 0, 0)),
            RawDescriptor::from(Descriptor::new(0x10000, 8, NEXT, 3)),
            RawDescriptor::from(Descriptor::new(0x20000, 16, WRITE, 0)),
        ];
        mock.build_multiple_desc_chains(&descs).unwrap();
        let mut queue: Queue = mock.create_queue().unwrap();
        let mut replies = FuseErrorReplies;
        drain(&mut queue, &memory, &mut |chain| replies.answer(chain, &memory));
        let used = mock.used_addr();
        assert_eq!(virtkit_virtio::testing::used_elem(&memory, used, 0).1, 0);
        assert_eq!(virtkit_virtio::testing::used_elem(&memory, used, 1).1, 0);
    }
}
