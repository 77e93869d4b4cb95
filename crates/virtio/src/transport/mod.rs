//! Transports: how a driver reaches a virtio device. Each wraps any [`crate::VirtioDevice`].

pub mod pci;
