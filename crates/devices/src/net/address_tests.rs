//! Hand-built frames, byte for byte as a guest and a DHCP server put them on the wire.

use std::net::{Ipv4Addr, Ipv6Addr};

use super::*;

const MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];
const OTHER: [u8; 6] = [0x52, 0x54, 0x00, 0xaa, 0xbb, 0xcc];
const SERVER: [u8; 6] = [0x9a, 0x55, 0x9a, 0x55, 0x9a, 0x55];
const BROADCAST: [u8; 6] = [0xff; 6];

fn eth(dst: [u8; 6], src: [u8; 6], ethertype: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::new();
    f.extend_from_slice(&dst);
    f.extend_from_slice(&src);
    f.extend_from_slice(&ethertype.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

fn ipv4(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, payload: &[u8]) -> Vec<u8> {
    let mut p = vec![0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, proto, 0, 0];
    p[2..4].copy_from_slice(&((20 + payload.len()) as u16).to_be_bytes());
    p.extend_from_slice(&src.octets());
    p.extend_from_slice(&dst.octets());
    p.extend_from_slice(payload);
    p
}

fn udp(src: u16, dst: u16, payload: &[u8]) -> Vec<u8> {
    let mut u = Vec::new();
    u.extend_from_slice(&src.to_be_bytes());
    u.extend_from_slice(&dst.to_be_bytes());
    u.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    u.extend_from_slice(&[0, 0]);
    u.extend_from_slice(payload);
    u
}

/// A BOOTP message (`op` 1 request, 2 reply) for client `chaddr` with DHCP message type `kind`.
fn dhcp(op: u8, chaddr: [u8; 6], yiaddr: Ipv4Addr, kind: u8) -> Vec<u8> {
    let mut b = vec![0u8; 236];
    b[0] = op;
    b[1] = 1;
    b[2] = 6;
    b[4..8].copy_from_slice(&0x1234_5678u32.to_be_bytes());
    b[16..20].copy_from_slice(&yiaddr.octets());
    b[28..34].copy_from_slice(&chaddr);
    b.extend_from_slice(&[99, 130, 83, 99]);
    // A pad, the server identifier, then the message type: the parser must walk options.
    b.extend_from_slice(&[0, 54, 4, 10, 0, 2, 2, 53, 1, kind, 1, 4, 255, 255, 255, 0, 255]);
    b
}

/// A DHCP reply from the server to the guest, as received by the guest.
fn dhcp_reply(chaddr: [u8; 6], yiaddr: Ipv4Addr, kind: u8) -> Vec<u8> {
    let server = Ipv4Addr::new(10, 0, 2, 2);
    let u = udp(67, 68, &dhcp(2, chaddr, yiaddr, kind));
    eth(
        BROADCAST,
        SERVER,
        0x0800,
        &ipv4(server, Ipv4Addr::BROADCAST, 17, &u),
    )
}

/// A DHCP request-type message from the guest (`kind` 7 RELEASE, 4 DECLINE).
fn dhcp_from_guest(ciaddr: Ipv4Addr, kind: u8) -> Vec<u8> {
    let u = udp(68, 67, &dhcp(1, MAC, Ipv4Addr::UNSPECIFIED, kind));
    eth(
        SERVER,
        MAC,
        0x0800,
        &ipv4(ciaddr, Ipv4Addr::new(10, 0, 2, 2), 17, &u),
    )
}

fn arp(src_mac: [u8; 6], sha: [u8; 6], oper: u16, spa: Ipv4Addr, tpa: Ipv4Addr) -> Vec<u8> {
    let mut a = vec![0, 1, 8, 0, 6, 4];
    a.extend_from_slice(&oper.to_be_bytes());
    a.extend_from_slice(&sha);
    a.extend_from_slice(&spa.octets());
    a.extend_from_slice(&[0; 6]);
    a.extend_from_slice(&tpa.octets());
    eth(BROADCAST, src_mac, 0x0806, &a)
}

fn ipv6(src: Ipv6Addr, dst: Ipv6Addr, next: u8, payload: &[u8]) -> Vec<u8> {
    let mut p = vec![0x60, 0, 0, 0];
    p.extend_from_slice(&(payload.len() as u16).to_be_bytes());
    p.extend_from_slice(&[next, 255]);
    p.extend_from_slice(&src.octets());
    p.extend_from_slice(&dst.octets());
    p.extend_from_slice(payload);
    p
}

fn nd(kind: u8, target: Ipv6Addr) -> Vec<u8> {
    let mut m = vec![kind, 0, 0, 0, 0x20, 0, 0, 0];
    m.extend_from_slice(&target.octets());
    m
}

fn ndp_frame(src_mac: [u8; 6], src: Ipv6Addr, dst: Ipv6Addr, kind: u8, target: Ipv6Addr) -> Vec<u8> {
    eth(
        [0x33, 0x33, 0xff, 0, 0, 1],
        src_mac,
        0x86dd,
        &ipv6(src, dst, 58, &nd(kind, target)),
    )
}

const GUEST: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 15);

fn link_local() -> Ipv6Addr {
    "fe80::5054:ff:fe12:3456".parse().unwrap()
}

fn solicited_node() -> Ipv6Addr {
    "ff02::1:ff12:3456".parse().unwrap()
}

#[test]
fn dhcp_ack_for_our_mac_sets_the_address() {
    let mut l = AddressLearner::new(MAC);
    assert_eq!(l.addresses(), GuestAddresses::default());
    l.observe_rx(&dhcp_reply(MAC, GUEST, 5));
    let a = l.addresses();
    assert_eq!(a.ipv4, Some(GUEST));
    assert_eq!(a.generation, 1);
    // The same ACK again (a renewal) changes nothing, so the generation stays.
    l.observe_rx(&dhcp_reply(MAC, GUEST, 5));
    assert_eq!(l.generation(), 1);
}

#[test]
fn dhcp_offer_and_inform_ack_teach_nothing() {
    let mut l = AddressLearner::new(MAC);
    l.observe_rx(&dhcp_reply(MAC, GUEST, 2)); // OFFER: not yet the guest's
    l.observe_rx(&dhcp_reply(MAC, Ipv4Addr::UNSPECIFIED, 5)); // ACK to INFORM
    assert_eq!(l.addresses().ipv4, None);
}

#[test]
fn forged_ack_for_another_mac_is_ignored() {
    let mut l = AddressLearner::new(MAC);
    l.observe_rx(&dhcp_reply(MAC, GUEST, 5));
    l.observe_rx(&dhcp_reply(OTHER, Ipv4Addr::new(10, 0, 2, 99), 5));
    assert_eq!(l.addresses().ipv4, Some(GUEST));
    assert_eq!(l.generation(), 1);
}

#[test]
fn ack_sent_by_the_guest_is_not_learned() {
    // Only a server's reply (rx) carries a lease; a guest sending an ACK is running a server.
    let mut l = AddressLearner::new(MAC);
    let mut frame = dhcp_reply(MAC, GUEST, 5);
    frame[6..12].copy_from_slice(&MAC);
    l.observe_tx(&frame);
    assert_eq!(
        l.addresses().ipv4,
        Some(Ipv4Addr::new(10, 0, 2, 2)),
        "only the fallback"
    );
}

#[test]
fn nak_release_and_decline_forget_the_address() {
    let mut l = AddressLearner::new(MAC);
    l.observe_rx(&dhcp_reply(MAC, GUEST, 5));
    l.observe_rx(&dhcp_reply(MAC, Ipv4Addr::UNSPECIFIED, 6));
    assert_eq!(l.addresses().ipv4, None);
    assert_eq!(l.generation(), 2);

    l.observe_rx(&dhcp_reply(MAC, GUEST, 5));
    l.observe_tx(&dhcp_from_guest(GUEST, 7));
    assert_eq!(l.addresses().ipv4, None, "RELEASE");

    l.observe_rx(&dhcp_reply(MAC, GUEST, 5));
    l.observe_tx(&dhcp_from_guest(Ipv4Addr::UNSPECIFIED, 4));
    assert_eq!(l.addresses().ipv4, None, "DECLINE");

    // A NAK for another MAC is someone else's business.
    l.observe_rx(&dhcp_reply(MAC, GUEST, 5));
    l.observe_rx(&dhcp_reply(OTHER, Ipv4Addr::UNSPECIFIED, 6));
    assert_eq!(l.addresses().ipv4, Some(GUEST));
}

#[test]
fn gratuitous_arp_from_the_guest_sets_the_address() {
    let mut l = AddressLearner::new(MAC);
    let static_ip = Ipv4Addr::new(192, 168, 1, 20);
    l.observe_tx(&arp(MAC, MAC, 1, static_ip, static_ip));
    assert_eq!(l.addresses().ipv4, Some(static_ip));
    // A reply names it too, and a newer ARP claim replaces an older one.
    let moved = Ipv4Addr::new(192, 168, 1, 21);
    l.observe_tx(&arp(MAC, MAC, 2, moved, Ipv4Addr::new(192, 168, 1, 1)));
    assert_eq!(l.addresses().ipv4, Some(moved));
}

#[test]
fn arp_probe_and_foreign_arp_are_ignored() {
    let mut l = AddressLearner::new(MAC);
    // RFC 5227 probe: sender 0.0.0.0.
    l.observe_tx(&arp(MAC, MAC, 1, Ipv4Addr::UNSPECIFIED, GUEST));
    // Another machine behind the guest (a bridge in the guest), and a spoofed sender MAC.
    l.observe_tx(&arp(OTHER, OTHER, 1, Ipv4Addr::new(10, 0, 2, 50), GUEST));
    l.observe_tx(&arp(MAC, OTHER, 1, Ipv4Addr::new(10, 0, 2, 51), GUEST));
    // ARP the guest receives says nothing about the guest.
    l.observe_rx(&arp(SERVER, SERVER, 2, Ipv4Addr::new(10, 0, 2, 2), GUEST));
    assert_eq!(l.addresses(), GuestAddresses::default());
}

#[test]
fn dhcp_outranks_arp_and_arp_outranks_traffic() {
    let mut l = AddressLearner::new(MAC);
    let other = Ipv4Addr::new(10, 0, 2, 77);
    let ping = ipv4(other, Ipv4Addr::new(10, 0, 2, 2), 1, &[8, 0, 0, 0]);
    l.observe_tx(&eth(SERVER, MAC, 0x0800, &ping));
    assert_eq!(l.addresses().ipv4, Some(other), "traffic is the fallback");
    l.observe_tx(&arp(MAC, MAC, 1, GUEST, GUEST));
    assert_eq!(l.addresses().ipv4, Some(GUEST), "ARP replaces traffic");
    let ping2 = ipv4(
        Ipv4Addr::new(10, 0, 2, 78),
        Ipv4Addr::new(10, 0, 2, 2),
        1,
        &[8, 0, 0, 0],
    );
    l.observe_tx(&eth(SERVER, MAC, 0x0800, &ping2));
    assert_eq!(l.addresses().ipv4, Some(GUEST), "traffic does not replace ARP");
    let leased = Ipv4Addr::new(10, 0, 2, 16);
    l.observe_rx(&dhcp_reply(MAC, leased, 5));
    l.observe_tx(&arp(MAC, MAC, 1, GUEST, GUEST));
    assert_eq!(l.addresses().ipv4, Some(leased), "ARP does not replace a lease");
}

#[test]
fn traffic_fallback_ignores_special_sources_and_other_macs() {
    let mut l = AddressLearner::new(MAC);
    let to = Ipv4Addr::new(10, 0, 2, 2);
    for src in [
        Ipv4Addr::UNSPECIFIED,
        Ipv4Addr::new(224, 0, 0, 1),
        Ipv4Addr::BROADCAST,
    ] {
        l.observe_tx(&eth(SERVER, MAC, 0x0800, &ipv4(src, to, 1, &[8, 0, 0, 0])));
    }
    l.observe_tx(&eth(SERVER, OTHER, 0x0800, &ipv4(GUEST, to, 1, &[8, 0, 0, 0])));
    // Received traffic's source is the peer's, not the guest's.
    l.observe_rx(&eth(MAC, SERVER, 0x0800, &ipv4(to, GUEST, 1, &[0, 0, 0, 0])));
    assert_eq!(l.addresses(), GuestAddresses::default());
}

#[test]
fn link_local_ipv4_is_kept_apart() {
    let mut l = AddressLearner::new(MAC);
    let zeroconf = Ipv4Addr::new(169, 254, 7, 9);
    l.observe_tx(&arp(MAC, MAC, 1, zeroconf, zeroconf));
    let a = l.addresses();
    assert_eq!(a.ipv4, None);
    assert_eq!(a.ipv4_link_local, Some(zeroconf));
    l.observe_rx(&dhcp_reply(MAC, GUEST, 5));
    assert_eq!(l.addresses().ipv4, Some(GUEST));
    assert_eq!(l.addresses().ipv4_link_local, Some(zeroconf));
}

#[test]
fn vlan_tagged_frames_are_ignored() {
    let mut l = AddressLearner::new(MAC);
    let plain = arp(MAC, MAC, 1, GUEST, GUEST);
    let mut tagged = plain[..12].to_vec();
    tagged.extend_from_slice(&[0x81, 0x00, 0x00, 0x05]);
    tagged.extend_from_slice(&plain[12..]);
    l.observe_tx(&tagged);
    assert_eq!(l.addresses().ipv4, None);
    l.observe_tx(&plain);
    assert_eq!(l.addresses().ipv4, Some(GUEST));
}

#[test]
fn ndp_dad_then_advertisement() {
    let mut l = AddressLearner::new(MAC);
    let ll = link_local();
    l.observe_tx(&ndp_frame(MAC, Ipv6Addr::UNSPECIFIED, solicited_node(), 135, ll));
    let a = l.addresses();
    assert_eq!(a.ipv6_tentative, vec![ll]);
    assert!(a.ipv6.is_empty());
    // An unsolicited NA from the guest once DAD is over.
    l.observe_tx(&ndp_frame(MAC, ll, "ff02::1".parse().unwrap(), 136, ll));
    let a = l.addresses();
    assert_eq!(a.ipv6, vec![ll]);
    assert!(a.ipv6_tentative.is_empty());
    assert_eq!(a.generation, 2);
}

#[test]
fn ndp_tentative_confirmed_by_traffic_or_dropped_on_conflict() {
    let mut l = AddressLearner::new(MAC);
    let global: Ipv6Addr = "2001:db8::5054:ff:fe12:3456".parse().unwrap();
    let ll = link_local();
    l.observe_tx(&ndp_frame(
        MAC,
        Ipv6Addr::UNSPECIFIED,
        solicited_node(),
        135,
        global,
    ));
    l.observe_tx(&ndp_frame(MAC, Ipv6Addr::UNSPECIFIED, solicited_node(), 135, ll));
    // Someone else answers for the global address: a DAD conflict.
    l.observe_rx(&ndp_frame(OTHER, global, "ff02::1".parse().unwrap(), 136, global));
    assert_eq!(l.addresses().ipv6_tentative, vec![ll]);
    // A router solicitation from the link-local address confirms it.
    let rs = ipv6(ll, "ff02::2".parse().unwrap(), 58, &[133, 0, 0, 0, 0, 0, 0, 0]);
    l.observe_tx(&eth([0x33, 0x33, 0, 0, 0, 2], MAC, 0x86dd, &rs));
    let a = l.addresses();
    assert_eq!(a.ipv6, vec![ll]);
    assert!(a.ipv6_tentative.is_empty());
}

#[test]
fn ndp_past_a_hop_by_hop_header() {
    let mut l = AddressLearner::new(MAC);
    let ll = link_local();
    // Hop-by-hop header (8 bytes: next 58, length 0, router alert option) then the NA.
    let mut payload = vec![58, 0, 5, 2, 0, 0, 1, 0];
    payload.extend_from_slice(&nd(136, ll));
    l.observe_tx(&eth(
        SERVER,
        MAC,
        0x86dd,
        &ipv6(ll, "ff02::1".parse().unwrap(), 0, &payload),
    ));
    assert_eq!(l.addresses().ipv6, vec![ll]);
}

#[test]
fn ndp_from_another_mac_or_to_the_guest_teaches_nothing() {
    let mut l = AddressLearner::new(MAC);
    let ll = link_local();
    l.observe_tx(&ndp_frame(OTHER, ll, "ff02::1".parse().unwrap(), 136, ll));
    l.observe_rx(&ndp_frame(SERVER, ll, "ff02::1".parse().unwrap(), 136, ll));
    l.observe_rx(&ndp_frame(
        SERVER,
        Ipv6Addr::UNSPECIFIED,
        solicited_node(),
        135,
        ll,
    ));
    assert_eq!(l.addresses(), GuestAddresses::default());
}

#[test]
fn ipv6_list_is_bounded_oldest_dropped() {
    let mut l = AddressLearner::new(MAC);
    let addrs: Vec<Ipv6Addr> = (1..=MAX_IPV6 as u16 + 3)
        .map(|i| Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, i))
        .collect();
    for a in &addrs {
        let p = ipv6(*a, "2001:db8::1".parse().unwrap(), 17, &[0; 8]);
        l.observe_tx(&eth(SERVER, MAC, 0x86dd, &p));
    }
    let got = l.addresses().ipv6;
    assert_eq!(got, addrs[3..].to_vec());
}

#[test]
fn every_truncation_of_every_frame_is_harmless() {
    let ll = link_local();
    let frames = [
        (true, dhcp_reply(MAC, GUEST, 5)),
        (true, dhcp_reply(MAC, GUEST, 6)),
        (false, dhcp_from_guest(GUEST, 7)),
        (false, arp(MAC, MAC, 1, GUEST, GUEST)),
        (
            false,
            ndp_frame(MAC, Ipv6Addr::UNSPECIFIED, solicited_node(), 135, ll),
        ),
        (false, ndp_frame(MAC, ll, "ff02::1".parse().unwrap(), 136, ll)),
        (true, ndp_frame(OTHER, ll, "ff02::1".parse().unwrap(), 136, ll)),
    ];
    for (rx, frame) in &frames {
        for len in 0..frame.len() {
            let mut l = AddressLearner::new(MAC);
            if *rx {
                l.observe_rx(&frame[..len]);
            } else {
                l.observe_tx(&frame[..len]);
            }
            // A truncated frame may teach at most what its surviving headers say: never a
            // DHCP lease (the message type is in the last bytes).
            if *rx {
                assert_eq!(l.addresses().ipv4, None, "rx truncated at {len}");
            }
        }
        // And with a lying length field: IP total length claims more than the frame has.
        let mut lying = frame.clone();
        if lying.len() > 18 {
            lying[16] = 0xff;
            lying[17] = 0xff;
        }
        AddressLearner::new(MAC).observe_rx(&lying);
        AddressLearner::new(MAC).observe_tx(&lying);
    }
}

#[test]
fn options_running_off_the_end_are_harmless() {
    let mut l = AddressLearner::new(MAC);
    let mut bootp = dhcp(2, MAC, GUEST, 5);
    bootp.truncate(240);
    bootp.extend_from_slice(&[53, 200, 5]); // a length past the end
    let u = udp(67, 68, &bootp);
    let frame = eth(
        BROADCAST,
        SERVER,
        0x0800,
        &ipv4(Ipv4Addr::new(10, 0, 2, 2), GUEST, 17, &u),
    );
    l.observe_rx(&frame);
    assert_eq!(l.addresses().ipv4, None);
}

#[test]
fn fuzz_entry_point_runs_frames_both_ways() {
    let mut data = Vec::new();
    for (dir, frame) in [
        (1u8, dhcp_reply(MAC, GUEST, 5)),
        (0, arp(MAC, MAC, 1, GUEST, GUEST)),
    ] {
        data.push(dir);
        data.extend_from_slice(&(frame.len() as u16).to_be_bytes());
        data.extend_from_slice(&frame);
    }
    assert_eq!(fuzz_frames(MAC, &data).ipv4, Some(GUEST));
    // Garbage, including a length longer than what is left.
    fuzz_frames(MAC, &[0, 0xff, 0xff, 1, 2, 3]);
    fuzz_frames(MAC, &[]);
}
