//! The fuzzing entry point for the network queues: arbitrary bytes become the driver's side of
//! a queue in guest memory ([`queue_from_bytes`]), handled as the tx queue and as the rx queue
//! (frames of several sizes, with and without mergeable buffers), then the held rx chains are
//! given back as before a snapshot, and as a multiqueue card's control queue. It must never panic; `fuzz/` runs it under libFuzzer and a
//! unit test runs it over pseudo-random inputs.

use std::io::{self, IoSlice};
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::Arc;

use std::os::unix::net::UnixDatagram;
use virtkit_virtio::testing::fuzz::queue_from_bytes;

use super::backend::{NetBackend, MAX_FRAME_LEN, VNET_HDR_LEN};
use super::handler::NetHandler;
use super::metrics::NetMetrics;

pub use virtkit_virtio::testing::fuzz::{
    AVAIL_RING, DATA, DESC_TABLE, HIGH_REGION, LOW_REGION, QUEUE_SIZE, USED_RING,
};

/// A backend that takes a few frames and then would block, and hands out frames of the sizes
/// it was given.
struct FuzzBackend {
    fd: UnixDatagram,
    room: usize,
    frames: Vec<usize>,
    hdr_len: usize,
}

impl NetBackend for FuzzBackend {
    fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
    fn send(&mut self, frame: &[IoSlice<'_>]) -> io::Result<()> {
        let len: usize = frame.iter().map(|s| s.len()).sum();
        assert!(
            len <= VNET_HDR_LEN + MAX_FRAME_LEN,
            "the device bounds what it sends"
        );
        if self.room == 0 {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        self.room -= 1;
        Ok(())
    }
    fn recv(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let Some(len) = self.frames.pop() else {
            return Err(io::ErrorKind::WouldBlock.into());
        };
        let len = len.min(buf.len());
        buf[..len].fill(0x5a);
        Ok(len)
    }
    fn vnet_hdr_len(&self) -> usize {
        self.hdr_len
    }
}

/// Lays `data` out as a queue (flag bit 1: mergeable rx buffers; bit 2: the backend takes the
/// header; bits 4..: frames the backend takes before it would block) and handles it as the tx
/// queue twice, then as the rx queue with a short, a 1500-byte and a 9000-byte frame, then as
/// the control queue of a card with 4 pairs.
pub fn fuzz_queue(data: &[u8]) {
    let Some(&flags) = data.first() else {
        return;
    };
    let backend = |frames: Vec<usize>| FuzzBackend {
        fd: UnixDatagram::unbound().expect("a socket"),
        room: usize::from(flags >> 4),
        frames,
        hdr_len: if flags & 4 != 0 { VNET_HDR_LEN } else { 0 },
    };
    let metrics = Arc::new(NetMetrics::default());

    let mut handler = NetHandler::new(Box::new(backend(Vec::new())), metrics.clone());
    if let Some((mem, mut queue, _)) = queue_from_bytes(data) {
        for _ in 0..2 {
            let _ = handler.process_tx(&mut queue, &mem);
        }
    }

    let mut handler = NetHandler::new(Box::new(backend(vec![9000, 1500, 60, 0])), metrics);
    handler.mergeable = flags & 2 != 0;
    if let Some((mem, mut queue, _)) = queue_from_bytes(data) {
        for _ in 0..2 {
            let _ = handler.process_rx(&mut queue, &mem);
            handler.rx_starved = false;
        }
        let _ = handler.release_rx(&mut queue, &mem);
    }

    if let Some((mem, mut queue, _)) = queue_from_bytes(data) {
        let active = std::sync::atomic::AtomicU16::new(4);
        let _ = super::ctrl::process(&mut queue, &mem, 4, &active);
        let pairs = active.load(std::sync::atomic::Ordering::Acquire);
        assert!((1..=4).contains(&pairs), "VQ_PAIRS_SET keeps to the card's pairs");
    }
}
