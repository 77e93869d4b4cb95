//! The fuzzing entry point for the console's queue handling: arbitrary bytes become the
//! driver's side of a queue (descriptor table, available ring, buffers) in guest memory, which
//! is then handled as the control tx queue and as a port's tx queue. It must never panic;
//! `fuzz/` runs it under libFuzzer and a unit test over pseudo-random inputs.

use std::io;
use std::os::fd::RawFd;
use std::sync::Arc;

use virtkit_virtio::testing::fuzz::queue_from_bytes;

use super::backend::PortBackend;
use super::handler::ConsoleHandler;
use super::metrics::ConsoleMetrics;
use super::port::ConsolePortConfig;

pub use virtkit_virtio::testing::fuzz::{
    AVAIL_RING, DATA, DESC_TABLE, HIGH_REGION, LOW_REGION, QUEUE_SIZE, USED_RING,
};

/// A backend that takes a few bytes at a time and then would block, from the flags byte.
struct FuzzBackend {
    budget: usize,
    taken: usize,
}

impl PortBackend for FuzzBackend {
    fn input_fd(&self) -> Option<RawFd> {
        None
    }
    fn output_fd(&self) -> Option<RawFd> {
        None
    }
    fn read(&mut self, _buf: &mut [u8]) -> io::Result<usize> {
        Err(io::ErrorKind::WouldBlock.into())
    }
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.taken >= self.budget {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let n = buf.len().min(self.budget - self.taken).min(7);
        self.taken += n;
        Ok(n)
    }
    fn connected(&self) -> bool {
        true
    }
    fn input_ended(&mut self) {}
    fn output_failed(&mut self) {}
}

/// Lays `data` out as a queue ([`queue_from_bytes`]; flag bits 4..: how many bytes the port's
/// backend takes before it would block, in 64s) and handles it, each time in fresh memory.
pub fn fuzz_queue(data: &[u8]) {
    let Some(&flags) = data.first() else {
        return;
    };
    let ports = vec![
        ConsolePortConfig::console(FuzzBackend {
            budget: usize::from(flags >> 4) * 64,
            taken: 0,
        }),
        ConsolePortConfig::named("fuzz", FuzzBackend { budget: 0, taken: 0 }),
    ];
    let mut handler = ConsoleHandler::new(ports, Arc::new(ConsoleMetrics::default()));
    handler.multiport = true;

    // As the control tx queue, then as the control rx queue with what the messages queued.
    if let Some((mem, mut q, _)) = queue_from_bytes(data) {
        for _ in 0..2 {
            let _ = handler.process_control_tx(&mut q, &mem);
        }
    }
    if let Some((mem, mut q, _)) = queue_from_bytes(data) {
        let _ = handler.fill_control_rx(&mut q, &mem);
    }
    // As port 0's tx queue, twice: the second pass continues what the first left pending.
    if let Some((mem, mut q, _)) = queue_from_bytes(data) {
        for _ in 0..2 {
            let _ = handler.process_port_tx(0, &mut q, &mem);
        }
    }
}
