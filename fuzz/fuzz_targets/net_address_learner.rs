//! The guest-address learner on arbitrary frames, sent and received: it must never panic and
//! its lists must stay bounded (see `virtkit_devices::net::address::fuzz_frames`).
//!
//! Run: `scripts/fuzz.sh net_address_learner [SECONDS]` from the repository root.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The NIC's MAC comes from the input too, so frames "from the guest" are reachable.
    let (mac, frames) = data.split_at(data.len().min(6));
    let mut nic = [0u8; 6];
    nic[..mac.len()].copy_from_slice(mac);
    virtkit_devices::net::address::fuzz_frames(nic, frames);
});
