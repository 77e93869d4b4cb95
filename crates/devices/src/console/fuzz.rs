//! The fuzzing entry point for the console's queue handling: arbitrary bytes become the
//! driver's side of a queue (descriptor table, available ring, buffers) in guest memory, which
//! is then handled as the control tx queue and as a port's tx queue. It must never panic;
//! `fuzz/` runs it under libFuzzer and a unit test over pseudo-random inputs.

use std::io;
use std::os::fd::RawFd;
use std::sync::Arc;

use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::backend::PortBackend;
use super::handler::ConsoleHandler;
use super::metrics::ConsoleMetrics;
use super::port::ConsolePortConfig;

/// Queue size used by the fuzz target.
pub const QUEUE_SIZE: u16 = 16;
pub const DESC_TABLE: u64 = 0x0;
pub const AVAIL_RING: u64 = 0x1000;
pub const USED_RING: u64 = 0x2000;
pub const DATA: u64 = 0x3000;
/// Guest memory: two regions with a hole between them, so buffers can straddle a gap.
pub const LOW_REGION: (u64, usize) = (0, 0x1_0000);
pub const HIGH_REGION: (u64, usize) = (0x2_0000, 0x1_0000);

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

fn queue(event_idx: bool) -> Option<Queue> {
    let mut queue = Queue::new(QUEUE_SIZE).ok()?;
    queue.set_size(QUEUE_SIZE);
    queue.set_desc_table_address(Some(DESC_TABLE as u32), Some(0));
    queue.set_avail_ring_address(Some(AVAIL_RING as u32), Some(0));
    queue.set_used_ring_address(Some(USED_RING as u32), Some(0));
    queue.set_event_idx(event_idx);
    queue.set_ready(true);
    Some(queue)
}

/// Lays `data` out as a queue and handles it: the first byte holds flags (bit 0: event index,
/// bits 4..: how many bytes the port's backend takes before it would block, in 64s), then the
/// descriptor table (16 bytes per descriptor), the available ring's index, its 16 entries, and
/// the rest as buffer contents at [`DATA`].
pub fn fuzz_queue(data: &[u8]) {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let table_len = usize::from(QUEUE_SIZE) * 16;
    let (table, rest) = rest.split_at(rest.len().min(table_len));
    let (avail_idx, rest) = rest.split_at(rest.len().min(2));
    let (ring, rest) = rest.split_at(rest.len().min(usize::from(QUEUE_SIZE) * 2));
    let buffers = &rest[..rest.len().min(LOW_REGION.1 - DATA as usize)];
    let layout = |mem: &GuestMemoryMmap| {
        for (address, bytes) in [
            (DESC_TABLE, table),
            (AVAIL_RING + 2, avail_idx),
            (AVAIL_RING + 4, ring),
            (DATA, buffers),
        ] {
            mem.write_slice(bytes, GuestAddress(address))
                .expect("inside the low region");
        }
    };
    let memory = || {
        GuestMemoryMmap::from_ranges(&[
            (GuestAddress(LOW_REGION.0), LOW_REGION.1),
            (GuestAddress(HIGH_REGION.0), HIGH_REGION.1),
        ])
        .expect("fuzz memory")
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
    let mem = memory();
    layout(&mem);
    if let Some(mut q) = queue(flags & 1 != 0) {
        for _ in 0..2 {
            let _ = handler.process_control_tx(&mut q, &mem);
        }
    }
    let mem = memory();
    layout(&mem);
    if let Some(mut q) = queue(flags & 1 != 0) {
        let _ = handler.fill_control_rx(&mut q, &mem);
    }
    // As port 0's tx queue, twice: the second pass continues what the first left pending.
    let mem = memory();
    layout(&mem);
    if let Some(mut q) = queue(flags & 1 != 0) {
        for _ in 0..2 {
            let _ = handler.process_port_tx(0, &mut q, &mem);
        }
    }
}
