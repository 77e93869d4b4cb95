//! A multiqueue card: one queue pair per backend, the control queue and `VQ_PAIRS_SET`.

use std::sync::Arc;
use std::time::Duration;

use virtio_queue::desc::RawDescriptor;
use virtio_queue::Queue;
use virtkit_virtio::testing::{chain_at, memory, used_elem, used_idx, RecordingInterrupt, Signal};
use virtkit_virtio::VirtioDevice;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::super::ctrl;
use super::super::test_support::TestBackend;
use super::super::*;
use super::{device_queue, frame, mock, queue, tx_chain, used_ring, HDR, MAC, MEM_SIZE, R, W};

/// A control command at `at`: `class`, `command`, `data` in one readable descriptor, the ack
/// byte in a writable one right after.
fn command(mem: &GuestMemoryMmap, at: u64, bytes: &[u8], head: u16) -> Vec<RawDescriptor> {
    mem.write_slice(bytes, GuestAddress(at)).unwrap();
    mem.write_obj(0xffu8, GuestAddress(at + 0x100)).unwrap();
    chain_at(&[(at, bytes.len() as u32, R), (at + 0x100, 1, W)], head)
}

fn ack(mem: &GuestMemoryMmap, at: u64) -> u8 {
    mem.read_obj(GuestAddress(at + 0x100)).unwrap()
}

#[test]
fn two_backends_make_two_queue_pairs_with_the_control_queue() {
    let one = Net::new(MAC, Box::new(TestBackend::new().0)).unwrap();
    assert_eq!(one.queue_max_sizes().len(), 2);
    assert_eq!(one.features() & (features::MQ | features::CTRL_VQ), 0);

    let net = Net::with_queue_pairs(
        MAC,
        vec![Box::new(TestBackend::new().0), Box::new(TestBackend::new().0)],
    )
    .unwrap();
    assert_eq!(net.queue_pairs(), 2);
    assert_eq!(net.queue_max_sizes().len(), 5, "rx0 tx0 rx1 tx1 ctrl");
    assert_eq!(
        net.features() & (features::MQ | features::CTRL_VQ),
        features::MQ | features::CTRL_VQ
    );
    let mut pairs = [0u8; 2];
    net.read_config(8, &mut pairs);
    assert_eq!(u16::from_le_bytes(pairs), 2, "max_virtqueue_pairs");

    assert!(matches!(
        Net::with_queue_pairs(MAC, Vec::new()),
        Err(NetError::QueuePairs(0))
    ));
    let (mut with_header, _) = TestBackend::new();
    with_header.hdr_len = HDR;
    assert!(matches!(
        Net::with_queue_pairs(MAC, vec![Box::new(with_header), Box::new(TestBackend::new().0)]),
        Err(NetError::MixedBackends)
    ));
}

#[test]
fn vq_pairs_set_is_acked_within_the_pairs_and_everything_else_is_refused() {
    let mem = memory(MEM_SIZE);
    let vq = mock(&mem, 0);
    let mut q: Queue = queue(&vq);
    let active = std::sync::atomic::AtomicU16::new(4);
    let at = |i: u64| 0x20_0000 + 0x1000 * i;
    let mut descs = Vec::new();
    descs.extend(command(&mem, at(0), &[4, 0, 2, 0], 0)); // VQ_PAIRS_SET 2: ok
    descs.extend(command(&mem, at(1), &[4, 0, 5, 0], 2)); // 5 > 4 pairs: err
    descs.extend(command(&mem, at(2), &[4, 0, 0, 0], 4)); // 0 pairs: err
    descs.extend(command(&mem, at(3), &[0, 0, 1], 6)); // CTRL_RX promisc (not offered): err
    descs.extend(command(&mem, at(4), &[4, 0, 1], 8)); // cut short: err
    vq.add_desc_chains(&descs, 0).unwrap();
    assert!(ctrl::process(&mut q, &mem, 4, &active).unwrap());
    let acks: Vec<u8> = (0..5).map(|i| ack(&mem, at(i))).collect();
    assert_eq!(acks, [0, 1, 1, 1, 1]);
    assert_eq!(active.load(std::sync::atomic::Ordering::Acquire), 2);
    assert_eq!(used_idx(&mem, used_ring(&vq)), 5);
    for i in 0..5 {
        assert_eq!(used_elem(&mem, used_ring(&vq), i).1, 1, "each ack is one byte");
    }
}

#[test]
fn hostile_control_chains_are_used_with_nothing_written_and_never_panic() {
    let mem = memory(MEM_SIZE);
    let vq = mock(&mem, 0);
    let mut q: Queue = queue(&vq);
    let active = std::sync::atomic::AtomicU16::new(2);
    let at = 0x20_0000u64;
    mem.write_slice(&[4, 0, 1, 0], GuestAddress(at)).unwrap();
    let mut descs = Vec::new();
    // No writable byte for the ack.
    descs.extend(chain_at(&[(at, 4, R)], 0));
    // Readable after writable.
    descs.extend(chain_at(&[(at + 0x100, 1, W), (at, 4, R)], 1));
    // A command longer than any the device knows.
    descs.extend(chain_at(&[(at, 4096, R), (at + 0x2000, 1, W)], 3));
    // Outside guest memory.
    descs.extend(chain_at(&[(MEM_SIZE as u64 - 2, 4, R), (at + 0x100, 1, W)], 5));
    descs.extend(chain_at(&[(at, 4, R), (u64::MAX - 1, 1, W)], 7));
    vq.add_desc_chains(&descs, 0).unwrap();
    assert!(ctrl::process(&mut q, &mem, 2, &active).unwrap());
    assert_eq!(used_idx(&mem, used_ring(&vq)), 5);
    for i in 0..5 {
        assert_eq!(
            used_elem(&mem, used_ring(&vq), i).1,
            0,
            "chain {i}: nothing written"
        );
    }
    assert_eq!(active.load(std::sync::atomic::Ordering::Acquire), 2);
}

#[test]
fn each_pair_moves_its_own_backends_frames_and_the_control_queue_answers() {
    let mem = memory(MEM_SIZE);
    let (b0, p0) = TestBackend::new();
    let (b1, p1) = TestBackend::new();
    let mut net = Net::with_queue_pairs(MAC, vec![Box::new(b0), Box::new(b1)]).unwrap();
    let vqs: Vec<_> = (0..5).map(|i| mock(&mem, i)).collect();
    let mut queues = Vec::new();
    let mut kicks = Vec::new();
    for (i, vq) in vqs.iter().enumerate() {
        let (q, kick) = device_queue(vq, i as u16);
        queues.push(q);
        kicks.push(kick);
    }
    let interrupt = Arc::new(RecordingInterrupt::default());
    let acked = net.features();
    net.activate(mem.clone(), interrupt.clone(), queues, acked)
        .unwrap();

    // tx on pair 1 reaches backend 1 only.
    let out = frame(300, 5);
    vqs[3]
        .add_desc_chains(&tx_chain(&mem, 0x80_0000, &out, &[], 0), 0)
        .unwrap();
    kicks[3].write(1).unwrap();
    assert!(interrupt.wait_for(Signal::UsedQueue(3), Duration::from_secs(10)));
    assert_eq!(p1.lock().unwrap().output, vec![out]);
    assert!(p0.lock().unwrap().output.is_empty());

    // The control queue, served by pair 0's worker.
    vqs[4]
        .add_desc_chains(&command(&mem, 0x90_0000, &[4, 0, 1, 0], 0), 0)
        .unwrap();
    kicks[4].write(1).unwrap();
    assert!(interrupt.wait_for(Signal::UsedQueue(4), Duration::from_secs(10)));
    assert_eq!(ack(&mem, 0x90_0000), 0);

    // Sleep and wake hand every queue around; the state has a slot per pair.
    let queues = net.sleep().unwrap().unwrap();
    assert_eq!(queues.len(), 5);
    let state = net.snapshot().unwrap();
    assert_eq!(state.tx_pending, [None, None]);
    assert_eq!(state.active_pairs, 1);
    net.wake(Some(queues)).unwrap();

    // A state from a card with another number of pairs is refused.
    let mut single = Net::new(MAC, Box::new(TestBackend::new().0)).unwrap();
    assert!(single.restore(state.clone()).is_err());
    let mut back = Net::with_queue_pairs(
        MAC,
        vec![Box::new(TestBackend::new().0), Box::new(TestBackend::new().0)],
    )
    .unwrap();
    back.restore(state.clone()).unwrap();
    assert_eq!(back.snapshot().unwrap(), state);
    // A restored card is activated afterwards (the transport's restore): the pairs the driver
    // chose stay chosen.
    let queues: Vec<_> = vqs
        .iter()
        .enumerate()
        .map(|(i, vq)| device_queue(vq, i as u16).0)
        .collect();
    back.activate(mem.clone(), interrupt.clone(), queues, acked)
        .unwrap();
    assert_eq!(back.sleep().unwrap().unwrap().len(), 5);
    assert_eq!(back.snapshot().unwrap().active_pairs, 1);
    // Asleep, its queues are the transport's: a reset hands none back.
    assert!(back.reset().is_none());
    assert_eq!(
        back.snapshot().unwrap().active_pairs,
        2,
        "a reset uses every pair again"
    );
    assert_eq!(net.reset().unwrap().len(), 5);
}
