//! virtio-rng's queue loop on arbitrary guest memory contents: the bytes become a descriptor
//! table, an available ring and buffers (see `virtkit_devices::rng::fuzz::fuzz_queue`), and the
//! device must answer without panicking and within its rate limit.
//!
//! Run: `scripts/fuzz.sh virtio_rng_queue [SECONDS]` from the repository root.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    virtkit_devices::rng::fuzz::fuzz_queue(data);
});
