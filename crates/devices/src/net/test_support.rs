//! Set-up shared by the net tests: a scriptable backend whose peer is the test.

use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::{Arc, Mutex};

use std::os::unix::net::UnixDatagram;

use super::backend::{NetBackend, Offloads};

/// What a [`TestBackend`] holds, shared with the test.
#[derive(Debug, Default)]
pub struct Peer {
    /// Frames for the guest.
    pub input: VecDeque<Vec<u8>>,
    /// Frames from the guest.
    pub output: Vec<Vec<u8>>,
    /// Frames it takes before sends would block (`None`: no limit).
    pub room: Option<usize>,
    /// Times `recv` was called.
    pub reads: usize,
}

/// A backend whose peer is the test; its descriptor is an unbound socket, never waited on by tests
/// that drive the handler directly.
pub struct TestBackend {
    pub peer: Arc<Mutex<Peer>>,
    pub hdr_len: usize,
    fd: UnixDatagram,
}

impl TestBackend {
    pub fn new() -> (TestBackend, Arc<Mutex<Peer>>) {
        let peer = Arc::new(Mutex::new(Peer::default()));
        let backend = TestBackend {
            peer: peer.clone(),
            hdr_len: 0,
            fd: UnixDatagram::unbound().unwrap(),
        };
        (backend, peer)
    }
}

impl NetBackend for TestBackend {
    fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
    fn send(&mut self, frame: &[IoSlice<'_>]) -> io::Result<()> {
        let mut peer = self.peer.lock().unwrap();
        if let Some(room) = &mut peer.room {
            if *room == 0 {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            *room -= 1;
        }
        peer.output
            .push(frame.iter().flat_map(|s| s.iter().copied()).collect());
        Ok(())
    }
    fn recv(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let mut peer = self.peer.lock().unwrap();
        peer.reads += 1;
        let Some(frame) = peer.input.pop_front() else {
            return Err(io::ErrorKind::WouldBlock.into());
        };
        buf[..frame.len()].copy_from_slice(&frame);
        Ok(frame.len())
    }
    fn vnet_hdr_len(&self) -> usize {
        self.hdr_len
    }
    fn offloads(&self) -> Offloads {
        Offloads {
            checksum: true,
            tso4: true,
            tso6: true,
            ecn: true,
        }
    }
}
