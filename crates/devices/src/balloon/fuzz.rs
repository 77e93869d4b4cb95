//! The fuzzing entry point for the balloon's queue logic: arbitrary bytes become the driver's
//! side of a queue (descriptor table, available ring, buffers) in guest memory, and the device
//! answers it as an inflate, deflate, statistics or free page reporting queue, with a recording
//! discard. It must never panic, and every discard must lie inside guest memory; `fuzz/` runs
//! it under libFuzzer and a unit test over pseudo-random inputs.

use std::sync::Arc;

use virtkit_virtio::testing::fuzz::queue_from_bytes;
use vm_memory::GuestAddress;

use super::discard::{check_discard, RecordingDiscard};
use super::handler::BalloonHandler;
use super::metrics::BalloonMetrics;

pub use virtkit_virtio::testing::fuzz::{
    AVAIL_RING, DATA, DESC_TABLE, HIGH_REGION, LOW_REGION, QUEUE_SIZE, USED_RING,
};

/// Lays `data` out as a queue ([`queue_from_bytes`]; flag bits 1-2: the queue's role, inflate,
/// deflate, statistics or reporting) and answers it.
pub fn fuzz_queue(data: &[u8]) {
    let Some((mem, mut queue, flags)) = queue_from_bytes(data) else {
        return;
    };
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
