//! virtio-console (virtio 1.x, 5.3): a console and named ports between the guest and host
//! streams, with the multiport control protocol.
//!
//! - `control`: the control messages, parsed and encoded, pure.
//! - `port`: how a port is described ([`ConsolePortConfig`]) and its run-time state.
//! - `backend`: the host side of a port ([`PortBackend`], [`FdPortBackend`] for stdio, pipes and
//!   files); `unix`: [`UnixSocketPortBackend`], a listening socket serving one client.
//! - `handler`: the queue logic (output, input, control), pure and non-blocking.
//! - `worker`: the `v_console` thread and its epoll.
//! - `device`: [`Console`], the [`virtkit_virtio::VirtioDevice`], and [`ConsoleHandle`] to
//!   resize it.

mod backend;
pub mod control;
mod device;
pub mod fuzz;
mod handler;
mod metrics;
mod port;
mod unix;
mod worker;

#[cfg(test)]
mod test_support;
#[cfg(test)]
mod tests;

pub use backend::{FdPortBackend, PortBackend};
pub use device::{
    features, port_queues, Console, ConsoleError, ConsoleHandle, ConsoleState, PortState, CONFIG_LEN,
    DEVICE_TYPE, MAX_PORTS, PCI_CLASS, QUEUE_SIZE,
};
pub use handler::{ChainError, ConsoleHandler};
pub use metrics::ConsoleMetrics;
pub use port::{ConsolePortConfig, PendingTx, Segment};
pub use unix::{SocketError, UnixSocketPortBackend};
/// The queue loop's error, shared by every device.
pub use virtkit_virtio::QueueError;
