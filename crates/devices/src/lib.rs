//! virtkit's virtio devices. Each device is a folder: the device (features, configuration
//! space, activate/reset), its worker (the queue loop on a thread of its own) and the pure
//! request logic in between, testable without threads or KVM: `block` (virtio-blk), `rng`
//! (virtio-rng), `balloon` (virtio-balloon), `console` (virtio-console), `net` (virtio-net), `vsock` (virtio-vsock), and `fs` (virtio-fs) on `vhost_user`, the frontend for
//! devices served by another process. `rng` is the
//! smallest and the template for a new device (docs/DEVICES.md).

// `unsafe` is allowed in four modules only: `block::uring` and `block::guest_io` (the io_uring
// engine hands buffer addresses to the kernel, see docs/BLOCK.md, "Guest memory and the
// kernel"), `balloon::discard` (one `madvise(MADV_DONTNEED)` on guest memory) and
// `net::tap::sys` (the TAP and bridge ioctls).
#![deny(unsafe_code)]

pub mod balloon;
pub mod block;
pub mod console;
pub mod display;
pub mod fs;
pub mod input;
pub mod net;
pub mod rng;
pub mod vhost_user;
pub mod vsock;
