//! virtio-console on test guest memory: output and input through the queues, the control
//! handshake, resizing, hostile chains (each answered, never a panic), a slow host side holding
//! back only its own port, the worker thread, and the Unix socket backend on a real socket.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use virtio_bindings::bindings::virtio_ring::{VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use virtio_queue::{Queue, QueueT};
use virtkit_virtio::testing::{chain_at, memory, used_elem, used_idx, RecordingInterrupt, Signal};
use virtkit_virtio::{DeviceQueue, VirtioDevice};
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::control::event;
use super::test_support::{control, Peer, TestBackend};
use super::*;

virtkit_virtio::virtio_device_conformance_tests!(
    conformance,
    Console,
    Console::new(vec![
        ConsolePortConfig::console(TestBackend::new().0),
        ConsolePortConfig::named("org.virtkit.test", TestBackend::new().0),
    ])
    .unwrap()
);

const MEM_SIZE: usize = 16 << 20;
const DATA: u64 = 0x10_0000;
const R: u16 = 0;
const W: u16 = VRING_DESC_F_WRITE as u16;

type Mock<'a> = MockSplitQueue<'a, GuestMemoryMmap>;

/// A queue of 16 for queue number `n` (its rings apart from the others').
fn mock(mem: &GuestMemoryMmap, n: u64) -> Mock<'_> {
    // Fresh rings each time, even where an earlier queue of the test was.
    mem.write_slice(&[0u8; 0x1_0000], GuestAddress(0x1_0000 * n))
        .unwrap();
    MockSplitQueue::create(mem, GuestAddress(0x1_0000 * n), 16)
}

/// A handler with a console port 0 and a port 1 named "agent", on test backends.
fn handler(multiport: bool) -> (ConsoleHandler, Arc<Mutex<Peer>>, Arc<Mutex<Peer>>) {
    let (b0, p0) = TestBackend::new();
    let (b1, p1) = TestBackend::new();
    let mut h = ConsoleHandler::new(
        vec![
            ConsolePortConfig::console(b0),
            ConsolePortConfig::named("agent", b1),
        ],
        Arc::new(ConsoleMetrics::default()),
    );
    h.multiport = multiport;
    (h, p0, p1)
}

/// Sends the driver's control messages through a control tx queue.
fn driver_says(h: &mut ConsoleHandler, mem: &GuestMemoryMmap, messages: &[Vec<u8>]) {
    let vq = mock(mem, 3);
    let mut descs = Vec::new();
    for (i, m) in messages.iter().enumerate() {
        let at = DATA + 0x100 * i as u64;
        mem.write_slice(m, GuestAddress(at)).unwrap();
        descs.extend(chain_at(&[(at, m.len() as u32, R)], i as u16));
    }
    vq.add_desc_chains(&descs, 0).unwrap();
    let mut q: Queue = vq.create_queue().unwrap();
    assert!(h.process_control_tx(&mut q, mem).unwrap());
    assert_eq!(
        used_idx(mem, vq.used_addr()),
        messages.len() as u16,
        "every message answered"
    );
}

/// What the device sends on the control rx queue, given 8 page-sized buffers (the mock queue
/// puts its used ring right after avail entry 8, so a test never makes more available).
fn device_says(h: &mut ConsoleHandler, mem: &GuestMemoryMmap) -> Vec<Vec<u8>> {
    let vq = mock(mem, 2);
    let descs: Vec<_> = (0..8)
        .flat_map(|i| chain_at(&[(DATA + 0x10_0000 + 0x1000 * i as u64, 0x1000, W)], i))
        .collect();
    vq.add_desc_chains(&descs, 0).unwrap();
    let mut q: Queue = vq.create_queue().unwrap();
    h.fill_control_rx(&mut q, mem).unwrap();
    (0..used_idx(mem, vq.used_addr()) as u64)
        .map(|i| {
            let (id, len) = used_elem(mem, vq.used_addr(), i);
            let mut b = vec![0u8; len as usize];
            mem.read_slice(&mut b, GuestAddress(DATA + 0x10_0000 + 0x1000 * u64::from(id)))
                .unwrap();
            b
        })
        .collect()
}

#[test]
fn guest_output_reaches_the_backend() {
    let mem = memory(MEM_SIZE);
    let (mut h, p0, _) = handler(false);
    mem.write_slice(b"hello, ", GuestAddress(DATA)).unwrap();
    mem.write_slice(b"world\n", GuestAddress(DATA + 0x1000)).unwrap();
    let vq = mock(&mem, 1);
    vq.add_desc_chains(&chain_at(&[(DATA, 7, R), (DATA + 0x1000, 6, R)], 0), 0)
        .unwrap();
    let mut q: Queue = vq.create_queue().unwrap();
    assert!(h.process_port_tx(0, &mut q, &mem).unwrap());
    assert_eq!(p0.lock().unwrap().output, b"hello, world\n");
    assert_eq!(used_elem(&mem, vq.used_addr(), 0), (0, 0));
    assert_eq!(ConsoleMetrics::get(&h.metrics().tx_bytes), 13);
}

#[test]
fn guest_output_with_no_host_side_is_dropped_and_counted() {
    let mem = memory(MEM_SIZE);
    let (mut h, p0, _) = handler(false);
    p0.lock().unwrap().connected = false;
    let vq = mock(&mem, 1);
    vq.add_desc_chains(&chain_at(&[(DATA, 100, R)], 0), 0).unwrap();
    let mut q: Queue = vq.create_queue().unwrap();
    h.process_port_tx(0, &mut q, &mem).unwrap();
    assert_eq!(used_idx(&mem, vq.used_addr()), 1);
    assert_eq!(ConsoleMetrics::get(&h.metrics().dropped_bytes), 100);
}

#[test]
fn host_input_fills_guest_buffers_and_waits_when_there_are_none() {
    let mem = memory(MEM_SIZE);
    let (mut h, p0, _) = handler(false);
    p0.lock().unwrap().input.extend(b"typed text");
    let vq = mock(&mem, 0);
    // No buffers yet: the input is read once and kept, and the port stops reading.
    let mut q: Queue = vq.create_queue().unwrap();
    assert!(!h.process_port_rx(0, &mut q, &mem).unwrap());
    assert!(h.ports[0].rx_starved);
    assert!(!h.may_read(0));
    p0.lock().unwrap().input.extend(b"!");
    // The guest adds two small buffers (a notification clears the starved flag).
    vq.add_desc_chains(&chain_at(&[(DATA, 4, W)], 0), 0).unwrap();
    vq.add_desc_chains(&chain_at(&[(DATA + 0x1000, 64, W)], 1), 1)
        .unwrap();
    h.ports[0].rx_starved = false;
    assert!(h.process_port_rx(0, &mut q, &mem).unwrap());
    assert_eq!(used_elem(&mem, vq.used_addr(), 0), (0, 4));
    assert_eq!(used_elem(&mem, vq.used_addr(), 1), (1, 6));
    let mut got = vec![0u8; 10];
    mem.read_slice(&mut got[..4], GuestAddress(DATA)).unwrap();
    mem.read_slice(&mut got[4..], GuestAddress(DATA + 0x1000))
        .unwrap();
    assert_eq!(&got, b"typed text");
    assert!(h.ports[0].rx_starved, "the '!' waits for another buffer");
    assert_eq!(h.ports[0].rx_pending, b"!", "read and kept, not lost");
    assert!(!h.may_read(0), "and nothing more is read");
}

#[test]
fn multiport_input_waits_until_a_guest_program_opens_the_port() {
    let mem = memory(MEM_SIZE);
    let (mut h, _, p1) = handler(true);
    p1.lock().unwrap().input.extend(b"early");
    assert!(!h.may_read(1));
    driver_says(&mut h, &mem, &[control(1, event::PORT_OPEN, 1)]);
    assert!(h.ports[1].guest_open);
    assert!(h.may_read(1));
    let vq = mock(&mem, 4);
    vq.add_desc_chains(&chain_at(&[(DATA + 0x8000, 64, W)], 0), 0)
        .unwrap();
    let mut q: Queue = vq.create_queue().unwrap();
    h.process_port_rx(1, &mut q, &mem).unwrap();
    assert_eq!(used_elem(&mem, vq.used_addr(), 0), (0, 5));
    driver_says(&mut h, &mem, &[control(1, event::PORT_OPEN, 0)]);
    assert!(!h.ports[1].guest_open);
}

#[test]
fn control_handshake_adds_ports_names_them_and_opens_them() {
    let mem = memory(MEM_SIZE);
    let (mut h, _, p1) = handler(true);
    driver_says(&mut h, &mem, &[control(0, event::DEVICE_READY, 1)]);
    assert_eq!(
        device_says(&mut h, &mem),
        vec![control(0, event::DEVICE_ADD, 1), control(1, event::DEVICE_ADD, 1)]
    );
    driver_says(
        &mut h,
        &mem,
        &[control(0, event::PORT_READY, 1), control(1, event::PORT_READY, 1)],
    );
    let mut name = control(1, event::PORT_NAME, 1);
    name.extend_from_slice(b"agent");
    assert_eq!(
        device_says(&mut h, &mem),
        vec![
            control(0, event::CONSOLE_PORT, 1),
            control(0, event::PORT_OPEN, 1),
            name,
            control(1, event::PORT_OPEN, 1),
        ]
    );
    // The host side of port 1 goes away, and comes back.
    p1.lock().unwrap().connected = false;
    h.update_host_status();
    assert_eq!(device_says(&mut h, &mem), vec![control(1, event::PORT_OPEN, 0)]);
    h.update_host_status();
    assert!(device_says(&mut h, &mem).is_empty(), "said once");
    p1.lock().unwrap().connected = true;
    h.update_host_status();
    assert_eq!(device_says(&mut h, &mem), vec![control(1, event::PORT_OPEN, 1)]);
}

#[test]
fn resize_is_a_control_message_with_multiport_and_a_config_change_without() {
    let mem = memory(MEM_SIZE);
    let (mut h, _, _) = handler(true);
    assert!(!h.resize(100, 30), "before the handshake: remembered");
    driver_says(&mut h, &mem, &[control(0, event::DEVICE_READY, 1)]);
    driver_says(&mut h, &mem, &[control(0, event::PORT_READY, 1)]);
    let mut early = control(0, event::RESIZE, 0);
    early.extend_from_slice(&[100, 0, 30, 0]);
    let said = device_says(&mut h, &mem);
    assert_eq!(said[2], control(0, event::CONSOLE_PORT, 1));
    assert_eq!(said[3], early, "sent after CONSOLE_PORT");
    assert!(!h.resize(132, 43));
    let mut resize = control(0, event::RESIZE, 0);
    resize.extend_from_slice(&[132, 0, 43, 0]);
    assert_eq!(device_says(&mut h, &mem), vec![resize]);

    let (mut single, _, _) = handler(false);
    assert!(single.resize(80, 24));
}

#[test]
fn resize_handle_updates_the_config_space() {
    let console = Console::new(vec![ConsolePortConfig::console(TestBackend::new().0)]).unwrap();
    let handle = console.handle();
    std::thread::spawn(move || handle.resize(120, 40)).join().unwrap();
    let mut config = [0u8; CONFIG_LEN];
    console.read_config(0, &mut config);
    assert_eq!(config, [120, 0, 40, 0, 1, 0, 0, 0, 0, 0, 0, 0]);
    assert_eq!(console.handle().size(), (120, 40));
}

#[test]
fn identity_features_and_queue_layout() {
    let console = Console::new(vec![
        ConsolePortConfig::console(TestBackend::new().0),
        ConsolePortConfig::named("a", TestBackend::new().0),
        ConsolePortConfig::named("b", TestBackend::new().0),
    ])
    .unwrap();
    assert_eq!(console.device_type(), 3);
    assert_eq!(PCI_CLASS, (0x07, 0x80, 0x00));
    assert_eq!(console.queue_max_sizes(), &[256; 8]);
    let f = console.features();
    assert_ne!(f & features::SIZE, 0);
    assert_ne!(f & features::MULTIPORT, 0);
    assert_ne!(f & virtkit_virtio::features::RING_EVENT_IDX, 0);
    assert_eq!(port_queues(0), (0, 1));
    assert_eq!(port_queues(1), (4, 5));
    assert_eq!(port_queues(2), (6, 7));
    assert!(matches!(Console::new(Vec::new()), Err(ConsoleError::NoPorts)));
    assert!(matches!(
        Console::new(vec![
            ConsolePortConfig::named("x", TestBackend::new().0),
            ConsolePortConfig::named("x", TestBackend::new().0)
        ]),
        Err(ConsoleError::DuplicateName(_))
    ));
    assert!(matches!(
        Console::new(vec![ConsolePortConfig::named("a/b", TestBackend::new().0)]),
        Err(ConsoleError::BadName(_))
    ));
}

#[test]
fn emergency_write_goes_to_port_0() {
    let (b0, p0) = TestBackend::new();
    let mut console = Console::new(vec![ConsolePortConfig::console(b0)]).unwrap();
    console.write_config(8, &[b'!', 0, 0, 0]);
    console.write_config(0, &[1, 2]);
    assert_eq!(p0.lock().unwrap().output, b"!");
}

// Hostile chains.

#[test]
fn hostile_tx_chains_are_returned_without_panic() {
    let mem = memory(MEM_SIZE);
    let (mut h, p0, _) = handler(false);
    let vq = mock(&mem, 1);
    let mut descs = Vec::new();
    // Zero-length.
    descs.extend(chain_at(&[(DATA, 0, R)], 0));
    // Device-writable in a tx chain.
    descs.extend(chain_at(&[(DATA, 8, W)], 1));
    // Beyond guest memory.
    descs.extend(chain_at(&[(MEM_SIZE as u64 + 0x1000, 8, R)], 2));
    // Wrapping around the address space.
    descs.extend(chain_at(&[(u64::MAX - 2, 8, R)], 3));
    // A loop: 4 -> 5 -> 4.
    descs.push(RawDescriptor::from(SplitDescriptor::new(
        DATA,
        4,
        VRING_DESC_F_NEXT as u16,
        5,
    )));
    descs.push(RawDescriptor::from(SplitDescriptor::new(
        DATA,
        4,
        VRING_DESC_F_NEXT as u16,
        4,
    )));
    vq.add_desc_chains(&descs, 0).unwrap();
    // A next index beyond the table.
    let bad_next = RawDescriptor::from(SplitDescriptor::new(DATA, 4, VRING_DESC_F_NEXT as u16, 999));
    vq.add_desc_chains(&[bad_next], 6).unwrap();
    let mut q: Queue = vq.create_queue().unwrap();
    h.process_port_tx(0, &mut q, &mem).unwrap();
    assert_eq!(used_idx(&mem, vq.used_addr()), 6);
    for i in 0..6 {
        assert_eq!(used_elem(&mem, vq.used_addr(), i).1, 0);
    }
    assert!(p0.lock().unwrap().output.is_empty());
    assert_eq!(ConsoleMetrics::get(&h.metrics().bad_chains), 5);
}

#[test]
fn looping_indirect_chain_is_returned_without_panic() {
    let mem = memory(MEM_SIZE);
    let (mut h, p0, _) = handler(false);
    let table = DATA + 0x8000;
    // An indirect table whose two entries point at each other.
    for (i, next) in [(0u64, 1u16), (1, 0)] {
        let d = RawDescriptor::from(SplitDescriptor::new(DATA, 4, VRING_DESC_F_NEXT as u16, next));
        mem.write_obj(d, GuestAddress(table + 16 * i)).unwrap();
    }
    // And an indirect table pointing outside memory.
    let vq = mock(&mem, 1);
    let descs = [
        RawDescriptor::from(SplitDescriptor::new(table, 32, VRING_DESC_F_INDIRECT as u16, 0)),
        RawDescriptor::from(SplitDescriptor::new(1 << 40, 32, VRING_DESC_F_INDIRECT as u16, 0)),
    ];
    vq.add_desc_chains(&descs, 0).unwrap();
    let mut q: Queue = vq.create_queue().unwrap();
    h.process_port_tx(0, &mut q, &mem).unwrap();
    assert_eq!(used_idx(&mem, vq.used_addr()), 2);
    assert!(p0.lock().unwrap().output.is_empty());
}

#[test]
fn hostile_rx_chains_keep_the_input() {
    let mem = memory(MEM_SIZE);
    let (mut h, p0, _) = handler(false);
    p0.lock().unwrap().input.extend(b"keep me");
    let vq = mock(&mem, 0);
    let mut descs = Vec::new();
    descs.extend(chain_at(&[(DATA, 16, R)], 0)); // device-readable in rx
    descs.extend(chain_at(&[(MEM_SIZE as u64, 16, W)], 1)); // beyond memory
    descs.extend(chain_at(&[(DATA, 0, W)], 2)); // zero-length
    descs.extend(chain_at(&[(DATA + 0x1000, 16, W)], 3)); // good
    vq.add_desc_chains(&descs, 0).unwrap();
    let mut q: Queue = vq.create_queue().unwrap();
    h.process_port_rx(0, &mut q, &mem).unwrap();
    assert_eq!(used_idx(&mem, vq.used_addr()), 4);
    assert_eq!(used_elem(&mem, vq.used_addr(), 3), (3, 7));
    let mut got = [0u8; 7];
    mem.read_slice(&mut got, GuestAddress(DATA + 0x1000)).unwrap();
    assert_eq!(&got, b"keep me");
}

#[test]
fn bad_control_messages_are_ignored() {
    let mem = memory(MEM_SIZE);
    let (mut h, _, _) = handler(true);
    driver_says(
        &mut h,
        &mem,
        &[
            control(0, event::DEVICE_READY, 1)[..7].to_vec(), // short
            control(0, 0x7777, 1),                            // unknown event
            control(0, event::RESIZE, 0),                     // a device-only event
            control(99, event::PORT_READY, 1),                // unknown port
            control(u32::MAX, event::PORT_OPEN, 1),           // unknown port
        ],
    );
    assert!(!h.device_ready);
    assert!(h.control_out.is_empty());
    assert_eq!(ConsoleMetrics::get(&h.metrics().bad_control), 5);
    // A control message in a device-writable buffer.
    let vq = mock(&mem, 3);
    vq.add_desc_chains(&chain_at(&[(DATA, 8, W)], 0), 0).unwrap();
    let mut q: Queue = vq.create_queue().unwrap();
    h.process_control_tx(&mut q, &mem).unwrap();
    assert_eq!(used_elem(&mem, vq.used_addr(), 0), (0, 0));
}

#[test]
fn control_rx_buffers_too_small_or_wrong_drop_nothing_silently() {
    let mem = memory(MEM_SIZE);
    let (mut h, _, _) = handler(true);
    driver_says(&mut h, &mem, &[control(0, event::DEVICE_READY, 1)]);
    let vq = mock(&mem, 2);
    let mut descs = Vec::new();
    descs.extend(chain_at(&[(DATA, 4, W)], 0)); // too small: that message is dropped
    descs.extend(chain_at(&[(DATA, 8, R)], 1)); // wrong direction: kept for the next
    descs.extend(chain_at(&[(DATA, 8, W)], 2));
    vq.add_desc_chains(&descs, 0).unwrap();
    let mut q: Queue = vq.create_queue().unwrap();
    h.fill_control_rx(&mut q, &mem).unwrap();
    assert_eq!(used_elem(&mem, vq.used_addr(), 2), (2, 8));
    assert!(h.control_out.is_empty());
    assert_eq!(ConsoleMetrics::get(&h.metrics().dropped_control), 1);
}

#[test]
fn broken_rings_are_errors_not_panics() {
    let mem = memory(MEM_SIZE);
    let (mut h, _, _) = handler(true);
    // Available index far ahead.
    let vq = mock(&mem, 1);
    mem.write_obj(1000u16, vq.avail_addr().unchecked_add(2)).unwrap();
    let mut q: Queue = vq.create_queue().unwrap();
    assert!(h.process_port_tx(0, &mut q, &mem).is_err());
    // A head index beyond the queue.
    let vq = mock(&mem, 3);
    mem.write_obj(99u16, vq.avail_addr().unchecked_add(4)).unwrap();
    mem.write_obj(1u16, vq.avail_addr().unchecked_add(2)).unwrap();
    let mut q: Queue = vq.create_queue().unwrap();
    assert!(h.process_control_tx(&mut q, &mem).is_err());
}

#[test]
fn a_slow_backend_holds_back_only_its_own_port() {
    let mem = memory(MEM_SIZE);
    let (mut h, p0, p1) = handler(true);
    p1.lock().unwrap().room = Some(3);
    mem.write_slice(b"abcdefgh", GuestAddress(DATA)).unwrap();
    let slow = mock(&mem, 5);
    slow.add_desc_chains(&chain_at(&[(DATA, 8, R)], 0), 0).unwrap();
    slow.add_desc_chains(&chain_at(&[(DATA, 8, R)], 1), 1).unwrap();
    let mut slow_q: Queue = slow.create_queue().unwrap();
    assert!(!h.process_port_tx(1, &mut slow_q, &mem).unwrap());
    assert!(h.ports[1].tx_blocked);
    assert_eq!(slow_q.next_avail(), 1, "the second chain stays in the ring");
    assert_eq!(p1.lock().unwrap().output, b"abc");

    let fast = mock(&mem, 1);
    fast.add_desc_chains(&chain_at(&[(DATA, 8, R)], 0), 0).unwrap();
    let mut fast_q: Queue = fast.create_queue().unwrap();
    assert!(h.process_port_tx(0, &mut fast_q, &mem).unwrap());
    assert_eq!(p0.lock().unwrap().output, b"abcdefgh");

    // The slow side drains: the pending chain completes, then the next one.
    p1.lock().unwrap().room = None;
    assert!(h.process_port_tx(1, &mut slow_q, &mem).unwrap());
    assert_eq!(p1.lock().unwrap().output, b"abcdefghabcdefgh");
    assert_eq!(used_idx(&mem, slow.used_addr()), 2);
    assert!(!h.ports[1].tx_blocked);
}

#[test]
fn fuzz_entry_point_survives_pseudo_random_queues() {
    let mut x: u64 = 0x5eed_c0de_1234_5678;
    for round in 0..2000 {
        let mut data = vec![0u8; 1 + 256 + 2 + 32 + 512];
        for b in &mut data {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            *b = x as u8;
        }
        // Make some descriptors point into the data area with small lengths and sane flags.
        if round % 2 == 0 {
            for d in 0..16 {
                let at = 1 + 16 * d;
                data[at..at + 8].copy_from_slice(&(fuzz::DATA + 64 * d as u64).to_le_bytes());
                data[at + 8..at + 12].copy_from_slice(&(8 + d as u32).to_le_bytes());
                data[at + 12] &= 0x7;
                data[at + 14] = ((d + 1) % 16) as u8;
                data[at + 15] = 0;
            }
            data[257] %= 17;
            data[258] = 0;
        }
        fuzz::fuzz_queue(&data);
    }
    fuzz::fuzz_queue(&[]);
}

// The device and its worker thread.

fn device_queue(vq: &Mock<'_>, index: u16) -> (DeviceQueue, EventFd) {
    let mut queue: Queue = vq.create_queue().unwrap();
    queue.set_event_idx(false);
    let event = EventFd::new(EFD_NONBLOCK).unwrap();
    let kick = event.try_clone().unwrap();
    (DeviceQueue { index, queue, event }, kick)
}

#[test]
fn worker_moves_bytes_both_ways_over_a_socket_pair_without_multiport() {
    let mem = memory(MEM_SIZE);
    let (ours, mut theirs) = UnixStream::pair().unwrap();
    let input = ours.try_clone().unwrap();
    let backend = FdPortBackend::new(Some(input.into()), Some(ours.into())).unwrap();
    let mut console = Console::new(vec![ConsolePortConfig::console(backend)]).unwrap();
    let rx = mock(&mem, 0);
    let tx = mock(&mem, 1);
    let (rxq, rx_kick) = device_queue(&rx, 0);
    let (txq, tx_kick) = device_queue(&tx, 1);
    let interrupt = Arc::new(RecordingInterrupt::default());
    let features = virtkit_virtio::features::VERSION_1 | features::SIZE;
    console
        .activate(mem.clone(), interrupt.clone(), vec![rxq, txq], features)
        .unwrap();

    // Guest output.
    mem.write_slice(b"login: ", GuestAddress(DATA)).unwrap();
    tx.add_desc_chains(&chain_at(&[(DATA, 7, R)], 0), 0).unwrap();
    tx_kick.write(1).unwrap();
    assert!(interrupt.wait_for(Signal::UsedQueue(1), Duration::from_secs(10)));
    let mut got = [0u8; 7];
    theirs.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"login: ");

    // Host input before the guest has a buffer waits, then arrives.
    theirs.write_all(b"root\n").unwrap();
    std::thread::sleep(Duration::from_millis(50));
    rx.add_desc_chains(&chain_at(&[(DATA + 0x1000, 64, W)], 0), 0)
        .unwrap();
    rx_kick.write(1).unwrap();
    assert!(interrupt.wait_for(Signal::UsedQueue(0), Duration::from_secs(10)));
    assert_eq!(used_elem(&mem, rx.used_addr(), 0), (0, 5));
    let mut got = [0u8; 5];
    mem.read_slice(&mut got, GuestAddress(DATA + 0x1000)).unwrap();
    assert_eq!(&got, b"root\n");

    // Resize without multiport: a configuration change.
    console.handle().resize(90, 33);
    assert!(interrupt.wait_for(Signal::ConfigChanged, Duration::from_secs(10)));

    // Sleep, snapshot, wake.
    let queues = console.sleep().unwrap().unwrap();
    let state = console.snapshot().unwrap();
    assert_eq!((state.cols, state.rows), (90, 33));
    console.wake(Some(queues)).unwrap();
    assert_eq!(console.reset().unwrap().len(), 2);
}

/// The worker accepts a Unix-socket client and moves bytes both ways. It runs under its
/// seccomp filter (the default policy kills the process), so this also proves the console
/// worker's list covers a socket client: accept, non-blocking mode, receive, send.
#[test]
fn worker_serves_a_unix_socket_client_under_its_seccomp_filter() {
    let dir = std::env::temp_dir().join(format!("virtkit-console-worker-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("port.sock");
    let backend = UnixSocketPortBackend::bind(&path).unwrap();
    let mem = memory(MEM_SIZE);
    let mut console = Console::new(vec![ConsolePortConfig::console(backend)]).unwrap();
    let rx = mock(&mem, 0);
    let tx = mock(&mem, 1);
    let (rxq, rx_kick) = device_queue(&rx, 0);
    let (txq, tx_kick) = device_queue(&tx, 1);
    let interrupt = Arc::new(RecordingInterrupt::default());
    let features = virtkit_virtio::features::VERSION_1 | features::SIZE;
    console
        .activate(mem.clone(), interrupt.clone(), vec![rxq, txq], features)
        .unwrap();

    let mut client = UnixStream::connect(&path).unwrap();
    client.write_all(b"ping\n").unwrap();
    rx.add_desc_chains(&chain_at(&[(DATA + 0x1000, 64, W)], 0), 0)
        .unwrap();
    rx_kick.write(1).unwrap();
    assert!(interrupt.wait_for(Signal::UsedQueue(0), Duration::from_secs(10)));
    assert_eq!(used_elem(&mem, rx.used_addr(), 0), (0, 5));

    mem.write_slice(b"pong\n", GuestAddress(DATA)).unwrap();
    tx.add_desc_chains(&chain_at(&[(DATA, 5, R)], 0), 0).unwrap();
    tx_kick.write(1).unwrap();
    assert!(interrupt.wait_for(Signal::UsedQueue(1), Duration::from_secs(10)));
    let mut got = [0u8; 5];
    client.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"pong\n");
    assert_eq!(console.reset().unwrap().len(), 2);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn worker_reports_a_broken_queue_as_needs_reset() {
    let mem = memory(MEM_SIZE);
    let mut console = Console::new(vec![ConsolePortConfig::console(TestBackend::new().0)]).unwrap();
    let rx = mock(&mem, 0);
    let tx = mock(&mem, 1);
    mem.write_obj(1000u16, tx.avail_addr().unchecked_add(2)).unwrap();
    let (rxq, _) = device_queue(&rx, 0);
    let (txq, _) = device_queue(&tx, 1);
    let interrupt = Arc::new(RecordingInterrupt::default());
    console
        .activate(
            mem.clone(),
            interrupt.clone(),
            vec![rxq, txq],
            virtkit_virtio::features::VERSION_1,
        )
        .unwrap();
    assert!(interrupt.wait_for(Signal::NeedsReset, Duration::from_secs(10)));
    assert!(console.reset().is_some());
}

#[test]
fn multiport_activation_needs_the_control_queues() {
    let mem = memory(MEM_SIZE);
    let mut console = Console::new(vec![
        ConsolePortConfig::console(TestBackend::new().0),
        ConsolePortConfig::named("n", TestBackend::new().0),
    ])
    .unwrap();
    let rx = mock(&mem, 0);
    let tx = mock(&mem, 1);
    let features = console.features();
    let result = console.activate(
        mem.clone(),
        Arc::new(RecordingInterrupt::default()),
        vec![device_queue(&rx, 0).0, device_queue(&tx, 1).0],
        features,
    );
    assert!(result.is_err());
    assert!(console.reset().is_none());
}

#[test]
fn snapshot_keeps_pending_output_and_the_guest_port_state() {
    let (mut h, _, p1) = handler(true);
    let mem = memory(MEM_SIZE);
    p1.lock().unwrap().room = Some(2);
    driver_says(&mut h, &mem, &[control(1, event::PORT_OPEN, 1)]);
    let vq = mock(&mem, 5);
    vq.add_desc_chains(&chain_at(&[(DATA, 8, R)], 0), 0).unwrap();
    let mut q: Queue = vq.create_queue().unwrap();
    h.process_port_tx(1, &mut q, &mem).unwrap();
    let pending = h.ports[1].tx.clone().unwrap();
    assert_eq!((pending.head, pending.written), (Some(0), 2));

    let mut console = Console::new(vec![
        ConsolePortConfig::console(TestBackend::new().0),
        ConsolePortConfig::named("agent", TestBackend::new().0),
    ])
    .unwrap();
    let state = ConsoleState {
        acked_features: console.features(),
        cols: 80,
        rows: 25,
        device_ready: true,
        ports: vec![
            PortState {
                guest_ready: true,
                guest_open: true,
                host_open_sent: true,
                tx_pending: None,
            },
            PortState {
                guest_ready: true,
                guest_open: true,
                host_open_sent: false,
                tx_pending: Some(pending),
            },
        ],
        control_out: vec![control(1, event::PORT_OPEN, 1)],
    };
    console.restore(state.clone()).unwrap();
    assert_eq!(console.snapshot().unwrap(), state);
    assert_eq!(console.guest_open(1), Some(true));
    let mut wrong = state;
    wrong.ports.pop();
    assert!(console.restore(wrong).is_err());
}

// The Unix socket backend on a real socket.

fn temp_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("virtkit-console-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn unix_socket_backend_round_trip_and_disconnect() {
    use std::os::unix::fs::PermissionsExt;
    let dir = temp_dir("round-trip");
    let path = dir.join("agent.sock");
    // A stale socket is replaced; a regular file is not.
    drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
    let backend = UnixSocketPortBackend::bind(&path).unwrap();
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let file = dir.join("not-a-socket");
    std::fs::write(&file, b"x").unwrap();
    assert!(matches!(
        UnixSocketPortBackend::bind(&file),
        Err(SocketError::NotASocket(_))
    ));

    let mem = memory(MEM_SIZE);
    let mut h = ConsoleHandler::new(
        vec![
            ConsolePortConfig::console(TestBackend::new().0),
            ConsolePortConfig::named("agent", backend),
        ],
        Arc::new(ConsoleMetrics::default()),
    );
    h.multiport = true;
    driver_says(&mut h, &mem, &[control(0, event::DEVICE_READY, 1)]);
    driver_says(
        &mut h,
        &mem,
        &[control(1, event::PORT_READY, 1), control(1, event::PORT_OPEN, 1)],
    );
    let said = device_says(&mut h, &mem);
    assert!(!said.contains(&control(1, event::PORT_OPEN, 1)), "no client yet");

    let mut client = UnixStream::connect(&path).unwrap();
    let mut second = UnixStream::connect(&path).unwrap();
    h.update_host_status();
    assert_eq!(device_says(&mut h, &mem), vec![control(1, event::PORT_OPEN, 1)]);

    // Guest to client.
    mem.write_slice(b"ping", GuestAddress(DATA)).unwrap();
    let tx = mock(&mem, 5);
    tx.add_desc_chains(&chain_at(&[(DATA, 4, R)], 0), 0).unwrap();
    let mut txq: Queue = tx.create_queue().unwrap();
    h.process_port_tx(1, &mut txq, &mem).unwrap();
    let mut got = [0u8; 4];
    client.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"ping");

    // Client to guest.
    client.write_all(b"pong").unwrap();
    let rx = mock(&mem, 4);
    rx.add_desc_chains(&chain_at(&[(DATA + 0x1000, 16, W)], 0), 0)
        .unwrap();
    let mut rxq: Queue = rx.create_queue().unwrap();
    h.process_port_rx(1, &mut rxq, &mem).unwrap();
    assert_eq!(used_elem(&mem, rx.used_addr(), 0), (0, 4));

    // The client leaves: the guest hears PORT_OPEN 0, then the waiting second client is taken.
    drop(client);
    rx.add_desc_chains(&chain_at(&[(DATA + 0x2000, 16, W)], 1), 1)
        .unwrap();
    h.process_port_rx(1, &mut rxq, &mem).unwrap();
    h.update_host_status();
    assert_eq!(
        device_says(&mut h, &mem),
        vec![control(1, event::PORT_OPEN, 0), control(1, event::PORT_OPEN, 1)],
        "the second client waited in the backlog and is served now"
    );
    second.write_all(b"2").unwrap();
    h.process_port_rx(1, &mut rxq, &mem).unwrap();
    assert_eq!(used_elem(&mem, rx.used_addr(), 1), (1, 1));
    drop(h);
    assert!(!path.exists(), "the socket is removed with the backend");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn fd_backend_restores_blocking_mode_on_drop() {
    let (a, _b) = UnixStream::pair().unwrap();
    let probe = a.try_clone().unwrap();
    let backend = FdPortBackend::new(None, Some(a.into())).unwrap();
    let flags = rustix::fs::fcntl_getfl(&probe).unwrap();
    assert!(flags.contains(rustix::fs::OFlags::NONBLOCK));
    drop(backend);
    let flags = rustix::fs::fcntl_getfl(&probe).unwrap();
    assert!(!flags.contains(rustix::fs::OFlags::NONBLOCK));
}

#[test]
fn fuzz_seeds_run_clean() {
    for seed in [
        &include_bytes!("../../../../fuzz/corpus/virtio_console_queue/control_handshake")[..],
        &include_bytes!("../../../../fuzz/corpus/virtio_console_queue/port_output_chained")[..],
        &include_bytes!("../../../../fuzz/corpus/virtio_console_queue/hostile_chains")[..],
    ] {
        fuzz::fuzz_queue(seed);
    }
}
