//! The i8042 with its PS/2 keyboard and mouse on arbitrary sequences of guest port accesses,
//! keys and pointer moves (see `virtkit_machine::devices::i8042_fuzz_input`).
//!
//! Run: `scripts/fuzz.sh i8042_ports [SECONDS]` from the repository root.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    virtkit_machine::devices::i8042_fuzz_input(data);
});
