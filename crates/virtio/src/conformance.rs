//! The lifecycle tests every virtio device gets: one macro, called in each device's tests with a
//! constructor, so that activate/reset, sleep/wake, snapshot/restore and configuration-space
//! bounds behave the same across devices.

/// Generates a test module `$name` for the device type `$ty` built by `$make` (an expression
/// evaluated afresh in each test). The device's `activate` must accept the queues of
/// [`crate::testing::test_queues`] for its `queue_max_sizes` (all queues, ready and empty).
#[macro_export]
macro_rules! virtio_device_conformance_tests {
    ($name:ident, $ty:ty, $make:expr) => {
        mod $name {
            #[allow(unused_imports)]
            use super::*;
            use std::sync::Arc;
            use $crate::testing::{test_memory, test_queues, RecordingInterrupt};
            use $crate::VirtioDevice as _;

            fn activated() -> ($ty, Arc<RecordingInterrupt>) {
                let mut device: $ty = $make;
                let interrupt = Arc::new(RecordingInterrupt::default());
                let queues = test_queues(device.queue_max_sizes());
                let features = device.features();
                device
                    .activate(test_memory(), interrupt.clone(), queues, features)
                    .expect("activate");
                (device, interrupt)
            }

            #[test]
            fn identity_is_sane() {
                let device = $make;
                assert_ne!(device.device_type(), 0);
                assert!(!device.name().is_empty());
                assert!(!device.queue_max_sizes().is_empty());
                assert!(device.queue_max_sizes().iter().all(|s| s.is_power_of_two()));
                assert_ne!(device.features() & $crate::features::VERSION_1, 0);
            }

            #[test]
            fn out_of_range_config_access_reads_zero_and_never_panics() {
                let mut device = $make;
                for offset in [0x1000u64, 0xffff_ffff, u64::MAX - 3, u64::MAX] {
                    let mut data = [0xaau8; 4];
                    device.read_config(offset, &mut data);
                    assert_eq!(data, [0; 4], "offset {offset:#x}");
                    device.write_config(offset, &[1, 2, 3, 4]);
                }
                let mut big = vec![0u8; 0x2000];
                device.read_config(0, &mut big);
            }

            #[test]
            fn reset_before_activate_returns_nothing() {
                let mut device = $make;
                assert!(device.reset().is_none());
            }

            #[test]
            fn activate_then_reset_returns_every_queue() {
                let (mut device, _) = activated();
                let queues = device.reset().expect("queues back");
                assert_eq!(queues.len(), device.queue_max_sizes().len());
                assert!(
                    device.reset().is_none(),
                    "a second reset has nothing to return"
                );
            }

            #[test]
            fn activating_twice_is_an_error() {
                let (mut device, interrupt) = activated();
                let queues = test_queues(device.queue_max_sizes());
                let features = device.features();
                assert!(device
                    .activate(test_memory(), interrupt, queues, features)
                    .is_err());
            }

            #[test]
            fn activate_without_queues_is_an_error_not_a_panic() {
                let mut device = $make;
                let features = device.features();
                let result = device.activate(
                    test_memory(),
                    Arc::new(RecordingInterrupt::default()),
                    Vec::new(),
                    features,
                );
                assert!(result.is_err());
                assert!(device.reset().is_none());
            }

            #[test]
            fn sleep_hands_back_the_queues_and_wake_takes_them() {
                let (mut device, _) = activated();
                let queues = device.sleep().expect("sleep").expect("queues");
                assert_eq!(queues.len(), device.queue_max_sizes().len());
                assert!(device.sleep().expect("second sleep").is_none());
                device.wake(Some(queues)).expect("wake");
                assert_eq!(
                    device.reset().expect("queues").len(),
                    device.queue_max_sizes().len()
                );
            }

            #[test]
            fn snapshot_needs_a_stopped_worker_and_round_trips() {
                let (mut device, _) = activated();
                assert!(device.snapshot().is_err(), "running");
                let queues = device.sleep().expect("sleep");
                let state = device.snapshot().expect("snapshot");
                let mut fresh = $make;
                fresh.restore(state.clone()).expect("restore");
                assert_eq!(fresh.snapshot().expect("snapshot"), state);
                device.wake(queues).expect("wake");
            }
        }
    };
}
