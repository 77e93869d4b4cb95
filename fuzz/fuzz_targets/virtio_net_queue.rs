//! virtio-net's queue handling on arbitrary guest memory contents: the bytes become a
//! descriptor table, an available ring and buffers (see `virtkit_devices::net::fuzz::fuzz_queue`),
//! handled as the tx queue and as the rx queue with and without mergeable buffers; the device
//! must answer without panicking.
//!
//! Run: `scripts/fuzz.sh virtio_net_queue [SECONDS]` from the repository root (stable
//! toolchain, ASan; see docs/TESTING.md).

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    virtkit_devices::net::fuzz::fuzz_queue(data);
});
