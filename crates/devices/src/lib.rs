//! virtkit's virtio devices. Each device is a folder: the device (features, configuration
//! space, activate/reset), its worker (the queue loop on a thread of its own) and the pure
//! request logic in between, testable without threads or KVM.

#![deny(unsafe_code)]

pub mod block;
