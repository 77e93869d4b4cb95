//! virtio-vsock's packet path on arbitrary guest memory contents: the bytes become the tx
//! queue's descriptor table, available ring and buffers, whose packets the device takes
//! (connections to a host that accepts every port or none, flag bit 1), and then the rx queue
//! that takes what the device owes (see `virtkit_devices::vsock::fuzz::fuzz_queue`); the device
//! must answer without panicking.
//!
//! Run: `scripts/fuzz.sh virtio_vsock_queue [SECONDS]` from the repository root (stable
//! toolchain, ASan; see docs/TESTING.md).

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    virtkit_devices::vsock::fuzz::fuzz_queue(data);
});
