//! Helpers for device tests: guest memory, queues laid out in it, and an interrupt that records
//! what it was asked to do. Used by [`crate::virtio_device_conformance_tests`] and by device
//! crates' own tests; no KVM, no privileges.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use virtio_bindings::bindings::virtio_ring::VRING_DESC_F_NEXT;
use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
use virtio_queue::{Queue, QueueT};
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::{DeviceQueue, VirtioInterrupt};

/// Size of [`test_memory`].
pub const TEST_MEMORY_SIZE: usize = 16 << 20;
/// Where [`test_queues`] puts the rings: 64 KiB per queue from here.
pub const QUEUE_AREA: u64 = 0x10_0000;

/// 16 MiB of guest memory at address 0.
pub fn test_memory() -> GuestMemoryMmap {
    memory(TEST_MEMORY_SIZE)
}

/// Guest memory of `size` bytes from address 0, in one region.
pub fn memory(size: usize) -> GuestMemoryMmap {
    memory_with_regions(&[(0, size)])
}

/// Guest memory with the given regions, each `(start address, size)`: adjacent, or with holes
/// between them, for buffers that straddle a region boundary or a gap.
pub fn memory_with_regions(regions: &[(u64, usize)]) -> GuestMemoryMmap {
    let ranges: Vec<(GuestAddress, usize)> = regions
        .iter()
        .map(|&(start, size)| (GuestAddress(start), size))
        .collect();
    GuestMemoryMmap::from_ranges(&ranges).expect("test memory")
}

/// Descriptors `(address, length, flags)` linked in order (`NEXT` added to all but the last),
/// the first at index `base` of the descriptor table: what `MockSplitQueue::add_desc_chains`
/// takes.
pub fn chain_at(descs: &[(u64, u32, u16)], base: u16) -> Vec<RawDescriptor> {
    descs
        .iter()
        .enumerate()
        .map(|(k, &(addr, len, flags))| {
            let last = k + 1 == descs.len();
            let flags = if last {
                flags
            } else {
                flags | VRING_DESC_F_NEXT as u16
            };
            let next = if last { 0 } else { base + k as u16 + 1 };
            RawDescriptor::from(SplitDescriptor::new(addr, len, flags, next))
        })
        .collect()
}

/// The used ring's index, the ring at `used_ring` (`MockSplitQueue::used_addr`).
pub fn used_idx(mem: &GuestMemoryMmap, used_ring: GuestAddress) -> u16 {
    mem.read_obj(used_ring.unchecked_add(2))
        .expect("used ring in memory")
}

/// `(id, len)` of used-ring entry `n`, the ring at `used_ring`.
pub fn used_elem(mem: &GuestMemoryMmap, used_ring: GuestAddress, n: u64) -> (u32, u32) {
    let at = used_ring.unchecked_add(4 + 8 * n);
    (
        mem.read_obj(at).expect("used ring in memory"),
        mem.read_obj(at.unchecked_add(4)).expect("used ring in memory"),
    )
}

/// Ready queues of the given sizes with their rings in [`test_memory`], each with a fresh eventfd.
pub fn test_queues(sizes: &[u16]) -> Vec<DeviceQueue> {
    sizes
        .iter()
        .enumerate()
        .map(|(index, &size)| {
            let base = QUEUE_AREA + 0x1_0000 * index as u64;
            let mut queue = Queue::new(size).expect("queue size");
            queue.set_size(size);
            queue.set_desc_table_address(Some(base as u32), Some(0));
            queue.set_avail_ring_address(Some((base + 0x8000) as u32), Some(0));
            queue.set_used_ring_address(Some((base + 0xc000) as u32), Some(0));
            queue.set_ready(true);
            DeviceQueue {
                index: index as u16,
                queue,
                event: EventFd::new(EFD_NONBLOCK).expect("eventfd"),
            }
        })
        .collect()
}

/// What a [`RecordingInterrupt`] saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    UsedQueue(u16),
    ConfigChanged,
    NeedsReset,
}

/// An interrupt that records signals.
#[derive(Debug, Default)]
pub struct RecordingInterrupt {
    signals: Mutex<Vec<Signal>>,
}

impl RecordingInterrupt {
    pub fn signals(&self) -> Vec<Signal> {
        self.signals.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Waits up to `timeout` for `signal` (a worker thread sends it).
    pub fn wait_for(&self, signal: Signal, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.signals().contains(&signal) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        false
    }

    fn push(&self, signal: Signal) {
        self.signals
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(signal);
    }
}

impl VirtioInterrupt for RecordingInterrupt {
    fn signal_used_queue(&self, queue: u16) {
        self.push(Signal::UsedQueue(queue));
    }
    fn signal_config_changed(&self) {
        self.push(Signal::ConfigChanged);
    }
    fn signal_needs_reset(&self) {
        self.push(Signal::NeedsReset);
    }
}

/// Queue layout of the fuzz targets: arbitrary bytes become the driver's side of one queue.
pub mod fuzz {
    use virtio_queue::{Queue, QueueT};
    use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

    /// Queue size used by the fuzz targets.
    pub const QUEUE_SIZE: u16 = 16;
    /// Where the targets put things in guest memory.
    pub const DESC_TABLE: u64 = 0x0;
    pub const AVAIL_RING: u64 = 0x1000;
    pub const USED_RING: u64 = 0x2000;
    pub const DATA: u64 = 0x3000;
    /// Guest memory: two regions with a hole between them, so buffers can straddle a gap.
    pub const LOW_REGION: (u64, usize) = (0, 0x1_0000);
    pub const HIGH_REGION: (u64, usize) = (0x2_0000, 0x1_0000);

    /// Lays `data` out as a queue: the first byte holds flags (bit 0: event index; the other
    /// bits are the target's), then the descriptor table (16 bytes per descriptor), the
    /// available ring's index, its 16 entries, and the rest as buffer contents at [`DATA`].
    /// Returns the memory, the ready queue and the flags byte; `None` for empty input.
    pub fn queue_from_bytes(data: &[u8]) -> Option<(GuestMemoryMmap, Queue, u8)> {
        let mem = GuestMemoryMmap::from_ranges(&[
            (GuestAddress(LOW_REGION.0), LOW_REGION.1),
            (GuestAddress(HIGH_REGION.0), HIGH_REGION.1),
        ])
        .expect("fuzz memory");
        let (&flags, rest) = data.split_first()?;
        let table_len = usize::from(QUEUE_SIZE) * 16;
        let (table, rest) = rest.split_at(rest.len().min(table_len));
        let (avail_idx, rest) = rest.split_at(rest.len().min(2));
        let (ring, rest) = rest.split_at(rest.len().min(usize::from(QUEUE_SIZE) * 2));
        let buffers = &rest[..rest.len().min(LOW_REGION.1 - DATA as usize)];
        let writes = [
            (DESC_TABLE, table),
            (AVAIL_RING + 2, avail_idx),
            (AVAIL_RING + 4, ring),
            (DATA, buffers),
        ];
        for (address, bytes) in writes {
            mem.write_slice(bytes, GuestAddress(address))
                .expect("inside the low region");
        }
        let mut queue = Queue::new(QUEUE_SIZE).ok()?;
        queue.set_size(QUEUE_SIZE);
        queue.set_desc_table_address(Some(DESC_TABLE as u32), Some(0));
        queue.set_avail_ring_address(Some(AVAIL_RING as u32), Some(0));
        queue.set_used_ring_address(Some(USED_RING as u32), Some(0));
        queue.set_event_idx(flags & 1 != 0);
        queue.set_ready(true);
        Some((mem, queue, flags))
    }
}
