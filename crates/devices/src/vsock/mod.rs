//! virtio-vsock (virtio 1.2, 5.10): stream sockets between the guest and host programs, with no
//! network. The host side is Firecracker's hybrid Unix-socket scheme.
//!
//! - `packet`: the 44-byte packet header, parsed and written by hand (every field checked by
//!   the muxer, lengths against the chain by the handler).
//! - `host`: [`VsockHost`], where connections meet the host; [`UnixHost`] (`vsock.sock`,
//!   `CONNECT <port>\n`, and `<path>_<port>` for the guest's connections).
//! - `connection`: one connection's state and credit both ways.
//! - `muxer`: every connection, the host clients' `CONNECT` lines, RSTs, timeouts.
//! - `handler`: the queue logic, pure: tx packets in, rx packets out, the transport-reset event.
//! - `worker`: the `v_vsock` thread and its epoll.
//! - `device`: [`Vsock`], the [`virtkit_virtio::VirtioDevice`].

mod connection;
mod device;
pub mod fuzz;
mod handler;
mod host;
mod metrics;
mod muxer;
pub mod packet;
mod worker;

#[cfg(test)]
mod tests;

pub use connection::CONN_BUF;
pub use device::{
    Vsock, VsockError, VsockState, CONFIG_LEN, DEVICE_TYPE, MIN_GUEST_CID, PCI_CLASS, QUEUE_SIZE,
};
pub use handler::{process_event, process_rx, process_tx, VsockHandler, EVENT_TRANSPORT_RESET};
pub use host::{HostError, HostStream, UnixHost, UnixHostStream, VsockHost};
pub use metrics::VsockMetrics;
pub use muxer::{
    parse_connect, Muxer, CONNECT_LINE_MAX, CONNECT_TIMEOUT, MAX_CONNECTIONS, MAX_PENDING_CLIENTS,
};
/// The queue loop's error, shared by every device.
pub use virtkit_virtio::QueueError;
