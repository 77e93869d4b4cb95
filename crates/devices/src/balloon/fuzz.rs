//! The fuzzing entry point for the balloon's queue logic: arbitrary bytes become the driver's
//! side of a queue (descriptor table, available ring, buffers) in guest memory, and the device
//! answers it as an inflate, deflate, statistics or free page reporting queue, with a recording
//! discard. It must never panic, and every discard must lie inside guest memory; `fuzz/` runs
//! it under libFuzzer and a unit test over pseudo-random inputs.

use std::sync::Arc;

use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::discard::{check_discard, RecordingDiscard};
use super::handler::BalloonHandler;
use super::metrics::BalloonMetrics;

/// Queue size used by the fuzz target.
pub const QUEUE_SIZE: u16 = 16;
/// Where the target puts things in guest memory.
pub const DESC_TABLE: u64 = 0x0;
pub const AVAIL_RING: u64 = 0x1000;
pub const USED_RING: u64 = 0x2000;
pub const DATA: u64 = 0x3000;
/// Guest memory: two regions with a hole between them, so ranges can straddle a gap.
pub const LOW_REGION: (u64, usize) = (0, 0x1_0000);
pub const HIGH_REGION: (u64, usize) = (0x2_0000, 0x1_0000);

/// Lays `data` out as a queue and answers it: the first byte holds flags (bit 0: event index;
/// bits 1-2: the queue's role, inflate, deflate, statistics or reporting), then the descriptor
/// table (16 bytes per descriptor), the available ring's index, its 16 entries, and the rest
/// as buffer contents at [`DATA`].
pub fn fuzz_queue(data: &[u8]) {
    let mem = GuestMemoryMmap::from_ranges(&[
        (GuestAddress(LOW_REGION.0), LOW_REGION.1),
        (GuestAddress(HIGH_REGION.0), HIGH_REGION.1),
    ])
    .expect("fuzz memory");
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
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

    let Ok(mut queue) = Queue::new(QUEUE_SIZE) else {
        return;
    };
    queue.set_size(QUEUE_SIZE);
    queue.set_desc_table_address(Some(DESC_TABLE as u32), Some(0));
    queue.set_avail_ring_address(Some(AVAIL_RING as u32), Some(0));
    queue.set_used_ring_address(Some(USED_RING as u32), Some(0));
    queue.set_event_idx(flags & 1 != 0);
    queue.set_ready(true);

    let discard = RecordingDiscard::default();
    let mut handler = BalloonHandler::new(discard.clone(), Arc::new(BalloonMetrics::default()));
    // Twice: the second pass sees the state the first left (next_avail, used ring, the held
    // statistics buffer).
    for _ in 0..2 {
        let _ = match (flags >> 1) & 3 {
            0 => handler.process_inflate(&mut queue, &mem),
            1 => handler.process_deflate(&mut queue, &mem),
            2 => handler
                .process_stats(&mut queue, &mem)
                .and_then(|_| handler.request_stats(&mut queue, &mem)),
            _ => handler.process_reporting(&mut queue, &mem),
        };
    }
    for (addr, len) in discard.ranges() {
        assert!(
            check_discard(&mem, GuestAddress(addr), len).is_ok(),
            "discard of {len:#x} bytes at {addr:#x} outside guest memory"
        );
    }
}
