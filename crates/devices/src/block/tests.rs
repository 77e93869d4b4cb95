//! virtio-blk on test guest memory: round trips against memory and temp-file disks, and hostile
//! descriptor chains, each answered with an error status or refused, never a panic.

use std::sync::Arc;
use std::time::Duration;

use virtio_bindings::bindings::virtio_ring::{VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use virtio_queue::{Queue, QueueT};
use virtkit_virtio::testing::{chain_at, memory, Signal};
use virtkit_virtio::VirtioDevice;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::request::{status, types};
use super::test_support::{activate, limits, pattern, TempImage, XorShift};
use super::*;

virtkit_virtio::virtio_device_conformance_tests!(
    conformance,
    Block<MemoryDisk>,
    Block::new(MemoryDisk::new(1 << 20), false, Some("conformance")).unwrap()
);

const MEM_SIZE: usize = 16 << 20;
const HEADER: u64 = 0x10_0000;
const DATA: u64 = 0x20_0000;
const STATUS: u64 = 0x30_0000;
const INDIRECT: u64 = 0x40_0000;
const DISK_SIZE: usize = 1 << 20;
const R: u16 = 0;
const W: u16 = VRING_DESC_F_WRITE as u16;
const SERIAL: &str = "virtkit-disk-0001";

fn handler(disk: MemoryDisk, read_only: bool) -> RequestHandler<MemoryDisk> {
    let mut id = [0u8; 20];
    id[..SERIAL.len()].copy_from_slice(SERIAL.as_bytes());
    RequestHandler::new(
        disk,
        limits(DISK_SIZE, read_only),
        id,
        Arc::new(BlockMetrics::default()),
    )
}

fn header(mem: &GuestMemoryMmap, kind: u32, sector: u64) {
    mem.write_obj(kind, GuestAddress(HEADER)).unwrap();
    mem.write_obj(0u32, GuestAddress(HEADER + 4)).unwrap();
    mem.write_obj(sector, GuestAddress(HEADER + 8)).unwrap();
    mem.write_obj(0xffu8, GuestAddress(STATUS)).unwrap();
}

struct Outcome {
    result: Result<bool, QueueError>,
    used_len: u32,
    status: u8,
}

fn run_raw(mem: &GuestMemoryMmap, descs: &[RawDescriptor], h: &mut RequestHandler<MemoryDisk>) -> Outcome {
    let vq = MockSplitQueue::new(mem, 16);
    vq.add_desc_chains(descs, 0).unwrap();
    let mut queue: Queue = vq.create_queue().unwrap();
    let result = process_queue(&mut queue, mem, h);
    let used_len = mem.read_obj::<u32>(vq.used_addr().unchecked_add(8)).unwrap();
    Outcome {
        result,
        used_len,
        status: mem.read_obj(GuestAddress(STATUS)).unwrap(),
    }
}

/// Answers a chain of (address, length, flags), linked in order, as the only request in a queue
/// of 16.
fn run(mem: &GuestMemoryMmap, descs: &[(u64, u32, u16)], h: &mut RequestHandler<MemoryDisk>) -> Outcome {
    run_raw(mem, &chain_at(descs, 0), h)
}

use vm_memory::Address;

#[test]
fn read_round_trip_fills_guest_buffers_from_the_disk() {
    let mem = memory(MEM_SIZE);
    let mut disk = MemoryDisk::new(DISK_SIZE);
    disk.data[1024..1024 + 1536].copy_from_slice(&pattern(1536, 3));
    let mut h = handler(disk, false);
    header(&mem, types::IN, 2);
    // Data split over two descriptors.
    let out = run(
        &mem,
        &[
            (HEADER, 16, R),
            (DATA, 1024, W),
            (DATA + 0x1000, 512, W),
            (STATUS, 1, W),
        ],
        &mut h,
    );
    assert!(out.result.unwrap(), "interrupt needed");
    assert_eq!(out.status, status::OK);
    assert_eq!(out.used_len, 1536 + 1);
    let mut got = vec![0u8; 1536];
    mem.read_slice(&mut got[..1024], GuestAddress(DATA)).unwrap();
    mem.read_slice(&mut got[1024..], GuestAddress(DATA + 0x1000))
        .unwrap();
    assert_eq!(got, pattern(1536, 3));
}

#[test]
fn write_round_trip_reaches_the_disk() {
    let mem = memory(MEM_SIZE);
    let mut h = handler(MemoryDisk::new(DISK_SIZE), false);
    mem.write_slice(&pattern(4096, 9), GuestAddress(DATA)).unwrap();
    header(&mem, types::OUT, 8);
    let out = run(&mem, &[(HEADER, 16, R), (DATA, 4096, R), (STATUS, 1, W)], &mut h);
    assert_eq!(out.status, status::OK);
    assert_eq!(out.used_len, 1);
    assert_eq!(&h.disk.data[4096..8192], &pattern(4096, 9)[..]);
}

#[test]
fn header_and_data_in_one_descriptor_and_status_in_the_data_one_work_too() {
    let mem = memory(MEM_SIZE);
    let mut h = handler(MemoryDisk::new(DISK_SIZE), false);
    // virtio 1.x: no framing assumptions. Header + data in one readable descriptor.
    header(&mem, types::OUT, 0);
    mem.write_slice(&pattern(512, 1), GuestAddress(HEADER + 16))
        .unwrap();
    let out = run(&mem, &[(HEADER, 16 + 512, R), (STATUS, 1, W)], &mut h);
    assert_eq!(out.status, status::OK);
    assert_eq!(&h.disk.data[..512], &pattern(512, 1)[..]);
    // A read whose data and status share one writable descriptor.
    header(&mem, types::IN, 0);
    let out = run(&mem, &[(HEADER, 16, R), (DATA, 513, W)], &mut h);
    assert_eq!(out.used_len, 513);
    assert_eq!(mem.read_obj::<u8>(GuestAddress(DATA + 512)).unwrap(), status::OK);
}

#[test]
fn flush_reaches_the_backend() {
    let mem = memory(MEM_SIZE);
    let mut h = handler(MemoryDisk::new(DISK_SIZE), false);
    header(&mem, types::FLUSH, 0);
    let out = run(&mem, &[(HEADER, 16, R), (STATUS, 1, W)], &mut h);
    assert_eq!(out.status, status::OK);
    assert_eq!(h.disk.flushes, 1);
}

fn range(mem: &GuestMemoryMmap, at: u64, sector: u64, sectors: u32, flags: u32) {
    mem.write_obj(sector, GuestAddress(at)).unwrap();
    mem.write_obj(sectors, GuestAddress(at + 8)).unwrap();
    mem.write_obj(flags, GuestAddress(at + 12)).unwrap();
}

#[test]
fn discard_and_write_zeroes_zero_their_ranges_only() {
    let mem = memory(MEM_SIZE);
    let mut disk = MemoryDisk::new(DISK_SIZE);
    disk.data.fill(0xab);
    let mut h = handler(disk, false);
    header(&mem, types::DISCARD, 0);
    range(&mem, DATA, 1, 2, 0);
    range(&mem, DATA + 16, 10, 1, 0);
    let out = run(&mem, &[(HEADER, 16, R), (DATA, 32, R), (STATUS, 1, W)], &mut h);
    assert_eq!(out.status, status::OK);
    assert!(h.disk.data[512..1536].iter().all(|&b| b == 0));
    assert!(h.disk.data[5120..5632].iter().all(|&b| b == 0));
    assert_eq!(h.disk.data[0], 0xab);
    assert_eq!(h.disk.data[1536], 0xab);
    header(&mem, types::WRITE_ZEROES, 0);
    range(&mem, DATA, 100, 1, 1);
    let out = run(&mem, &[(HEADER, 16, R), (DATA, 16, R), (STATUS, 1, W)], &mut h);
    assert_eq!(out.status, status::OK);
    assert!(h.disk.data[51200..51712].iter().all(|&b| b == 0));
}

#[test]
fn discard_with_the_unmap_flag_or_unknown_flags_is_unsupported() {
    let mem = memory(MEM_SIZE);
    let mut h = handler(MemoryDisk::new(DISK_SIZE), false);
    header(&mem, types::DISCARD, 0);
    range(&mem, DATA, 1, 2, 1);
    assert_eq!(
        run(&mem, &[(HEADER, 16, R), (DATA, 16, R), (STATUS, 1, W)], &mut h).status,
        status::UNSUPP
    );
    header(&mem, types::WRITE_ZEROES, 0);
    range(&mem, DATA, 1, 2, 0x8000_0000);
    assert_eq!(
        run(&mem, &[(HEADER, 16, R), (DATA, 16, R), (STATUS, 1, W)], &mut h).status,
        status::UNSUPP
    );
}

#[test]
fn too_many_or_partial_or_out_of_disk_ranges_are_io_errors() {
    let mem = memory(MEM_SIZE);
    let mut h = handler(MemoryDisk::new(DISK_SIZE), false);
    header(&mem, types::DISCARD, 0);
    for i in 0..5 {
        range(&mem, DATA + 16 * i, i, 1, 0);
    }
    assert_eq!(
        run(&mem, &[(HEADER, 16, R), (DATA, 80, R), (STATUS, 1, W)], &mut h).status,
        status::IOERR
    );
    assert_eq!(
        run(&mem, &[(HEADER, 16, R), (DATA, 12, R), (STATUS, 1, W)], &mut h).status,
        status::IOERR
    );
    range(&mem, DATA, u64::MAX, 2, 0);
    assert_eq!(
        run(&mem, &[(HEADER, 16, R), (DATA, 16, R), (STATUS, 1, W)], &mut h).status,
        status::IOERR
    );
}

#[test]
fn get_id_writes_the_serial() {
    let mem = memory(MEM_SIZE);
    let mut h = handler(MemoryDisk::new(DISK_SIZE), false);
    header(&mem, types::GET_ID, 0);
    let out = run(&mem, &[(HEADER, 16, R), (DATA, 20, W), (STATUS, 1, W)], &mut h);
    assert_eq!(out.status, status::OK);
    assert_eq!(out.used_len, 21);
    let mut id = [0u8; 20];
    mem.read_slice(&mut id, GuestAddress(DATA)).unwrap();
    assert_eq!(&id[..SERIAL.len()], SERIAL.as_bytes());
    assert!(id[SERIAL.len()..].iter().all(|&b| b == 0));
}

#[test]
fn read_only_disk_refuses_writes_discards_and_write_zeroes_but_reads_and_flushes() {
    let mem = memory(MEM_SIZE);
    let mut disk = MemoryDisk::new(DISK_SIZE);
    disk.data.fill(0x5a);
    let mut h = handler(disk.clone(), true);
    mem.write_slice(&[0u8; 512], GuestAddress(DATA)).unwrap();
    for kind in [types::OUT, types::DISCARD, types::WRITE_ZEROES] {
        header(&mem, kind, 0);
        range(&mem, DATA, 0, 1, 0);
        let out = run(&mem, &[(HEADER, 16, R), (DATA, 512, R), (STATUS, 1, W)], &mut h);
        assert_eq!(out.status, status::IOERR, "type {kind}");
    }
    assert_eq!(h.disk, disk, "untouched");
    header(&mem, types::IN, 0);
    assert_eq!(
        run(&mem, &[(HEADER, 16, R), (DATA, 512, W), (STATUS, 1, W)], &mut h).status,
        status::OK
    );
    header(&mem, types::FLUSH, 0);
    assert_eq!(
        run(&mem, &[(HEADER, 16, R), (STATUS, 1, W)], &mut h).status,
        status::OK
    );
}

#[test]
fn read_only_device_offers_the_ro_feature_and_no_discard() {
    let block = Block::new(MemoryDisk::new(DISK_SIZE), true, None).unwrap();
    assert_ne!(block.features() & features::RO, 0);
    assert_eq!(block.features() & (features::DISCARD | features::WRITE_ZEROES), 0);
    let rw = Block::new(MemoryDisk::new(DISK_SIZE), false, None).unwrap();
    assert_eq!(rw.features() & features::RO, 0);
    assert_ne!(rw.features() & features::FLUSH, 0);
}

#[test]
fn config_space_reports_capacity_and_limits() {
    let block = Block::new(MemoryDisk::new(DISK_SIZE + 100), false, None).unwrap();
    let mut b = [0u8; 8];
    block.read_config(0, &mut b);
    assert_eq!(u64::from_le_bytes(b), (DISK_SIZE / 512) as u64, "whole sectors");
    let mut w = [0u8; 4];
    block.read_config(0x14, &mut w);
    assert_eq!(u32::from_le_bytes(w), 512, "blk_size");
    block.read_config(0x0c, &mut w);
    assert_eq!(u32::from_le_bytes(w), u32::from(QUEUE_SIZE) - 2, "seg_max");
    block.read_config(0x28, &mut w);
    assert_eq!(u32::from_le_bytes(w), 16, "max_discard_seg");
    assert!(Block::new(MemoryDisk::new(512), false, Some("this serial is far too long")).is_err());
}

// Hostile chains.

#[test]
fn data_outside_guest_memory_is_an_io_error_and_writes_nothing() {
    let mem = memory(MEM_SIZE);
    let mut h = handler(MemoryDisk::new(DISK_SIZE), false);
    header(&mem, types::IN, 0);
    let out = run(
        &mem,
        &[(HEADER, 16, R), (MEM_SIZE as u64 - 256, 512, W), (STATUS, 1, W)],
        &mut h,
    );
    assert_eq!(out.status, status::IOERR);
    assert_eq!(out.used_len, 1);
    header(&mem, types::OUT, 0);
    let out = run(
        &mem,
        &[(HEADER, 16, R), (u64::MAX - 100, 512, R), (STATUS, 1, W)],
        &mut h,
    );
    assert_eq!(out.status, status::IOERR);
    let out = run(
        &mem,
        &[(HEADER, 16, R), (DATA, u32::MAX, R), (STATUS, 1, W)],
        &mut h,
    );
    assert_eq!(out.status, status::IOERR, "oversized descriptor");
}

#[test]
fn header_outside_guest_memory_is_an_io_error() {
    let mem = memory(MEM_SIZE);
    let mut h = handler(MemoryDisk::new(DISK_SIZE), false);
    header(&mem, types::IN, 0);
    let out = run(&mem, &[(MEM_SIZE as u64 + 0x1000, 16, R), (STATUS, 1, W)], &mut h);
    assert_eq!(out.status, status::IOERR);
}

#[test]
fn looping_chain_is_returned_unanswered() {
    let mem = memory(MEM_SIZE);
    let mut h = handler(MemoryDisk::new(DISK_SIZE), false);
    header(&mem, types::IN, 0);
    let descs = [
        RawDescriptor::from(SplitDescriptor::new(HEADER, 16, VRING_DESC_F_NEXT as u16, 1)),
        RawDescriptor::from(SplitDescriptor::new(
            STATUS,
            1,
            (VRING_DESC_F_NEXT | VRING_DESC_F_WRITE) as u16,
            0,
        )),
    ];
    let out = run_raw(&mem, &descs, &mut h);
    assert!(out.result.is_ok());
    assert_eq!(out.used_len, 0);
    assert_eq!(out.status, 0xff, "status untouched");
    assert_eq!(BlockMetrics::get(&h.metrics().broken_chains), 1);
}

#[test]
fn next_index_beyond_the_table_is_returned_unanswered() {
    let mem = memory(MEM_SIZE);
    let mut h = handler(MemoryDisk::new(DISK_SIZE), false);
    header(&mem, types::IN, 0);
    let descs = [RawDescriptor::from(SplitDescriptor::new(
        HEADER,
        16,
        VRING_DESC_F_NEXT as u16,
        200,
    ))];
    let out = run_raw(&mem, &descs, &mut h);
    assert_eq!(out.used_len, 0);
    assert_eq!(out.status, 0xff);
}

#[test]
fn data_in_the_wrong_direction_is_an_io_error() {
    let mem = memory(MEM_SIZE);
    let mut disk = MemoryDisk::new(DISK_SIZE);
    disk.data.fill(7);
    let mut h = handler(disk, false);
    header(&mem, types::IN, 0);
    assert_eq!(
        run(&mem, &[(HEADER, 16, R), (DATA, 512, R), (STATUS, 1, W)], &mut h).status,
        status::IOERR
    );
    header(&mem, types::OUT, 0);
    assert_eq!(
        run(&mem, &[(HEADER, 16, R), (DATA, 512, W), (STATUS, 1, W)], &mut h).status,
        status::IOERR
    );
    assert!(h.disk.data.iter().all(|&b| b == 7));
    header(&mem, types::GET_ID, 0);
    assert_eq!(
        run(&mem, &[(HEADER, 16, R), (DATA, 20, R), (STATUS, 1, W)], &mut h).status,
        status::IOERR
    );
}

#[test]
fn readable_after_writable_is_an_io_error() {
    let mem = memory(MEM_SIZE);
    let mut h = handler(MemoryDisk::new(DISK_SIZE), false);
    header(&mem, types::IN, 0);
    let out = run(&mem, &[(DATA, 512, W), (HEADER, 16, R), (STATUS, 1, W)], &mut h);
    assert_eq!(out.status, status::IOERR);
}

#[test]
fn requests_beyond_the_disk_or_overflowing_are_io_errors() {
    let mem = memory(MEM_SIZE);
    let mut h = handler(MemoryDisk::new(DISK_SIZE), false);
    for sector in [
        (DISK_SIZE / 512) as u64,
        (DISK_SIZE / 512) as u64 - 1 + 1,
        u64::MAX,
        u64::MAX >> 9,
    ] {
        header(&mem, types::IN, sector);
        let out = run(&mem, &[(HEADER, 16, R), (DATA, 512, W), (STATUS, 1, W)], &mut h);
        assert_eq!(out.status, status::IOERR, "sector {sector}");
    }
    header(&mem, types::IN, (DISK_SIZE / 512) as u64 - 1);
    assert_eq!(
        run(&mem, &[(HEADER, 16, R), (DATA, 512, W), (STATUS, 1, W)], &mut h).status,
        status::OK
    );
}

#[test]
fn partial_sectors_and_short_headers_are_io_errors() {
    let mem = memory(MEM_SIZE);
    let mut h = handler(MemoryDisk::new(DISK_SIZE), false);
    header(&mem, types::IN, 0);
    assert_eq!(
        run(&mem, &[(HEADER, 16, R), (DATA, 100, W), (STATUS, 1, W)], &mut h).status,
        status::IOERR
    );
    assert_eq!(
        run(&mem, &[(HEADER, 8, R), (STATUS, 1, W)], &mut h).status,
        status::IOERR
    );
    assert_eq!(
        run(&mem, &[(STATUS, 1, W)], &mut h).status,
        status::IOERR,
        "no header at all"
    );
}

#[test]
fn unknown_request_type_is_unsupported() {
    let mem = memory(MEM_SIZE);
    let mut h = handler(MemoryDisk::new(DISK_SIZE), false);
    for kind in [2, 10, 14, 0xdead] {
        header(&mem, kind, 0);
        assert_eq!(
            run(&mem, &[(HEADER, 16, R), (STATUS, 1, W)], &mut h).status,
            status::UNSUPP
        );
    }
}

#[test]
fn zero_length_or_read_only_status_is_returned_unanswered() {
    let mem = memory(MEM_SIZE);
    let mut h = handler(MemoryDisk::new(DISK_SIZE), false);
    header(&mem, types::FLUSH, 0);
    let out = run(&mem, &[(HEADER, 16, R), (STATUS, 0, W)], &mut h);
    assert_eq!((out.used_len, out.status), (0, 0xff));
    let out = run(&mem, &[(HEADER, 16, R), (STATUS, 1, R)], &mut h);
    assert_eq!((out.used_len, out.status), (0, 0xff));
    let out = run(&mem, &[(HEADER, 16, R), (MEM_SIZE as u64, 1, W)], &mut h);
    assert_eq!(out.used_len, 0, "status outside memory");
}

#[test]
fn indirect_chains_work_and_bad_indirect_tables_are_refused() {
    let mem = memory(MEM_SIZE);
    let mut disk = MemoryDisk::new(DISK_SIZE);
    disk.data[..512].copy_from_slice(&pattern(512, 5));
    let mut h = handler(disk, false);
    header(&mem, types::IN, 0);
    for (i, raw) in chain_at(&[(HEADER, 16, R), (DATA, 512, W), (STATUS, 1, W)], 0)
        .into_iter()
        .enumerate()
    {
        mem.write_obj(raw, GuestAddress(INDIRECT + 16 * i as u64))
            .unwrap();
    }
    let head = RawDescriptor::from(SplitDescriptor::new(
        INDIRECT,
        48,
        VRING_DESC_F_INDIRECT as u16,
        0,
    ));
    let out = run_raw(&mem, &[head], &mut h);
    assert_eq!(out.status, status::OK);
    let mut got = vec![0u8; 512];
    mem.read_slice(&mut got, GuestAddress(DATA)).unwrap();
    assert_eq!(got, pattern(512, 5));
    // A table whose length is not whole descriptors.
    mem.write_obj(0xffu8, GuestAddress(STATUS)).unwrap();
    let bad = RawDescriptor::from(SplitDescriptor::new(
        INDIRECT,
        47,
        VRING_DESC_F_INDIRECT as u16,
        0,
    ));
    let out = run_raw(&mem, &[bad], &mut h);
    assert_eq!((out.used_len, out.status), (0, 0xff));
}

#[test]
fn head_index_beyond_the_queue_breaks_the_queue_without_panicking() {
    let mem = memory(MEM_SIZE);
    let mut h = handler(MemoryDisk::new(DISK_SIZE), false);
    let vq = MockSplitQueue::new(&mem, 16);
    // One available entry naming descriptor 99 of 16.
    mem.write_obj(99u16, vq.avail_addr().unchecked_add(4)).unwrap();
    mem.write_obj(1u16, vq.avail_addr().unchecked_add(2)).unwrap();
    let mut queue: Queue = vq.create_queue().unwrap();
    assert!(process_queue(&mut queue, &mem, &mut h).is_err());
}

#[test]
fn available_index_far_ahead_is_an_error_not_a_hang() {
    let mem = memory(MEM_SIZE);
    let mut h = handler(MemoryDisk::new(DISK_SIZE), false);
    let vq = MockSplitQueue::new(&mem, 16);
    mem.write_obj(1000u16, vq.avail_addr().unchecked_add(2)).unwrap();
    let mut queue: Queue = vq.create_queue().unwrap();
    assert!(process_queue(&mut queue, &mem, &mut h).is_err());
}

#[test]
fn empty_queue_needs_no_interrupt() {
    let mem = memory(MEM_SIZE);
    let mut h = handler(MemoryDisk::new(DISK_SIZE), false);
    let vq = MockSplitQueue::new(&mem, 16);
    let mut queue: Queue = vq.create_queue().unwrap();
    assert!(!process_queue(&mut queue, &mem, &mut h).unwrap());
}

#[test]
fn fuzz_entry_point_survives_pseudo_random_queues() {
    let mut rng = XorShift(0x5eed_1234_abcd_0042);
    for round in 0..3000 {
        let mut data = vec![0u8; 1 + 256 + 2 + 32 + 2048];
        for b in data.iter_mut() {
            *b = rng.next() as u8;
        }
        // Most rounds: descriptors that point into the buffers and a sane avail index, so the
        // parser gets past the walker; the rest stay raw.
        if round % 4 != 0 {
            for d in 0..16 {
                let at = 1 + 16 * d;
                let addr = fuzz::DATA + rng.next() % 0x900;
                data[at..at + 8].copy_from_slice(&addr.to_le_bytes());
                let len = (rng.next() % 1100) as u32;
                data[at + 8..at + 12].copy_from_slice(&len.to_le_bytes());
                data[at + 14] = (rng.next() % 16) as u8;
                data[at + 15] = 0;
            }
            data[257] = (rng.next() % 17) as u8;
            data[258] = 0;
            for e in 0..16 {
                data[259 + 2 * e] = (rng.next() % 18) as u8;
                data[260 + 2 * e] = 0;
            }
            // Request headers at the start of the buffers: a known type most of the time.
            let kinds = [0u32, 1, 4, 8, 11, 13, 99];
            let kind = kinds[(rng.next() % kinds.len() as u64) as usize];
            data[291..295].copy_from_slice(&kind.to_le_bytes());
            data[299..307].copy_from_slice(&(rng.next() % 140).to_le_bytes());
        }
        fuzz::fuzz_queue(&data);
    }
}

/// Found by `cargo fuzz` (scripts/fuzz.sh): a header split inside a descriptor at the top of the
/// address space made the parser compute an address past `u64::MAX` (a panic with overflow
/// checks, a wrapped address without). It must be an I/O error, as any buffer outside memory is.
#[test]
fn header_split_inside_a_descriptor_at_the_end_of_the_address_space_is_an_io_error() {
    let mem = memory(MEM_SIZE);
    let mut h = handler(MemoryDisk::new(DISK_SIZE), false);
    header(&mem, types::IN, 0);
    let out = run(&mem, &[(HEADER, 5, R), (u64::MAX, 32, R), (STATUS, 1, W)], &mut h);
    assert!(out.result.is_ok());
    assert_eq!(out.status, status::IOERR);
    assert_eq!(out.used_len, 1);

    // The fuzzer's input itself (fuzz/corpus/virtio_blk_queue/header_split_at_address_space_end):
    // flags, then descriptors header 5 bytes / 32 bytes at u64::MAX / status, avail index 1.
    let mut input = vec![0u8; 1 + 256 + 2 + 2];
    let descs: [(u64, u32, u16, u16); 3] = [
        (fuzz::DATA + 0x31, 5, VRING_DESC_F_NEXT as u16, 1),
        (u64::MAX, 32, VRING_DESC_F_NEXT as u16, 2),
        (fuzz::DATA + 0x400, 1, W, 0),
    ];
    for (i, (addr, len, flags, next)) in descs.into_iter().enumerate() {
        let at = 1 + 16 * i;
        input[at..at + 8].copy_from_slice(&addr.to_le_bytes());
        input[at + 8..at + 12].copy_from_slice(&len.to_le_bytes());
        input[at + 12..at + 14].copy_from_slice(&flags.to_le_bytes());
        input[at + 14..at + 16].copy_from_slice(&next.to_le_bytes());
    }
    input[257] = 1;
    fuzz::fuzz_queue(&input);
}

// The device with its worker thread.

#[test]
fn worker_answers_a_notified_request_and_interrupts() {
    let mem = memory(MEM_SIZE);
    let mut disk = MemoryDisk::new(DISK_SIZE);
    disk.data[..512].copy_from_slice(&pattern(512, 11));
    let mut block = Block::new(disk, false, None).unwrap();
    let vq = MockSplitQueue::new(&mem, 16);
    let (kick, interrupt) = activate(&mut block, &mem, vq.create_queue().unwrap());
    header(&mem, types::IN, 0);
    vq.add_desc_chains(
        &chain_at(&[(HEADER, 16, R), (DATA, 512, W), (STATUS, 1, W)], 0),
        0,
    )
    .unwrap();
    kick.write(1).unwrap();
    assert!(interrupt.wait_for(Signal::UsedQueue(0), Duration::from_secs(10)));
    assert_eq!(mem.read_obj::<u8>(GuestAddress(STATUS)).unwrap(), status::OK);
    let mut got = vec![0u8; 512];
    mem.read_slice(&mut got, GuestAddress(DATA)).unwrap();
    assert_eq!(got, pattern(512, 11));
    let queues = block.reset().unwrap();
    assert_eq!(queues[0].queue.next_used(), 1);
    assert!(block.disk().is_some(), "the disk came back");
}

#[test]
fn worker_reports_a_broken_queue_as_needs_reset() {
    let mem = memory(MEM_SIZE);
    let mut block = Block::new(MemoryDisk::new(DISK_SIZE), false, None).unwrap();
    let vq = MockSplitQueue::new(&mem, 16);
    mem.write_obj(1000u16, vq.avail_addr().unchecked_add(2)).unwrap();
    let (_kick, interrupt) = activate(&mut block, &mem, vq.create_queue().unwrap());
    assert!(interrupt.wait_for(Signal::NeedsReset, Duration::from_secs(10)));
    assert!(block.reset().is_some());
}

// Disks in files.

#[test]
fn file_disk_reads_writes_flushes_and_reads_holes_as_zeros() {
    let image = TempImage::new("rw", 1 << 20);
    let mut disk = FileDisk::open(&image.0, false, CacheMode::Cached, SyncMode::Full).unwrap();
    assert_eq!(disk.capacity(), 1 << 20);
    disk.write_at(4096, &pattern(8192, 2)).unwrap();
    disk.flush().unwrap();
    let mut back = vec![0u8; 8192];
    disk.read_at(4096, &mut back).unwrap();
    assert_eq!(back, pattern(8192, 2));
    let mut hole = vec![1u8; 512];
    disk.read_at(512 * 1000, &mut hole).unwrap();
    assert!(hole.iter().all(|&b| b == 0));
}

#[test]
fn file_disk_discard_punches_a_hole_and_write_zeroes_zeroes() {
    use std::os::unix::fs::MetadataExt;
    let image = TempImage::new("discard", 1 << 20);
    let mut disk = FileDisk::open(&image.0, false, CacheMode::Cached, SyncMode::Full).unwrap();
    disk.write_at(0, &vec![0xee; 256 * 1024]).unwrap();
    disk.flush().unwrap();
    let before = std::fs::metadata(&image.0).unwrap().blocks();
    disk.discard(0, 128 * 1024).unwrap();
    let after = std::fs::metadata(&image.0).unwrap().blocks();
    let mut back = vec![1u8; 4096];
    disk.read_at(64 * 1024, &mut back).unwrap();
    assert!(back.iter().all(|&b| b == 0));
    // Filesystems that cannot punch holes keep the blocks (discard is a hint).
    assert!(after <= before, "{after} blocks after discard, {before} before");
    disk.write_zeroes(128 * 1024, 4096, false).unwrap();
    disk.read_at(128 * 1024, &mut back).unwrap();
    assert!(back.iter().all(|&b| b == 0));
    assert_eq!(std::fs::metadata(&image.0).unwrap().len(), 1 << 20, "size kept");
}

#[test]
fn file_disk_uncached_does_aligned_read_modify_write() {
    let image = TempImage::new("direct", 64 * 1024 + 512);
    let mut disk = match FileDisk::open(&image.0, false, CacheMode::Uncached, SyncMode::Full) {
        Ok(disk) => disk,
        Err(e) => {
            // tmpfs and some others refuse O_DIRECT.
            println!(
                "SKIPPED: O_DIRECT is not supported here: {e}: {:?}",
                std::error::Error::source(&e)
            );
            return;
        }
    };
    // 4 KiB blocks, whatever the host's: the read-modify-write path.
    disk.force_direct_alignment(DIRECT_IO_ALIGN);
    // Unaligned (512-byte) writes on either side of 4 KiB boundaries, and at the very end.
    disk.write_at(512, &pattern(1024, 4)).unwrap();
    disk.write_at(4096 - 512, &pattern(1024, 6)).unwrap();
    disk.write_at(64 * 1024, &pattern(512, 8)).unwrap();
    disk.flush().unwrap();
    let mut back = vec![0u8; 1024];
    disk.read_at(512, &mut back[..512]).unwrap();
    assert_eq!(&back[..512], &pattern(1024, 4)[..512]);
    disk.read_at(4096 - 512, &mut back).unwrap();
    assert_eq!(back, pattern(1024, 6));
    disk.read_at(64 * 1024, &mut back[..512]).unwrap();
    assert_eq!(&back[..512], &pattern(512, 8)[..]);
    assert_eq!(
        std::fs::metadata(&image.0).unwrap().len(),
        64 * 1024 + 512,
        "size kept"
    );
}

#[test]
fn file_disk_is_locked_against_a_second_writer_and_read_only_opens_read_only() {
    let image = TempImage::new("lock", 4096);
    let _first = FileDisk::open(&image.0, false, CacheMode::Cached, SyncMode::Full).unwrap();
    assert!(matches!(
        FileDisk::open(&image.0, false, CacheMode::Cached, SyncMode::Full),
        Err(DiskOpenError::Locked { .. })
    ));
    drop(_first);
    let mut ro = FileDisk::open(&image.0, true, CacheMode::Cached, SyncMode::Full).unwrap();
    assert!(ro.write_at(0, &[1; 512]).is_err(), "opened read-only");
    let _second_reader = FileDisk::open(&image.0, true, CacheMode::Cached, SyncMode::Full).unwrap();
}

#[test]
fn file_disk_refuses_empty_and_missing_images() {
    let image = TempImage::new("empty", 100);
    assert!(matches!(
        FileDisk::open(&image.0, false, CacheMode::Cached, SyncMode::Full),
        Err(DiskOpenError::Empty { .. })
    ));
    assert!(matches!(
        FileDisk::open(
            std::path::Path::new("/nonexistent/disk.img"),
            false,
            CacheMode::Cached,
            SyncMode::Full
        ),
        Err(DiskOpenError::Open { .. })
    ));
}

#[test]
fn block_over_a_file_round_trips_through_requests() {
    let image = TempImage::new("block", 1 << 20);
    let mut config = BlockConfig::new(&image.0);
    config.serial = Some("file-disk".into());
    let block = Block::open(&config).unwrap();
    assert_eq!(block.disk().unwrap().capacity(), 1 << 20);
    let disk = FileDisk::open(&image.0, true, CacheMode::Cached, SyncMode::None);
    assert!(
        matches!(disk, Err(DiskOpenError::Locked { .. })),
        "the device holds the lock"
    );
}
