//! The VNC server's client-message reader on arbitrary bytes: a client's stream after the
//! handshake, cut into chunks (see `virtkit_vnc::fuzz_client_messages`). It must refuse, never
//! panic, and never hold more than one bounded message; a pixel format it accepts must encode.
//!
//! Run: `scripts/fuzz.sh vnc_client_messages [SECONDS]` from the repository root.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    virtkit_vnc::fuzz_client_messages(data);
});
