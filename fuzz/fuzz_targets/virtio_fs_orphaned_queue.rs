//! virtio-fs's one guest-facing parser: the `-EIO` answers a dead virtiofsd's queues get from
//! the VMM (`virtkit_devices::fs::orphan`), on arbitrary guest memory contents (see
//! `virtkit_devices::fs::fuzz::fuzz_orphaned_queue`). It must never panic.
//!
//! Run: `scripts/fuzz.sh virtio_fs_orphaned_queue [SECONDS]` from the repository root.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    virtkit_devices::fs::fuzz::fuzz_orphaned_queue(data);
});
