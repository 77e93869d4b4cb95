//! Network cards: virtio-net, as Apple's `VZVirtioNetworkDeviceConfiguration`, attached to
//! user-mode NAT (passt), a TAP device (an existing one, or one created for the VM), a bridge
//! (through a TAP created for the VM), or a Unix socket another program serves.
//!
//! JSON (`network_devices`, one object per card):
//! ```json
//! {"mac": "02:00:00:12:34:56",
//!  "attachment": {"type": "nat", "published": [
//!     {"protocol": "tcp", "host_address": "127.0.0.1", "host_port": 2222, "guest_port": 22}]}}
//! {"attachment": {"type": "socket", "path": "/run/net.sock", "framing": "stream"}}
//! {"attachment": {"type": "tap", "name": "tap3"}}
//! {"attachment": {"type": "tap"}}
//! {"attachment": {"type": "bridge", "bridge": "br0"}}
//! ```
//! `mac` may be left out: card `i` then gets one derived from the machine identifier, or
//! [`DEFAULT_MAC_PREFIX`] with `i` as its last byte when the machine has no identifier.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::unix::fs::FileTypeExt;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use virtkit_devices::net::tap::{Tap, TapBackend};
use virtkit_devices::net::{
    AddressWatch, DatagramBackend, MacText, Net, NetBackend, StreamBackend, MAX_QUEUE_PAIRS, PCI_CLASS,
};
use virtkit_machine::Machine;
use virtkit_virtio::transport::pci::attach as attach_pci;

use super::{DeviceError, DeviceManager};
use crate::identity::MachineIdentifier;
use crate::network::passt::{
    self, HelperLog, HelperProcess, NatConfiguration, PasstOptions, PortForward, Protocol,
};
use crate::network::tap;
use crate::validate::{Issues, MAX_SOCKET_PATH};

/// The first five bytes of a card's MAC when neither the configuration nor a machine
/// identifier gives one: locally administered (`0x02`), unicast; `vk` in ASCII.
pub const DEFAULT_MAC_PREFIX: [u8; 5] = [0x02, 0x76, 0x6b, 0x00, 0x00];

/// A network card.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub struct NetworkDeviceConfiguration {
    /// `xx:xx:xx:xx:xx:xx`, unicast; absent: derived (see the module documentation).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
    /// Where the card's frames go.
    pub attachment: NetworkAttachment,
}

/// The host side of a network card.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case", tag = "type")]
pub enum NetworkAttachment {
    /// User-mode NAT through passt: the guest gets 10.0.2.15/24 by DHCP (gateway 10.0.2.2,
    /// DNS 10.0.2.3) and reaches the host's network; `published` host ports reach the guest.
    Nat {
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        published: Vec<PublishedPort>,
    },
    /// A Unix socket another program (passt `--socket`, QEMU's `-netdev stream`, a switch)
    /// listens on; with `listen`, one the VM listens on for its one peer (another VM's socket
    /// attachment, QEMU's `-netdev stream,server=off`), stream framing only.
    Socket {
        path: PathBuf,
        #[serde(default)]
        framing: Framing,
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        listen: bool,
    },
    /// A TAP device with the virtio-net header and offloads: the existing TAP `name`, or
    /// without a name one created for the VM (root or `CAP_NET_ADMIN`), deleted when it stops.
    Tap {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        name: Option<String>,
    },
    /// A TAP created for the VM (root or `CAP_NET_ADMIN`), made a port of the Linux bridge
    /// `bridge` and set up; removed when the VM stops.
    Bridge { bridge: String },
    /// A connected socket the caller hands over (API and `virtkit run --network fd:N` only; not
    /// in configuration files), as Apple's `VZFileHandleNetworkDeviceAttachment`: a stream
    /// socket carries length-prefixed frames, a datagram socket one frame per datagram (which
    /// one is read from the socket itself).
    #[serde(skip)]
    FileHandle { socket: SharedFd },
}

/// A descriptor several clones of a configuration share (the card dups it when it attaches).
#[derive(Debug, Clone)]
pub struct SharedFd(pub std::sync::Arc<std::os::fd::OwnedFd>);

impl PartialEq for SharedFd {
    fn eq(&self, other: &SharedFd) -> bool {
        use std::os::fd::AsRawFd;
        self.0.as_raw_fd() == other.0.as_raw_fd()
    }
}

impl Eq for SharedFd {}

/// How frames travel on a socket attachment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Framing {
    /// A stream socket, each frame preceded by its length (4 bytes, big-endian).
    #[default]
    Stream,
    /// A datagram socket, one frame per datagram.
    Datagram,
    /// A datagram socket, one frame per datagram, after a first datagram `VFKT` that announces
    /// the VM as vfkit does (gvproxy's `--listen-vfkit` waits for it).
    DatagramVfkit,
}

/// A host port that reaches a guest port through the NAT.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub struct PublishedPort {
    #[serde(default)]
    pub protocol: PortProtocol,
    /// The host address the port is bound to; 127.0.0.1 unless given.
    #[serde(default = "localhost")]
    pub host_address: IpAddr,
    pub host_port: u16,
    pub guest_port: u16,
}

fn localhost() -> IpAddr {
    IpAddr::V4(Ipv4Addr::LOCALHOST)
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PortProtocol {
    #[default]
    Tcp,
    Udp,
}

impl From<PortProtocol> for Protocol {
    fn from(p: PortProtocol) -> Protocol {
        match p {
            PortProtocol::Tcp => Protocol::Tcp,
            PortProtocol::Udp => Protocol::Udp,
        }
    }
}

/// What the host knows of one card's addresses.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NicAddresses {
    /// `net0`, `net1`, ...
    pub name: String,
    pub mac: String,
    /// The IPv4 address the guest showed it uses (DHCP, ARP or its traffic).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv4: Option<Ipv4Addr>,
    /// The address the NAT's DHCP server hands out, while the guest has not shown its own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expected_ipv4: Option<Ipv4Addr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv4_link_local: Option<Ipv4Addr>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ipv6: Vec<Ipv6Addr>,
    /// Under NAT: the host ports that reach the guest through this card.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub published: Vec<PublishedPort>,
    /// The host's TAP interface of a TAP or bridged card.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_interface: Option<String>,
}

/// One attached card's host-side state, kept as long as the machine's devices.
pub(super) struct NicRuntime {
    name: String,
    mac: [u8; 6],
    expected_ipv4: Option<Ipv4Addr>,
    watch: Option<AddressWatch>,
    published: Vec<PublishedPort>,
    /// A listening attachment's socket, removed with the card.
    _socket_file: Option<SocketFile>,
    host_interface: Option<String>,
}

impl NicRuntime {
    pub(super) fn addresses(&self) -> NicAddresses {
        let learned = self.watch.as_ref().map(AddressWatch::get).unwrap_or_default();
        NicAddresses {
            name: self.name.clone(),
            mac: MacText(self.mac).to_string(),
            ipv4: learned.ipv4,
            expected_ipv4: self.expected_ipv4.filter(|_| learned.ipv4.is_none()),
            ipv4_link_local: learned.ipv4_link_local,
            ipv6: learned.ipv6,
            published: self.published.clone(),
            host_interface: self.host_interface.clone(),
        }
    }
}

/// Why a MAC address text is not usable, as a sentence.
pub fn parse_mac(text: &str) -> Result<[u8; 6], String> {
    let bytes: Vec<Option<u8>> = text
        .split(':')
        .map(|b| (b.len() == 2).then(|| u8::from_str_radix(b, 16).ok()).flatten())
        .collect();
    let mac: Option<Vec<u8>> = bytes.into_iter().collect();
    match mac.as_deref() {
        Some(&[a, b, c, d, e, f]) if a & 1 == 0 => Ok([a, b, c, d, e, f]),
        Some(&[_, _, _, _, _, _]) => Err(format!(
            "{text} is a multicast MAC address (the first byte is odd); a network card needs a unicast one such as 02:00:00:12:34:56"
        )),
        _ => Err(format!(
            "`{text}` is not a MAC address; write six hex pairs separated by colons, such as 02:00:00:12:34:56"
        )),
    }
}

impl NetworkDeviceConfiguration {
    /// The MAC address this card has as card `index` of a machine with `identifier`: the
    /// configured one, or the one derived for its place (`None` for a configured MAC that does
    /// not parse).
    pub fn mac_address(&self, index: usize, identifier: Option<&MachineIdentifier>) -> Option<String> {
        mac_for(self, index, identifier).map(|m| MacText(m).to_string())
    }
}

/// The MAC address of card `index`: the configured one, or one derived from the machine
/// identifier, or the fixed default. `None` for a configured MAC that does not parse.
pub(crate) fn mac_for(
    device: &NetworkDeviceConfiguration,
    index: usize,
    identifier: Option<&MachineIdentifier>,
) -> Option<[u8; 6]> {
    // At most 30 PCI slots: the index always fits a byte.
    let i = u8::try_from(index).unwrap_or(u8::MAX);
    match (&device.mac, identifier) {
        (Some(text), _) => parse_mac(text).ok(),
        (None, Some(id)) => Some(id.mac_address(i)),
        (None, None) => {
            let p = DEFAULT_MAC_PREFIX;
            Some([p[0], p[1], p[2], p[3], p[4], i])
        }
    }
}

pub(super) fn validate(
    devices: &[NetworkDeviceConfiguration],
    identifier: Option<&MachineIdentifier>,
    issues: &mut Issues,
) {
    let mut macs: HashMap<[u8; 6], usize> = HashMap::new();
    let mut ports: HashMap<(PortProtocol, SocketAddr), usize> = HashMap::new();
    let mut taps: HashMap<&str, usize> = HashMap::new();
    for (i, device) in devices.iter().enumerate() {
        if let Some(text) = &device.mac {
            if let Err(message) = parse_mac(text) {
                issues.add(&format!("network_devices[{i}].mac"), message);
            }
        }
        if let Some(mac) = mac_for(device, i, identifier) {
            if let Some(first) = macs.insert(mac, i) {
                issues.add(
                    &format!("network_devices[{i}].mac"),
                    format!(
                        "{} is also network_devices[{first}]'s MAC address; give each card its own",
                        MacText(mac)
                    ),
                );
            }
        }
        match &device.attachment {
            NetworkAttachment::Nat { published } => {
                for (j, port) in published.iter().enumerate() {
                    let field = format!("network_devices[{i}].attachment.published[{j}]");
                    if port.host_port == 0 || port.guest_port == 0 {
                        issues.add(
                            &field,
                            "port 0 cannot be published; give a host port and a guest port from 1 to 65535"
                                .into(),
                        );
                        continue;
                    }
                    let addr = SocketAddr::new(port.host_address, port.host_port);
                    if let Some(first) = ports.get(&(port.protocol, addr)).copied() {
                        issues.add(
                            &field,
                            format!(
                                "host port {addr} is already published by network_devices[{first}]; publish each host port once"
                            ),
                        );
                    } else {
                        ports.insert((port.protocol, addr), i);
                    }
                }
            }
            NetworkAttachment::FileHandle { socket } => {
                if let Err(e) = rustix::net::sockopt::socket_type(&*socket.0) {
                    issues.add(
                        &format!("network_devices[{i}].attachment"),
                        format!("the descriptor handed over is not a socket ({e}); give a connected stream or datagram socket"),
                    );
                }
            }
            NetworkAttachment::Tap { name: Some(name) } => {
                let field = format!("network_devices[{i}].attachment.name");
                if let Some(first) = taps.insert(name.as_str(), i) {
                    issues.add(
                        &field,
                        format!("TAP {name} is also network_devices[{first}]'s; give each card its own TAP"),
                    );
                } else if let Err(e) = tap::check_existing(name) {
                    issues.add(&field, e.to_string());
                }
            }
            NetworkAttachment::Tap { name: None } => {
                if let Err(e) = tap::check_create() {
                    issues.add(&format!("network_devices[{i}].attachment"), e.to_string());
                }
            }
            NetworkAttachment::Bridge { bridge } => {
                if let Err(e) = tap::check_bridge(bridge) {
                    issues.add(&format!("network_devices[{i}].attachment.bridge"), e.to_string());
                }
            }
            NetworkAttachment::Socket {
                path,
                framing,
                listen,
            } => {
                let field = format!("network_devices[{i}].attachment.path");
                if path.as_os_str().len() > MAX_SOCKET_PATH {
                    issues.add(
                        &field,
                        format!(
                            "a Unix socket path may be at most {MAX_SOCKET_PATH} bytes; use a shorter path"
                        ),
                    );
                    continue;
                }
                if *listen {
                    validate_listening(path, *framing, i, issues);
                    continue;
                }
                match std::fs::metadata(path) {
                    Ok(m) if m.file_type().is_socket() => {}
                    Ok(_) => issues.add(
                        &field,
                        format!(
                            "{} is not a Unix socket; give the socket the network program listens on",
                            path.display()
                        ),
                    ),
                    Err(_) => issues.add(
                        &field,
                        format!(
                            "{} does not exist; start the network program first, or give the path it listens on",
                            path.display()
                        ),
                    ),
                }
            }
        }
    }
}

/// A listening socket attachment: stream framing, a path that is free (or a socket left by a
/// VM that died) in a directory that exists.
fn validate_listening(path: &std::path::Path, framing: Framing, i: usize, issues: &mut Issues) {
    let field = format!("network_devices[{i}].attachment");
    if framing != Framing::Stream {
        issues.add(
            &field,
            "a listening socket attachment takes stream framing (a datagram socket has no peer to wait for); use framing \"stream\"".into(),
        );
    }
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => {}
        Ok(_) => issues.add(
            &field,
            format!(
                "{} exists and is not a socket; choose another path to listen on",
                path.display()
            ),
        ),
        Err(_) => {
            let parent = path
                .parent()
                .filter(|p| !p.as_os_str().is_empty())
                .unwrap_or(std::path::Path::new("."));
            if !parent.is_dir() {
                issues.add(
                    &field,
                    format!(
                        "{} is not a directory; create it, or listen somewhere else",
                        parent.display()
                    ),
                );
            }
        }
    }
}

/// Removes a listening attachment's socket file when the card goes.
pub(super) struct SocketFile(PathBuf);

impl SocketFile {
    pub(super) fn new(path: PathBuf) -> SocketFile {
        SocketFile(path)
    }
}

impl Drop for SocketFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Builds each card's backend (starting passt for NAT cards, opening or creating TAPs) and
/// attaches it.
pub(super) fn attach(
    manager: &DeviceManager,
    machine: &Machine,
    devices: &[NetworkDeviceConfiguration],
    identifier: Option<&MachineIdentifier>,
    log_directory: Option<&std::path::Path>,
    cpu_count: u32,
) -> Result<(), DeviceError> {
    // A multi-queue TAP gives each vCPU its own queue pair, as QEMU's `queues=` and
    // cloud-hypervisor's `num_queues` do; other backends have one stream.
    let queue_pairs = (cpu_count as usize).clamp(1, MAX_QUEUE_PAIRS);
    for (i, device) in devices.iter().enumerate() {
        let name = format!("net{i}");
        let mac = mac_for(device, i, identifier).ok_or_else(|| DeviceError::Network {
            name: name.clone(),
            message: "its MAC address is not valid (validation reports why)".into(),
        })?;
        let log = match log_directory {
            Some(dir) => HelperLog::File(dir.join(passt_log_name(i))),
            None => HelperLog::Null,
        };
        let Backend {
            backends,
            passt,
            expected_ipv4,
            host_interface,
        } = backend(&name, i, &device.attachment, log, queue_pairs)?;
        let socket_file = match &device.attachment {
            NetworkAttachment::Socket {
                path, listen: true, ..
            } => Some(SocketFile(path.clone())),
            _ => None,
        };
        let mut net = Net::with_queue_pairs(mac, backends).map_err(|e| DeviceError::Network {
            name: name.clone(),
            message: e.to_string(),
        })?;
        let watch = net.watch_addresses();
        let attached = attach_pci(machine, net, PCI_CLASS).map_err(|source| DeviceError::Attach {
            what: "network card".into(),
            source,
        })?;
        manager.add("net", attached);
        manager.add_nic(NicRuntime {
            name,
            mac,
            expected_ipv4,
            watch,
            published: match &device.attachment {
                NetworkAttachment::Nat { published } => published.clone(),
                _ => Vec::new(),
            },
            _socket_file: socket_file,
            host_interface,
        });
        if let Some(helper) = passt {
            manager.add_helper(helper);
        }
    }
    Ok(())
}

/// A card's backend and what comes with it.
struct Backend {
    /// One per queue pair: a TAP's queues, or the one socket.
    backends: Vec<Box<dyn NetBackend>>,
    /// passt, for a NAT card.
    passt: Option<HelperProcess>,
    /// The address the NAT hands out.
    expected_ipv4: Option<Ipv4Addr>,
    /// The TAP of a TAP or bridged card.
    host_interface: Option<String>,
}

/// The file in the helper log directory where card `index`'s passt writes.
pub fn passt_log_name(index: usize) -> String {
    match index {
        0 => "passt.log".into(),
        i => format!("passt-{i}.log"),
    }
}

impl Backend {
    fn plain(backend: Box<dyn NetBackend>) -> Backend {
        Backend {
            backends: vec![backend],
            passt: None,
            expected_ipv4: None,
            host_interface: None,
        }
    }

    /// A TAP card: one queue pair per queue of the TAP.
    fn tap(queues: Vec<Tap>) -> Backend {
        let host_interface = queues.first().map(|t| t.name().to_owned());
        Backend {
            backends: queues
                .into_iter()
                .map(|tap| Box::new(TapBackend::new(tap)) as Box<dyn NetBackend>)
                .collect(),
            passt: None,
            expected_ipv4: None,
            host_interface,
        }
    }
}

/// Builds card `index`'s backend; a TAP card gets `queue_pairs` queues of its TAP where the TAP
/// is multi-queue.
fn backend(
    name: &str,
    index: usize,
    attachment: &NetworkAttachment,
    log: HelperLog,
    queue_pairs: usize,
) -> Result<Backend, DeviceError> {
    let failed = |message: String| DeviceError::Network {
        name: name.to_owned(),
        message,
    };
    match attachment {
        NetworkAttachment::Nat { published } => {
            let nat = NatConfiguration {
                forwards: published
                    .iter()
                    .map(|p| PortForward {
                        protocol: p.protocol.into(),
                        host_address: p.host_address,
                        host_port: p.host_port,
                        guest_port: p.guest_port,
                    })
                    .collect(),
                ..NatConfiguration::default()
            };
            let options = PasstOptions {
                log,
                ..PasstOptions::default()
            };
            let network = passt::start(&nat, &options).map_err(|e| failed(e.to_string()))?;
            let backend = StreamBackend::new(network.socket)
                .map_err(|e| failed(format!("cannot use passt's socket: {e}")))?;
            Ok(Backend {
                passt: Some(network.helper),
                expected_ipv4: Some(nat.guest_address),
                ..Backend::plain(Box::new(backend))
            })
        }
        NetworkAttachment::Socket {
            path, listen: true, ..
        } => {
            let listener = crate::unix_socket::bind_owner_only(path)
                .map_err(|e| failed(format!("cannot listen on {}: {e}", path.display())))?;
            let backend = StreamBackend::listen(listener)
                .map_err(|e| failed(format!("cannot listen on {}: {e}", path.display())))?;
            Ok(Backend::plain(Box::new(backend)))
        }
        NetworkAttachment::Socket { path, framing, .. } => {
            let unreachable =
                |e: std::io::Error| failed(format!("cannot connect to {}: {e}", path.display()));
            let backend: Box<dyn NetBackend> = match framing {
                Framing::Stream => Box::new(StreamBackend::connect(path).map_err(unreachable)?),
                Framing::Datagram => Box::new(datagram(path).map_err(unreachable)?),
                Framing::DatagramVfkit => {
                    let backend = datagram(path).map_err(unreachable)?;
                    backend.greet(VFKIT_GREETING).map_err(unreachable)?;
                    Box::new(backend)
                }
            };
            Ok(Backend::plain(backend))
        }
        NetworkAttachment::FileHandle { socket } => {
            let fd = socket
                .0
                .try_clone()
                .map_err(|e| failed(format!("cannot use the socket handed over: {e}")))?;
            Ok(Backend::plain(handed_over(fd).map_err(failed)?))
        }
        NetworkAttachment::Tap { name: Some(tap_name) } => {
            let queues = tap::open_existing(tap_name, queue_pairs).map_err(|e| failed(e.to_string()))?;
            Ok(Backend::tap(queues))
        }
        NetworkAttachment::Tap { name: None } => {
            let tap_name = tap::created_name(index);
            let queues = tap::create(&tap_name, None, queue_pairs).map_err(|e| failed(e.to_string()))?;
            tracing::info!(
                card = name,
                tap = tap_name,
                queues = queues.len(),
                "created TAP device"
            );
            Ok(Backend::tap(queues))
        }
        NetworkAttachment::Bridge { bridge } => {
            let tap_name = tap::created_name(index);
            let queues =
                tap::create(&tap_name, Some(bridge), queue_pairs).map_err(|e| failed(e.to_string()))?;
            tracing::info!(
                card = name,
                tap = tap_name,
                bridge,
                queues = queues.len(),
                "created TAP device on bridge"
            );
            Ok(Backend::tap(queues))
        }
    }
}

/// A backend over a socket handed over: stream or datagram framing as the socket's type says.
fn handed_over(fd: std::os::fd::OwnedFd) -> Result<Box<dyn NetBackend>, String> {
    use rustix::net::{sockopt, SocketType};
    let kind = sockopt::socket_type(&fd).map_err(|e| {
        format!(
            "the descriptor handed over is not a socket ({e}); give a connected stream or datagram socket"
        )
    })?;
    let io = |e: std::io::Error| format!("cannot use the socket handed over: {e}");
    if kind == SocketType::STREAM {
        Ok(Box::new(
            StreamBackend::new(std::os::unix::net::UnixStream::from(fd)).map_err(io)?,
        ))
    } else if kind == SocketType::DGRAM || kind == SocketType::SEQPACKET {
        Ok(Box::new(
            DatagramBackend::new(std::os::unix::net::UnixDatagram::from(fd)).map_err(io)?,
        ))
    } else {
        Err("the socket handed over is neither a stream nor a datagram socket; give one of those".into())
    }
}

/// What vfkit sends first on a datagram network socket, so that its peer learns its address.
const VFKIT_GREETING: &[u8] = b"VFKT";

/// A datagram socket connected to `remote`, bound to an abstract address of its own (the peer
/// needs an address to answer to, and an abstract one leaves no file behind).
fn datagram(remote: &std::path::Path) -> std::io::Result<DatagramBackend> {
    use std::os::linux::net::SocketAddrExt;
    use std::os::unix::net::{SocketAddr as UnixAddr, UnixDatagram};
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let local = UnixAddr::from_abstract_name(format!("virtkit-net-{}-{n}", std::process::id()))?;
    let socket = UnixDatagram::bind_addr(&local)?;
    socket.connect(remote)?;
    DatagramBackend::new(socket)
}

#[cfg(test)]
#[path = "net_tests.rs"]
mod tests;
