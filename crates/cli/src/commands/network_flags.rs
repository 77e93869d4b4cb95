//! `--network` and `--publish`: the flags that give a machine network cards.
//!
//! - `--network nat|none|tap|tap:NAME|bridge:BRIDGE|socket:PATH|dgram:PATH|vfkit:PATH|listen:PATH`,
//!   repeatable: one card each, in order; `none` alone means no card (the default for flag runs,
//!   as before networking existed). `tap:NAME` is an existing TAP; `tap` and `bridge:BRIDGE`
//!   create one for the VM (root). `fd:N` (run only) is a connected socket handed over as
//!   descriptor N.
//! - `--publish [ADDR:]HOSTPORT:GUESTPORT[/tcp|/udp]`, repeatable: a host port (on 127.0.0.1
//!   unless ADDR is given) that reaches the guest through the first NAT card; one is added
//!   when no NAT card is given.

use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;

use virtkit::{Framing, NetworkAttachment, NetworkDeviceConfiguration, PortProtocol, PublishedPort};

/// One `--network` value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NetworkChoice {
    None,
    Nat,
    Socket(PathBuf, Framing),
    /// A stream socket the VM listens on for one peer.
    Listen(PathBuf),
    /// A connected socket this process inherited as descriptor N.
    Fd(i32),
    /// An existing TAP by name, or (`None`) one created for the VM.
    Tap(Option<String>),
    Bridge(String),
}

pub fn parse_network(text: &str) -> Result<NetworkChoice, String> {
    match text {
        "none" => return Ok(NetworkChoice::None),
        "nat" => return Ok(NetworkChoice::Nat),
        "tap" => return Ok(NetworkChoice::Tap(None)),
        _ => {}
    }
    match text.split_once(':') {
        Some(("socket", path)) if !path.is_empty() => Ok(NetworkChoice::Socket(path.into(), Framing::Stream)),
        Some(("dgram", path)) if !path.is_empty() => Ok(NetworkChoice::Socket(path.into(), Framing::Datagram)),
        Some(("listen", path)) if !path.is_empty() => Ok(NetworkChoice::Listen(path.into())),
        Some(("fd", n)) => n.parse::<i32>().ok().filter(|n| *n >= 0).map(NetworkChoice::Fd).ok_or_else(|| {
            format!("`{text}` names no descriptor; write fd:N with N the number of a socket virtkit inherits, such as fd:3")
        }),
        Some(("vfkit", path)) if !path.is_empty() => Ok(NetworkChoice::Socket(path.into(), Framing::DatagramVfkit)),
        Some(("tap", name)) if !name.is_empty() => Ok(NetworkChoice::Tap(Some(name.into()))),
        Some(("bridge", bridge)) if !bridge.is_empty() => Ok(NetworkChoice::Bridge(bridge.into())),
        _ => Err(format!(
            "`{text}` is not a network; use nat, none, tap (one created for the VM), tap:NAME (an existing TAP), bridge:BRIDGE, socket:PATH (a stream socket), dgram:PATH (a datagram socket), fd:N (a connected socket handed over as descriptor N), vfkit:PATH (a datagram socket greeted as vfkit does, for gvproxy --listen-vfkit) or listen:PATH (a stream socket this VM listens on)"
        )),
    }
}

pub fn parse_publish(text: &str) -> Result<PublishedPort, String> {
    let bad = |why: &str| {
        format!("`{text}` is not a published port ({why}); write [ADDR:]HOSTPORT:GUESTPORT[/tcp|/udp], e.g. 2222:22 or 0.0.0.0:8080:80/tcp")
    };
    let (ports, protocol) = match text.rsplit_once('/') {
        Some((ports, "tcp")) => (ports, PortProtocol::Tcp),
        Some((ports, "udp")) => (ports, PortProtocol::Udp),
        Some((_, other)) => return Err(bad(&format!("`{other}` is not tcp or udp"))),
        None => (text, PortProtocol::Tcp),
    };
    // The address may be IPv6 (`[::1]:8080:80` or `::1:8080:80`): the ports are the last two.
    let mut parts = ports.rsplitn(3, ':');
    let guest = parts.next().unwrap_or_default();
    let host = parts
        .next()
        .ok_or_else(|| bad("it needs a host port and a guest port"))?;
    let host_address = match parts.next() {
        None => IpAddr::V4(Ipv4Addr::LOCALHOST),
        Some(addr) => addr
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse()
            .map_err(|_| bad(&format!("`{addr}` is not an IP address")))?,
    };
    let port = |p: &str| match p.parse::<u16>() {
        Ok(0) | Err(_) => Err(bad(&format!("`{p}` is not a port from 1 to 65535"))),
        Ok(n) => Ok(n),
    };
    Ok(PublishedPort {
        protocol,
        host_address,
        host_port: port(host)?,
        guest_port: port(guest)?,
    })
}

/// Adds the cards `networks` and `published` ask for to `devices` (a configuration file's
/// cards come first).
pub fn apply(
    devices: &mut Vec<NetworkDeviceConfiguration>,
    networks: &[NetworkChoice],
    published: &[PublishedPort],
) -> Result<(), String> {
    let none = networks.contains(&NetworkChoice::None);
    if none && networks.len() > 1 {
        return Err(
            "--network none means no network card; drop it, or drop the other --network flags".into(),
        );
    }
    if none && !published.is_empty() {
        return Err(
            "--publish needs a NAT network card, but --network none asks for none; drop one of them".into(),
        );
    }
    for choice in networks {
        let attachment = match choice {
            NetworkChoice::None => continue,
            NetworkChoice::Nat => NetworkAttachment::Nat {
                published: Vec::new(),
            },
            NetworkChoice::Socket(path, framing) => NetworkAttachment::Socket {
                path: path.clone(),
                framing: *framing,
                listen: false,
            },
            NetworkChoice::Listen(path) => NetworkAttachment::Socket {
                path: path.clone(),
                framing: Framing::Stream,
                listen: true,
            },
            NetworkChoice::Fd(n) => {
                let socket = virtkit_sandbox::take_inherited_descriptor(*n).map_err(|e| {
                    format!("--network fd:{n}: descriptor {n} is not open ({e}); hand virtkit a connected socket as that descriptor")
                })?;
                NetworkAttachment::FileHandle {
                    socket: virtkit::SharedFd(std::sync::Arc::new(socket)),
                }
            }
            NetworkChoice::Tap(name) => NetworkAttachment::Tap { name: name.clone() },
            NetworkChoice::Bridge(bridge) => NetworkAttachment::Bridge {
                bridge: bridge.clone(),
            },
        };
        devices.push(NetworkDeviceConfiguration {
            mac: None,
            attachment,
        });
    }
    if published.is_empty() {
        return Ok(());
    }
    let nat = devices.iter_mut().find_map(|d| match &mut d.attachment {
        NetworkAttachment::Nat { published } => Some(published),
        _ => None,
    });
    match nat {
        Some(ports) => ports.extend(published.iter().cloned()),
        None => devices.push(NetworkDeviceConfiguration {
            mac: None,
            attachment: NetworkAttachment::Nat {
                published: published.to_vec(),
            },
        }),
    }
    Ok(())
}

/// Refuses the choices a bundle cannot keep: a socket path outside the bundle.
pub fn check_bundle_choices(networks: &[NetworkChoice]) -> Result<(), String> {
    if networks.iter().any(|n| {
        matches!(
            n,
            NetworkChoice::Socket(..) | NetworkChoice::Listen(..) | NetworkChoice::Fd(..)
        )
    }) {
        return Err("a VM's bundle takes --network nat, tap, tap:NAME, bridge:BRIDGE or none; a socket attachment names a path outside the bundle: give it at `virtkit run --network socket:PATH` with flags instead".into());
    }
    Ok(())
}

/// Whether any of `devices` is attached to NAT (and so needs passt).
pub fn uses_nat(devices: &[NetworkDeviceConfiguration]) -> bool {
    devices
        .iter()
        .any(|d| matches!(d.attachment, NetworkAttachment::Nat { .. }))
}

/// Whether `passt` is on `PATH`, as the VM process will look for it.
pub fn passt_installed() -> bool {
    virtkit_sandbox::find_program(std::path::Path::new("passt")).is_some()
}

/// A card's attachment in a few words, for `get` and `list`: `nat`, `socket:/run/n.sock`.
pub fn describe(attachment: &NetworkAttachment) -> String {
    match attachment {
        NetworkAttachment::Nat { .. } => "nat".into(),
        NetworkAttachment::Socket {
            path, listen: true, ..
        } => format!("listen:{}", path.display()),
        NetworkAttachment::Socket { path, framing, .. } => match framing {
            Framing::Stream => format!("socket:{}", path.display()),
            Framing::Datagram => format!("dgram:{}", path.display()),
            Framing::DatagramVfkit => format!("vfkit:{}", path.display()),
        },
        NetworkAttachment::FileHandle { socket } => {
            use std::os::fd::AsRawFd;
            format!("fd:{}", socket.0.as_raw_fd())
        }
        NetworkAttachment::Tap { name: Some(name) } => format!("tap:{name}"),
        NetworkAttachment::Tap { name: None } => "tap".into(),
        NetworkAttachment::Bridge { bridge } => format!("bridge:{bridge}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn networks_parse_and_bad_ones_say_what_is_allowed() {
        assert_eq!(parse_network("nat"), Ok(NetworkChoice::Nat));
        assert_eq!(parse_network("none"), Ok(NetworkChoice::None));
        assert_eq!(
            parse_network("socket:/run/n.sock"),
            Ok(NetworkChoice::Socket("/run/n.sock".into(), Framing::Stream))
        );
        assert_eq!(
            parse_network("vfkit:/run/v.sock"),
            Ok(NetworkChoice::Socket(
                "/run/v.sock".into(),
                Framing::DatagramVfkit
            ))
        );
        assert_eq!(
            parse_network("listen:/run/l.sock"),
            Ok(NetworkChoice::Listen("/run/l.sock".into()))
        );
        assert_eq!(
            parse_network("dgram:/run/d.sock"),
            Ok(NetworkChoice::Socket("/run/d.sock".into(), Framing::Datagram))
        );
        assert_eq!(parse_network("tap"), Ok(NetworkChoice::Tap(None)));
        assert_eq!(
            parse_network("tap:tap3"),
            Ok(NetworkChoice::Tap(Some("tap3".into())))
        );
        assert_eq!(
            parse_network("bridge:br0"),
            Ok(NetworkChoice::Bridge("br0".into()))
        );
        for bad in ["", "tap:", "bridge:", "bridge", "socket:", "NAT"] {
            let e = parse_network(bad).unwrap_err();
            assert!(e.contains("nat, none, tap (one created"), "{bad}: {e}");
        }
    }

    #[test]
    fn published_ports_parse_with_address_and_protocol() {
        let p = parse_publish("2222:22").unwrap();
        assert_eq!(
            (p.protocol, p.host_address, p.host_port, p.guest_port),
            (PortProtocol::Tcp, IpAddr::V4(Ipv4Addr::LOCALHOST), 2222, 22)
        );
        let p = parse_publish("0.0.0.0:5353:53/udp").unwrap();
        assert_eq!(
            (p.protocol, p.host_address, p.host_port),
            (PortProtocol::Udp, IpAddr::V4(Ipv4Addr::UNSPECIFIED), 5353)
        );
        assert_eq!(
            parse_publish("[::1]:8080:80/tcp").unwrap().host_address,
            "::1".parse::<IpAddr>().unwrap()
        );
        for (bad, why) in [
            ("22", "needs a host port and a guest port"),
            ("0:22", "`0` is not a port"),
            ("2222:70000", "`70000` is not a port"),
            ("2222:22/sctp", "`sctp` is not tcp or udp"),
            ("host:2222:22", "`host` is not an IP address"),
        ] {
            let e = parse_publish(bad).unwrap_err();
            assert!(
                e.contains(why) && e.contains("[ADDR:]HOSTPORT:GUESTPORT"),
                "{bad}: {e}"
            );
        }
    }

    #[test]
    fn publish_goes_to_the_first_nat_card_or_adds_one() {
        let port = parse_publish("2222:22").unwrap();
        let mut devices = Vec::new();
        apply(&mut devices, &[], std::slice::from_ref(&port)).unwrap();
        assert_eq!(devices.len(), 1, "--publish alone adds a NAT card");
        assert!(
            matches!(&devices[0].attachment, NetworkAttachment::Nat { published } if published.len() == 1)
        );

        let mut devices = Vec::new();
        let socket = NetworkChoice::Socket("/s".into(), Framing::Stream);
        apply(
            &mut devices,
            &[socket, NetworkChoice::Nat],
            std::slice::from_ref(&port),
        )
        .unwrap();
        assert_eq!(devices.len(), 2);
        assert!(
            matches!(&devices[1].attachment, NetworkAttachment::Nat { published } if published.len() == 1)
        );

        let mut devices = Vec::new();
        apply(&mut devices, &[NetworkChoice::None], &[]).unwrap();
        assert!(devices.is_empty(), "none means no card");
        let e = apply(&mut devices, &[NetworkChoice::None], &[port]).unwrap_err();
        assert!(e.contains("--publish needs a NAT network card"), "{e}");
        let e = apply(&mut devices, &[NetworkChoice::None, NetworkChoice::Nat], &[]).unwrap_err();
        assert!(e.contains("--network none means no network card"), "{e}");
    }
}
