//! User-mode NAT through passt: the guest gets a private address, reaches the host's network
//! through passt's sockets, and published ports on the host reach the guest. No root, no tap.
//!
//! [`start`] builds passt's command line from a [`NatConfiguration`] and runs it as a helper
//! that dies with the VM process ([`virtkit_sandbox::helper_process`]), connected to the VM by
//! one end of a `socketpair(AF_UNIX, SOCK_STREAM)` passed as `-F 3`. On that stream each
//! Ethernet frame is preceded by its length, 4 bytes big-endian (QEMU's `-netdev stream`).
//! Write the length and the frame in one `write` (or `writev`): this passt version drops a
//! frame whose length prefix it read separately from the frame's bytes (found by the tests:
//! DHCP, ARP and TCP frames went unanswered about half the time when written in two calls).
//!
//! The options, as checked against Debian bookworm's passt (0.0~git20230309):
//! - `-f`: foreground (the helper must be our child, not a daemon).
//! - `-F 3`: the pre-opened socket. It implies `--one-off` in this version (an extra `-1` is
//!   refused: "Redundant --one-off option"): passt exits when the VM's end closes, which is also
//!   what ends it when the VM process dies, whatever the death signal does (see [`start`]).
//! - `-a ADDR -n PREFIX -g GW`: what passt's DHCP server hands out (and NDP/DHCPv6 for IPv6,
//!   which passt takes from the host's default-route interface).
//! - `-D DNS --dns-forward DNS`: `-D` only advertises the resolver; without `--dns-forward` the
//!   guest's queries to it would go to that address on the real network, where nobody answers.
//!   With it, passt relays them to the host's first resolver in `/etc/resolv.conf`.
//! - `-t ADDR/HOSTPORT:GUESTPORT`, `-u ...`: published ports, bound to ADDR on the host.
//! - The gateway address is mapped to the host (the default; `--no-map-gw` turns it off): the
//!   guest reaches services on the host's loopback at the gateway address.
//! - `-M` sets passt's *own* MAC (the gateway's, as the guest sees it), not the guest's: passt
//!   learns the guest's MAC from its frames, so virtkit passes none.
//! - `-q -e`: warnings and errors only, to standard error (the log file), also when no syslog
//!   is running. Started as root, passt drops to `nobody` by itself and sandboxes itself
//!   (namespaces, seccomp); nothing needs turning on.

use std::collections::HashSet;
use std::fmt;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, UdpSocket};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use rustix::net::{socketpair, AddressFamily, SocketFlags, SocketType};
use virtkit_sandbox::{HelperCommand, HelperError};
pub use virtkit_sandbox::{HelperLog, HelperProcess};

/// The descriptor number passt gets its end of the socket pair as.
const PASST_FD: i32 = 3;

/// How long [`start`] watches passt for an immediate exit (a bad option, a port it cannot bind).
const STARTUP_CHECK: Duration = Duration::from_millis(150);

/// A transport protocol of a published port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Protocol {
    Tcp,
    Udp,
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Protocol::Tcp => "TCP",
            Protocol::Udp => "UDP",
        })
    }
}

/// A host port that reaches a guest port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortForward {
    pub protocol: Protocol,
    /// The host address the port is bound to: 127.0.0.1 unless the user asks for more.
    pub host_address: IpAddr,
    pub host_port: u16,
    pub guest_port: u16,
}

impl PortForward {
    /// `protocol` port `host_port` on the host's 127.0.0.1 to `guest_port` in the guest.
    pub fn local(protocol: Protocol, host_port: u16, guest_port: u16) -> PortForward {
        PortForward {
            protocol,
            host_address: IpAddr::V4(Ipv4Addr::LOCALHOST),
            host_port,
            guest_port,
        }
    }

    /// passt's SPEC for it: `ADDR/HOSTPORT:GUESTPORT`.
    fn spec(&self) -> String {
        format!("{}/{}:{}", self.host_address, self.host_port, self.guest_port)
    }
}

/// The guest's side of the NAT, as passt's DHCP server hands it out. The defaults are QEMU's
/// user networking: 10.0.2.15/24, gateway 10.0.2.2, DNS 10.0.2.3.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NatConfiguration {
    pub guest_address: Ipv4Addr,
    pub prefix_len: u8,
    pub gateway: Ipv4Addr,
    pub dns: Ipv4Addr,
    pub forwards: Vec<PortForward>,
}

impl Default for NatConfiguration {
    fn default() -> NatConfiguration {
        NatConfiguration {
            guest_address: Ipv4Addr::new(10, 0, 2, 15),
            prefix_len: 24,
            gateway: Ipv4Addr::new(10, 0, 2, 2),
            dns: Ipv4Addr::new(10, 0, 2, 3),
            forwards: Vec::new(),
        }
    }
}

/// How to run passt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PasstOptions {
    /// The program: `passt` from `PATH` by default.
    pub program: PathBuf,
    /// Its standard error: the bundle's `passt.log`, or nowhere.
    pub log: HelperLog,
}

impl Default for PasstOptions {
    fn default() -> PasstOptions {
        PasstOptions {
            program: PathBuf::from("passt"),
            log: HelperLog::Null,
        }
    }
}

/// Why NAT networking could not start.
#[derive(Debug, thiserror::Error)]
pub enum PasstError {
    #[error(
        "passt is not installed: install it (Debian/Ubuntu: apt install passt; Fedora: dnf install passt), or use --network none|socket:PATH|dgram:PATH"
    )]
    NotInstalled,
    #[error(
        "the NAT prefix length /{0} leaves no room for a guest and a gateway: use 1 to 30 (24 is usual)"
    )]
    BadPrefix(u8),
    #[error("{what} {addr} is outside the guest's network {network}/{prefix}: choose an address in it")]
    OutsideNetwork {
        what: &'static str,
        addr: Ipv4Addr,
        network: Ipv4Addr,
        prefix: u8,
    },
    #[error("the guest address, gateway and DNS address must differ, but {0} is used twice: give each its own address")]
    SameAddress(Ipv4Addr),
    #[error("{protocol} port 0 cannot be published: give a host port and a guest port from 1 to 65535")]
    PortZero { protocol: Protocol },
    #[error("{protocol} host port {addr} is published twice: publish each host port once")]
    DuplicatePort { protocol: Protocol, addr: SocketAddr },
    #[error("{protocol} port {addr} is already in use on the host ({source}): choose another host port, or stop the program using it")]
    PortInUse {
        protocol: Protocol,
        addr: SocketAddr,
        source: io::Error,
    },
    #[error("cannot create the socket pair between the VM and passt: {0}")]
    Socket(#[source] io::Error),
    #[error("cannot start passt: {0}")]
    Helper(#[source] HelperError),
    #[error("passt exited at once ({status}): {hint}")]
    ExitedAtOnce {
        status: std::process::ExitStatus,
        hint: String,
    },
}

/// passt running for one NIC.
#[derive(Debug)]
pub struct PasstNetwork {
    /// The VM's end: length-prefixed Ethernet frames (4 bytes, big-endian).
    pub socket: UnixStream,
    /// passt itself; dropping it stops passt.
    pub helper: HelperProcess,
}

impl NatConfiguration {
    /// Checks addresses and ports for mistakes passt would not report clearly.
    pub fn validate(&self) -> Result<(), PasstError> {
        if !(1..=30).contains(&self.prefix_len) {
            return Err(PasstError::BadPrefix(self.prefix_len));
        }
        let mask = u32::MAX << (32 - u32::from(self.prefix_len));
        let network = Ipv4Addr::from(u32::from(self.guest_address) & mask);
        for (what, addr) in [("the gateway", self.gateway), ("the DNS address", self.dns)] {
            if u32::from(addr) & mask != u32::from(network) {
                return Err(PasstError::OutsideNetwork {
                    what,
                    addr,
                    network,
                    prefix: self.prefix_len,
                });
            }
        }
        if self.guest_address == self.gateway || self.guest_address == self.dns {
            return Err(PasstError::SameAddress(self.guest_address));
        }
        if self.gateway == self.dns {
            return Err(PasstError::SameAddress(self.gateway));
        }
        let mut seen = HashSet::new();
        for f in &self.forwards {
            if f.host_port == 0 || f.guest_port == 0 {
                return Err(PasstError::PortZero { protocol: f.protocol });
            }
            let addr = SocketAddr::new(f.host_address, f.host_port);
            if !seen.insert((f.protocol, addr)) {
                return Err(PasstError::DuplicatePort {
                    protocol: f.protocol,
                    addr,
                });
            }
        }
        Ok(())
    }

    /// passt's arguments for this configuration (after the program name).
    pub fn passt_args(&self) -> Vec<String> {
        let mut args: Vec<String> = vec!["-f".into(), "-q".into(), "-e".into()];
        args.extend(["-F".into(), PASST_FD.to_string()]);
        args.extend(["-a".into(), self.guest_address.to_string()]);
        args.extend(["-n".into(), self.prefix_len.to_string()]);
        args.extend(["-g".into(), self.gateway.to_string()]);
        args.extend(["-D".into(), self.dns.to_string()]);
        args.extend(["--dns-forward".into(), self.dns.to_string()]);
        for f in &self.forwards {
            let flag = match f.protocol {
                Protocol::Tcp => "-t",
                Protocol::Udp => "-u",
            };
            args.extend([flag.into(), f.spec()]);
        }
        args
    }

    /// Binds each published port for a moment, so that one in use is named before passt
    /// starts (passt's own message would only be in its log). Another program can still take
    /// the port between this check and passt's bind; passt then exits and [`start`] reports it.
    fn check_ports_free(&self) -> Result<(), PasstError> {
        for f in &self.forwards {
            let addr = SocketAddr::new(f.host_address, f.host_port);
            let bound = match f.protocol {
                Protocol::Tcp => TcpListener::bind(addr).map(drop),
                Protocol::Udp => UdpSocket::bind(addr).map(drop),
            };
            bound.map_err(|source| PasstError::PortInUse {
                protocol: f.protocol,
                addr,
                source,
            })?;
        }
        Ok(())
    }
}

/// Starts passt for `config` and returns the VM's end of its socket and passt's handle.
///
/// passt ends with the VM process in two ways: its socket's other end closes (passt quits after
/// its one client), and the helper's `PR_SET_PDEATHSIG`. The second does not survive passt's
/// own switch to `nobody` when started as root (the kernel clears the death signal on a change
/// of credentials), so for root the first is what counts; the VM's end is close-on-exec and
/// held by no other process.
pub fn start(config: &NatConfiguration, options: &PasstOptions) -> Result<PasstNetwork, PasstError> {
    config.validate()?;
    config.check_ports_free()?;
    let (vm_end, passt_end) = socketpair(
        AddressFamily::UNIX,
        SocketType::STREAM,
        SocketFlags::CLOEXEC,
        None,
    )
    .map_err(|e| PasstError::Socket(e.into()))?;
    let mut helper = HelperCommand::new(&options.program)
        .args(config.passt_args())
        .pass_fd(passt_end, PASST_FD)
        .log(options.log.clone())
        .spawn()
        .map_err(|e| match e {
            HelperError::NotFound { .. } => PasstError::NotInstalled,
            other => PasstError::Helper(other),
        })?;
    let deadline = Instant::now() + STARTUP_CHECK;
    while Instant::now() < deadline {
        if let Ok(Some(status)) = helper.try_wait() {
            let hint = match &options.log {
                HelperLog::File(path) => format!("its messages are in {}", path.display()),
                HelperLog::Null => "run it with a log file to see why".to_string(),
            };
            return Err(PasstError::ExitedAtOnce { status, hint });
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(PasstNetwork {
        socket: UnixStream::from(vm_end),
        helper,
    })
}

/// What the installed passt is and offers, for `virtkit doctor`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PasstProbe {
    /// Where it was found on `PATH`; `None`: not installed.
    pub path: Option<PathBuf>,
    /// Its `--help` names `--vhost-user` (passt from 2024 on): guest memory shared with passt
    /// instead of frames over the socket. virtkit uses the socket either way for now.
    pub vhost_user: bool,
}

/// Looks for `program` on `PATH` and asks its `--help` what it offers (passt prints it on
/// standard error and exits 1).
pub fn probe(program: &std::path::Path) -> PasstProbe {
    let path = virtkit_sandbox::find_program(program);
    let vhost_user = path.as_ref().is_some_and(|p| {
        std::process::Command::new(p)
            .arg("--help")
            .stdin(std::process::Stdio::null())
            .output()
            .is_ok_and(|out| {
                let text = [out.stdout, out.stderr].concat();
                String::from_utf8_lossy(&text).contains("--vhost-user")
            })
    });
    PasstProbe { path, vhost_user }
}
