//! Learns a guest's IP addresses from the Ethernet frames of one NIC (issue 9, item 3), so the
//! host can say "the VM is at 10.0.2.15" without a guest agent.
//!
//! [`AddressLearner`] is a pure state machine: the NIC's data path hands it every frame the
//! guest sends ([`AddressLearner::observe_tx`]) and receives ([`AddressLearner::observe_rx`]);
//! it never allocates while observing (its lists are preallocated and bounded) and never panics,
//! whatever the bytes (all reads are checked; the `net_address_learner` fuzz target holds it
//! to that). Frames are guest-controlled, so what it learns is a claim by the guest, good for
//! display and convenience, never for access control.
//!
//! Sources of the IPv4 address, strongest first (a weaker source never replaces a stronger one;
//! DHCPNAK, DHCPRELEASE and DHCPDECLINE forget the address):
//! 1. a DHCPACK received for this NIC's MAC (`chaddr`); one for another MAC is ignored;
//! 2. ARP the guest sends from this MAC with a non-zero sender address (gratuitous ARP,
//!    requests, replies);
//! 3. the source address of IPv4 packets sent from this MAC, only while nothing else is known
//!    (a guest that routes for others sends many source addresses).
//!
//! Link-local IPv4 (169.254/16) is kept apart ([`GuestAddresses::ipv4_link_local`]): it is not
//! the address anyone wants to connect to when a routable one exists.
//!
//! IPv6: duplicate address detection (a neighbor solicitation from `::`) makes its target
//! tentative; a neighbor advertisement from the guest, or a packet from the guest with that
//! source address, confirms it; a neighbor advertisement *received* for a tentative target (a
//! DAD conflict) drops it. At most [`MAX_IPV6`] addresses are kept, the oldest dropped first.
//!
//! VLAN-tagged frames (802.1Q, 802.1ad) are ignored on purpose: an address on a VLAN
//! sub-interface is reachable only through that VLAN, which neither passt nor a plain bridge
//! port gives the host, so reporting it as "the guest's address" would mislead.

use std::net::{Ipv4Addr, Ipv6Addr};

/// The most IPv6 addresses kept (confirmed and, separately, tentative).
pub const MAX_IPV6: usize = 8;

const ETHERTYPE_IPV4: u16 = 0x0800;
const ETHERTYPE_ARP: u16 = 0x0806;
const ETHERTYPE_IPV6: u16 = 0x86dd;
const ETH_HEADER: usize = 14;

const IPPROTO_UDP: u8 = 17;
const IPPROTO_ICMPV6: u8 = 58;
const BOOTP_SERVER_PORT: u16 = 67;
const BOOTP_CLIENT_PORT: u16 = 68;
const DHCP_MAGIC: [u8; 4] = [99, 130, 83, 99];
/// `op`..`file` of a BOOTP message; the magic cookie and options follow.
const BOOTP_FIXED: usize = 236;

const DHCPDECLINE: u8 = 4;
const DHCPACK: u8 = 5;
const DHCPNAK: u8 = 6;
const DHCPRELEASE: u8 = 7;

const ND_NEIGHBOR_SOLICITATION: u8 = 135;
const ND_NEIGHBOR_ADVERTISEMENT: u8 = 136;

/// What the learner currently believes about the guest's addresses.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GuestAddresses {
    /// The guest's routable (non-link-local) IPv4 address.
    pub ipv4: Option<Ipv4Addr>,
    /// A 169.254/16 address the guest uses (zeroconf), kept apart from `ipv4`.
    pub ipv4_link_local: Option<Ipv4Addr>,
    /// Confirmed IPv6 addresses (link-local included), oldest first, at most [`MAX_IPV6`].
    pub ipv6: Vec<Ipv6Addr>,
    /// Addresses under duplicate address detection, not yet in use.
    pub ipv6_tentative: Vec<Ipv6Addr>,
    /// Bumped on every change of the fields above: a watcher compares it with the last one seen.
    pub generation: u64,
}

/// How the IPv4 address was learned; the order is the strength.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum V4Source {
    Traffic,
    Arp,
    Dhcp,
}

/// The learner for one NIC. See the module documentation.
#[derive(Debug, Clone)]
pub struct AddressLearner {
    mac: [u8; 6],
    state: GuestAddresses,
    v4_source: Option<V4Source>,
}

impl AddressLearner {
    /// A learner for the NIC whose MAC address is `mac`.
    pub fn new(mac: [u8; 6]) -> AddressLearner {
        AddressLearner {
            mac,
            state: GuestAddresses {
                ipv6: Vec::with_capacity(MAX_IPV6),
                ipv6_tentative: Vec::with_capacity(MAX_IPV6),
                ..GuestAddresses::default()
            },
            v4_source: None,
        }
    }

    /// What has been learned so far.
    pub fn addresses(&self) -> GuestAddresses {
        self.state.clone()
    }

    /// The generation of [`AddressLearner::addresses`], without copying them.
    pub fn generation(&self) -> u64 {
        self.state.generation
    }

    /// A frame the guest sent (guest → network).
    pub fn observe_tx(&mut self, frame: &[u8]) {
        let Some((src, ethertype, payload)) = ethernet(frame) else {
            return;
        };
        // Everything learned from the guest's own frames must come from this NIC's MAC: a
        // guest bridging other machines (or spoofing) sends frames from other MACs.
        if src != self.mac {
            return;
        }
        match ethertype {
            ETHERTYPE_ARP => self.arp_from_guest(payload),
            ETHERTYPE_IPV4 => self.ipv4_from_guest(payload),
            ETHERTYPE_IPV6 => self.ipv6_from_guest(payload),
            _ => {}
        }
    }

    /// A frame the guest received (network → guest).
    pub fn observe_rx(&mut self, frame: &[u8]) {
        let Some((_, ethertype, payload)) = ethernet(frame) else {
            return;
        };
        match ethertype {
            ETHERTYPE_IPV4 => {
                if let Some(udp) = udp_in_ipv4(payload, BOOTP_SERVER_PORT, BOOTP_CLIENT_PORT) {
                    self.dhcp_to_guest(udp);
                }
            }
            ETHERTYPE_IPV6 => self.ipv6_to_guest(payload),
            _ => {}
        }
    }

    fn arp_from_guest(&mut self, arp: &[u8]) {
        // htype 1 (Ethernet), ptype IPv4, hlen 6, plen 4.
        if arp.get(..6) != Some(&[0, 1, 8, 0, 6, 4][..]) {
            return;
        }
        let (Some(sha), Some(spa)) = (arp.get(8..14), read_v4(arp, 14)) else {
            return;
        };
        // ARP probes (RFC 5227) have sender address 0.0.0.0: the guest does not own it yet.
        if sha == self.mac {
            self.learn_v4(spa, V4Source::Arp);
        }
    }

    fn ipv4_from_guest(&mut self, ip: &[u8]) {
        if let Some(udp) = udp_in_ipv4(ip, BOOTP_CLIENT_PORT, BOOTP_SERVER_PORT) {
            if let Some(msg) = dhcp_message(udp, &self.mac, 1) {
                if matches!(msg.kind, DHCPRELEASE | DHCPDECLINE) {
                    self.forget_dhcp();
                }
                return;
            }
        }
        if let Some(src) = read_v4(ip, 12) {
            if ip.first().is_some_and(|b| b >> 4 == 4) && self.v4_source.is_none() {
                self.learn_v4(src, V4Source::Traffic);
            }
        }
    }

    fn dhcp_to_guest(&mut self, udp_payload: &[u8]) {
        let Some(msg) = dhcp_message(udp_payload, &self.mac, 2) else {
            return;
        };
        match msg.kind {
            // An ACK answering DHCPINFORM carries yiaddr 0: no lease, nothing to learn.
            DHCPACK if !msg.yiaddr.is_unspecified() => self.learn_v4(msg.yiaddr, V4Source::Dhcp),
            DHCPNAK => self.forget_dhcp(),
            _ => {}
        }
    }

    fn ipv6_from_guest(&mut self, ip: &[u8]) {
        let Some((src, _, next, payload)) = ipv6(ip) else {
            return;
        };
        if next == IPPROTO_ICMPV6 {
            match (payload.first().copied(), nd_target(payload)) {
                (Some(ND_NEIGHBOR_SOLICITATION), Some(target)) if src.is_unspecified() => {
                    self.tentative_v6(target);
                    return;
                }
                (Some(ND_NEIGHBOR_ADVERTISEMENT), Some(target)) => {
                    self.confirm_v6(target);
                    // The source is also the guest's: fall through to learn it.
                }
                _ => {}
            }
        }
        if usable_v6(src) {
            self.confirm_v6(src);
        }
    }

    fn ipv6_to_guest(&mut self, ip: &[u8]) {
        let Some((_, _, IPPROTO_ICMPV6, payload)) = ipv6(ip) else {
            return;
        };
        if payload.first() != Some(&ND_NEIGHBOR_ADVERTISEMENT) {
            return;
        }
        // Someone else answers for an address the guest is probing: DAD fails, the guest will
        // not use it.
        if let Some(target) = nd_target(payload) {
            if let Some(i) = self.state.ipv6_tentative.iter().position(|a| *a == target) {
                self.state.ipv6_tentative.remove(i);
                self.bump();
            }
        }
    }

    fn learn_v4(&mut self, addr: Ipv4Addr, source: V4Source) {
        if addr.is_unspecified() || addr.is_multicast() || addr.is_broadcast() || addr.is_loopback() {
            return;
        }
        if addr.is_link_local() {
            if self.state.ipv4_link_local != Some(addr) {
                self.state.ipv4_link_local = Some(addr);
                self.bump();
            }
            return;
        }
        if self.v4_source.is_some_and(|current| current > source) {
            return;
        }
        self.v4_source = Some(source);
        if self.state.ipv4 != Some(addr) {
            self.state.ipv4 = Some(addr);
            self.bump();
        }
    }

    fn forget_dhcp(&mut self) {
        self.v4_source = None;
        if self.state.ipv4.take().is_some() {
            self.bump();
        }
    }

    fn tentative_v6(&mut self, addr: Ipv6Addr) {
        if !usable_v6(addr) || self.state.ipv6.contains(&addr) || self.state.ipv6_tentative.contains(&addr) {
            return;
        }
        push_bounded(&mut self.state.ipv6_tentative, addr);
        self.bump();
    }

    fn confirm_v6(&mut self, addr: Ipv6Addr) {
        if !usable_v6(addr) {
            return;
        }
        let mut changed = false;
        if let Some(i) = self.state.ipv6_tentative.iter().position(|a| *a == addr) {
            self.state.ipv6_tentative.remove(i);
            changed = true;
        }
        if !self.state.ipv6.contains(&addr) {
            push_bounded(&mut self.state.ipv6, addr);
            changed = true;
        }
        if changed {
            self.bump();
        }
    }

    fn bump(&mut self) {
        self.state.generation = self.state.generation.wrapping_add(1);
    }
}

/// Appends `addr`, dropping the oldest first when the list is full (no reallocation: the
/// capacity was reserved up front).
fn push_bounded(list: &mut Vec<Ipv6Addr>, addr: Ipv6Addr) {
    if list.len() >= MAX_IPV6 {
        list.remove(0);
    }
    list.push(addr);
}

fn usable_v6(addr: Ipv6Addr) -> bool {
    !(addr.is_unspecified() || addr.is_multicast() || addr.is_loopback())
}

/// An untagged Ethernet II frame's source MAC, EtherType and payload. Tagged frames (0x8100,
/// 0x88a8) come back with their tag's EtherType, which no caller handles: see the module
/// documentation for why they are ignored.
fn ethernet(frame: &[u8]) -> Option<([u8; 6], u16, &[u8])> {
    let src: [u8; 6] = frame.get(6..12)?.try_into().ok()?;
    let ethertype = read_u16(frame, 12)?;
    Some((src, ethertype, frame.get(ETH_HEADER..)?))
}

fn read_u16(b: &[u8], at: usize) -> Option<u16> {
    let bytes: [u8; 2] = b.get(at..at.checked_add(2)?)?.try_into().ok()?;
    Some(u16::from_be_bytes(bytes))
}

fn read_v4(b: &[u8], at: usize) -> Option<Ipv4Addr> {
    let bytes: [u8; 4] = b.get(at..at.checked_add(4)?)?.try_into().ok()?;
    Some(Ipv4Addr::from(bytes))
}

fn read_v6(b: &[u8], at: usize) -> Option<Ipv6Addr> {
    let bytes: [u8; 16] = b.get(at..at.checked_add(16)?)?.try_into().ok()?;
    Some(Ipv6Addr::from(bytes))
}

/// The UDP payload of an unfragmented IPv4 packet from port `src_port` to `dst_port`.
fn udp_in_ipv4(ip: &[u8], src_port: u16, dst_port: u16) -> Option<&[u8]> {
    let first = *ip.first()?;
    if first >> 4 != 4 {
        return None;
    }
    let header = usize::from(first & 0x0f) * 4;
    // More fragments, or a fragment offset: the UDP header or the options may be elsewhere.
    let fragment = read_u16(ip, 6)? & 0x3fff;
    if header < 20 || fragment != 0 || *ip.get(9)? != IPPROTO_UDP {
        return None;
    }
    // The IP total length bounds the packet (frames may carry Ethernet padding after it); a
    // packet shorter than its lengths say is truncated, and the guest's stack drops it too.
    let udp = ip.get(header..usize::from(read_u16(ip, 2)?))?;
    if read_u16(udp, 0)? != src_port || read_u16(udp, 2)? != dst_port {
        return None;
    }
    udp.get(8..usize::from(read_u16(udp, 4)?))
}

struct DhcpMessage {
    kind: u8,
    yiaddr: Ipv4Addr,
}

/// A DHCP message with BOOTP `op` (1 request, 2 reply) about the Ethernet client `mac`.
fn dhcp_message(bootp: &[u8], mac: &[u8; 6], op: u8) -> Option<DhcpMessage> {
    // op, htype 1 (Ethernet), hlen 6.
    if bootp.get(..3)? != [op, 1, 6] || bootp.get(28..34)? != mac {
        return None;
    }
    if bootp.get(BOOTP_FIXED..BOOTP_FIXED + 4)? != DHCP_MAGIC {
        return None;
    }
    let yiaddr = read_v4(bootp, 16)?;
    let kind = dhcp_option(bootp.get(BOOTP_FIXED + 4..)?, 53)?;
    Some(DhcpMessage {
        kind: *kind.first()?,
        yiaddr,
    })
}

/// The value of DHCP option `code` (RFC 2132 layout: pad 0, end 255, else code, length, value).
/// Option overload (52) into `file`/`sname` is not followed: message type 53 is always sent in
/// the options field by real servers.
fn dhcp_option(mut options: &[u8], code: u8) -> Option<&[u8]> {
    loop {
        match *options.first()? {
            0 => options = options.get(1..)?,
            255 => return None,
            c => {
                let len = usize::from(*options.get(1)?);
                let value = options.get(2..2 + len)?;
                if c == code {
                    return Some(value);
                }
                options = options.get(2 + len..)?;
            }
        }
    }
}

/// An IPv6 packet's source, destination, upper-layer protocol and payload, past hop-by-hop and
/// destination-options headers (MLD reports carry a hop-by-hop header). At most four extension
/// headers are walked: real NDP has none, and the bound keeps a crafted chain cheap.
fn ipv6(ip: &[u8]) -> Option<(Ipv6Addr, Ipv6Addr, u8, &[u8])> {
    if ip.first()? >> 4 != 6 {
        return None;
    }
    let src = read_v6(ip, 8)?;
    let dst = read_v6(ip, 24)?;
    let payload_len = usize::from(read_u16(ip, 4)?);
    // Shorter than the payload length says: truncated, dropped by the guest's stack as well.
    let mut payload = ip.get(40..40usize.checked_add(payload_len)?)?;
    let mut next = *ip.get(6)?;
    for _ in 0..4 {
        if next != 0 && next != 60 {
            return Some((src, dst, next, payload));
        }
        next = *payload.first()?;
        let len = (usize::from(*payload.get(1)?) + 1) * 8;
        payload = payload.get(len..)?;
    }
    None
}

/// The target address of a neighbor solicitation or advertisement (ICMPv6 type 135/136,
/// code 0): 4 bytes of type/code/checksum, 4 reserved or flag bytes, then the target.
fn nd_target(icmp: &[u8]) -> Option<Ipv6Addr> {
    if *icmp.get(1)? != 0 {
        return None;
    }
    read_v6(icmp, 8)
}

/// For the `net_address_learner` fuzz target: the first byte picks the direction of each frame,
/// the next two its length; the rest are the frames.
pub fn fuzz_frames(mac: [u8; 6], mut data: &[u8]) -> GuestAddresses {
    let mut learner = AddressLearner::new(mac);
    while let (Some(&dir), Some(len)) = (data.first(), read_u16(data, 1)) {
        let rest = data.get(3..).unwrap_or_default();
        let len = usize::from(len).min(rest.len());
        let (frame, tail) = rest.split_at(len);
        if dir & 1 == 0 {
            learner.observe_tx(frame);
        } else {
            learner.observe_rx(frame);
        }
        let seen = learner.addresses();
        assert!(seen.ipv6.len() <= MAX_IPV6 && seen.ipv6_tentative.len() <= MAX_IPV6);
        data = tail;
    }
    learner.addresses()
}

#[cfg(test)]
#[path = "address_tests.rs"]
mod tests;
