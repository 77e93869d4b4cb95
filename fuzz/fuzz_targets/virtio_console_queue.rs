//! virtio-console's queue handling on arbitrary guest memory contents: the bytes become a
//! descriptor table, an available ring and buffers (see
//! `virtkit_devices::console::fuzz::fuzz_queue`), handled as the control tx and rx queues and a
//! port's tx queue; the device must answer without panicking.
//!
//! Run: `scripts/fuzz.sh virtio_console_queue [SECONDS]` from the repository root (stable
//! toolchain, ASan; see docs/TESTING.md).

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    virtkit_devices::console::fuzz::fuzz_queue(data);
});
