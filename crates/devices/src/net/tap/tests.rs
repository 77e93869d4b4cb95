//! The TAP backend against this host's kernel, in a network namespace of its own (as root):
//! ARP and ping answered by the kernel, offloads accepted, a busy TAP refused.

use std::fs::File;
use std::io::IoSlice;
use std::net::Ipv4Addr;
use std::os::fd::AsFd;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use virtio_bindings::virtio_net::{
    VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_GUEST_ECN, VIRTIO_NET_F_GUEST_TSO4, VIRTIO_NET_F_GUEST_TSO6,
};

use super::*;
use crate::net::MAX_FRAME_LEN;

const OUR_MAC: [u8; 6] = [0x02, 0x00, 0x00, 0xaa, 0xbb, 0xcc];
const OUR_IP: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 2);
const KERNEL_IP: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 1);

/// A process holding a fresh network namespace; killed on drop, which ends the namespace.
struct Namespace(Child);

impl Drop for Namespace {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs `body` on a thread of its own inside a fresh network namespace, or says why not.
fn in_namespace(test: &str, body: impl FnOnce() + Send + 'static) {
    if !rustix::process::geteuid().is_root() {
        virtkit_testkit::skip(&format!("{test}: TAP devices need root"));
        return;
    }
    if !std::path::Path::new("/dev/net/tun").exists() {
        virtkit_testkit::skip(&format!("{test}: no /dev/net/tun"));
        return;
    }
    let holder = match Command::new("unshare")
        .args(["--net", "sleep", "600"])
        .stdin(Stdio::null())
        .spawn()
    {
        Ok(child) => Namespace(child),
        Err(e) => {
            virtkit_testkit::skip(&format!("{test}: cannot run unshare: {e}"));
            return;
        }
    };
    let path = format!("/proc/{}/ns/net", holder.0.id());
    // `unshare` execs `sleep` once the namespace is made: wait until the link is another one.
    let ours = std::fs::read_link("/proc/self/ns/net").unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while std::fs::read_link(&path).ok().is_none_or(|l| l == ours) {
        assert!(Instant::now() < deadline, "unshare --net made no namespace");
        std::thread::sleep(Duration::from_millis(10));
    }
    let ns = File::open(&path).unwrap();
    std::thread::spawn(move || {
        rustix::thread::move_into_link_name_space(
            ns.as_fd(),
            Some(rustix::thread::LinkNameSpaceType::Network),
        )
        .unwrap();
        body();
    })
    .join()
    .unwrap();
    drop(holder);
}

fn ip(args: &str) {
    let status = Command::new("ip").args(args.split_whitespace()).status().unwrap();
    assert!(status.success(), "ip {args}");
}

fn checksum(bytes: &[u8]) -> u16 {
    let mut sum: u32 = bytes
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

fn arp_request() -> Vec<u8> {
    let mut f = vec![0xff; 6];
    f.extend_from_slice(&OUR_MAC);
    f.extend_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0, 6, 4, 0, 1]);
    f.extend_from_slice(&OUR_MAC);
    f.extend_from_slice(&OUR_IP.octets());
    f.extend_from_slice(&[0; 6]);
    f.extend_from_slice(&KERNEL_IP.octets());
    f
}

fn echo_request(to: [u8; 6], id: u16, payload: &[u8]) -> Vec<u8> {
    let mut icmp = vec![8, 0, 0, 0];
    icmp.extend_from_slice(&id.to_be_bytes());
    icmp.extend_from_slice(&1u16.to_be_bytes());
    icmp.extend_from_slice(payload);
    let c = checksum(&icmp);
    icmp[2..4].copy_from_slice(&c.to_be_bytes());
    let total = (20 + icmp.len()) as u16;
    let mut ip = vec![0x45, 0];
    ip.extend_from_slice(&total.to_be_bytes());
    ip.extend_from_slice(&[0, 1, 0x40, 0, 64, 1, 0, 0]);
    ip.extend_from_slice(&OUR_IP.octets());
    ip.extend_from_slice(&KERNEL_IP.octets());
    let c = checksum(&ip);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    let mut f = to.to_vec();
    f.extend_from_slice(&OUR_MAC);
    f.extend_from_slice(&[0x08, 0x00]);
    f.extend_from_slice(&ip);
    f.extend_from_slice(&icmp);
    f
}

/// Sends `frame` behind an all-zero virtio-net header (no offload asked).
fn send(backend: &mut TapBackend, frame: &[u8]) {
    let header = [0u8; VNET_HDR_LEN];
    backend
        .send(&[IoSlice::new(&header), IoSlice::new(frame)])
        .unwrap();
}

/// The first frame from the kernel (header stripped) that `pick` accepts, within 5 s.
fn receive(backend: &mut TapBackend, pick: impl Fn(&[u8]) -> bool) -> Vec<u8> {
    let mut buf = vec![0u8; VNET_HDR_LEN + MAX_FRAME_LEN];
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match backend.recv(&mut buf) {
            Ok(n) => {
                assert!(n >= VNET_HDR_LEN, "a read of {n} bytes lacks the header");
                let frame = &buf[VNET_HDR_LEN..n];
                if pick(frame) {
                    return frame.to_vec();
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                assert!(Instant::now() < deadline, "no answer from the kernel");
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(e) => panic!("reading the TAP: {e}"),
        }
    }
}

#[test]
fn the_kernel_answers_arp_and_ping_through_the_tap_backend() {
    in_namespace("the_kernel_answers_arp_and_ping_through_the_tap_backend", || {
        let tap = Tap::open("vkt0", true).unwrap();
        assert_eq!(tap.name(), "vkt0");
        let mut backend = TapBackend::new(tap);
        assert_eq!(backend.vnet_hdr_len(), VNET_HDR_LEN);
        ip("addr add 10.99.0.1/24 dev vkt0");
        set_link_up("vkt0").unwrap();

        send(&mut backend, &arp_request());
        let reply = receive(&mut backend, |f| {
            f.len() >= 42 && f[12..14] == [8, 6] && f[20..22] == [0, 2]
        });
        assert_eq!(&reply[..6], &OUR_MAC, "the reply is for us");
        assert_eq!(
            &reply[28..32],
            &KERNEL_IP.octets(),
            "sender is the kernel's address"
        );
        let kernel_mac: [u8; 6] = reply[22..28].try_into().unwrap();

        let payload: Vec<u8> = (0..56u8).collect();
        send(&mut backend, &echo_request(kernel_mac, 0x4242, &payload));
        let echo = receive(&mut backend, |f| {
            f.len() >= 42 && f[12..14] == [8, 0] && f[23] == 1 && f[34] == 0
        });
        assert_eq!(&echo[26..30], &KERNEL_IP.octets());
        assert_eq!(&echo[30..34], &OUR_IP.octets());
        assert_eq!(&echo[38..40], &0x4242u16.to_be_bytes(), "the echo's id");
        assert_eq!(&echo[42..], &payload[..], "the echo's data");

        // Every offload the guest may accept is one the kernel takes.
        let all = [
            VIRTIO_NET_F_GUEST_CSUM,
            VIRTIO_NET_F_GUEST_TSO4,
            VIRTIO_NET_F_GUEST_TSO6,
            VIRTIO_NET_F_GUEST_ECN,
        ]
        .iter()
        .fold(0u64, |f, b| f | 1 << b);
        backend.negotiated(all).unwrap();
        assert_eq!(
            backend.offload_flags(),
            libc::TUN_F_CSUM | libc::TUN_F_TSO4 | libc::TUN_F_TSO6 | libc::TUN_F_TSO_ECN
        );
        backend.negotiated(1 << VIRTIO_NET_F_GUEST_TSO4).unwrap();
        assert_eq!(backend.offload_flags(), 0, "TSO without checksum offload is none");
        // Still answering with offloads on.
        backend.negotiated(all).unwrap();
        send(&mut backend, &echo_request(kernel_mac, 0x4343, &payload));
        receive(&mut backend, |f| {
            f.len() >= 42 && f[34] == 0 && f[38..40] == [0x43, 0x43]
        });

        assert!(interface_exists("vkt0").unwrap());
        drop(backend);
        // A fork in another test thread holds a copy of the descriptor until its exec closes
        // it (close-on-exec): the TAP goes when the last copy does, a moment later at most.
        let deadline = Instant::now() + Duration::from_secs(5);
        while interface_exists("vkt0").unwrap() {
            assert!(
                Instant::now() < deadline,
                "a TAP we created goes with its descriptor"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    });
}

#[test]
fn a_busy_tap_is_refused_or_found_held() {
    in_namespace("a_busy_tap_is_refused_or_found_held", || {
        // A single-queue TAP: the kernel refuses a second queue with EBUSY.
        ip("tuntap add vkq0 mode tap");
        let first = Tap::open("vkq0", false).unwrap();
        match Tap::open("vkq0", false) {
            Err(TapError::Busy(name)) => assert_eq!(name, "vkq0"),
            other => panic!("a second open of a single-queue TAP: {other:?}"),
        }
        // Asking for multi-queue on a single-queue TAP is a mismatch, not a busy TAP.
        assert!(matches!(Tap::open("vkq0", true), Err(TapError::Mismatch(..))));
        // A TAP deleted under its user: the backend says its peer is gone (the device then
        // takes the link down), never an error to retry for ever.
        ip("tuntap add vkd0 mode tap");
        let mut doomed = TapBackend::new(Tap::open_existing("vkd0").unwrap());
        ip("link del vkd0");
        let mut buf = vec![0u8; VNET_HDR_LEN + MAX_FRAME_LEN];
        assert_eq!(
            doomed.recv(&mut buf).unwrap_err().kind(),
            io::ErrorKind::UnexpectedEof
        );
        let e = doomed
            .send(&[IoSlice::new(&[0u8; VNET_HDR_LEN + 60])])
            .unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::BrokenPipe);
        // A multi-queue TAP takes more queues: whether another process holds one is found
        // from the descriptors' `iff:` lines.
        ip("tuntap add vkm0 mode tap multi_queue");
        assert!(queue_holders("vkm0").is_empty());
        let held = Tap::open_existing("vkm0").unwrap();
        let more = Tap::open_existing("vkm0").unwrap();
        assert_eq!(queue_holders("vkm0"), vec![std::process::id()]);
        drop((first, held, more));
        assert!(queue_holders("vkm0").is_empty());
        // An existing single-queue TAP opens as one; a name nobody made is not created.
        drop(Tap::open_existing("vkq0").unwrap());
        assert!(matches!(Tap::open_existing("vknone"), Err(TapError::NotFound(_))));
        assert!(!interface_exists("vknone").unwrap());
        // Names the kernel would refuse never reach it.
        for bad in ["", "a/b", "x234567890123456", "a b"] {
            assert!(
                matches!(Tap::open(bad, true), Err(TapError::BadName(_))),
                "{bad:?}"
            );
        }
    });
}

#[test]
fn a_multi_queue_tap_gives_a_queue_per_pair_and_a_single_queue_one_gives_one() {
    in_namespace("a_multi_queue_tap_gives_a_queue_per_pair", || {
        ip("tuntap add vkmq0 mode tap multi_queue");
        let queues = Tap::open_existing("vkmq0").unwrap().with_queues(3).unwrap();
        assert_eq!(queues.len(), 3);
        assert!(queues.iter().all(|q| q.multi_queue() && q.name() == "vkmq0"));
        // Each is its own queue of the interface: three descriptors say `iff: vkmq0`.
        let ours = std::fs::read_dir("/proc/self/fdinfo")
            .unwrap()
            .filter_map(|e| std::fs::read_to_string(e.ok()?.path()).ok())
            .filter(|info| info.lines().any(|l| l == "iff:\tvkmq0"))
            .count();
        assert_eq!(ours, 3);
        drop(queues);

        ip("tuntap add vksq0 mode tap");
        let single = Tap::open_existing("vksq0").unwrap();
        assert!(!single.multi_queue());
        assert_eq!(single.with_queues(4).unwrap().len(), 1);
    });
}
