//! A port: how the caller describes it ([`ConsolePortConfig`]) and what the device tracks for it
//! while it runs (the guest's view of it, output waiting for the host, input waiting for the
//! guest).

use serde::{Deserialize, Serialize};
use vm_memory::GuestAddress;

use super::backend::PortBackend;

/// One port of a console device. Port 0 is the first in the list given to the device.
pub struct ConsolePortConfig {
    /// Shown by Linux as `/dev/virtio-ports/<name>` (the port is `/dev/vportNpM`); needs
    /// multiport, which the device always offers.
    pub name: Option<String>,
    /// A console (`hvcN` in Linux) rather than a plain port. Port 0 is the device's console
    /// when the driver does not take multiport, whatever this says.
    pub is_console: bool,
    pub backend: Box<dyn PortBackend>,
}

impl ConsolePortConfig {
    /// A console port (port 0 as `hvc0`).
    pub fn console(backend: impl PortBackend + 'static) -> ConsolePortConfig {
        ConsolePortConfig {
            name: None,
            is_console: true,
            backend: Box::new(backend),
        }
    }

    /// A named, non-console port.
    pub fn named(name: impl Into<String>, backend: impl PortBackend + 'static) -> ConsolePortConfig {
        ConsolePortConfig {
            name: Some(name.into()),
            is_console: false,
            backend: Box::new(backend),
        }
    }
}

impl std::fmt::Debug for ConsolePortConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConsolePortConfig")
            .field("name", &self.name)
            .field("is_console", &self.is_console)
            .finish()
    }
}

/// A guest buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Segment {
    pub addr: u64,
    pub len: u32,
}

impl Segment {
    pub fn address(&self) -> GuestAddress {
        GuestAddress(self.addr)
    }
}

/// Guest output taken from the ring and not all written to the host yet: the port's tx queue
/// is not popped again until it is, so a slow host side holds back only this port.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingTx {
    /// The chain's head, or `None` for bytes of the emergency-write register.
    pub head: Option<u16>,
    pub segments: Vec<Segment>,
    /// Bytes the host took so far. What follows is read again from guest memory, so the state
    /// survives a snapshot without copying guest data.
    pub written: u64,
    /// Bytes not from guest memory (emergency writes), when `head` is `None`.
    pub host_bytes: Vec<u8>,
}

impl PendingTx {
    pub fn total(&self) -> u64 {
        if self.head.is_none() {
            return self.host_bytes.len() as u64;
        }
        self.segments.iter().map(|s| u64::from(s.len)).sum()
    }
}

/// What the device tracks for one port.
pub(crate) struct Port {
    pub name: Option<String>,
    pub is_console: bool,
    pub backend: Box<dyn PortBackend>,
    /// The driver set the port up (`PORT_READY 1`).
    pub guest_ready: bool,
    /// A guest program has the port open (`PORT_OPEN` from the driver).
    pub guest_open: bool,
    /// What the guest was last told of the host side (`PORT_OPEN` from the device).
    pub host_open_sent: bool,
    pub tx: Option<PendingTx>,
    /// A write would have blocked: wait for the output to be writable.
    pub tx_blocked: bool,
    /// Host input read and not yet in a guest buffer (kept, never dropped).
    pub rx_pending: Vec<u8>,
    /// The guest had no buffer: read no more until it adds some (a queue notification).
    pub rx_starved: bool,
    /// The input cannot be waited for in epoll (a regular file): poll it.
    pub input_unpollable: bool,
}

impl Port {
    pub fn new(config: ConsolePortConfig) -> Port {
        Port {
            name: config.name,
            is_console: config.is_console,
            backend: config.backend,
            guest_ready: false,
            guest_open: false,
            host_open_sent: false,
            tx: None,
            tx_blocked: false,
            rx_pending: Vec::new(),
            rx_starved: false,
            input_unpollable: false,
        }
    }
}
