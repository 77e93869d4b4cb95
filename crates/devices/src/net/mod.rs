//! virtio-net (virtio 1.x, 5.1): an Ethernet card whose frames go to a host backend.
//!
//! - `backend`: the host side ([`NetBackend`]: plain frames or frames with the virtio-net
//!   header, and the offloads it handles).
//! - `stream`, `datagram`: [`StreamBackend`] (length-prefixed frames on a Unix stream socket,
//!   passt's and QEMU's `stream` format) and [`DatagramBackend`] (one frame per datagram).
//! - `tap`: [`tap::Tap`] and [`tap::TapBackend`] (a TAP queue with the virtio-net header and
//!   offloads passed through), the host set-up a created TAP needs, its ioctls in `tap::sys`.
//! - `chain`: descriptor chains checked and copied to and from guest memory.
//! - `handler`, `tx`, `rx`: the queue logic, pure and non-blocking; rx with mergeable buffers.
//! - `worker`: the `v_net` thread and its epoll, one per queue pair; `ctrl`: the control queue
//!   of a multiqueue card (`VQ_PAIRS_SET`).
//! - `device`: [`Net`], the [`virtkit_virtio::VirtioDevice`].
//! - `address`: what the host learns from the NIC's frames: the guest's IPv4 and IPv6 addresses;
//!   `observer` feeds it from the data path ([`Net::watch_addresses`]).

pub mod address;
mod backend;
pub(crate) mod chain;
mod ctrl;
mod datagram;
mod device;
pub mod fuzz;
mod handler;
mod metrics;
mod observer;
mod rx;
mod stream;
pub mod tap;
mod tx;
mod worker;

#[cfg(test)]
mod test_support;
#[cfg(test)]
mod tests;

pub use backend::{NetBackend, Offloads, MAX_FRAME_LEN, VNET_HDR_LEN};
pub use chain::{ChainError, Segment};
pub use datagram::DatagramBackend;
pub use device::{
    features, MacText, Net, NetError, NetState, CONFIG_LEN, DEVICE_TYPE, MAX_QUEUE_PAIRS, PCI_CLASS,
    QUEUE_PAIRS, QUEUE_SIZE,
};
pub use handler::{NetHandler, PendingTx};
pub use metrics::NetMetrics;
pub use observer::AddressWatch;
pub use stream::StreamBackend;
/// The queue loop's error, shared by every device.
pub use virtkit_virtio::QueueError;
