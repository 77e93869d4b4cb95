//! The guest agent's reading side on arbitrary bytes: the header line, the frames after it and
//! the tree entries they carry (see `virtkit_agent_protocol::fuzz_input`).
//!
//! Run: `scripts/fuzz.sh agent_protocol [SECONDS]` from the repository root.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    virtkit_agent_protocol::fuzz_input(data);
});
