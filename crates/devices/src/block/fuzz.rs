//! The fuzzing entry point for the queue walker and the request parser: arbitrary bytes become
//! the driver's side of a queue (descriptor table, available ring, buffers) in guest memory, and
//! the device answers whatever is there. It must never panic; `fuzz/` runs it under libFuzzer
//! and a unit test runs it over pseudo-random inputs.

use std::sync::Arc;

use virtkit_virtio::testing::fuzz::queue_from_bytes;

use super::backend::MemoryDisk;
use super::handler::{process_queue, RequestHandler};
use super::metrics::BlockMetrics;
use super::request::DiskLimits;

pub use virtkit_virtio::testing::fuzz::{
    AVAIL_RING, DATA, DESC_TABLE, HIGH_REGION, LOW_REGION, QUEUE_SIZE, USED_RING,
};
/// Size of the in-memory disk.
pub const DISK_SIZE: usize = 64 * 1024;

/// Lays `data` out as a queue ([`queue_from_bytes`]; flag bit 1: a read-only disk) and answers
/// it.
pub fn fuzz_queue(data: &[u8]) {
    let Some((mem, mut queue, flags)) = queue_from_bytes(data) else {
        return;
    };
    let limits = DiskLimits {
        capacity_sectors: (DISK_SIZE / 512) as u64,
        read_only: flags & 2 != 0,
        max_discard_sectors: 64,
        max_discard_segments: 4,
        max_write_zeroes_sectors: 64,
        max_write_zeroes_segments: 4,
    };
    let mut handler = RequestHandler::new(
        MemoryDisk::new(DISK_SIZE),
        limits,
        *b"fuzz-serial-01234567",
        Arc::new(BlockMetrics::default()),
    );
    // Twice: the second pass sees the state the first left (next_avail, used ring).
    for _ in 0..2 {
        let _ = process_queue(&mut queue, &mem, &mut handler);
    }
    assert_eq!(handler.disk.data.len(), DISK_SIZE, "the disk never changes size");
}
