//! The guest's side of the benchmark: a split virtqueue in guest memory, requests made
//! available in it and their answers checked, and the offsets each workload uses.

use std::fs::{File, OpenOptions};
use std::io;
use std::num::Wrapping;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use virtio_bindings::bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::{Queue, QueueT};
use virtkit_devices::block::request::DiskLimits;
use virtkit_devices::block::{BlockMetrics, DiskBackend, RequestHandler};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

/// Guest memory layout.
pub const QUEUE_SIZE: u16 = 256;
pub const DESC_TABLE: u64 = 0x0;
pub const AVAIL_RING: u64 = 0x1000;
pub const USED_RING: u64 = 0x2000;
pub const HEADERS: u64 = 0x4000;
pub const STATUS: u64 = 0x6000;
pub const DATA: u64 = 0x10_0000;
pub const MAX_BLOCK: u64 = 64 << 10;
pub const MAX_DEPTH: usize = 64;
pub const MEM_SIZE: usize = (DATA + MAX_DEPTH as u64 * MAX_BLOCK) as usize;

pub const VIRTIO_BLK_T_IN: u32 = 0;
pub const VIRTIO_BLK_T_OUT: u32 = 1;
pub const STATUS_OK: u8 = 0;
pub const SECTOR: u64 = 512;
/// Size of the in-memory disk of the device-only measurement.
pub const MEMORY_DISK: usize = 256 << 20;

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Read,
    Write,
}

impl Op {
    pub fn name(self) -> &'static str {
        match self {
            Op::Read => "read",
            Op::Write => "write",
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Pattern {
    /// 64 KiB requests one after the other, wrapping at the end of the file.
    Seq64k,
    /// 4 KiB requests at random 4 KiB-aligned offsets.
    Rand4k,
}

impl Pattern {
    pub fn name(self) -> &'static str {
        match self {
            Pattern::Seq64k => "seq64k",
            Pattern::Rand4k => "rand4k",
        }
    }

    pub fn block(self) -> u64 {
        match self {
            Pattern::Seq64k => 64 << 10,
            Pattern::Rand4k => 4 << 10,
        }
    }
}

/// The offsets of one measurement: the same sequence for the host and the device.
#[derive(Clone)]
pub struct Offsets {
    pattern: Pattern,
    size: u64,
    next: u64,
    state: u64,
    /// Sequential streams of parallel threads: each takes every `stride`-th block.
    stride: u64,
}

impl Offsets {
    pub fn new(pattern: Pattern, size: u64, stream: u64, streams: u64) -> Offsets {
        Offsets {
            pattern,
            size,
            next: stream * pattern.block(),
            state: 0x9e37_79b9_7f4a_7c15 ^ (stream.wrapping_add(1).wrapping_mul(0xbf58_476d_1ce4_e5b9)),
            stride: streams,
        }
    }

    pub fn next(&mut self) -> u64 {
        let block = self.pattern.block();
        match self.pattern {
            Pattern::Seq64k => {
                let at = self.next;
                self.next += block * self.stride;
                if self.next + block > self.size {
                    self.next %= self.size - self.size % block;
                }
                at
            }
            Pattern::Rand4k => {
                // xorshift64*
                self.state ^= self.state >> 12;
                self.state ^= self.state << 25;
                self.state ^= self.state >> 27;
                let r = self.state.wrapping_mul(0x2545_f491_4f6c_dd1d);
                (r % (self.size / block)) * block
            }
        }
    }
}

pub fn open_raw(path: &Path, direct: bool) -> io::Result<File> {
    let mut options = OpenOptions::new();
    options.read(true).write(true);
    if direct {
        options.custom_flags(libc::O_DIRECT);
    }
    options.open(path)
}

pub struct Driver {
    pub mem: GuestMemoryMmap,
    pub queue: Queue,
    avail_idx: Wrapping<u16>,
    used_seen: Wrapping<u16>,
    op: Op,
    /// The used length every answered request must have: data and status for a read, the status
    /// for a write.
    used_len: u32,
}

impl Driver {
    /// A queue with `depth` request slots; slot `s` is the chain of descriptors 3s (header),
    /// 3s + 1 (data, `block` bytes), 3s + 2 (status).
    pub fn new(depth: usize, block: u64, op: Op) -> Driver {
        assert!(depth <= MAX_DEPTH && block <= MAX_BLOCK);
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).expect("guest memory");
        let data_flags = match op {
            Op::Read => VRING_DESC_F_WRITE as u16,
            Op::Write => 0,
        };
        for slot in 0..depth as u64 {
            let head = 3 * slot as u16;
            let descs = [
                (HEADERS + 16 * slot, 16, VRING_DESC_F_NEXT as u16, head + 1),
                (
                    DATA + MAX_BLOCK * slot,
                    block as u32,
                    data_flags | VRING_DESC_F_NEXT as u16,
                    head + 2,
                ),
                (STATUS + slot, 1, VRING_DESC_F_WRITE as u16, 0),
            ];
            for (i, (addr, len, flags, next)) in descs.into_iter().enumerate() {
                let mut raw = [0u8; 16];
                raw[..8].copy_from_slice(&addr.to_le_bytes());
                raw[8..12].copy_from_slice(&u32::to_le_bytes(len));
                raw[12..14].copy_from_slice(&flags.to_le_bytes());
                raw[14..16].copy_from_slice(&next.to_le_bytes());
                let at = DESC_TABLE + 16 * (u64::from(head) + i as u64);
                mem.write_slice(&raw, GuestAddress(at)).expect("descriptor");
            }
        }
        // Something other than zeros to write.
        let pattern: Vec<u8> = (0..MAX_BLOCK).map(|i| (i * 7 + 13) as u8).collect();
        for slot in 0..depth as u64 {
            mem.write_slice(&pattern, GuestAddress(DATA + MAX_BLOCK * slot))
                .expect("data");
        }
        let mut queue = Queue::new(QUEUE_SIZE).expect("queue");
        queue.set_size(QUEUE_SIZE);
        queue.set_desc_table_address(Some(DESC_TABLE as u32), Some(0));
        queue.set_avail_ring_address(Some(AVAIL_RING as u32), Some(0));
        queue.set_used_ring_address(Some(USED_RING as u32), Some(0));
        // As Linux negotiates it.
        queue.set_event_idx(true);
        queue.set_ready(true);
        assert!(queue.is_valid(&mem), "the queue layout is valid");
        Driver {
            mem,
            queue,
            avail_idx: Wrapping(0),
            used_seen: Wrapping(0),
            op,
            used_len: match op {
                Op::Read => block as u32 + 1,
                Op::Write => 1,
            },
        }
    }

    /// Makes slot's request for `offset` available (the index is published by `publish`).
    pub fn post(&mut self, slot: usize, offset: u64) {
        let slot = slot as u64;
        let kind = match self.op {
            Op::Read => VIRTIO_BLK_T_IN,
            Op::Write => VIRTIO_BLK_T_OUT,
        };
        let mut header = [0u8; 16];
        header[..4].copy_from_slice(&kind.to_le_bytes());
        header[8..].copy_from_slice(&(offset / SECTOR).to_le_bytes());
        let mem = &self.mem;
        mem.write_slice(&header, GuestAddress(HEADERS + 16 * slot))
            .expect("header");
        mem.write_obj(0xffu8, GuestAddress(STATUS + slot))
            .expect("status");
        let ring = AVAIL_RING + 4 + 2 * u64::from(self.avail_idx.0 % QUEUE_SIZE);
        mem.write_obj(3 * slot as u16, GuestAddress(ring))
            .expect("avail ring");
        self.avail_idx += 1;
    }

    /// Publishes the available index (the driver's `idx` store before its notification).
    pub fn publish(&self) {
        std::sync::atomic::fence(Ordering::Release);
        self.mem
            .write_obj(self.avail_idx.0, GuestAddress(AVAIL_RING + 2))
            .expect("avail idx");
    }

    /// The slots the device completed since the last call; checks each status is OK.
    pub fn reap(&mut self, done: &mut Vec<usize>) {
        let used: u16 = self.mem.read_obj(GuestAddress(USED_RING + 2)).expect("used idx");
        std::sync::atomic::fence(Ordering::Acquire);
        while self.used_seen.0 != used {
            let at = USED_RING + 4 + 8 * u64::from(self.used_seen.0 % QUEUE_SIZE);
            let id: u32 = self.mem.read_obj(GuestAddress(at)).expect("used id");
            let len: u32 = self.mem.read_obj(GuestAddress(at + 4)).expect("used len");
            let slot = (id / 3) as usize;
            let status: u8 = self
                .mem
                .read_obj(GuestAddress(STATUS + slot as u64))
                .expect("status");
            assert_eq!(
                (status, len),
                (STATUS_OK, self.used_len),
                "request in slot {slot}: status and used length"
            );
            done.push(slot);
            self.used_seen += 1;
        }
    }
}

pub fn limits(size: u64) -> DiskLimits {
    DiskLimits {
        capacity_sectors: size / SECTOR,
        read_only: false,
        max_discard_sectors: 0,
        max_discard_segments: 0,
        max_write_zeroes_sectors: 0,
        max_write_zeroes_segments: 0,
    }
}

pub fn handler<B: DiskBackend>(disk: B) -> RequestHandler<B> {
    let limits = limits(disk.capacity());
    RequestHandler::new(disk, limits, [0; 20], Arc::new(BlockMetrics::default()))
}
