//! virtio-input's queue loops and configuration space on arbitrary guest memory contents: the
//! bytes become a descriptor table, an available ring and buffers (see
//! `virtkit_devices::input::fuzz::fuzz_queues`); the device delivers events into them or reads
//! status events from them, and must never panic.
//!
//! Run: `scripts/fuzz.sh virtio_input_queue [SECONDS]` from the repository root.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    virtkit_devices::input::fuzz::fuzz_queues(data);
});
