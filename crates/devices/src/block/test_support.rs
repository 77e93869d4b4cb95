//! Set-up shared by the block tests (`tests`, `inflight_tests`): disk limits, a device started
//! on one queue, data patterns, a pseudo-random generator
//! and temporary image files.

use std::path::PathBuf;
use std::sync::Arc;

use virtio_queue::{Queue, QueueT};
use virtkit_virtio::testing::RecordingInterrupt;
use virtkit_virtio::{DeviceQueue, VirtioDevice};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::request::DiskLimits;
use super::{Block, DiskBackend};

/// The limits of a disk of `disk_size` bytes, with room for 4 discard and write-zeroes ranges.
pub fn limits(disk_size: usize, read_only: bool) -> DiskLimits {
    DiskLimits {
        capacity_sectors: (disk_size / 512) as u64,
        read_only,
        max_discard_sectors: 1 << 20,
        max_discard_segments: 4,
        max_write_zeroes_sectors: 1 << 20,
        max_write_zeroes_segments: 4,
    }
}

/// `len` bytes that differ with `seed` and from one 512-byte sector to the next, so data read
/// from the wrong place does not match.
pub fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) ^ (i >> 9) as u8)
        .collect()
}

/// A small xorshift generator: a fixed seed gives the same numbers every run.
pub struct XorShift(pub u64);

impl XorShift {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// Activates `block` with `queue` as its only queue, with no `EVENT_IDX` (the device interrupts
/// after every batch it answers); returns the eventfd that notifies the queue and the interrupt
/// that records what the device signals.
pub fn activate<B: DiskBackend + 'static>(
    block: &mut Block<B>,
    mem: &GuestMemoryMmap,
    mut queue: Queue,
) -> (EventFd, Arc<RecordingInterrupt>) {
    let event = EventFd::new(EFD_NONBLOCK).unwrap();
    let kick = event.try_clone().unwrap();
    let interrupt = Arc::new(RecordingInterrupt::default());
    let features = block.features() & !virtkit_virtio::features::RING_EVENT_IDX;
    queue.set_event_idx(false);
    block
        .activate(
            mem.clone(),
            interrupt.clone(),
            vec![DeviceQueue {
                index: 0,
                queue,
                event,
            }],
            features,
        )
        .unwrap();
    (kick, interrupt)
}

/// A file of `size` bytes (a hole) in the target's temporary directory, removed on drop.
pub struct TempImage(pub PathBuf);

impl TempImage {
    pub fn new(name: &str, size: u64) -> TempImage {
        let dir = std::env::var_os("CARGO_TARGET_TMPDIR")
            .map(PathBuf::from)
            .unwrap_or_else(std::env::temp_dir);
        let path = dir.join(format!("virtkit-blk-{}-{name}.img", std::process::id()));
        let file = std::fs::File::create(&path).unwrap();
        file.set_len(size).unwrap();
        TempImage(path)
    }
}

impl Drop for TempImage {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}
