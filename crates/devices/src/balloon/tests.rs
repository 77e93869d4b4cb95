//! virtio-balloon on test guest memory: the queue logic with mock queues (inflate, deflate,
//! statistics, free page reporting, hostile chains), the configuration space and the handle,
//! and the device with its worker thread.

use std::sync::Arc;
use std::time::Duration;

use virtio_bindings::bindings::virtio_ring::{VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use virtio_queue::Queue;
use virtkit_virtio::testing::{
    chain_at, memory, memory_with_regions, used_elem, used_idx, RecordingInterrupt, Signal,
};
use virtkit_virtio::{DeviceQueue, VirtioDevice};
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::*;

virtkit_virtio::virtio_device_conformance_tests!(
    conformance,
    Balloon<RecordingDiscard>,
    Balloon::with_discard(
        BalloonConfig {
            deflate_on_oom: true,
            free_page_reporting: true,
            stats_interval_secs: 1,
        },
        RecordingDiscard::default()
    )
    .unwrap()
);

virtkit_virtio::virtio_device_conformance_tests!(
    conformance_defaults,
    Balloon,
    Balloon::new(BalloonConfig::default()).unwrap()
);

const MEM_SIZE: usize = 16 << 20;
const DATA: u64 = 0x80_0000;
const R: u16 = 0;
const W: u16 = VRING_DESC_F_WRITE as u16;
const PAGE: u64 = 4096;

fn handler() -> (BalloonHandler<RecordingDiscard>, RecordingDiscard) {
    let discard = RecordingDiscard::default();
    (
        BalloonHandler::new(discard.clone(), Arc::new(BalloonMetrics::default())),
        discard,
    )
}

fn write_pfns(mem: &GuestMemoryMmap, at: u64, pfns: &[u32]) -> u32 {
    let bytes: Vec<u8> = pfns.iter().flat_map(|p| p.to_le_bytes()).collect();
    mem.write_slice(&bytes, GuestAddress(at)).unwrap();
    bytes.len() as u32
}

fn stat_entries(entries: &[(u16, u64)]) -> Vec<u8> {
    entries
        .iter()
        .flat_map(|(tag, val)| {
            let mut e = tag.to_le_bytes().to_vec();
            e.extend_from_slice(&val.to_le_bytes());
            e
        })
        .collect()
}

// Inflate and deflate.

#[test]
fn inflate_discards_pages_with_contiguous_pfns_merged() {
    let mem = memory(MEM_SIZE);
    let (mut h, discard) = handler();
    let vq = MockSplitQueue::new(&mem, 16);
    let len = write_pfns(&mem, DATA, &[0x200, 0x201, 0x202, 0x300, 0x203, 0x204]);
    vq.add_desc_chains(&chain_at(&[(DATA, len, R)], 0), 0).unwrap();
    let mut queue: Queue = vq.create_queue().unwrap();
    assert!(h.process_inflate(&mut queue, &mem).unwrap());
    assert_eq!(
        discard.ranges(),
        vec![(0x20_0000, 3 * PAGE), (0x30_0000, PAGE), (0x20_3000, 2 * PAGE)]
    );
    assert_eq!(BalloonMetrics::get(&h.metrics().inflated_pages), 6);
    assert_eq!(used_idx(&mem, vq.used_addr()), 1);
    assert_eq!(used_elem(&mem, vq.used_addr(), 0), (0, 0));
}

#[test]
fn inflate_runs_merge_across_descriptors_of_a_chain() {
    let mem = memory(MEM_SIZE);
    let (mut h, discard) = handler();
    let vq = MockSplitQueue::new(&mem, 16);
    let a = write_pfns(&mem, DATA, &[0x400, 0x401]);
    let b = write_pfns(&mem, DATA + 0x100, &[0x402]);
    vq.add_desc_chains(&chain_at(&[(DATA, a, R), (DATA + 0x100, b, R)], 0), 0)
        .unwrap();
    let mut queue: Queue = vq.create_queue().unwrap();
    h.process_inflate(&mut queue, &mem).unwrap();
    assert_eq!(discard.ranges(), vec![(0x40_0000, 3 * PAGE)]);
}

#[test]
fn pfns_outside_memory_are_skipped_and_the_rest_discarded() {
    let mem = memory(MEM_SIZE);
    let (mut h, discard) = handler();
    let vq = MockSplitQueue::new(&mem, 16);
    let outside = (MEM_SIZE as u64 / PAGE) as u32;
    let len = write_pfns(&mem, DATA, &[0x200, outside, u32::MAX, 0x201]);
    vq.add_desc_chains(&chain_at(&[(DATA, len, R)], 0), 0).unwrap();
    let mut queue: Queue = vq.create_queue().unwrap();
    h.process_inflate(&mut queue, &mem).unwrap();
    assert_eq!(discard.ranges(), vec![(0x20_0000, 2 * PAGE)]);
    assert_eq!(BalloonMetrics::get(&h.metrics().invalid_ranges), 2);
    assert_eq!(BalloonMetrics::get(&h.metrics().inflated_pages), 2);
    assert_eq!(used_idx(&mem, vq.used_addr()), 1);
}

#[test]
fn runs_never_cross_regions_and_pages_in_a_hole_are_skipped() {
    // Two adjacent regions, then a hole, then a third.
    let mem = memory_with_regions(&[(0, 0x10_0000), (0x10_0000, 0x10_0000), (0x40_0000, 0x10_0000)]);
    let (mut h, discard) = handler();
    let vq = MockSplitQueue::new(&mem, 16);
    let data = 0x8_0000;
    let len = write_pfns(&mem, data, &[0xfe, 0xff, 0x100, 0x101, 0x300, 0x400]);
    vq.add_desc_chains(&chain_at(&[(data, len, R)], 0), 0).unwrap();
    let mut queue: Queue = vq.create_queue().unwrap();
    h.process_inflate(&mut queue, &mem).unwrap();
    assert_eq!(
        discard.ranges(),
        vec![(0xf_e000, 2 * PAGE), (0x10_0000, 2 * PAGE), (0x40_0000, PAGE)]
    );
    assert_eq!(BalloonMetrics::get(&h.metrics().invalid_ranges), 1);
}

#[test]
fn a_partial_pfn_at_the_end_of_a_buffer_is_ignored() {
    let mem = memory(MEM_SIZE);
    let (mut h, discard) = handler();
    let vq = MockSplitQueue::new(&mem, 16);
    write_pfns(&mem, DATA, &[0x200, 0x201, 0x202]);
    vq.add_desc_chains(&chain_at(&[(DATA, 10, R)], 0), 0).unwrap();
    let mut queue: Queue = vq.create_queue().unwrap();
    h.process_inflate(&mut queue, &mem).unwrap();
    assert_eq!(discard.ranges(), vec![(0x20_0000, 2 * PAGE)]);
}

#[test]
fn a_device_writable_descriptor_in_inflate_is_skipped() {
    let mem = memory(MEM_SIZE);
    let (mut h, discard) = handler();
    let vq = MockSplitQueue::new(&mem, 16);
    let a = write_pfns(&mem, DATA, &[0x200]);
    let b = write_pfns(&mem, DATA + 0x100, &[0x300]);
    vq.add_desc_chains(&chain_at(&[(DATA, a, R), (DATA + 0x100, b, W)], 0), 0)
        .unwrap();
    let mut queue: Queue = vq.create_queue().unwrap();
    h.process_inflate(&mut queue, &mem).unwrap();
    assert_eq!(discard.ranges(), vec![(0x20_0000, PAGE)]);
    assert_eq!(BalloonMetrics::get(&h.metrics().skipped_descriptors), 1);
    assert_eq!(used_idx(&mem, vq.used_addr()), 1);
}

#[test]
fn pfns_past_the_per_chain_cap_are_ignored() {
    let mem = memory(MEM_SIZE);
    let (mut h, discard) = handler();
    let vq = MockSplitQueue::new(&mem, 16);
    let cap = MAX_PFN_BYTES_PER_CHAIN as u32;
    // PFNs 0x800.. at 0x40_0000, one more than the cap allows.
    let pfns: Vec<u32> = (0..cap / 4 + 1).map(|i| 0x800 + (i % 0x100)).collect();
    write_pfns(&mem, 0x40_0000, &pfns);
    vq.add_desc_chains(
        &chain_at(&[(0x40_0000, cap, R), (0x40_0000 + u64::from(cap), 4, R)], 0),
        0,
    )
    .unwrap();
    let mut queue: Queue = vq.create_queue().unwrap();
    h.process_inflate(&mut queue, &mem).unwrap();
    assert_eq!(
        BalloonMetrics::get(&h.metrics().inflated_pages),
        u64::from(cap / 4)
    );
    assert_eq!(BalloonMetrics::get(&h.metrics().skipped_descriptors), 1);
    assert_eq!(discard.ranges().len(), (cap / 4 / 0x100) as usize);
}

#[test]
fn deflate_counts_pages_and_discards_nothing() {
    let mem = memory(MEM_SIZE);
    let (mut h, discard) = handler();
    let vq = MockSplitQueue::new(&mem, 16);
    let len = write_pfns(&mem, DATA, &[0x200, 0x201, 0x500, 0xffff_ffff]);
    vq.add_desc_chains(&chain_at(&[(DATA, len, R)], 0), 0).unwrap();
    let len = write_pfns(&mem, DATA + 0x100, &[0x600]);
    vq.add_desc_chains(&chain_at(&[(DATA + 0x100, len, R)], 1), 1)
        .unwrap();
    let mut queue: Queue = vq.create_queue().unwrap();
    assert!(h.process_deflate(&mut queue, &mem).unwrap());
    assert!(discard.ranges().is_empty());
    assert_eq!(BalloonMetrics::get(&h.metrics().deflated_pages), 4);
    assert_eq!(BalloonMetrics::get(&h.metrics().inflated_pages), 0);
    assert_eq!(used_idx(&mem, vq.used_addr()), 2);
}

// Statistics.

#[test]
fn statistics_parse_known_tags_and_ignore_unknown_ones_and_a_short_tail() {
    let mut bytes = stat_entries(&[
        (stat_tags::SWAP_IN, 1),
        (stat_tags::SWAP_OUT, 2),
        (stat_tags::MAJOR_FAULTS, 3),
        (stat_tags::MINOR_FAULTS, 4),
        (stat_tags::FREE_MEMORY, 5 << 20),
        (99, 42),
        (stat_tags::TOTAL_MEMORY, 6 << 20),
        (stat_tags::AVAILABLE_MEMORY, 7),
        (stat_tags::DISK_CACHES, 8),
        (stat_tags::HUGETLB_ALLOCATIONS, 9),
        (stat_tags::HUGETLB_FAILURES, 10),
    ]);
    bytes.extend_from_slice(&[4, 0, 1, 2, 3]); // a short entry: ignored
    let at = std::time::SystemTime::now();
    let s = BalloonStatistics::parse(&bytes, at);
    assert_eq!(s.updated_at, at);
    assert_eq!(
        [
            s.swap_in,
            s.swap_out,
            s.major_faults,
            s.minor_faults,
            s.free_memory,
            s.total_memory,
            s.available_memory,
            s.disk_caches,
            s.hugetlb_allocations,
            s.hugetlb_failures
        ],
        [1, 2, 3, 4, 5 << 20, 6 << 20, 7, 8, 9, 10].map(Some)
    );
    let partial = BalloonStatistics::parse(&stat_entries(&[(stat_tags::FREE_MEMORY, 1)])[..9], at);
    assert_eq!(partial.free_memory, None);
    let empty = BalloonStatistics::parse(&[], at);
    assert_eq!(empty.total_memory, None);
}

#[test]
fn the_statistics_buffer_is_held_and_handed_back_on_request() {
    let mem = memory(MEM_SIZE);
    let (mut h, _) = handler();
    let vq = MockSplitQueue::new(&mem, 16);
    let bytes = stat_entries(&[(stat_tags::FREE_MEMORY, 123), (stat_tags::TOTAL_MEMORY, 456)]);
    mem.write_slice(&bytes, GuestAddress(DATA)).unwrap();
    vq.add_desc_chains(&chain_at(&[(DATA, bytes.len() as u32, R)], 3), 3)
        .unwrap();
    let mut queue: Queue = vq.create_queue().unwrap();
    let (notify, stats) = h.process_stats(&mut queue, &mem).unwrap();
    assert!(!notify, "the buffer is held, nothing used");
    let stats = stats.expect("stats");
    assert_eq!((stats.free_memory, stats.total_memory), (Some(123), Some(456)));
    assert_eq!(used_idx(&mem, vq.used_addr()), 0);
    assert_eq!(h.stats_head(), Some(3));

    assert!(h.request_stats(&mut queue, &mem).unwrap());
    assert_eq!(used_idx(&mem, vq.used_addr()), 1);
    assert_eq!(used_elem(&mem, vq.used_addr(), 0), (3, 0));
    assert_eq!(h.stats_head(), None);
    assert!(!h.request_stats(&mut queue, &mem).unwrap(), "nothing held");
    assert_eq!(used_idx(&mem, vq.used_addr()), 1);

    // The guest refills it: held again, with the new values.
    let bytes = stat_entries(&[(stat_tags::FREE_MEMORY, 999)]);
    mem.write_slice(&bytes, GuestAddress(DATA)).unwrap();
    vq.add_desc_chains(&chain_at(&[(DATA, bytes.len() as u32, R)], 3), 3)
        .unwrap();
    let (_, stats) = h.process_stats(&mut queue, &mem).unwrap();
    assert_eq!(stats.unwrap().free_memory, Some(999));
    assert_eq!(h.stats_head(), Some(3));
}

#[test]
fn a_second_statistics_buffer_sends_the_first_back() {
    let mem = memory(MEM_SIZE);
    let (mut h, _) = handler();
    let vq = MockSplitQueue::new(&mem, 16);
    let bytes = stat_entries(&[(stat_tags::FREE_MEMORY, 1)]);
    mem.write_slice(&bytes, GuestAddress(DATA)).unwrap();
    vq.add_desc_chains(&chain_at(&[(DATA, 10, R)], 0), 0).unwrap();
    vq.add_desc_chains(&chain_at(&[(DATA, 10, R)], 1), 1).unwrap();
    let mut queue: Queue = vq.create_queue().unwrap();
    let (notify, _) = h.process_stats(&mut queue, &mem).unwrap();
    assert!(notify);
    assert_eq!(used_idx(&mem, vq.used_addr()), 1);
    assert_eq!(used_elem(&mem, vq.used_addr(), 0), (0, 0));
    assert_eq!(h.stats_head(), Some(1));
}

#[test]
fn statistics_buffers_outside_memory_or_writable_read_as_nothing() {
    let mem = memory(MEM_SIZE);
    let (mut h, _) = handler();
    let vq = MockSplitQueue::new(&mem, 16);
    vq.add_desc_chains(
        &chain_at(
            &[(MEM_SIZE as u64 - 4, 20, R), (DATA, 10, W), (u64::MAX - 3, 10, R)],
            0,
        ),
        0,
    )
    .unwrap();
    let mut queue: Queue = vq.create_queue().unwrap();
    let (_, stats) = h.process_stats(&mut queue, &mem).unwrap();
    assert_eq!(stats.unwrap().free_memory, None);
    assert_eq!(h.stats_head(), Some(0));
}

// Free page reporting.

#[test]
fn reported_ranges_are_discarded_inside_memory_and_whole_pages_only() {
    let mem = memory(MEM_SIZE);
    let (mut h, discard) = handler();
    let vq = MockSplitQueue::new(&mem, 16);
    let end = MEM_SIZE as u64;
    vq.add_desc_chains(
        &chain_at(&[(0x20_0000, 0x1_0000, W), (0x30_0800, 0x2000, R)], 0),
        0,
    )
    .unwrap();
    vq.add_desc_chains(&chain_at(&[(end - PAGE, 0x3000, W)], 2), 2)
        .unwrap();
    vq.add_desc_chains(&chain_at(&[(0x40_0100, 0x100, W)], 3), 3)
        .unwrap();
    let mut queue: Queue = vq.create_queue().unwrap();
    assert!(h.process_reporting(&mut queue, &mem).unwrap());
    assert_eq!(
        discard.ranges(),
        vec![(0x20_0000, 0x1_0000), (0x30_1000, PAGE), (end - PAGE, PAGE)]
    );
    assert_eq!(
        BalloonMetrics::get(&h.metrics().reported_bytes),
        0x1_0000 + 2 * PAGE
    );
    assert_eq!(BalloonMetrics::get(&h.metrics().invalid_ranges), 1);
    assert_eq!(used_idx(&mem, vq.used_addr()), 3);
    assert_eq!(used_elem(&mem, vq.used_addr(), 1), (2, 0));
}

#[test]
fn a_reported_range_over_a_hole_is_cut_at_the_regions() {
    let mem = memory_with_regions(&[(0, 0x10_0000), (0x20_0000, 0x10_0000)]);
    let (mut h, discard) = handler();
    let vq = MockSplitQueue::new(&mem, 16);
    vq.add_desc_chains(&chain_at(&[(0xf_0000, 0x12_0000, W)], 0), 0)
        .unwrap();
    let mut queue: Queue = vq.create_queue().unwrap();
    h.process_reporting(&mut queue, &mem).unwrap();
    assert_eq!(
        discard.ranges(),
        vec![(0xf_0000, 0x1_0000), (0x20_0000, 0x1_0000)]
    );
}

// Hostile chains.

#[test]
fn hostile_chains_are_answered_without_panic_in_every_queue() {
    let mem = memory(MEM_SIZE);
    let huge = u32::MAX;
    let chains: Vec<Vec<RawDescriptor>> = vec![
        chain_at(&[(DATA, 0, R)], 0),
        chain_at(&[(MEM_SIZE as u64 + 0x1000, 64, R)], 0),
        chain_at(&[(u64::MAX - 7, 64, R)], 0),
        chain_at(&[(DATA, huge, R)], 0),
        chain_at(&[(MEM_SIZE as u64 - 8, huge, W)], 0),
        chain_at(&[(0, huge, R), (u64::MAX, huge, W)], 0),
        // An indirect descriptor whose table chains back to itself.
        vec![RawDescriptor::from(SplitDescriptor::new(
            DATA + 0x1000,
            32,
            VRING_DESC_F_INDIRECT as u16,
            0,
        ))],
        // A chain whose next points at itself.
        vec![RawDescriptor::from(SplitDescriptor::new(
            DATA,
            8,
            VRING_DESC_F_NEXT as u16,
            0,
        ))],
        // An indirect table outside memory.
        vec![RawDescriptor::from(SplitDescriptor::new(
            u64::MAX - 15,
            32,
            VRING_DESC_F_INDIRECT as u16,
            0,
        ))],
    ];
    // The indirect table: two entries, the second's next pointing back at the first.
    let entry = |next: u16| SplitDescriptor::new(DATA, 8, VRING_DESC_F_NEXT as u16, next);
    mem.write_obj(RawDescriptor::from(entry(1)), GuestAddress(DATA + 0x1000))
        .unwrap();
    mem.write_obj(RawDescriptor::from(entry(0)), GuestAddress(DATA + 0x1010))
        .unwrap();
    write_pfns(&mem, DATA, &[0x200, 0x201]);
    for role in 0..4 {
        for chain in &chains {
            let (mut h, discard) = handler();
            let vq = MockSplitQueue::new(&mem, 16);
            vq.add_desc_chains(chain, 0).unwrap();
            let mut queue: Queue = vq.create_queue().unwrap();
            let _ = match role {
                0 => h.process_inflate(&mut queue, &mem),
                1 => h.process_deflate(&mut queue, &mem),
                2 => h
                    .process_stats(&mut queue, &mem)
                    .and_then(|_| h.request_stats(&mut queue, &mem)),
                _ => h.process_reporting(&mut queue, &mem),
            };
            for (addr, len) in discard.ranges() {
                check_discard(&mem, GuestAddress(addr), len).unwrap();
            }
        }
    }
}

#[test]
fn an_available_index_far_ahead_is_an_error_not_a_loop() {
    let mem = memory(MEM_SIZE);
    let (mut h, _) = handler();
    let vq = MockSplitQueue::new(&mem, 16);
    let mut queue: Queue = vq.create_queue().unwrap();
    mem.write_obj(1000u16, vq.avail_addr().unchecked_add(2)).unwrap();
    assert!(h.process_inflate(&mut queue, &mem).is_err());
    assert!(h.process_stats(&mut queue, &mem).is_err());
}

#[test]
fn fuzz_entry_point_survives_pseudo_random_queues() {
    let mut state = 0x5eed_1234_abcd_0042u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for round in 0..2000 {
        let mut data = vec![0u8; 1 + 256 + 2 + 32 + 2048];
        for b in data.iter_mut() {
            *b = next() as u8;
        }
        if round % 4 != 0 {
            for d in 0..16 {
                let at = 1 + 16 * d;
                let addr = if d % 5 == 4 {
                    0x2_0000 + next() % 0x1_2000
                } else {
                    fuzz::DATA + next() % 0x900
                };
                data[at..at + 8].copy_from_slice(&addr.to_le_bytes());
                let len = (next() % 0x3000) as u32;
                data[at + 8..at + 12].copy_from_slice(&len.to_le_bytes());
                data[at + 12] = (next() % 8) as u8;
                data[at + 13] = 0;
                data[at + 14] = (next() % 16) as u8;
                data[at + 15] = 0;
            }
            data[257] = (next() % 17) as u8;
            data[258] = 0;
            for e in 0..16 {
                data[259 + 2 * e] = (next() % 18) as u8;
                data[260 + 2 * e] = 0;
            }
            // PFNs mostly inside the fuzz memory.
            for p in 0..64 {
                let pfn = (next() % 0x40) as u32;
                data[291 + 4 * p..295 + 4 * p].copy_from_slice(&pfn.to_le_bytes());
            }
        }
        fuzz::fuzz_queue(&data);
    }
}

#[test]
fn the_fuzz_seeds_run_clean() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus/virtio_balloon_queue");
    let mut seeds = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        fuzz::fuzz_queue(&std::fs::read(entry.unwrap().path()).unwrap());
        seeds += 1;
    }
    assert!(seeds >= 5, "seeds in {}", dir.display());
}

// Configuration space and the handle.

fn device() -> (Balloon<RecordingDiscard>, RecordingDiscard) {
    let discard = RecordingDiscard::default();
    let config = BalloonConfig {
        deflate_on_oom: true,
        free_page_reporting: true,
        stats_interval_secs: 0,
    };
    (Balloon::with_discard(config, discard.clone()).unwrap(), discard)
}

fn read_u32(device: &impl VirtioDevice, offset: u64) -> u32 {
    let mut b = [0u8; 4];
    device.read_config(offset, &mut b);
    u32::from_le_bytes(b)
}

#[test]
fn identity_features_and_queues_follow_the_config() {
    let (d, _) = device();
    assert_eq!(d.device_type(), 5);
    assert_eq!(PCI_CLASS, (0x05, 0x00, 0x00));
    assert_eq!(
        d.features(),
        virtkit_virtio::features::VERSION_1
            | features::STATS_VQ
            | features::DEFLATE_ON_OOM
            | features::FREE_PAGE_REPORTING
    );
    assert_eq!(
        d.features() & (1 << 4),
        0,
        "no VIRTIO_BALLOON_F_PAGE_POISON: on a VM restored from a state file a page given back \
         reads as saved, not as zeros (docs/SAVE.md), which only page poisoning rules out"
    );
    assert_eq!(d.queue_max_sizes(), &[256, 256, 256, 256]);
    let plain = Balloon::new(BalloonConfig::default()).unwrap();
    assert_eq!(
        plain.features(),
        virtkit_virtio::features::VERSION_1 | features::STATS_VQ
    );
    assert_eq!(plain.queue_max_sizes(), &[256, 256, 256]);
}

#[test]
fn the_guest_writes_actual_and_nothing_else() {
    let (mut d, _) = device();
    let handle = d.handle();
    handle.set_target_bytes(10 * PAGE).unwrap();
    d.write_config(4, &0x0403_0201u32.to_le_bytes());
    assert_eq!(handle.actual_bytes(), 0x0403_0201 * PAGE);
    assert_eq!(read_u32(&d, 4), 0x0403_0201);
    d.write_config(6, &[9]);
    assert_eq!(read_u32(&d, 4), 0x0409_0201);
    d.write_config(0, &[0xff; 4]);
    d.write_config(8, &[0xff; 8]);
    assert_eq!(read_u32(&d, 0), 10, "num_pages is the host's");
    assert_eq!(read_u32(&d, 8), 0);
    assert_eq!(read_u32(&d, 12), 0);
    // A write straddling num_pages and actual changes only actual's bytes.
    d.write_config(2, &[0xee, 0xee, 0x07, 0, 0, 0]);
    assert_eq!(read_u32(&d, 0), 10);
    assert_eq!(read_u32(&d, 4), 7);
    d.write_config(u64::MAX, &[1, 2]);
    assert_eq!(read_u32(&d, 4), 7);
}

#[test]
fn targets_round_down_to_pages_and_too_large_ones_are_refused() {
    let (d, _) = device();
    let h = d.handle();
    h.set_target_bytes(3 * PAGE + 100).unwrap();
    assert_eq!(h.target_bytes(), 3 * PAGE);
    assert_eq!(read_u32(&d, 0), 3);
    assert_eq!(
        h.set_target_bytes(1 << 50),
        Err(BalloonError::TargetTooLarge(1 << 50))
    );
    assert_eq!(h.target_bytes(), 3 * PAGE);
}

/// Queues 0..n laid out by `MockSplitQueue` at 0x10_0000 + 64 KiB × index, and the mocks to
/// post buffers through.
fn mock_queues<'a>(
    mem: &'a GuestMemoryMmap,
    indices: &[u16],
) -> (
    Vec<MockSplitQueue<'a, GuestMemoryMmap>>,
    Vec<DeviceQueue>,
    Vec<EventFd>,
) {
    let mut mocks = Vec::new();
    let mut queues = Vec::new();
    let mut kicks = Vec::new();
    for &index in indices {
        let vq = MockSplitQueue::create(
            mem,
            GuestAddress(0x10_0000 + 0x1_0000 * u64::from(index)),
            QUEUE_SIZE,
        );
        let event = EventFd::new(EFD_NONBLOCK).unwrap();
        kicks.push(event.try_clone().unwrap());
        queues.push(DeviceQueue {
            index,
            queue: vq.create_queue().unwrap(),
            event,
        });
        mocks.push(vq);
    }
    (mocks, queues, kicks)
}

const WAIT: Duration = Duration::from_secs(5);

#[test]
fn a_target_set_before_activation_is_announced_when_it_activates_and_later_ones_at_once() {
    let mem = memory(MEM_SIZE);
    let (mut d, _) = device();
    let handle = d.handle();
    handle.set_target_bytes(64 * PAGE).unwrap();
    let interrupt = Arc::new(RecordingInterrupt::default());
    let (_mocks, queues, _kicks) = mock_queues(&mem, &[0, 1, 2, 3]);
    let features = d.features();
    d.activate(mem.clone(), interrupt.clone(), queues, features)
        .unwrap();
    assert_eq!(interrupt.signals(), vec![Signal::ConfigChanged]);
    handle.set_target_bytes(128 * PAGE).unwrap();
    assert_eq!(interrupt.signals(), vec![Signal::ConfigChanged; 2]);
    assert_eq!(read_u32(&d, 0), 128);
    handle.set_target_bytes(128 * PAGE).unwrap();
    assert_eq!(interrupt.signals().len(), 2, "no change, no interrupt");
    d.write_config(4, &100u32.to_le_bytes());
    assert_eq!(handle.actual_bytes(), 100 * PAGE);

    // After a reset the target stays, actual goes, and nothing is signalled.
    d.reset().unwrap();
    handle.set_target_bytes(0).unwrap();
    assert_eq!(interrupt.signals().len(), 2);
    assert_eq!(handle.actual_bytes(), 0);
}

#[test]
fn a_target_of_zero_is_not_announced_at_activation() {
    let mem = memory(MEM_SIZE);
    let (mut d, _) = device();
    let interrupt = Arc::new(RecordingInterrupt::default());
    let (_mocks, queues, _kicks) = mock_queues(&mem, &[0, 1]);
    d.activate(mem.clone(), interrupt.clone(), queues, 0).unwrap();
    assert!(interrupt.signals().is_empty());
}

#[test]
fn activation_needs_inflate_and_deflate_and_refuses_unknown_or_repeated_queues() {
    let mem = memory(MEM_SIZE);
    let interrupt = Arc::new(RecordingInterrupt::default());
    for indices in [&[0u16][..], &[1], &[0, 0, 1], &[0, 1, 4]] {
        let (mut d, _) = device();
        let (_mocks, queues, _kicks) = mock_queues(&mem, indices);
        let features = d.features();
        assert!(
            d.activate(mem.clone(), interrupt.clone(), queues, features)
                .is_err(),
            "{indices:?}"
        );
        assert!(d.reset().is_none());
    }
}

// The device with its worker thread.

#[test]
fn worker_discards_inflated_pages_for_real() {
    let mem = memory(MEM_SIZE);
    let mut d = Balloon::new(BalloonConfig {
        stats_interval_secs: 0,
        ..BalloonConfig::default()
    })
    .unwrap();
    let interrupt = Arc::new(RecordingInterrupt::default());
    let (mocks, queues, kicks) = mock_queues(&mem, &[0, 1, 2]);
    let features = d.features();
    d.activate(mem.clone(), interrupt.clone(), queues, features)
        .unwrap();

    let page = 0xa0_0000u64;
    mem.write_slice(&[0x77u8; 2 * PAGE as usize], GuestAddress(page))
        .unwrap();
    let len = write_pfns(&mem, DATA, &[(page / PAGE) as u32]);
    mocks[0]
        .add_desc_chains(&chain_at(&[(DATA, len, R)], 0), 0)
        .unwrap();
    kicks[0].write(1).unwrap();
    assert!(interrupt.wait_for(Signal::UsedQueue(0), WAIT));
    let mut back = vec![0u8; 2 * PAGE as usize];
    mem.read_slice(&mut back, GuestAddress(page)).unwrap();
    assert!(
        back[..PAGE as usize].iter().all(|&b| b == 0),
        "the inflated page reads zero"
    );
    assert!(
        back[PAGE as usize..].iter().all(|&b| b == 0x77),
        "its neighbour is intact"
    );
    assert_eq!(BalloonMetrics::get(&d.metrics().inflated_pages), 1);
    assert_eq!(BalloonMetrics::get(&d.metrics().discard_failures), 0);

    let len = write_pfns(&mem, DATA + 0x100, &[(page / PAGE) as u32]);
    mocks[1]
        .add_desc_chains(&chain_at(&[(DATA + 0x100, len, R)], 0), 0)
        .unwrap();
    kicks[1].write(1).unwrap();
    assert!(interrupt.wait_for(Signal::UsedQueue(1), WAIT));
    assert_eq!(BalloonMetrics::get(&d.metrics().deflated_pages), 1);
    assert_eq!(d.reset().unwrap().len(), 3);
}

#[test]
fn worker_holds_the_statistics_buffer_and_returns_it_on_request() {
    let mem = memory(MEM_SIZE);
    let (mut d, _) = device();
    let handle = d.handle();
    let interrupt = Arc::new(RecordingInterrupt::default());
    let (mocks, queues, kicks) = mock_queues(&mem, &[0, 1, 2, 3]);
    let features = d.features();
    d.activate(mem.clone(), interrupt.clone(), queues, features)
        .unwrap();
    assert!(handle.stats().is_none());

    let bytes = stat_entries(&[(stat_tags::FREE_MEMORY, 4242)]);
    mem.write_slice(&bytes, GuestAddress(DATA)).unwrap();
    mocks[2]
        .add_desc_chains(&chain_at(&[(DATA, bytes.len() as u32, R)], 0), 0)
        .unwrap();
    kicks[2].write(1).unwrap();
    let deadline = std::time::Instant::now() + WAIT;
    while handle.stats().is_none() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(1));
    }
    assert_eq!(handle.stats().unwrap().free_memory, Some(4242));
    assert!(!interrupt.signals().contains(&Signal::UsedQueue(2)), "held");

    handle.request_stats();
    assert!(interrupt.wait_for(Signal::UsedQueue(2), WAIT));
    assert_eq!(used_idx(&mem, mocks[2].used_addr()), 1);
    assert_eq!(BalloonMetrics::get(&handle.metrics().stats_reports), 1);
    d.reset().unwrap();
}

#[test]
fn the_statistics_buffer_survives_sleep_and_snapshot() {
    let mem = memory(MEM_SIZE);
    let (mut d, _) = device();
    let handle = d.handle();
    let interrupt = Arc::new(RecordingInterrupt::default());
    let (mocks, queues, kicks) = mock_queues(&mem, &[0, 1, 2, 3]);
    let features = d.features();
    d.activate(mem.clone(), interrupt.clone(), queues, features)
        .unwrap();
    mem.write_slice(&stat_entries(&[(stat_tags::FREE_MEMORY, 1)]), GuestAddress(DATA))
        .unwrap();
    mocks[2]
        .add_desc_chains(&chain_at(&[(DATA, 10, R)], 5), 5)
        .unwrap();
    kicks[2].write(1).unwrap();
    let deadline = std::time::Instant::now() + WAIT;
    while handle.stats().is_none() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(1));
    }
    let queues = d.sleep().unwrap();
    let state = d.snapshot().unwrap();
    assert_eq!(state.stats_head, Some(5));
    assert_eq!(state.acked_features, features);

    let (mut fresh, _) = device();
    fresh.restore(state.clone()).unwrap();
    assert_eq!(fresh.snapshot().unwrap(), state);
    let mut other = Balloon::with_discard(BalloonConfig::default(), RecordingDiscard::default()).unwrap();
    assert!(other.restore(state).is_err(), "features differ");

    d.wake(queues).unwrap();
    handle.request_stats();
    assert!(interrupt.wait_for(Signal::UsedQueue(2), WAIT));
    assert_eq!(used_elem(&mem, mocks[2].used_addr(), 0), (5, 0));
    d.reset().unwrap();
}

#[test]
fn a_driver_without_statistics_gets_reporting_on_queue_two() {
    let mem = memory(MEM_SIZE);
    let (mut d, discard) = device();
    let interrupt = Arc::new(RecordingInterrupt::default());
    let (mocks, queues, kicks) = mock_queues(&mem, &[0, 1, 2]);
    let features = virtkit_virtio::features::VERSION_1 | features::FREE_PAGE_REPORTING;
    d.activate(mem.clone(), interrupt.clone(), queues, features)
        .unwrap();
    mocks[2]
        .add_desc_chains(&chain_at(&[(0x20_0000, 0x4000, W)], 0), 0)
        .unwrap();
    kicks[2].write(1).unwrap();
    assert!(interrupt.wait_for(Signal::UsedQueue(2), WAIT));
    assert_eq!(discard.ranges(), vec![(0x20_0000, 0x4000)]);
    // A statistics request has no queue to go to.
    d.handle().request_stats();
    assert_eq!(d.reset().unwrap().len(), 3);
}

#[test]
fn statistics_are_polled_on_the_interval() {
    let mem = memory(MEM_SIZE);
    let mut d = Balloon::with_discard(
        BalloonConfig {
            stats_interval_secs: 1,
            ..BalloonConfig::default()
        },
        RecordingDiscard::default(),
    )
    .unwrap();
    let interrupt = Arc::new(RecordingInterrupt::default());
    let (mocks, queues, kicks) = mock_queues(&mem, &[0, 1, 2]);
    let features = d.features();
    d.activate(mem.clone(), interrupt.clone(), queues, features)
        .unwrap();
    mem.write_slice(&stat_entries(&[(stat_tags::FREE_MEMORY, 1)]), GuestAddress(DATA))
        .unwrap();
    mocks[2]
        .add_desc_chains(&chain_at(&[(DATA, 10, R)], 0), 0)
        .unwrap();
    kicks[2].write(1).unwrap();
    assert!(interrupt.wait_for(Signal::UsedQueue(2), Duration::from_secs(3)));
    d.reset().unwrap();
}
