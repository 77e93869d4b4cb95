//! The address learner on the data path: frames the guest sends and receives through the
//! handler reach it, and the watch sees what it learned.

use std::net::Ipv4Addr;

use super::super::observer::AddressObserver;
use super::*;

const GUEST: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 15);

fn eth(dst: [u8; 6], src: [u8; 6], ethertype: u16, payload: &[u8]) -> Vec<u8> {
    [&dst[..], &src[..], &ethertype.to_be_bytes()[..], payload].concat()
}

/// A gratuitous ARP from the guest's MAC claiming `addr`.
fn gratuitous_arp(addr: Ipv4Addr) -> Vec<u8> {
    let mut a = vec![0, 1, 8, 0, 6, 4, 0, 1];
    a.extend_from_slice(&MAC);
    a.extend_from_slice(&addr.octets());
    a.extend_from_slice(&[0; 6]);
    a.extend_from_slice(&addr.octets());
    eth([0xff; 6], MAC, 0x0806, &a)
}

/// A DHCPACK for the guest's MAC handing out `addr`, as the server sends it.
fn dhcp_ack(addr: Ipv4Addr) -> Vec<u8> {
    let mut bootp = vec![0u8; 236];
    bootp[..3].copy_from_slice(&[2, 1, 6]);
    bootp[16..20].copy_from_slice(&addr.octets());
    bootp[28..34].copy_from_slice(&MAC);
    bootp.extend_from_slice(&[99, 130, 83, 99, 53, 1, 5, 255]);
    let mut udp = [67u16.to_be_bytes(), 68u16.to_be_bytes()].concat();
    udp.extend_from_slice(&((8 + bootp.len()) as u16).to_be_bytes());
    udp.extend_from_slice(&[0, 0]);
    udp.extend_from_slice(&bootp);
    let mut ip = vec![
        0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, 17, 0, 0, 10, 0, 2, 2, 255, 255, 255, 255,
    ];
    ip[2..4].copy_from_slice(&((20 + udp.len()) as u16).to_be_bytes());
    ip.extend_from_slice(&udp);
    eth([0xff; 6], [0x9a, 0x55, 0x9a, 0x55, 0x9a, 0x55], 0x0800, &ip)
}

#[test]
fn a_frame_the_guest_sends_teaches_the_watch_its_address() {
    let mem = memory(MEM_SIZE);
    let vq = mock(&mem, 1);
    let payload = gratuitous_arp(GUEST);
    // Split over descriptors: the learner must see the frame whole, without the header.
    vq.add_desc_chains(&tx_chain(&mem, DATA, &payload, &[7, 20, 3], 0), 0)
        .unwrap();
    let mut q = queue(&vq);
    let (backend, _peer) = TestBackend::new();
    let (mut h, _) = handler(backend, false);
    let (observer, watch) = AddressObserver::new(MAC);
    h.observer = Some(observer);
    assert_eq!(watch.get().ipv4, None);
    assert!(h.process_tx(&mut q, &mem).unwrap());
    assert_eq!(watch.get().ipv4, Some(GUEST));
}

#[test]
fn a_frame_the_guest_receives_teaches_the_watch_its_address() {
    let mem = memory(MEM_SIZE);
    let vq = mock(&mem, 0);
    vq.add_desc_chains(&rx_buffers(1, 1526, 0), 0).unwrap();
    let mut q = queue(&vq);
    let (backend, peer) = TestBackend::new();
    peer.lock().unwrap().input.push_back(dhcp_ack(GUEST));
    let (mut h, _) = handler(backend, false);
    let (observer, watch) = AddressObserver::new(MAC);
    h.observer = Some(observer);
    assert!(h.process_rx(&mut q, &mem).unwrap());
    let learned = watch.get();
    assert_eq!(learned.ipv4, Some(GUEST));
    assert!(learned.generation > 0);
}

#[test]
fn the_device_hands_out_a_watch_only_while_it_has_the_handler() {
    let mut net = Net::new(MAC, Box::new(TestBackend::new().0)).unwrap();
    assert!(net.watch_addresses().is_some());
}
