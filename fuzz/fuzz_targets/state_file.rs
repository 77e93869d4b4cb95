//! The state file parser on arbitrary bytes (`virtkit_machine::snapshot::format::parse`): the
//! header page's magic, version, offsets and checksum, then the metadata's checksum and JSON,
//! and the memory ranges against the header. It must refuse, never panic or allocate without
//! bound (the metadata length is capped before it is read).
//!
//! Run: `scripts/fuzz.sh state_file [SECONDS]` from the repository root.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = virtkit_machine::snapshot::format::parse(data);
});
