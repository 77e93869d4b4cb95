//! virtkit's virtio devices. Each device is a folder: the device (features, configuration
//! space, activate/reset), its worker (the queue loop on a thread of its own) and the pure
//! request logic in between, testable without threads or KVM: `block` (virtio-blk) and
//! `console` (virtio-console).

// `unsafe` is allowed in two modules only, `block::uring` and `block::guest_io`: the io_uring
// engine hands buffer addresses to the kernel (see docs/BLOCK.md, "Guest memory and the kernel").
#![deny(unsafe_code)]

pub mod block;
pub mod console;
