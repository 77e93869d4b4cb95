//! virtio-balloon's queue logic on arbitrary guest memory contents: the bytes become a
//! descriptor table, an available ring and buffers (see
//! `virtkit_devices::balloon::fuzz::fuzz_queue`), answered as an inflate, deflate, statistics or
//! free page reporting queue with a recording discard; the device must not panic and every
//! discard must lie inside guest memory.
//!
//! Run: `scripts/fuzz.sh virtio_balloon_queue [SECONDS]` from the repository root (stable
//! toolchain, ASan; see docs/TESTING.md).

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    virtkit_devices::balloon::fuzz::fuzz_queue(data);
});
