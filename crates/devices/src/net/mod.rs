//! Networking: what the host learns from a NIC's frames.

pub mod address;
