//! virtio-blk's queue walker and request parser on arbitrary guest memory contents: the bytes
//! become a descriptor table, an available ring and buffers (see
//! `virtkit_devices::block::fuzz::fuzz_queue`), and the device must answer without panicking.
//!
//! Run: `scripts/fuzz.sh virtio_blk_queue [SECONDS]` from the repository root (stable toolchain,
//! ASan; see docs/TESTING.md).

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    virtkit_devices::block::fuzz::fuzz_queue(data);
});
