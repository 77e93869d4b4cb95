//! virtio-input (virtio 1.x, 5.8): a keyboard and an absolute pointer (a tablet) for Linux
//! guests, fed by the host (the VNC server), as QEMU's `virtio-keyboard-pci` and
//! `virtio-tablet-pci` and Apple's USB keyboard and screen-coordinate pointing device.
//!
//! - `event`: the 8-byte events and the Linux input codes the devices send.
//! - `keys`: PC set-1 scancodes as Linux key codes (what the kernel's `atkbd` makes of them).
//! - `config`: the configuration space the driver reads its identity and capabilities from,
//!   one `select`/`subsel` pair at a time.
//! - `handle`: [`InputHandle`], the host's side: events waiting for the guest's buffers.
//! - `handler`: the two queue loops, pure: events into the event queue's buffers, status
//!   (LEDs) out of the status queue.
//! - `worker`: the `v_input` thread, waking on either queue or on host events.
//! - `device`: [`Input`], the [`virtkit_virtio::VirtioDevice`].

mod config;
mod device;
pub mod event;
pub mod fuzz;
mod handle;
mod handler;
pub mod keys;
mod worker;

#[cfg(test)]
mod tests;

pub use config::{InputConfig, InputKind, CONFIG_SIZE, TABLET_MAX};
pub use device::{Input, InputState, DEVICE_TYPE, PCI_CLASS, QUEUE_SIZE};
pub use event::InputEvent;
pub use handle::{InputHandle, InputMetrics, MAX_PENDING};
pub use handler::{consume_status, deliver_events};
