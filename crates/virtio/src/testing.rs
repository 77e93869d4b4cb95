//! Helpers for device tests: guest memory, queues laid out in it, and an interrupt that records
//! what it was asked to do. Used by [`crate::virtio_device_conformance_tests`] and by device
//! crates' own tests; no KVM, no privileges.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use virtio_queue::{Queue, QueueT};
use vm_memory::{GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::{DeviceQueue, VirtioInterrupt};

/// Size of [`test_memory`].
pub const TEST_MEMORY_SIZE: usize = 16 << 20;
/// Where [`test_queues`] puts the rings: 64 KiB per queue from here.
pub const QUEUE_AREA: u64 = 0x10_0000;

/// 16 MiB of guest memory at address 0.
pub fn test_memory() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), TEST_MEMORY_SIZE)]).expect("test memory")
}

/// Ready queues of the given sizes with their rings in [`test_memory`], each with a fresh eventfd.
pub fn test_queues(sizes: &[u16]) -> Vec<DeviceQueue> {
    sizes
        .iter()
        .enumerate()
        .map(|(index, &size)| {
            let base = QUEUE_AREA + 0x1_0000 * index as u64;
            let mut queue = Queue::new(size).expect("queue size");
            queue.set_size(size);
            queue.set_desc_table_address(Some(base as u32), Some(0));
            queue.set_avail_ring_address(Some((base + 0x8000) as u32), Some(0));
            queue.set_used_ring_address(Some((base + 0xc000) as u32), Some(0));
            queue.set_ready(true);
            DeviceQueue {
                index: index as u16,
                queue,
                event: EventFd::new(EFD_NONBLOCK).expect("eventfd"),
            }
        })
        .collect()
}

/// What a [`RecordingInterrupt`] saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    UsedQueue(u16),
    ConfigChanged,
    NeedsReset,
}

/// An interrupt that records signals.
#[derive(Debug, Default)]
pub struct RecordingInterrupt {
    signals: Mutex<Vec<Signal>>,
}

impl RecordingInterrupt {
    pub fn signals(&self) -> Vec<Signal> {
        self.signals.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Waits up to `timeout` for `signal` (a worker thread sends it).
    pub fn wait_for(&self, signal: Signal, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.signals().contains(&signal) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        false
    }

    fn push(&self, signal: Signal) {
        self.signals
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(signal);
    }
}

impl VirtioInterrupt for RecordingInterrupt {
    fn signal_used_queue(&self, queue: u16) {
        self.push(Signal::UsedQueue(queue));
    }
    fn signal_config_changed(&self) {
        self.push(Signal::ConfigChanged);
    }
    fn signal_needs_reset(&self) {
        self.push(Signal::NeedsReset);
    }
}
