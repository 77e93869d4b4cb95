//! virtio-net on test guest memory: frames both ways through real socket backends, mergeable
//! rx buffers, back-pressure in both directions, hostile chains (each answered, never a panic),
//! the worker thread under its seccomp filter, and snapshots with a frame in flight.

use std::io::{self, IoSlice, Read, Write};
use std::os::unix::net::{UnixDatagram, UnixStream};
use std::sync::Arc;
use std::time::Duration;

use virtio_bindings::bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use virtio_queue::{Queue, QueueT};
use virtkit_virtio::testing::{chain_at, memory, used_elem, used_idx, RecordingInterrupt, Signal};
use virtkit_virtio::{DeviceQueue, VirtioDevice};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::test_support::TestBackend;
use super::*;

mod multiqueue;
mod observer;

virtkit_virtio::virtio_device_conformance_tests!(
    conformance,
    Net,
    Net::new(MAC, Box::new(TestBackend::new().0)).unwrap()
);

const MAC: [u8; 6] = [0x02, 0x00, 0x00, 0x12, 0x34, 0x56];
const MEM_SIZE: usize = 16 << 20;
const DATA: u64 = 0x10_0000;
const R: u16 = 0;
const W: u16 = VRING_DESC_F_WRITE as u16;
const HDR: usize = VNET_HDR_LEN;

type Mock<'a> = MockSplitQueue<'a, GuestMemoryMmap>;

/// A queue of 16 for queue number `n` (its rings apart from the others').
fn mock(mem: &GuestMemoryMmap, n: u64) -> Mock<'_> {
    MockSplitQueue::create(mem, GuestAddress(0x1_0000 * n), 16)
}

/// Where the tests put a mock queue's used ring: the mock's own starts inside its available
/// ring (virtio-queue 0.18 sizes the available ring in entries, not bytes), so used entries
/// would overwrite available ones the device has not read yet.
fn used_ring(vq: &Mock<'_>) -> GuestAddress {
    GuestAddress(vq.start().0 + 0x8000)
}

/// The device's queue over `vq`, with the used ring at [`used_ring`].
fn queue(vq: &Mock<'_>) -> Queue {
    let mut q: Queue = vq.create_queue().unwrap();
    let used = used_ring(vq).0;
    q.set_used_ring_address(Some(used as u32), Some((used >> 32) as u32));
    q
}

fn handler(backend: impl NetBackend + 'static, mergeable: bool) -> (NetHandler, Arc<NetMetrics>) {
    let metrics = Arc::new(NetMetrics::default());
    let mut h = NetHandler::new(Box::new(backend), metrics.clone());
    h.mergeable = mergeable;
    (h, metrics)
}

fn get(counter: &std::sync::atomic::AtomicU64) -> u64 {
    NetMetrics::get(counter)
}

/// A frame whose bytes say where they are.
fn frame(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(7).wrapping_add(seed))
        .collect()
}

/// Writes a header of zeros and `payload` at `at` and returns a tx chain over it, cut into
/// descriptors of the given lengths (the last takes the rest).
fn tx_chain(mem: &GuestMemoryMmap, at: u64, payload: &[u8], cuts: &[u32], base: u16) -> Vec<RawDescriptor> {
    let mut bytes = vec![0u8; HDR];
    bytes.extend_from_slice(payload);
    let mut descs = Vec::new();
    let mut done = 0usize;
    let mut addr = at;
    for (i, &cut) in cuts.iter().chain(std::iter::once(&u32::MAX)).enumerate() {
        let n = (cut as usize).min(bytes.len() - done);
        // Spread the pieces apart so a copy that ignores the descriptors would read gaps.
        mem.write_slice(&bytes[done..done + n], GuestAddress(addr))
            .unwrap();
        descs.push((addr, n as u32, R));
        done += n;
        addr += 0x1_0000 + i as u64;
        if done == bytes.len() {
            break;
        }
    }
    chain_at(&descs, base)
}

/// Rx chains of one writable buffer of `len` bytes each, from descriptor `base` on.
fn rx_buffers(count: usize, len: u32, base: u16) -> Vec<RawDescriptor> {
    (0..count)
        .flat_map(|i| {
            chain_at(
                &[(DATA + 0x4000 * (base as u64 + i as u64), len, W)],
                base + i as u16,
            )
        })
        .collect()
}

fn used(mem: &GuestMemoryMmap, vq: &Mock<'_>, from: u16, to: u16) -> Vec<(u32, u32)> {
    (from..to)
        .map(|i| used_elem(mem, used_ring(vq), u64::from(i)))
        .collect()
}

/// The bytes of used rx entries `from..to` in order, read from the buffers `rx_buffers` set.
fn received(mem: &GuestMemoryMmap, vq: &Mock<'_>, from: u16, to: u16) -> Vec<u8> {
    let mut out = Vec::new();
    for (head, len) in used(mem, vq, from, to) {
        let mut bytes = vec![0u8; len as usize];
        mem.read_slice(&mut bytes, GuestAddress(DATA + 0x4000 * u64::from(head)))
            .unwrap();
        out.extend(bytes);
    }
    out
}

fn num_buffers(header: &[u8]) -> u16 {
    u16::from_le_bytes([header[10], header[11]])
}

/// Reads one length-prefixed frame from a stream peer.
fn read_prefixed(peer: &mut UnixStream) -> Vec<u8> {
    let mut prefix = [0u8; 4];
    peer.read_exact(&mut prefix).unwrap();
    let mut frame = vec![0u8; u32::from_be_bytes(prefix) as usize];
    peer.read_exact(&mut frame).unwrap();
    frame
}

fn prefixed(frame: &[u8]) -> Vec<u8> {
    let mut bytes = (frame.len() as u32).to_be_bytes().to_vec();
    bytes.extend_from_slice(frame);
    bytes
}

fn stream_pair() -> (StreamBackend, UnixStream) {
    let (ours, theirs) = UnixStream::pair().unwrap();
    theirs.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    (StreamBackend::new(ours).unwrap(), theirs)
}

// Tx.

#[test]
fn a_tx_frame_split_over_descriptors_reaches_the_stream_peer_with_its_length_prefix() {
    let mem = memory(MEM_SIZE);
    let vq = mock(&mem, 1);
    let payload = frame(1514, 3);
    // The header itself is split (7 + 5 bytes) and the frame spreads over four descriptors.
    vq.add_desc_chains(&tx_chain(&mem, DATA, &payload, &[7, 20, 500, 3], 0), 0)
        .unwrap();
    let mut q = queue(&vq);
    let (backend, mut peer) = stream_pair();
    let (mut h, metrics) = handler(backend, false);
    assert!(h.process_tx(&mut q, &mem).unwrap());
    assert_eq!(
        used(&mem, &vq, 0, 1),
        vec![(0, 0)],
        "a tx chain is used with length 0"
    );
    assert_eq!(
        read_prefixed(&mut peer),
        payload,
        "the header is stripped, the frame whole"
    );
    assert_eq!(get(&metrics.tx_frames), 1);
    assert_eq!(get(&metrics.tx_bytes), 1514);
    assert_eq!(get(&metrics.bad_chains), 0);
}

#[test]
fn a_backend_that_takes_the_header_gets_it_as_the_guest_wrote_it() {
    let mem = memory(MEM_SIZE);
    let vq = mock(&mem, 1);
    vq.add_desc_chains(&tx_chain(&mem, DATA, &frame(60, 1), &[], 0), 0)
        .unwrap();
    mem.write_obj(0x21u8, GuestAddress(DATA)).unwrap(); // flags: NEEDS_CSUM | RSC
    let mut q = queue(&vq);
    let (mut backend, peer) = TestBackend::new();
    backend.hdr_len = HDR;
    let (mut h, metrics) = handler(backend, false);
    h.process_tx(&mut q, &mem).unwrap();
    let out = peer.lock().unwrap().output.clone();
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].len(), HDR + 60);
    assert_eq!(out[0][0], 0x21);
    assert_eq!(&out[0][HDR..], &frame(60, 1)[..]);
    assert_eq!(
        get(&metrics.tx_bytes),
        60,
        "bytes count the frame, not the header"
    );
}

#[test]
fn a_tso_header_reaches_a_header_backend_unchanged_across_descriptors() {
    // NEEDS_CSUM, GSO TCPv4 with ECN, hdr_len 66, gso_size 1448, csum_start 34, csum_offset 16,
    // num_buffers 0; the header itself cut over two descriptors (5 + 7 bytes), the frame over
    // two more.
    let header: [u8; 12] = [1, 0x81, 66, 0, 0xa8, 0x05, 34, 0, 16, 0, 0, 0];
    let payload = frame(20_000, 3);
    let mem = memory(MEM_SIZE);
    let vq = mock(&mem, 1);
    vq.add_desc_chains(&tx_chain(&mem, DATA, &payload, &[5, 7, 9000], 0), 0)
        .unwrap();
    // `tx_chain` writes a zero header, its pieces 0x10000 (+ index) apart.
    mem.write_slice(&header[..5], GuestAddress(DATA)).unwrap();
    mem.write_slice(&header[5..], GuestAddress(DATA + 0x1_0000))
        .unwrap();
    let mut q = queue(&vq);
    let (mut backend, peer) = TestBackend::new();
    backend.hdr_len = HDR;
    let (mut h, metrics) = handler(backend, true);
    h.process_tx(&mut q, &mem).unwrap();
    let out = peer.lock().unwrap().output.clone();
    assert_eq!(out.len(), 1);
    assert_eq!(&out[0][..HDR], &header, "the header as the guest wrote it");
    assert_eq!(&out[0][HDR..], &payload[..]);
    assert_eq!(get(&metrics.tx_bytes), 20_000);
    assert_eq!(get(&metrics.bad_chains), 0);
}

#[test]
fn a_full_stream_socket_holds_tx_chains_and_they_go_in_order_when_the_peer_reads() {
    let mem = memory(MEM_SIZE);
    let vq = mock(&mem, 1);
    let frames: Vec<Vec<u8>> = (0..16).map(|i| frame(60_000, i as u8)).collect();
    let mut descs = Vec::new();
    for (i, f) in frames.iter().enumerate() {
        descs.extend(tx_chain(&mem, DATA + 0x2_0000 * i as u64, f, &[], i as u16));
    }
    vq.add_desc_chains(&descs, 0).unwrap();
    let mut q = queue(&vq);
    let (backend, mut peer) = stream_pair();
    let (mut h, metrics) = handler(backend, false);

    h.process_tx(&mut q, &mem).unwrap();
    let first = used_idx(&mem, used_ring(&vq));
    assert!(first < 16, "16 x 60 KB do not fit a socket buffer");
    assert!(h.wants_output(), "the worker waits for the socket to be writable");
    assert!(h.tx.is_some(), "the refused frame's chain is kept, not dropped");
    assert!(get(&metrics.tx_blocked) >= 1);
    // Nothing more goes while the socket is full: no busy loop, no drop.
    h.process_tx(&mut q, &mem).unwrap();
    assert_eq!(used_idx(&mem, used_ring(&vq)), first);

    let mut got = Vec::new();
    while got.len() < 16 {
        got.push(read_prefixed(&mut peer));
        h.process_tx(&mut q, &mem).unwrap();
    }
    assert_eq!(used_idx(&mem, used_ring(&vq)), 16);
    let summary = |fs: &[Vec<u8>]| {
        fs.iter()
            .map(|f| (f.len(), f[0], f[f.len() - 1]))
            .collect::<Vec<_>>()
    };
    assert_eq!(summary(&got), summary(&frames), "every frame, whole and in order");
    assert!(got == frames);
    assert!(!h.wants_output());
    assert_eq!(get(&metrics.tx_dropped), 0);
    assert_eq!(get(&metrics.tx_frames), 16);
}

#[test]
fn small_frames_of_one_pass_are_gathered_and_all_reach_the_peer_when_the_pass_ends() {
    let mem = memory(MEM_SIZE);
    let vq = mock(&mem, 1);
    let frames: Vec<Vec<u8>> = (0..8).map(|i| frame(1514, i as u8)).collect();
    let mut descs = Vec::new();
    for (i, f) in frames.iter().enumerate() {
        descs.extend(tx_chain(&mem, DATA + 0x2_0000 * i as u64, f, &[], i as u16));
    }
    vq.add_desc_chains(&descs, 0).unwrap();
    let mut q = queue(&vq);
    let (backend, mut peer) = stream_pair();
    let (mut h, metrics) = handler(backend, false);
    assert!(h.process_tx(&mut q, &mem).unwrap());
    assert_eq!(used_idx(&mem, used_ring(&vq)), 8);
    assert!(!h.wants_output(), "the batch went out at the end of the pass");
    // No other pass: what the peer reads was written by the one that ended.
    let got: Vec<Vec<u8>> = (0..8).map(|_| read_prefixed(&mut peer)).collect();
    assert!(got == frames, "every frame, whole and in order");
    assert_eq!(get(&metrics.tx_frames), 8);
}

#[test]
fn the_stream_backend_gathers_small_frames_until_flushed() {
    let (mut backend, mut peer) = stream_pair();
    peer.set_nonblocking(true).unwrap();
    let a = frame(100, 1);
    let b = frame(200, 2);
    backend.send(&[std::io::IoSlice::new(&a)]).unwrap();
    backend.send(&[std::io::IoSlice::new(&b)]).unwrap();
    let mut byte = [0u8; 1];
    assert_eq!(
        peer.read(&mut byte).unwrap_err().kind(),
        std::io::ErrorKind::WouldBlock,
        "gathered frames wait for the flush"
    );
    backend.flush().unwrap();
    peer.set_nonblocking(false).unwrap();
    assert_eq!(read_prefixed(&mut peer), a);
    assert_eq!(read_prefixed(&mut peer), b);
    // A batch of 64 KiB goes without waiting for the flush.
    let big: Vec<Vec<u8>> = (0..50).map(|i| frame(1514, i as u8)).collect();
    for f in &big {
        backend.send(&[std::io::IoSlice::new(f)]).unwrap();
    }
    assert_eq!(
        read_prefixed(&mut peer),
        big[0],
        "the first 64 KiB left on their own"
    );
    backend.flush().unwrap();
    for f in &big[1..] {
        assert_eq!(&read_prefixed(&mut peer), f);
    }
}

#[test]
fn hostile_tx_chains_are_refused_and_counted_never_a_panic() {
    let mem = memory(MEM_SIZE);
    let vq = mock(&mem, 1);
    let far = MEM_SIZE as u64 + 0x1000;
    let descs = vec![
        // 0: a device-writable descriptor.
        RawDescriptor::from(SplitDescriptor::new(DATA, 100, W, 0)),
        // 1: outside guest memory.
        RawDescriptor::from(SplitDescriptor::new(far, 100, R, 0)),
        // 2: shorter than the header.
        RawDescriptor::from(SplitDescriptor::new(DATA, 11, R, 0)),
        // 3: longer than any frame (it straddles the end of memory too).
        RawDescriptor::from(SplitDescriptor::new(0, u32::MAX, R, 0)),
        // 4: a buffer running past the end of memory.
        RawDescriptor::from(SplitDescriptor::new(MEM_SIZE as u64 - 50, 100, R, 0)),
    ];
    vq.add_desc_chains(&descs, 0).unwrap();
    // 5: a loop onto itself (added alone: the mock would take what follows as its next).
    let looped = RawDescriptor::from(SplitDescriptor::new(DATA, 100, R | VRING_DESC_F_NEXT as u16, 5));
    vq.add_desc_chains(&[looped], 5).unwrap();
    // 6: a good frame after them still goes.
    vq.add_desc_chains(&tx_chain(&mem, DATA + 0x1000, &frame(64, 9), &[], 6), 6)
        .unwrap();
    let mut q = queue(&vq);
    let (backend, peer) = TestBackend::new();
    let (mut h, metrics) = handler(backend, false);
    h.process_tx(&mut q, &mem).unwrap();
    assert_eq!(used_idx(&mem, used_ring(&vq)), 7, "every chain answered");
    assert!(used(&mem, &vq, 0, 7).iter().all(|&(_, len)| len == 0));
    assert_eq!(get(&metrics.bad_chains), 6);
    assert_eq!(peer.lock().unwrap().output, vec![frame(64, 9)]);
}

// Rx.

#[test]
fn an_rx_frame_from_the_stream_peer_lands_with_a_header_and_arrives_in_pieces() {
    let mem = memory(MEM_SIZE);
    let vq = mock(&mem, 0);
    vq.add_desc_chains(&rx_buffers(2, 1526, 0), 0).unwrap();
    let mut q = queue(&vq);
    let (backend, mut peer) = stream_pair();
    let (mut h, metrics) = handler(backend, false);
    let payload = frame(1514, 5);
    let bytes = prefixed(&payload);
    // The prefix itself arrives in two pieces, then the frame in two.
    for piece in [&bytes[..2], &bytes[2..700]] {
        peer.write_all(piece).unwrap();
        assert!(!h.process_rx(&mut q, &mem).unwrap(), "nothing whole yet");
        assert!(h.wants_input());
    }
    peer.write_all(&bytes[700..]).unwrap();
    assert!(h.process_rx(&mut q, &mem).unwrap());
    assert_eq!(used(&mem, &vq, 0, 1), vec![(0, (HDR + 1514) as u32)]);
    let got = received(&mem, &vq, 0, 1);
    assert_eq!(&got[..10], &[0u8; 10], "no offload information");
    assert_eq!(num_buffers(&got), 1, "one buffer without mergeable buffers");
    assert_eq!(&got[HDR..], &payload[..]);
    assert_eq!((get(&metrics.rx_frames), get(&metrics.rx_bytes)), (1, 1514));
}

#[test]
fn a_9000_byte_frame_spreads_over_mergeable_1526_byte_buffers() {
    let mem = memory(MEM_SIZE);
    let vq = mock(&mem, 0);
    vq.add_desc_chains(&rx_buffers(8, 1526, 0), 0).unwrap();
    let mut q = queue(&vq);
    let (backend, mut peer) = stream_pair();
    let (mut h, _) = handler(backend, true);
    let jumbo = frame(9000, 11);
    let small = frame(60, 12);
    peer.write_all(&prefixed(&jumbo)).unwrap();
    peer.write_all(&prefixed(&small)).unwrap();
    h.process_rx(&mut q, &mem).unwrap();
    // 9012 bytes: five full buffers and 1382 in a sixth; the next frame takes the seventh.
    assert_eq!(used_idx(&mem, used_ring(&vq)), 7);
    let lens: Vec<u32> = used(&mem, &vq, 0, 7).iter().map(|&(_, l)| l).collect();
    assert_eq!(lens, vec![1526, 1526, 1526, 1526, 1526, 1382, (HDR + 60) as u32]);
    let got = received(&mem, &vq, 0, 6);
    assert_eq!(num_buffers(&got), 6);
    assert_eq!(&got[HDR..], &jumbo[..]);
    let got = received(&mem, &vq, 6, 7);
    assert_eq!(num_buffers(&got), 1);
    assert_eq!(&got[HDR..], &small[..]);
}

#[test]
fn a_frame_waits_for_enough_mergeable_buffers_then_uses_the_held_ones_first() {
    let mem = memory(MEM_SIZE);
    let vq = mock(&mem, 0);
    vq.add_desc_chains(&rx_buffers(2, 1526, 0), 0).unwrap();
    let mut q = queue(&vq);
    let (backend, peer) = TestBackend::new();
    peer.lock().unwrap().input.push_back(frame(4000, 1));
    let (mut h, metrics) = handler(backend, true);
    assert!(!h.process_rx(&mut q, &mem).unwrap());
    assert_eq!(
        used_idx(&mem, used_ring(&vq)),
        0,
        "two buffers hold 3052 of 4012 bytes"
    );
    assert!(!h.wants_input());
    assert_eq!(get(&metrics.rx_starved), 1);
    vq.add_desc_chains(&rx_buffers(1, 1526, 2), 2).unwrap();
    h.rx_starved = false; // the worker does this on an rx notification
    h.process_rx(&mut q, &mem).unwrap();
    assert_eq!(used(&mem, &vq, 0, 3), vec![(0, 1526), (1, 1526), (2, 960)]);
    assert_eq!(&received(&mem, &vq, 0, 3)[HDR..], &frame(4000, 1)[..]);
}

#[test]
fn a_full_rx_ring_stops_reading_the_backend_until_the_guest_adds_buffers() {
    let mem = memory(MEM_SIZE);
    let vq = mock(&mem, 0);
    vq.add_desc_chains(&rx_buffers(1, 1526, 0), 0).unwrap();
    let mut q = queue(&vq);
    let (backend, peer) = TestBackend::new();
    for i in 0..4 {
        peer.lock().unwrap().input.push_back(frame(100, i));
    }
    let (mut h, metrics) = handler(backend, false);
    h.process_rx(&mut q, &mem).unwrap();
    assert_eq!(used_idx(&mem, used_ring(&vq)), 1);
    let reads = peer.lock().unwrap().reads;
    assert_eq!(reads, 2, "one frame delivered, one read and waiting");
    assert!(
        !h.wants_input(),
        "the backend is not watched while the guest has no buffer"
    );
    // Passes without new buffers (other events) read nothing more.
    for _ in 0..3 {
        h.process_rx(&mut q, &mem).unwrap();
    }
    assert_eq!(peer.lock().unwrap().reads, reads);
    assert_eq!(
        peer.lock().unwrap().input.len(),
        2,
        "the rest wait at the peer, not dropped"
    );
    // Buffers come: the waiting frame first, then the others.
    vq.add_desc_chains(&rx_buffers(3, 1526, 1), 1).unwrap();
    h.rx_starved = false;
    h.process_rx(&mut q, &mem).unwrap();
    assert_eq!(used_idx(&mem, used_ring(&vq)), 4);
    for i in 0..4u16 {
        assert_eq!(&received(&mem, &vq, i, i + 1)[HDR..], &frame(100, i as u8)[..]);
    }
    assert_eq!(get(&metrics.rx_dropped), 0);
    assert!(h.wants_input());
}

#[test]
fn without_mergeable_buffers_a_frame_too_long_for_the_chain_is_dropped_and_the_chain_kept() {
    let mem = memory(MEM_SIZE);
    let vq = mock(&mem, 0);
    vq.add_desc_chains(&rx_buffers(1, 1526, 0), 0).unwrap();
    let mut q = queue(&vq);
    let (backend, peer) = TestBackend::new();
    peer.lock()
        .unwrap()
        .input
        .extend([frame(9000, 1), frame(1514, 2)]);
    let (mut h, metrics) = handler(backend, false);
    h.process_rx(&mut q, &mem).unwrap();
    assert_eq!(get(&metrics.rx_dropped), 1);
    assert_eq!(
        used(&mem, &vq, 0, 1),
        vec![(0, (HDR + 1514) as u32)],
        "the chain took the next frame"
    );
    assert_eq!(&received(&mem, &vq, 0, 1)[HDR..], &frame(1514, 2)[..]);
}

#[test]
fn a_frame_no_ring_can_hold_is_dropped_rather_than_waited_for_for_ever() {
    let mem = memory(MEM_SIZE);
    let vq = mock(&mem, 0);
    // 16 buffers of 64 bytes: 1024 bytes is all the ring can offer at once.
    vq.add_desc_chains(&rx_buffers(16, 64, 0), 0).unwrap();
    let mut q = queue(&vq);
    let (backend, peer) = TestBackend::new();
    peer.lock().unwrap().input.extend([frame(2000, 1), frame(100, 2)]);
    let (mut h, metrics) = handler(backend, true);
    h.process_rx(&mut q, &mem).unwrap();
    assert_eq!(get(&metrics.rx_dropped), 1);
    assert_eq!(
        used_idx(&mem, used_ring(&vq)),
        2,
        "the next frame used the held buffers"
    );
    assert_eq!(num_buffers(&received(&mem, &vq, 0, 2)), 2);
}

#[test]
fn hostile_rx_chains_are_refused_and_counted_never_a_panic() {
    let mem = memory(MEM_SIZE);
    let vq = mock(&mem, 0);
    let descs = vec![
        // 0: a device-readable descriptor.
        RawDescriptor::from(SplitDescriptor::new(DATA, 1526, R, 0)),
        // 1: shorter than the header.
        RawDescriptor::from(SplitDescriptor::new(DATA, 8, W, 0)),
        // 2: outside guest memory.
        RawDescriptor::from(SplitDescriptor::new(u64::MAX - 10, 1526, W, 0)),
    ];
    vq.add_desc_chains(&descs, 0).unwrap();
    // 3: a loop; 4: a next index past the table (each alone: the mock would chain what follows).
    for (index, next) in [(3u16, 3u16), (4, 999)] {
        let desc = RawDescriptor::from(SplitDescriptor::new(
            DATA,
            1526,
            W | VRING_DESC_F_NEXT as u16,
            next,
        ));
        vq.add_desc_chains(&[desc], index).unwrap();
    }
    vq.add_desc_chains(&rx_buffers(1, 1526, 5), 5).unwrap();
    let mut q = queue(&vq);
    let (backend, peer) = TestBackend::new();
    peer.lock().unwrap().input.push_back(frame(200, 3));
    let (mut h, metrics) = handler(backend, true);
    h.process_rx(&mut q, &mem).unwrap();
    assert_eq!(get(&metrics.bad_chains), 5);
    let entries = used(&mem, &vq, 0, 6);
    assert!(entries[..5].iter().all(|&(_, len)| len == 0), "{entries:?}");
    assert_eq!(entries[5], (5, (HDR + 200) as u32));
}

#[test]
fn held_rx_chains_go_back_to_the_ring_before_the_worker_stops() {
    let mem = memory(MEM_SIZE);
    let vq = mock(&mem, 0);
    vq.add_desc_chains(&rx_buffers(2, 1526, 0), 0).unwrap();
    let mut q = queue(&vq);
    let (backend, peer) = TestBackend::new();
    peer.lock().unwrap().input.push_back(frame(5000, 1));
    let (mut h, _) = handler(backend, true);
    h.process_rx(&mut q, &mem).unwrap();
    assert_eq!(q.next_avail(), 2, "both taken for the frame");
    assert!(!h.release_rx(&mut q, &mem).unwrap(), "put back, nothing used");
    assert_eq!(q.next_avail(), 0);
    assert_eq!(used_idx(&mem, used_ring(&vq)), 0);
}

// Datagrams.

#[test]
fn the_datagram_backend_carries_one_frame_per_datagram_both_ways() {
    let mem = memory(MEM_SIZE);
    let txq = mock(&mem, 1);
    let rxq = mock(&mem, 0);
    let payload = frame(1400, 8);
    txq.add_desc_chains(&tx_chain(&mem, DATA, &payload, &[HDR as u32 + 100], 0), 0)
        .unwrap();
    rxq.add_desc_chains(&rx_buffers(1, 1526, 4), 4).unwrap();
    let (mut tq, mut rq) = (queue(&txq), queue(&rxq));
    let (ours, peer) = UnixDatagram::pair().unwrap();
    peer.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let (mut h, _) = handler(DatagramBackend::new(ours).unwrap(), false);
    h.process_tx(&mut tq, &mem).unwrap();
    // The peer echoes what it got.
    let mut buf = vec![0u8; 65536];
    let n = peer.recv(&mut buf).unwrap();
    assert_eq!(&buf[..n], &payload[..], "one datagram, the whole frame");
    peer.send(&buf[..n]).unwrap();
    h.process_rx(&mut rq, &mem).unwrap();
    assert_eq!(used_elem(&mem, used_ring(&rxq), 0), (4, (HDR + 1400) as u32));
    assert_eq!(&received(&mem, &rxq, 0, 1)[HDR..], &payload[..]);
}

#[test]
fn a_datagram_too_long_for_a_frame_is_dropped_not_cut() {
    let (ours, peer) = UnixDatagram::pair().unwrap();
    let mut backend = DatagramBackend::new(ours).unwrap();
    peer.send(&vec![1u8; 2000]).unwrap();
    peer.send(&[2u8; 60]).unwrap();
    let mut buf = vec![0u8; 1000];
    assert!(backend.recv(&mut buf).is_err());
    assert_eq!(backend.recv(&mut buf).unwrap(), 60);
    assert_eq!(
        backend.recv(&mut buf).unwrap_err().kind(),
        std::io::ErrorKind::WouldBlock
    );
}

#[test]
fn a_stream_peer_announcing_an_oversized_frame_breaks_the_link_and_an_ended_one_too() {
    let (backend, mut peer) = stream_pair();
    let (mut h, metrics) = handler(backend, false);
    peer.write_all(&(MAX_FRAME_LEN as u32 + 1).to_be_bytes()).unwrap();
    let mem = memory(MEM_SIZE);
    let vq = mock(&mem, 0);
    vq.add_desc_chains(&rx_buffers(1, 1526, 0), 0).unwrap();
    let mut q = queue(&vq);
    h.process_rx(&mut q, &mem).unwrap();
    assert!(!h.link_up() && !h.wants_input());
    assert_eq!(get(&metrics.rx_dropped), 1);

    let (backend, peer) = stream_pair();
    let (mut h, _) = handler(backend, false);
    drop(peer);
    h.process_rx(&mut q, &mem).unwrap();
    assert!(!h.link_up(), "end of stream: the peer is gone");
}
#[test]
fn a_backend_header_reaches_the_guest_as_given_with_num_buffers_set() {
    // A TSO frame from a TAP: its header (NEEDS_CSUM, GSO TCPv4, hdr_len 54, gso_size 1448,
    // csum_start 34, csum_offset 16) goes to the guest unchanged but for `num_buffers`, which
    // the kernel leaves as whatever was in the buffer.
    let mem = memory(MEM_SIZE);
    let vq = mock(&mem, 0);
    vq.add_desc_chains(&rx_buffers(4, 1526, 0), 0).unwrap();
    let mut q = queue(&vq);
    let (mut backend, peer) = TestBackend::new();
    backend.hdr_len = HDR;
    let header: [u8; 12] = [1, 1, 54, 0, 0xa8, 0x05, 34, 0, 16, 0, 0xff, 0xff];
    let payload = frame(3000, 21);
    let mut input = header.to_vec();
    input.extend_from_slice(&payload);
    peer.lock().unwrap().input.push_back(input);
    let (mut h, metrics) = handler(backend, true);
    assert!(h.process_rx(&mut q, &mem).unwrap());
    let got = received(&mem, &vq, 0, 2);
    assert_eq!(
        &got[..10],
        &header[..10],
        "the offload fields as the backend gave them"
    );
    assert_eq!(num_buffers(&got), 2, "3012 bytes over two 1526-byte buffers");
    assert_eq!(&got[HDR..], &payload[..]);
    assert_eq!((get(&metrics.rx_frames), get(&metrics.rx_bytes)), (1, 3000));
}

// Features and configuration.

#[test]
fn offloads_are_offered_only_with_a_backend_that_takes_the_header() {
    use virtkit_virtio::VirtioDevice as _;
    let plain = Net::new(MAC, Box::new(TestBackend::new().0)).unwrap();
    let base = features::MAC | features::STATUS | features::MRG_RXBUF | virtkit_virtio::features::VERSION_1;
    assert_eq!(plain.features() & base, base);
    assert_eq!(
        plain.features() & (features::CSUM | features::GUEST_CSUM | features::HOST_TSO4),
        0
    );
    assert_eq!(plain.features() & features::MQ, 0);
    let (mut backend, _) = TestBackend::new();
    backend.hdr_len = HDR;
    let offloading = Net::new(MAC, Box::new(backend)).unwrap();
    let wanted = features::CSUM | features::GUEST_CSUM | features::HOST_TSO4 | features::GUEST_TSO4;
    assert_eq!(offloading.features() & wanted, wanted);
    let (mut backend, _) = TestBackend::new();
    backend.hdr_len = 10;
    assert!(matches!(
        Net::new(MAC, Box::new(backend)),
        Err(NetError::HeaderLength(10))
    ));
    assert!(Net::new([1, 0, 0, 0, 0, 0], Box::new(TestBackend::new().0)).is_err());
    assert_eq!(
        Offloads {
            checksum: false,
            tso4: true,
            tso6: true,
            ecn: true
        }
        .features(),
        0,
        "TSO without checksums is not offered"
    );
}

#[test]
fn config_space_has_the_mac_link_up_and_one_pair() {
    let net = Net::new(MAC, Box::new(TestBackend::new().0)).unwrap();
    let mut config = [0xffu8; CONFIG_LEN];
    net.read_config(0, &mut config);
    assert_eq!(&config[..6], &MAC);
    assert_eq!(
        u16::from_le_bytes([config[6], config[7]]),
        1,
        "VIRTIO_NET_S_LINK_UP"
    );
    assert_eq!(u16::from_le_bytes([config[8], config[9]]), 1);
    let mut byte = [0u8; 1];
    net.read_config(3, &mut byte);
    assert_eq!(byte[0], MAC[3], "byte-wise reads");
}

// The device and its worker thread.

fn device_queue(vq: &Mock<'_>, index: u16) -> (DeviceQueue, EventFd) {
    let mut queue = queue(vq);
    queue.set_event_idx(false);
    let event = EventFd::new(EFD_NONBLOCK).unwrap();
    let kick = event.try_clone().unwrap();
    (DeviceQueue { index, queue, event }, kick)
}

/// Runs under the worker's seccomp filter (the default policy kills the process), so this also
/// proves the Net list covers a stream backend both ways and a peer that leaves.
#[test]
fn the_worker_moves_frames_over_a_stream_socket_and_reports_the_link_down() {
    let mem = memory(MEM_SIZE);
    let (backend, mut peer) = stream_pair();
    let mut net = Net::new(MAC, Box::new(backend)).unwrap();
    let rx = mock(&mem, 0);
    let tx = mock(&mem, 1);
    let (rxq, rx_kick) = device_queue(&rx, 0);
    let (txq, tx_kick) = device_queue(&tx, 1);
    let interrupt = Arc::new(RecordingInterrupt::default());
    let acked = net.features();
    net.activate(mem.clone(), interrupt.clone(), vec![rxq, txq], acked)
        .unwrap();

    let out = frame(1514, 21);
    tx.add_desc_chains(&tx_chain(&mem, 0x80_0000, &out, &[30], 0), 0)
        .unwrap();
    tx_kick.write(1).unwrap();
    assert_eq!(read_prefixed(&mut peer), out);
    assert!(interrupt.wait_for(Signal::UsedQueue(1), Duration::from_secs(10)));

    // A frame before the guest has buffers waits, then arrives.
    let jumbo = frame(3000, 22);
    peer.write_all(&prefixed(&jumbo)).unwrap();
    std::thread::sleep(Duration::from_millis(50));
    rx.add_desc_chains(&rx_buffers(3, 1526, 0), 0).unwrap();
    rx_kick.write(1).unwrap();
    assert!(interrupt.wait_for(Signal::UsedQueue(0), Duration::from_secs(10)));
    assert_eq!(used_idx(&mem, used_ring(&rx)), 2);
    let got = received(&mem, &rx, 0, 2);
    assert_eq!(num_buffers(&got), 2);
    assert_eq!(&got[HDR..], &jumbo[..]);

    // Sleep, snapshot, wake.
    let queues = net.sleep().unwrap().unwrap();
    let state = net.snapshot().unwrap();
    assert!(state.link_up && state.tx_pending == [None]);
    net.wake(Some(queues)).unwrap();

    // The peer leaves: the link goes down and the driver hears of it.
    drop(peer);
    assert!(interrupt.wait_for(Signal::ConfigChanged, Duration::from_secs(10)));
    let mut status = [0u8; 2];
    net.read_config(6, &mut status);
    assert_eq!(status, [0, 0]);
    // Frames sent now are dropped, never stuck in the ring.
    tx.add_desc_chains(&tx_chain(&mem, 0x90_0000, &out, &[], 2), 2)
        .unwrap();
    tx_kick.write(1).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while used_idx(&mem, used_ring(&tx)) < 2 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(1));
    }
    assert_eq!(used_idx(&mem, used_ring(&tx)), 2);
    assert_eq!(NetMetrics::get(&net.metrics().tx_dropped), 1);
    assert_eq!(net.reset().unwrap().len(), 2);
}

#[test]
fn a_tx_chain_the_backend_has_not_taken_survives_a_snapshot_and_goes_after_restore() {
    let mem = memory(MEM_SIZE);
    let (backend, peer) = TestBackend::new();
    peer.lock().unwrap().room = Some(0);
    let mut net = Net::new(MAC, Box::new(backend)).unwrap();
    let rx = mock(&mem, 0);
    let tx = mock(&mem, 1);
    let (rxq, _) = device_queue(&rx, 0);
    let (txq, tx_kick) = device_queue(&tx, 1);
    let interrupt = Arc::new(RecordingInterrupt::default());
    let acked = net.features();
    net.activate(mem.clone(), interrupt, vec![rxq, txq], acked)
        .unwrap();
    tx.add_desc_chains(&tx_chain(&mem, 0x80_0000, &frame(100, 1), &[50], 0), 0)
        .unwrap();
    tx_kick.write(1).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while NetMetrics::get(&net.metrics().tx_blocked) == 0 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(1));
    }
    let queues = net.sleep().unwrap().unwrap();
    let state = net.snapshot().unwrap();
    assert_eq!(state.tx_pending[0].as_ref().map(|p| p.head), Some(0));
    assert_eq!(
        used_idx(&mem, used_ring(&tx)),
        0,
        "the chain is not used while it waits"
    );

    // A new device (a restored process) with a backend that takes frames sends it.
    let (backend, peer) = TestBackend::new();
    let mut restored = Net::new(MAC, Box::new(backend)).unwrap();
    restored.restore(state.clone()).unwrap();
    assert_eq!(restored.snapshot().unwrap(), state);
    let interrupt = Arc::new(RecordingInterrupt::default());
    // The transport restores the queues; these are the same rings.
    restored
        .activate(mem.clone(), interrupt.clone(), queues, state.acked_features)
        .unwrap();
    assert!(interrupt.wait_for(Signal::UsedQueue(1), Duration::from_secs(10)));
    assert_eq!(peer.lock().unwrap().output, vec![frame(100, 1)]);
    drop(net);
}

// Fuzzing.

#[test]
fn the_fuzz_entry_survives_pseudo_random_queues() {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for round in 0..2000 {
        let mut data = vec![0u8; 1 + 256 + 2 + 32 + 2048];
        for b in &mut data {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            *b = x as u8;
        }
        // Make some descriptors point into the data area with sane lengths and flags.
        if round % 2 == 0 {
            for d in 0..16 {
                let at = 1 + 16 * d;
                let len = if round % 4 == 0 {
                    1526u32
                } else {
                    12 + 40 * d as u32
                };
                data[at..at + 8].copy_from_slice(&(fuzz::DATA + 0x800 * d as u64).to_le_bytes());
                data[at + 8..at + 12].copy_from_slice(&len.to_le_bytes());
                data[at + 12] &= 0x3;
                data[at + 14] = ((d + 1) % 16) as u8;
                data[at + 15] = 0;
            }
            data[257] %= 17;
            data[258] = 0;
        }
        fuzz::fuzz_queue(&data);
    }
    fuzz::fuzz_queue(&[]);
}

#[test]
fn fuzz_seeds_run_clean() {
    for seed in [
        &include_bytes!("../../../../fuzz/corpus/virtio_net_queue/tx_split_frame")[..],
        &include_bytes!("../../../../fuzz/corpus/virtio_net_queue/rx_mergeable")[..],
        &include_bytes!("../../../../fuzz/corpus/virtio_net_queue/hostile_chains")[..],
    ] {
        fuzz::fuzz_queue(seed);
    }
}

// A listening stream backend.

#[test]
fn a_listening_backend_drops_frames_until_its_peer_connects_then_carries_both_ways() {
    use std::os::fd::AsRawFd;
    use std::os::unix::net::UnixListener;
    let path = std::env::temp_dir().join(format!("virtkit-net-listen-{}.sock", std::process::id()));
    let _ = std::fs::remove_file(&path);
    let listener = UnixListener::bind(&path).unwrap();
    let listening_fd = listener.as_raw_fd();
    let mut backend = StreamBackend::listen(listener).unwrap();
    let mut buf = vec![0u8; MAX_FRAME_LEN];
    assert!(!backend.connected());
    assert_eq!(backend.fd().as_raw_fd(), listening_fd);
    // No peer: nothing to read, and a frame sent goes nowhere (not an error, not held).
    assert_eq!(
        backend.recv(&mut buf).unwrap_err().kind(),
        io::ErrorKind::WouldBlock
    );
    backend.send(&[IoSlice::new(&frame(60, 1))]).unwrap();

    let mut peer = UnixStream::connect(&path).unwrap();
    peer.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    // The receive that finds the peer takes it and says "nothing yet"; the worker watches the
    // new descriptor from then on.
    assert_eq!(
        backend.recv(&mut buf).unwrap_err().kind(),
        io::ErrorKind::WouldBlock
    );
    assert!(backend.connected());
    assert_ne!(backend.fd().as_raw_fd(), listening_fd);

    peer.write_all(&prefixed(&frame(90, 2))).unwrap();
    let n = loop {
        match backend.recv(&mut buf) {
            Ok(n) => break n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => std::thread::sleep(Duration::from_millis(5)),
            Err(e) => panic!("{e}"),
        }
    };
    assert_eq!(&buf[..n], &frame(90, 2)[..]);
    backend.send(&[IoSlice::new(&frame(70, 3))]).unwrap();
    // The end of the device's tx pass writes what the pass gathered.
    backend.flush().unwrap();
    assert_eq!(
        read_prefixed(&mut peer),
        frame(70, 3),
        "the frame dropped before the peer came is not sent late"
    );
    std::fs::remove_file(&path).unwrap();
}
