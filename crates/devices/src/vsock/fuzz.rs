//! The fuzzing entry point for the vsock packet path: arbitrary bytes become the driver's side
//! of the tx queue ([`queue_from_bytes`]); the device takes every packet there into a muxer
//! whose host accepts nothing and refuses every connection, then answers into an rx queue laid
//! out the same way. It must never panic; `fuzz/` runs it under libFuzzer and a unit test runs
//! it over pseudo-random inputs.

use std::io;
use std::os::fd::RawFd;
use std::sync::Arc;

use virtkit_virtio::testing::fuzz::queue_from_bytes;

use super::handler::{process_rx, process_tx, VsockHandler};
use super::host::{HostStream, VsockHost};
use super::metrics::VsockMetrics;
use super::muxer::Muxer;

/// A stream that never exists (the fuzz host refuses every connection).
pub struct NoStream;

impl io::Read for NoStream {
    fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
        Ok(0)
    }
}

impl io::Write for NoStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl std::os::fd::AsRawFd for NoStream {
    fn as_raw_fd(&self) -> RawFd {
        -1
    }
}

impl HostStream for NoStream {
    fn shutdown_write(&self) -> io::Result<()> {
        Ok(())
    }
}

/// A host with no clients where every port takes the connection (flag bit 1) or none does.
struct FuzzHost {
    accept_connections: bool,
}

impl VsockHost for FuzzHost {
    type Stream = NoStream;
    fn listener_fd(&self) -> Option<RawFd> {
        None
    }
    fn accept(&mut self) -> io::Result<Option<NoStream>> {
        Ok(None)
    }
    fn connect(&mut self, _: u32) -> io::Result<NoStream> {
        if self.accept_connections {
            Ok(NoStream)
        } else {
            Err(io::ErrorKind::ConnectionRefused.into())
        }
    }
}

/// Lays `data` out as the tx queue (flag bit 1: host ports accept connections) and runs the
/// packets through the device; then the same bytes as the rx queue take what it owes.
pub fn fuzz_queue(data: &[u8]) {
    let Some((mem, mut queue, flags)) = queue_from_bytes(data) else {
        return;
    };
    let metrics = Arc::new(VsockMetrics::default());
    let host = FuzzHost {
        accept_connections: flags & 2 != 0,
    };
    let mut handler = VsockHandler::new(Muxer::new(host, 3, metrics.clone()), metrics);
    let _ = process_tx(&mut queue, &mem, &mut handler);
    handler.muxer.host_poll(std::time::Instant::now());
    if let Some((mem, mut rx, _)) = queue_from_bytes(data) {
        let _ = process_rx(&mut rx, &mem, &mut handler);
    }
}
