//! A device saved through the transport and restored into a new one: registers, MSI-X, where
//! the queues stand, the device's own state; and the refusals, each changing nothing.

use virtio_queue::QueueT;
use virtkit_machine::interrupt::MsiMessage;
use virtkit_machine::pci::{PciDevice, COMMAND_MEMORY};

use super::common_config::offsets::*;
use super::tests::{capabilities, harness, Harness, BAR};
use super::*;
use crate::VirtioError;

/// A driver's work on `h`: MSI-X on with vector 1 unmasked for queue 0, the BAR placed,
/// features negotiated, queue 0 set up at 0x10_0000, DRIVER_OK, device config written; then
/// the queue moved on (as a worker would) and the device put to sleep.
fn driven() -> Harness {
    let mut h = harness();
    let msix_cap = capabilities(&mut h)[0].2;
    h.pci
        .write_config(msix_cap + 2, &msix::CONTROL_ENABLE.to_le_bytes());
    h.write(0x4000 + 16, 0xfee0_0000, 8);
    h.write(0x4000 + 24, 0x41, 4);
    h.write(0x4000 + 28, 0, 4);
    h.pci.write_config(0x10, &(BAR as u32).to_le_bytes());
    h.pci.write_config(4, &COMMAND_MEMORY.to_le_bytes());
    assert!(h.negotiate(crate::features::VERSION_1));
    h.write(QUEUE_SELECT, 0, 2);
    h.write(QUEUE_MSIX_VECTOR, 1, 2);
    h.setup_queue(0, 8, 0x10_0000);
    h.driver_ok();
    h.write(0x2004, 0xaabb, 2);
    assert!(h.pci.is_active());
    ManagedDevice::sleep(&mut h.pci).unwrap();
    let queues = h.pci.slept.as_mut().unwrap().as_mut().unwrap();
    queues[0].queue.set_next_avail(5);
    queues[0].queue.set_next_used(4);
    h
}

#[test]
fn a_saved_device_restores_into_a_new_one_asleep_where_it_was() {
    let saved = driven();
    let state = ManagedDevice::save_state(&saved.pci).unwrap();
    assert!(state.active);
    assert_eq!(
        state.queues,
        vec![QueueProgress {
            index: 0,
            next_avail: 5,
            next_used: 4
        }]
    );

    let mut h = harness();
    ManagedDevice::restore_state(&mut h.pci, &state).unwrap();
    assert!(
        h.vectors.routes.lock().unwrap().is_empty() && h.log.lock().unwrap().activated.is_empty(),
        "the first step touches nothing outside the device"
    );
    ManagedDevice::finish_restore(&mut h.pci).unwrap();
    assert!(h.pci.is_active() && ManagedDevice::is_asleep(&h.pci));
    assert_eq!(
        h.log.lock().unwrap().activated,
        vec![(vec![(0, 0x10_0000, 8)], crate::features::VERSION_1)]
    );
    assert!(h.vectors.routes.lock().unwrap().contains(&(
        1,
        Some(MsiMessage {
            address: 0xfee0_0000,
            data: 0x41
        })
    )));
    let queues = h.pci.slept.as_ref().unwrap().as_ref().unwrap();
    assert_eq!(
        (queues[0].queue.next_avail(), queues[0].queue.next_used()),
        (5, 4)
    );
    assert_eq!(h.read(0x2004, 2), 0xaabb, "the device's own state");
    assert_eq!(h.pci.config.bar_address(0), Some(BAR));
    assert_eq!(
        ManagedDevice::save_state(&h.pci).unwrap(),
        state,
        "a restored device saves the same"
    );

    // The vector is wired: a used buffer interrupts through it.
    let interrupt = h.log.lock().unwrap().interrupt.clone().unwrap();
    interrupt.signal_used_queue(0);
    assert_eq!(*h.vectors.triggered.lock().unwrap(), vec![1]);
}

#[test]
fn a_running_device_is_not_saved() {
    let mut h = driven();
    ManagedDevice::wake(&mut h.pci).unwrap();
    assert!(matches!(
        ManagedDevice::save_state(&h.pci),
        Err(VirtioError::Running)
    ));
}

#[test]
fn a_device_the_driver_never_started_round_trips_without_queues() {
    let h = harness();
    let state = ManagedDevice::save_state(&h.pci).unwrap();
    assert!(!state.active && state.queues.is_empty());
    let mut fresh = harness();
    ManagedDevice::restore_state(&mut fresh.pci, &state).unwrap();
    ManagedDevice::finish_restore(&mut fresh.pci).unwrap();
    assert!(!fresh.pci.is_active() && fresh.log.lock().unwrap().activated.is_empty());
}

/// A change that makes a saved state unfit.
type Damage = Box<dyn Fn(&mut VirtioPciState)>;

#[test]
fn refused_states_change_nothing() {
    let state = ManagedDevice::save_state(&driven().pci).unwrap();
    let refusals: Vec<(&str, Damage)> = vec![
        ("another device ID", Box::new(|s| s.pci_config[2] ^= 1)),
        ("a short config space", Box::new(|s| s.pci_config.truncate(64))),
        ("a misaligned BAR", Box::new(|s| s.pci_config[0x11] ^= 0x10)),
        ("another queue count", Box::new(|s| s.common.queues.truncate(1))),
        (
            "a queue larger than its maximum",
            Box::new(|s| s.common.queues[0].size = 32),
        ),
        (
            "features not offered",
            Box::new(|s| s.common.driver_features |= 1 << 40),
        ),
        ("a vector it lacks", Box::new(|s| s.common.config_msix_vector = 9)),
        ("missing queue positions", Box::new(|s| s.queues.clear())),
        (
            "another device's state",
            Box::new(|s| s.device = serde_json::json!("x")),
        ),
        ("fewer MSI-X vectors", Box::new(|s| s.msix.entries.truncate(2))),
    ];
    for (what, damage) in refusals {
        let mut bad = state.clone();
        damage(&mut bad);
        let mut h = harness();
        let before = ManagedDevice::save_state(&h.pci).unwrap();
        let result = ManagedDevice::restore_state(&mut h.pci, &bad);
        assert!(
            matches!(result, Err(VirtioError::IncompatibleState(_))),
            "{what}: {result:?}"
        );
        assert_eq!(ManagedDevice::save_state(&h.pci).unwrap(), before, "{what}");
        ManagedDevice::finish_restore(&mut h.pci).unwrap();
        assert!(!h.pci.is_active(), "{what}");
    }
}

#[test]
fn rings_outside_guest_memory_are_refused_when_the_restore_finishes() {
    let mut state = ManagedDevice::save_state(&driven().pci).unwrap();
    state.common.queues[0].desc = 1 << 40;
    let mut h = harness();
    ManagedDevice::restore_state(&mut h.pci, &state).unwrap();
    let e = ManagedDevice::finish_restore(&mut h.pci).unwrap_err();
    assert!(matches!(e, VirtioError::IncompatibleState(_)), "{e}");
    assert!(!h.pci.is_active() && h.log.lock().unwrap().activated.is_empty());
}

#[test]
fn a_restore_needs_a_new_device() {
    let state = ManagedDevice::save_state(&driven().pci).unwrap();
    let mut h = driven();
    assert!(matches!(
        ManagedDevice::restore_state(&mut h.pci, &state),
        Err(VirtioError::AlreadyActive)
    ));
}
