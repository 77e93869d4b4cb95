//! virtio-rng on test guest memory: buffers filled within the rate limit, hostile descriptor
//! chains answered empty or refused, never a panic, and the worker answering notifications.

use std::sync::Arc;
use std::time::{Duration, Instant};

use virtio_bindings::bindings::virtio_ring::{VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use virtio_queue::Queue;
use virtkit_virtio::testing::{test_memory, test_queues, used_elem, used_idx, RecordingInterrupt, Signal};
use virtkit_virtio::VirtioDevice;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::*;

virtkit_virtio::virtio_device_conformance_tests!(conformance, Rng<HostRandom>, Rng::host(None));
virtkit_virtio::virtio_device_conformance_tests!(
    conformance_limited,
    Rng<HostRandom>,
    Rng::host(Some(RateLimit {
        bytes_per_second: 1024,
        burst_bytes: None
    }))
);

const W: u16 = VRING_DESC_F_WRITE as u16;
const DATA: u64 = 0x20_0000;

/// Hands out 1, 2, 3, ... so tests can see exactly which bytes went where.
struct Counting(u8);

impl EntropySource for Counting {
    fn fill(&mut self, buf: &mut [u8]) -> std::io::Result<()> {
        for b in buf {
            self.0 = self.0.wrapping_add(1);
            *b = self.0;
        }
        Ok(())
    }
}

fn desc(addr: u64, len: u32, flags: u16, next: u16) -> RawDescriptor {
    RawDescriptor::from(SplitDescriptor::new(addr, len, flags, next))
}

/// Chains of one writable buffer each, of the given lengths, at DATA + 64 KiB × i.
fn single_buffers(lengths: &[u32]) -> Vec<RawDescriptor> {
    lengths
        .iter()
        .enumerate()
        .map(|(i, &len)| desc(DATA + 0x1_0000 * i as u64, len, W, 0))
        .collect()
}

fn handler(limit: Option<RateLimit>, now: Instant) -> (EntropyHandler<Counting>, Arc<RngMetrics>) {
    let metrics = Arc::new(RngMetrics::default());
    let limiter = limit.map(|l| TokenBucket::new(l, now));
    (
        EntropyHandler::new(Counting(0), limiter, metrics.clone()),
        metrics,
    )
}

/// Used-ring entries (head, len) from index `from`.
fn used(mem: &GuestMemoryMmap, vq: &MockSplitQueue<GuestMemoryMmap>, from: u16, to: u16) -> Vec<(u32, u32)> {
    (from..to)
        .map(|i| used_elem(mem, vq.used_addr(), u64::from(i)))
        .collect()
}

#[test]
fn each_buffer_is_filled_with_fresh_bytes() {
    let mem = test_memory();
    let vq = MockSplitQueue::new(&mem, 16);
    vq.add_desc_chains(&single_buffers(&[16, 512]), 0).unwrap();
    let mut queue: Queue = vq.create_queue().unwrap();
    let now = Instant::now();
    let (mut h, metrics) = handler(None, now);
    let fill = process_queue(&mut queue, &mem, &mut h, now).unwrap();
    assert_eq!(fill.again_after, None);
    assert_eq!(used(&mem, &vq, 0, 2), vec![(0, 16), (1, 512)]);
    let mut first = [0u8; 16];
    mem.read_slice(&mut first, GuestAddress(DATA)).unwrap();
    assert_eq!(first, core::array::from_fn(|i| i as u8 + 1));
    let second: u8 = mem.read_obj(GuestAddress(DATA + 0x1_0000)).unwrap();
    assert_eq!(second, 17, "the second buffer continues the source, not a repeat");
    assert_eq!(RngMetrics::get(&metrics.bytes), 528);
    assert_eq!(RngMetrics::get(&metrics.requests), 2);
}

#[test]
fn a_chain_of_several_buffers_is_filled_across_them() {
    let mem = test_memory();
    let vq = MockSplitQueue::new(&mem, 16);
    let chain = [
        desc(DATA, 3, W | VRING_DESC_F_NEXT as u16, 1),
        desc(DATA + 0x100, 5, W, 0),
    ];
    vq.add_desc_chains(&chain, 0).unwrap();
    let mut queue: Queue = vq.create_queue().unwrap();
    let now = Instant::now();
    let (mut h, _) = handler(None, now);
    process_queue(&mut queue, &mem, &mut h, now).unwrap();
    assert_eq!(used(&mem, &vq, 0, 1), vec![(0, 8)]);
    let tail: u8 = mem.read_obj(GuestAddress(DATA + 0x100 + 4)).unwrap();
    assert_eq!(tail, 8);
}

#[test]
fn rate_limit_fills_within_the_burst_then_waits_with_buffers_left_in_the_ring() {
    let mem = test_memory();
    let vq = MockSplitQueue::new(&mem, 16);
    vq.add_desc_chains(&single_buffers(&[100, 100, 100]), 0).unwrap();
    let mut queue: Queue = vq.create_queue().unwrap();
    let t0 = Instant::now();
    // 5000 B/s: a grant is 100 bytes (20 ms); the burst of 150 covers one buffer and a half.
    let limit = RateLimit {
        bytes_per_second: 5000,
        burst_bytes: Some(150),
    };
    let (mut h, metrics) = handler(Some(limit), t0);
    let fill = process_queue(&mut queue, &mem, &mut h, t0).unwrap();
    assert_eq!(used(&mem, &vq, 0, 1), vec![(0, 100)]);
    assert_eq!(
        used_idx(&mem, vq.used_addr()),
        1,
        "50 bytes left is less than a grant: the rest wait"
    );
    let wait = fill.again_after.expect("throttled");
    assert!(
        wait >= Duration::from_millis(9) && wait <= Duration::from_millis(11),
        "{wait:?}"
    );
    assert_eq!(RngMetrics::get(&metrics.throttled), 1);
    // 5 ms later: 75 bytes, still less than a grant.
    let fill = process_queue(&mut queue, &mem, &mut h, t0 + Duration::from_millis(5)).unwrap();
    assert!(fill.again_after.is_some());
    assert_eq!(used_idx(&mem, vq.used_addr()), 1);
    // 10 ms after the start: 100 bytes, the second buffer is filled; the third waits again.
    process_queue(&mut queue, &mem, &mut h, t0 + Duration::from_millis(10)).unwrap();
    assert_eq!(used(&mem, &vq, 1, 2), vec![(1, 100)]);
    assert_eq!(used_idx(&mem, vq.used_addr()), 2);
    assert_eq!(RngMetrics::get(&metrics.bytes), 200);
}

#[test]
fn a_buffer_the_device_may_only_read_is_answered_empty() {
    let mem = test_memory();
    let vq = MockSplitQueue::new(&mem, 16);
    let chains = [desc(DATA, 64, 0, 0), desc(DATA + 0x1000, 8, W, 0)];
    vq.add_desc_chains(&chains, 0).unwrap();
    let mut queue: Queue = vq.create_queue().unwrap();
    mem.write_slice(&[0xaa; 64], GuestAddress(DATA)).unwrap();
    let now = Instant::now();
    let (mut h, metrics) = handler(None, now);
    process_queue(&mut queue, &mem, &mut h, now).unwrap();
    assert_eq!(used(&mem, &vq, 0, 2), vec![(0, 0), (1, 8)]);
    let mut untouched = [0u8; 64];
    mem.read_slice(&mut untouched, GuestAddress(DATA)).unwrap();
    assert_eq!(
        untouched, [0xaa; 64],
        "the driver's readable buffer is not written"
    );
    assert_eq!(RngMetrics::get(&metrics.bad_chains), 1);
}

#[test]
fn buffers_outside_guest_memory_are_answered_empty() {
    let mem = test_memory();
    let vq = MockSplitQueue::new(&mem, 16);
    let end = 16u64 << 20;
    let chains = [
        desc(end - 4, 8, W, 0),
        desc(u64::MAX - 2, 16, W, 0),
        desc(DATA, 0, W, 0),
        desc(DATA, 4, W, 0),
    ];
    vq.add_desc_chains(&chains, 0).unwrap();
    let mut queue: Queue = vq.create_queue().unwrap();
    let now = Instant::now();
    let (mut h, metrics) = handler(None, now);
    process_queue(&mut queue, &mem, &mut h, now).unwrap();
    assert_eq!(used(&mem, &vq, 0, 4), vec![(0, 0), (1, 0), (2, 0), (3, 4)]);
    assert_eq!(RngMetrics::get(&metrics.bad_chains), 2);
}

#[test]
fn a_huge_buffer_gets_at_most_the_request_limit() {
    let mem = test_memory();
    let vq = MockSplitQueue::new(&mem, 16);
    vq.add_desc_chains(&[desc(DATA, 8 << 20, W, 0)], 0).unwrap();
    let mut queue: Queue = vq.create_queue().unwrap();
    let now = Instant::now();
    let (mut h, _) = handler(None, now);
    process_queue(&mut queue, &mem, &mut h, now).unwrap();
    assert_eq!(used(&mem, &vq, 0, 1), vec![(0, MAX_REQUEST_BYTES as u32)]);
}

#[test]
fn an_indirect_table_pointing_at_itself_ends_without_a_panic() {
    let mem = test_memory();
    let vq = MockSplitQueue::new(&mem, 16);
    let table = 0x30_0000u64;
    // The indirect table's one entry says "next" to itself.
    mem.write_obj(
        SplitDescriptor::new(DATA, 16, W | VRING_DESC_F_NEXT as u16, 0),
        GuestAddress(table),
    )
    .unwrap();
    vq.add_desc_chains(&[desc(table, 16, VRING_DESC_F_INDIRECT as u16, 0)], 0)
        .unwrap();
    let mut queue: Queue = vq.create_queue().unwrap();
    let now = Instant::now();
    let (mut h, _) = handler(None, now);
    let _ = process_queue(&mut queue, &mem, &mut h, now);
}

#[test]
fn a_driver_repeating_heads_gets_a_queue_worth_and_a_runaway_index_is_an_error() {
    let mem = test_memory();
    let vq = MockSplitQueue::new(&mem, 16);
    vq.add_desc_chains(&single_buffers(&[4]), 0).unwrap();
    let mut queue: Queue = vq.create_queue().unwrap();
    // A full ring of the same head (every ring entry is 0).
    mem.write_obj(16u16, GuestAddress(vq.avail_addr().0 + 2)).unwrap();
    let now = Instant::now();
    let (mut h, metrics) = handler(None, now);
    let fill = process_queue(&mut queue, &mem, &mut h, now).unwrap();
    assert_eq!(fill.again_after, None);
    assert_eq!(RngMetrics::get(&metrics.requests), 16);
    assert_eq!(used_idx(&mem, vq.used_addr()), 16);
    // An index further ahead than the ring holds breaks the queue: an error, not a loop.
    mem.write_obj(60000u16, GuestAddress(vq.avail_addr().0 + 2))
        .unwrap();
    assert!(process_queue(&mut queue, &mem, &mut h, now).is_err());
}

#[test]
fn fuzz_entry_point_survives_pseudo_random_inputs() {
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    for _ in 0..300 {
        let len = (state % 700) as usize;
        let data: Vec<u8> = (0..len)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state as u8
            })
            .collect();
        fuzz::fuzz_queue(&data);
    }
}

#[test]
fn the_worker_answers_a_notification_and_interrupts() {
    let mut device = Rng::new(Counting(0), None);
    let interrupt = Arc::new(RecordingInterrupt::default());
    let mem = test_memory();
    let queues = test_queues(device.queue_max_sizes());
    let vq_base = virtkit_virtio::testing::QUEUE_AREA;
    // One writable 32-byte buffer: descriptor 0, avail ring entry 0, idx 1.
    mem.write_obj(SplitDescriptor::new(DATA, 32, W, 0), GuestAddress(vq_base))
        .unwrap();
    mem.write_obj(0u16, GuestAddress(vq_base + 0x8000 + 4)).unwrap();
    mem.write_obj(1u16, GuestAddress(vq_base + 0x8000 + 2)).unwrap();
    let kick = queues[0].event.try_clone().unwrap();
    device
        .activate(mem.clone(), interrupt.clone(), queues, device.features())
        .unwrap();
    kick.write(1).unwrap();
    assert!(interrupt.wait_for(Signal::UsedQueue(0), Duration::from_secs(5)));
    let used_len: u32 = mem.read_obj(GuestAddress(vq_base + 0xc000 + 8)).unwrap();
    assert_eq!(used_len, 32);
    assert_eq!(RngMetrics::get(&device.metrics().bytes), 32);
    let last: u8 = mem.read_obj(GuestAddress(DATA + 31)).unwrap();
    assert_eq!(last, 32);
}

#[test]
fn the_worker_comes_back_on_its_timer_when_the_limit_held_buffers() {
    let limit = RateLimit {
        bytes_per_second: 1000,
        burst_bytes: Some(10),
    };
    let mut device = Rng::new(Counting(0), Some(limit));
    let interrupt = Arc::new(RecordingInterrupt::default());
    let mem = test_memory();
    let queues = test_queues(device.queue_max_sizes());
    let base = virtkit_virtio::testing::QUEUE_AREA;
    // Two buffers of 10 bytes: the burst covers the first, the second needs ~10 ms of refill
    // and no further notification.
    for i in 0..2u16 {
        mem.write_obj(
            SplitDescriptor::new(DATA + 0x100 * u64::from(i), 10, W, 0),
            GuestAddress(base + 16 * u64::from(i)),
        )
        .unwrap();
        mem.write_obj(i, GuestAddress(base + 0x8000 + 4 + 2 * u64::from(i)))
            .unwrap();
    }
    mem.write_obj(2u16, GuestAddress(base + 0x8000 + 2)).unwrap();
    let kick = queues[0].event.try_clone().unwrap();
    device
        .activate(mem.clone(), interrupt, queues, device.features())
        .unwrap();
    kick.write(1).unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while RngMetrics::get(&device.metrics().bytes) < 20 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(RngMetrics::get(&device.metrics().bytes), 20);
    let used_idx: u16 = mem.read_obj(GuestAddress(base + 0xc000 + 2)).unwrap();
    assert_eq!(used_idx, 2);
    assert!(device.reset().is_some());
}
