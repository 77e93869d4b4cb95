//! virtio-input on test guest memory: the configuration space Linux's driver reads, events into
//! the driver's buffers in order and waiting when there are none, hostile buffers given back
//! empty, LEDs from the status queue, and the worker delivering what the host sends.

use std::sync::Arc;
use std::time::Duration;

use virtio_bindings::bindings::virtio_ring::VRING_DESC_F_WRITE;
use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use virtio_queue::Queue;
use virtkit_virtio::testing::{test_memory, test_queues, used_elem, used_idx, RecordingInterrupt, Signal};
use virtkit_virtio::VirtioDevice;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::event::*;
use super::*;

virtkit_virtio::virtio_device_conformance_tests!(
    conformance_keyboard,
    Input,
    Input::new(InputKind::Keyboard).unwrap().0
);
virtkit_virtio::virtio_device_conformance_tests!(
    conformance_tablet,
    Input,
    Input::new(InputKind::Tablet).unwrap().0
);

const W: u16 = VRING_DESC_F_WRITE as u16;
const DATA: u64 = 0x20_0000;

fn desc(addr: u64, len: u32, flags: u16) -> RawDescriptor {
    RawDescriptor::from(SplitDescriptor::new(addr, len, flags, 0))
}

/// Reads what the driver sees after selecting `select`/`subsel`: (size, answer).
fn select(device: &mut Input, select: u8, subsel: u8) -> (u8, Vec<u8>) {
    device.write_config(0, &[select, subsel]);
    let mut config = [0u8; CONFIG_SIZE];
    device.read_config(0, &mut config);
    assert_eq!((config[0], config[1]), (select, subsel));
    (config[2], config[8..8 + usize::from(config[2])].to_vec())
}

fn bit(bitmap: &[u8], code: u16) -> bool {
    bitmap
        .get(usize::from(code / 8))
        .is_some_and(|b| b & (1 << (code % 8)) != 0)
}

#[test]
fn the_keyboard_says_what_it_is_and_which_keys_it_has() {
    let (mut kbd, _) = Input::new(InputKind::Keyboard).unwrap();
    assert_eq!(select(&mut kbd, 1, 0).1, b"virtkit keyboard");
    assert_eq!(select(&mut kbd, 3, 0).1, [6, 0, 0x27, 0x06, 1, 0, 1, 0]);
    let (_, keys) = select(&mut kbd, 0x11, EV_KEY as u8);
    for key in [1, 30, 57, 103, 111, 125] {
        assert!(bit(&keys, key), "key {key}");
    }
    assert!(!bit(&keys, 0) && !bit(&keys, BTN_LEFT));
    assert_eq!(
        select(&mut kbd, 0x11, EV_REP as u8).0,
        1,
        "the guest repeats keys"
    );
    assert_eq!(select(&mut kbd, 0x11, EV_LED as u8).1, [0x07]);
    assert_eq!(select(&mut kbd, 0x11, EV_ABS as u8).0, 0, "no axes");
    assert_eq!(select(&mut kbd, 0x12, 0).0, 0);
    // Nothing selected, or something unknown: size 0.
    assert_eq!(select(&mut kbd, 0, 0).0, 0);
    assert_eq!(select(&mut kbd, 0x7f, 3).0, 0);
    // Only select and subsel are writable.
    kbd.write_config(2, &[99; 20]);
    let mut config = [0u8; 4];
    kbd.read_config(0, &mut config);
    assert_eq!(config, [0x7f, 3, 0, 0]);
}

#[test]
fn the_tablet_has_two_absolute_axes_buttons_and_wheels() {
    let (mut tablet, _) = Input::new(InputKind::Tablet).unwrap();
    assert_eq!(select(&mut tablet, 1, 0).1, b"virtkit tablet");
    assert_eq!(select(&mut tablet, 3, 0).1[4], 3, "QEMU's tablet product number");
    assert_eq!(select(&mut tablet, 0x11, EV_ABS as u8).1, [0x03]);
    let (_, buttons) = select(&mut tablet, 0x11, EV_KEY as u8);
    assert!(bit(&buttons, BTN_LEFT) && bit(&buttons, BTN_RIGHT) && bit(&buttons, BTN_MIDDLE));
    assert!(!bit(&buttons, 30), "no keys");
    assert!(bit(&select(&mut tablet, 0x11, EV_REL as u8).1, REL_WHEEL));
    let (size, info) = select(&mut tablet, 0x12, ABS_Y as u8);
    assert_eq!(size, 20);
    assert_eq!(u32::from_le_bytes(info[4..8].try_into().unwrap()), TABLET_MAX);
    assert_eq!(select(&mut tablet, 0x12, 5).0, 0, "no such axis");
    assert_eq!(select(&mut tablet, 0x11, EV_REP as u8).0, 0);
}

/// A ready device's handle, with nothing running (the handler functions are driven by hand).
fn ready(kind: InputKind) -> InputHandle {
    let (_device, handle) = Input::new(kind).unwrap();
    handle.shared.set_ready(true);
    handle
}

fn event_at(mem: &GuestMemoryMmap, addr: u64) -> InputEvent {
    let mut bytes = [0u8; 8];
    mem.read_slice(&mut bytes, GuestAddress(addr)).unwrap();
    InputEvent::from_bytes(bytes)
}

#[test]
fn events_fill_the_drivers_buffers_in_order_and_wait_when_there_are_none() {
    let mem = test_memory();
    let vq = MockSplitQueue::new(&mem, 16);
    vq.add_desc_chains(&[desc(DATA, 8, W), desc(DATA + 8, 8, W)], 0)
        .unwrap();
    let mut queue: Queue = vq.create_queue().unwrap();
    let handle = ready(InputKind::Tablet);
    let report = [
        InputEvent::new(EV_ABS, ABS_X, 100),
        InputEvent::new(EV_ABS, ABS_Y, 200),
        InputEvent::sync(),
    ];
    assert!(handle.send(&report));
    assert!(deliver_events(&mut queue, &mem, &handle).unwrap(), "interrupt");
    assert_eq!(used_idx(&mem, vq.used_addr()), 2);
    assert_eq!(used_elem(&mem, vq.used_addr(), 0), (0, 8));
    assert_eq!(event_at(&mem, DATA), report[0]);
    assert_eq!(event_at(&mem, DATA + 8), report[1]);
    // The third waits for a buffer; nothing to do is no interrupt.
    assert!(!deliver_events(&mut queue, &mem, &handle).unwrap());
    assert_eq!(
        handle
            .metrics()
            .delivered
            .load(std::sync::atomic::Ordering::Relaxed),
        2
    );
    vq.add_desc_chains(&[desc(DATA + 16, 8, W)], 2).unwrap();
    assert!(deliver_events(&mut queue, &mem, &handle).unwrap());
    assert_eq!(used_idx(&mem, vq.used_addr()), 3);
    assert_eq!(event_at(&mem, DATA + 16), InputEvent::sync());
}

#[test]
fn a_buffer_the_device_cannot_write_is_given_back_empty_and_the_event_waits() {
    let mem = test_memory();
    let vq = MockSplitQueue::new(&mem, 16);
    vq.add_desc_chains(
        &[
            desc(DATA, 8, 0),             // read-only
            desc(DATA + 8, 4, W),         // too short
            desc(0xffff_ff00_0000, 8, W), // outside guest memory
            desc(DATA + 16, 8, W),        // good
        ],
        0,
    )
    .unwrap();
    let mut queue: Queue = vq.create_queue().unwrap();
    let handle = ready(InputKind::Keyboard);
    handle.send(&[InputEvent::key(30, true)]);
    deliver_events(&mut queue, &mem, &handle).unwrap();
    let used: Vec<_> = (0..4).map(|i| used_elem(&mem, vq.used_addr(), i)).collect();
    assert_eq!(used, [(0, 0), (1, 0), (2, 0), (3, 8)]);
    assert_eq!(event_at(&mem, DATA + 16), InputEvent::key(30, true));
    assert_eq!(
        handle
            .metrics()
            .bad_chains
            .load(std::sync::atomic::Ordering::Relaxed),
        3
    );
}

#[test]
fn an_event_may_span_two_buffers_of_one_chain() {
    let mem = test_memory();
    let vq = MockSplitQueue::new(&mem, 16);
    vq.build_desc_chain(&[
        SplitDescriptor::new(DATA, 3, W, 0).into(),
        SplitDescriptor::new(DATA + 0x100, 5, W, 0).into(),
    ])
    .unwrap();
    let mut queue: Queue = vq.create_queue().unwrap();
    let handle = ready(InputKind::Keyboard);
    let event = InputEvent::new(EV_KEY, 0x1234, 0x5678_9abc);
    handle.send(&[event]);
    deliver_events(&mut queue, &mem, &handle).unwrap();
    let mut bytes = [0u8; 8];
    mem.read_slice(&mut bytes[..3], GuestAddress(DATA)).unwrap();
    mem.read_slice(&mut bytes[3..], GuestAddress(DATA + 0x100))
        .unwrap();
    assert_eq!(InputEvent::from_bytes(bytes), event);
}

#[test]
fn the_drivers_led_events_are_read_and_their_buffers_given_back() {
    let mem = test_memory();
    let vq = MockSplitQueue::new(&mem, 16);
    mem.write_slice(
        &InputEvent::new(EV_LED, LED_CAPSL, 1).to_bytes(),
        GuestAddress(DATA),
    )
    .unwrap();
    mem.write_slice(
        &InputEvent::new(EV_LED, LED_NUML, 1).to_bytes(),
        GuestAddress(DATA + 8),
    )
    .unwrap();
    vq.add_desc_chains(
        &[desc(DATA, 8, 0), desc(DATA + 8, 8, 0), desc(DATA + 16, 8, W)],
        0,
    )
    .unwrap();
    let mut queue: Queue = vq.create_queue().unwrap();
    let handle = ready(InputKind::Keyboard);
    assert!(consume_status(&mut queue, &mem, &handle).unwrap());
    assert_eq!(handle.leds(), 0b011);
    assert_eq!(used_idx(&mem, vq.used_addr()), 3);
    assert_eq!(used_elem(&mem, vq.used_addr(), 2), (2, 0));
    assert_eq!(
        handle
            .metrics()
            .status_events
            .load(std::sync::atomic::Ordering::Relaxed),
        2
    );
    assert_eq!(
        handle
            .metrics()
            .bad_chains
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
}

#[test]
fn nothing_queues_before_the_driver_is_up_and_a_guest_that_reads_nothing_costs_a_bounded_queue() {
    let (mut device, handle) = Input::new(InputKind::Keyboard).unwrap();
    assert!(!handle.is_ready());
    assert!(!handle.send(&[InputEvent::key(30, true), InputEvent::sync()]));
    let interrupt = Arc::new(RecordingInterrupt::default());
    let queues = test_queues(device.queue_max_sizes());
    device
        .activate(test_memory(), interrupt, queues, device.features())
        .unwrap();
    assert!(handle.is_ready());
    // No buffers posted: the queue fills up to its bound, then whole reports are dropped.
    let report = [InputEvent::key(30, true), InputEvent::sync()];
    let sent = (0..MAX_PENDING).filter(|_| handle.send(&report)).count();
    assert_eq!(sent, MAX_PENDING / 2);
    assert!(
        handle
            .metrics()
            .dropped
            .load(std::sync::atomic::Ordering::Relaxed)
            >= 2
    );
    assert!(device.reset().is_some());
    assert!(!handle.is_ready());
    assert!(
        handle.shared.pending().is_empty(),
        "a reset forgets what was waiting"
    );
}

#[test]
fn the_worker_delivers_what_the_host_sends_and_interrupts() {
    let (mut device, handle) = Input::new(InputKind::Tablet).unwrap();
    let interrupt = Arc::new(RecordingInterrupt::default());
    let mem = test_memory();
    let queues = test_queues(device.queue_max_sizes());
    let base = virtkit_virtio::testing::QUEUE_AREA;
    // Four 8-byte event buffers posted by the driver.
    for i in 0..4u16 {
        mem.write_obj(
            SplitDescriptor::new(DATA + 8 * u64::from(i), 8, W, 0),
            GuestAddress(base + 16 * u64::from(i)),
        )
        .unwrap();
        mem.write_obj(i, GuestAddress(base + 0x8000 + 4 + 2 * u64::from(i)))
            .unwrap();
    }
    mem.write_obj(4u16, GuestAddress(base + 0x8000 + 2)).unwrap();
    device
        .activate(mem.clone(), interrupt.clone(), queues, device.features())
        .unwrap();
    assert!(handle.send(&[InputEvent::key(BTN_LEFT, true), InputEvent::sync()]));
    assert!(interrupt.wait_for(Signal::UsedQueue(0), Duration::from_secs(5)));
    assert_eq!(event_at(&mem, DATA), InputEvent::key(BTN_LEFT, true));
    assert_eq!(event_at(&mem, DATA + 8), InputEvent::sync());
    // Asleep, events wait; awake, they arrive.
    let queues = device.sleep().unwrap();
    assert!(handle.send(&[InputEvent::key(BTN_LEFT, false)]));
    device.wake(queues).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while event_at(&mem, DATA + 16) != InputEvent::key(BTN_LEFT, false)
        && std::time::Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(2));
    }
    assert_eq!(event_at(&mem, DATA + 16), InputEvent::key(BTN_LEFT, false));
    let state = {
        let queues = device.sleep().unwrap();
        let state = device.snapshot().unwrap();
        device.wake(queues).unwrap();
        state
    };
    assert_eq!(state.kind, InputKind::Tablet);
    let (mut keyboard, _) = Input::new(InputKind::Keyboard).unwrap();
    assert!(
        keyboard.restore(state).is_err(),
        "a tablet's state is not a keyboard's"
    );
    assert!(device.reset().is_some());
}

#[test]
fn the_fuzz_entry_survives_pseudo_random_inputs() {
    let mut seed = 0x1234_5678_u64;
    for len in [0usize, 1, 7, 64, 300, 700, 2000] {
        for _ in 0..40 {
            let data: Vec<u8> = (0..len)
                .map(|_| {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    seed as u8
                })
                .collect();
            fuzz::fuzz_queues(&data);
        }
    }
}
