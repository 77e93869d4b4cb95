//! The control socket's reading side on arbitrary bytes: the line framer (bounded lines, bounded
//! buffer, nothing lost or invented) and the request parser on every line it yields, cut into
//! arbitrary chunks (see `virtkit_manager::control_fuzz::fuzz_lines`).
//!
//! Run: `scripts/fuzz.sh control_request_lines [SECONDS]` from the repository root.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    virtkit_manager::control_fuzz::fuzz_lines(data);
});
