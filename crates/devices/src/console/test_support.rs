//! Set-up shared by the console tests: a scriptable backend and control messages (guest memory
//! and chains come from `virtkit_virtio::testing`).

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::{Arc, Mutex};

use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::backend::PortBackend;

/// What a [`TestBackend`] holds, shared with the test.
#[derive(Debug, Default)]
pub struct Peer {
    /// Bytes for the guest.
    pub input: VecDeque<u8>,
    /// Bytes from the guest.
    pub output: Vec<u8>,
    /// Bytes it takes before writes would block (`None`: no limit).
    pub room: Option<usize>,
    pub connected: bool,
}

/// A backend whose peer is the test. Its input descriptor is an eventfd, only ever asked whether
/// it exists.
pub struct TestBackend {
    pub peer: Arc<Mutex<Peer>>,
    fd: EventFd,
}

impl TestBackend {
    pub fn new() -> (TestBackend, Arc<Mutex<Peer>>) {
        let peer = Arc::new(Mutex::new(Peer {
            connected: true,
            ..Peer::default()
        }));
        let backend = TestBackend {
            peer: peer.clone(),
            fd: EventFd::new(EFD_NONBLOCK).unwrap(),
        };
        (backend, peer)
    }
}

impl PortBackend for TestBackend {
    fn input_fd(&self) -> Option<RawFd> {
        Some(self.fd.as_raw_fd())
    }
    fn output_fd(&self) -> Option<RawFd> {
        Some(self.fd.as_raw_fd())
    }
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let mut peer = self.peer.lock().unwrap();
        if peer.input.is_empty() {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let n = buf.len().min(peer.input.len());
        for (i, b) in peer.input.drain(..n).enumerate() {
            buf[i] = b;
        }
        Ok(n)
    }
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let mut peer = self.peer.lock().unwrap();
        let n = peer.room.map_or(buf.len(), |room| room.min(buf.len()));
        if n == 0 {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        if let Some(room) = &mut peer.room {
            *room -= n;
        }
        peer.output.extend_from_slice(&buf[..n]);
        Ok(n)
    }
    fn connected(&self) -> bool {
        self.peer.lock().unwrap().connected
    }
    fn input_ended(&mut self) {}
    fn output_failed(&mut self) {
        self.peer.lock().unwrap().connected = false;
    }
}

/// An 8-byte control message.
pub fn control(id: u32, event: u16, value: u16) -> Vec<u8> {
    let mut b = id.to_le_bytes().to_vec();
    b.extend_from_slice(&event.to_le_bytes());
    b.extend_from_slice(&value.to_le_bytes());
    b
}
