//! The CFI flash of OVMF's variables on arbitrary sequences of guest reads and writes (see
//! `virtkit_machine::devices::pflash::fuzz_input`).
//!
//! Run: `scripts/fuzz.sh pflash_commands [SECONDS]` from the repository root.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    virtkit_machine::devices::pflash::fuzz_input(data);
});
