//! The transport against a dummy device, through the BAR and configuration space as a driver
//! would use them.

use std::sync::{Arc, Mutex};

use virtkit_machine::interrupt::{InterruptError, LevelIrq, MsiMessage, MsiVectors};
use virtkit_machine::ioevent::{IoEventAddress, IoEventError, IoEvents};
use virtkit_machine::pci::{BarKind, BarRegion, PciDevice, COMMAND_MEMORY};
use vm_memory::GuestMemoryMmap;

use super::common_config::offsets::*;
use super::*;
use crate::testing::test_memory;
use crate::{status, VirtioError, VirtioInterrupt};

pub(super) const BAR: u64 = 0xc000_0000;

/// (index, descriptor table, size) of each queue a device got.
type QueueSummary = Vec<(u16, u64, u16)>;

#[derive(Default)]
pub(super) struct DummyLog {
    pub(super) activated: Vec<(QueueSummary, u64)>,
    pub(super) resets: usize,
    pub(super) interrupt: Option<Arc<dyn VirtioInterrupt>>,
}

/// Two queues of 16 and 8, a config space of 8 bytes (bytes 4..8 writable, its state), the
/// queues it was activated with (handed back by sleep and reset), and a log.
pub(super) struct Dummy {
    config: [u8; 8],
    queues: Option<Vec<DeviceQueue>>,
    log: Arc<Mutex<DummyLog>>,
}

impl VirtioDevice for Dummy {
    type State = [u8; 4];
    fn name(&self) -> &str {
        "dummy"
    }
    fn device_type(&self) -> u32 {
        4
    }
    fn queue_max_sizes(&self) -> &[u16] {
        &[16, 8]
    }
    fn features(&self) -> u64 {
        crate::features::VERSION_1 | 1 << 5
    }
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        for (i, b) in data.iter_mut().enumerate() {
            *b = self.config.get(offset as usize + i).copied().unwrap_or(0);
        }
    }
    fn write_config(&mut self, offset: u64, data: &[u8]) {
        for (i, b) in data.iter().enumerate() {
            let at = offset as usize + i;
            if (4..8).contains(&at) {
                self.config[at] = *b;
            }
        }
    }
    fn activate(
        &mut self,
        _memory: GuestMemoryMmap,
        interrupt: Arc<dyn VirtioInterrupt>,
        queues: Vec<DeviceQueue>,
        acked_features: u64,
    ) -> Result<(), VirtioError> {
        let mut log = self.log.lock().unwrap();
        log.activated.push((
            queues
                .iter()
                .map(|q| (q.index, q.queue.desc_table(), q.queue.size()))
                .collect(),
            acked_features,
        ));
        log.interrupt = Some(interrupt);
        drop(log);
        self.queues = Some(queues);
        Ok(())
    }
    fn reset(&mut self) -> Option<Vec<DeviceQueue>> {
        self.log.lock().unwrap().resets += 1;
        self.queues.take()
    }
    fn sleep(&mut self) -> Result<Option<Vec<DeviceQueue>>, VirtioError> {
        Ok(self.queues.take())
    }
    fn wake(&mut self, queues: Option<Vec<DeviceQueue>>) -> Result<(), VirtioError> {
        self.queues = queues;
        Ok(())
    }
    fn snapshot(&self) -> Result<[u8; 4], VirtioError> {
        let mut state = [0; 4];
        state.copy_from_slice(&self.config[4..8]);
        Ok(state)
    }
    fn restore(&mut self, state: [u8; 4]) -> Result<(), VirtioError> {
        self.config[4..8].copy_from_slice(&state);
        Ok(())
    }
}

#[derive(Default)]
pub(super) struct Vectors {
    pub(super) routes: Mutex<Vec<(u16, Option<MsiMessage>)>>,
    pub(super) triggered: Mutex<Vec<u16>>,
}

impl MsiVectors for Vectors {
    fn count(&self) -> u16 {
        3
    }
    fn set_route(&self, vector: u16, message: Option<MsiMessage>) -> Result<(), InterruptError> {
        self.routes.lock().unwrap().push((vector, message));
        Ok(())
    }
    fn trigger(&self, vector: u16) -> Result<(), InterruptError> {
        self.triggered.lock().unwrap().push(vector);
        Ok(())
    }
}

#[derive(Default)]
pub(super) struct Line {
    pub(super) levels: Mutex<Vec<bool>>,
}

impl LevelIrq for Line {
    fn set_level(&self, asserted: bool) -> Result<(), InterruptError> {
        self.levels.lock().unwrap().push(asserted);
        Ok(())
    }
}

#[derive(Default)]
pub(super) struct Events {
    pub(super) registered: Mutex<Vec<IoEventAddress>>,
}

impl IoEvents for Events {
    fn register(&self, _event: &EventFd, address: IoEventAddress) -> Result<(), IoEventError> {
        self.registered.lock().unwrap().push(address);
        Ok(())
    }
    fn unregister(&self, _event: &EventFd, address: IoEventAddress) -> Result<(), IoEventError> {
        self.registered.lock().unwrap().retain(|a| *a != address);
        Ok(())
    }
}

pub(super) struct Harness {
    pub(super) pci: VirtioPciDevice<Dummy>,
    pub(super) log: Arc<Mutex<DummyLog>>,
    pub(super) vectors: Arc<Vectors>,
    pub(super) line: Arc<Line>,
    pub(super) events: Arc<Events>,
}

pub(super) fn harness() -> Harness {
    let log = Arc::new(Mutex::new(DummyLog::default()));
    let vectors = Arc::new(Vectors::default());
    let line = Arc::new(Line::default());
    let events = Arc::new(Events::default());
    let pci = VirtioPciDevice::new(
        Dummy {
            config: [1, 2, 3, 4, 0, 0, 0, 0],
            queues: None,
            log: log.clone(),
        },
        test_memory(),
        vectors.clone(),
        events.clone(),
        VirtioPciOptions {
            class: 0x01,
            subclass: 0x00,
            prog_if: 0,
            intx: Some((line.clone() as Arc<dyn LevelIrq>, 17)),
        },
    )
    .unwrap();
    Harness {
        pci,
        log,
        vectors,
        line,
        events,
    }
}

impl Harness {
    pub(super) fn cfg_read(&mut self, offset: usize, len: usize) -> u32 {
        let mut b = [0u8; 4];
        self.pci.read_config(offset, &mut b[..len]);
        u32::from_le_bytes(b)
    }
    pub(super) fn read(&mut self, offset: u64, len: usize) -> u64 {
        let mut b = [0u8; 8];
        self.pci.read_bar(0, offset, &mut b[..len]);
        u64::from_le_bytes(b)
    }
    pub(super) fn write(&mut self, offset: u64, value: u64, len: usize) {
        self.pci.write_bar(0, offset, &value.to_le_bytes()[..len]);
    }
    pub(super) fn status(&mut self) -> u8 {
        self.read(DEVICE_STATUS, 1) as u8
    }
    pub(super) fn negotiate(&mut self, features: u64) -> bool {
        self.write(DEVICE_STATUS, u64::from(status::ACKNOWLEDGE | status::DRIVER), 1);
        self.write(DRIVER_FEATURE_SELECT, 0, 4);
        self.write(DRIVER_FEATURE, features & 0xffff_ffff, 4);
        self.write(DRIVER_FEATURE_SELECT, 1, 4);
        self.write(DRIVER_FEATURE, features >> 32, 4);
        self.write(
            DEVICE_STATUS,
            u64::from(status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK),
            1,
        );
        self.status() & status::FEATURES_OK != 0
    }
    pub(super) fn setup_queue(&mut self, index: u16, size: u16, base: u64) {
        self.write(QUEUE_SELECT, u64::from(index), 2);
        self.write(QUEUE_SIZE, u64::from(size), 2);
        self.write(QUEUE_DESC, base, 4);
        self.write(QUEUE_DESC + 4, 0, 4);
        self.write(QUEUE_DRIVER, base + 0x1000, 8);
        self.write(QUEUE_DEVICE, base + 0x2000, 8);
        self.write(QUEUE_ENABLE, 1, 2);
    }
    pub(super) fn driver_ok(&mut self) {
        let s = status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK | status::DRIVER_OK;
        self.write(DEVICE_STATUS, u64::from(s), 1);
    }
}

/// (capability ID, cfg_type for vendor ones, offset in config space) in list order.
pub(super) fn capabilities(h: &mut Harness) -> Vec<(u8, u8, usize)> {
    let mut caps = Vec::new();
    let mut at = h.cfg_read(0x34, 1) as usize;
    while at != 0 && caps.len() < 16 {
        let id = h.cfg_read(at, 1) as u8;
        let cfg_type = h.cfg_read(at + 3, 1) as u8;
        caps.push((id, cfg_type, at));
        at = h.cfg_read(at + 1, 1) as usize;
    }
    caps
}

#[test]
fn pci_identity_is_a_modern_virtio_device_with_every_capability() {
    let mut h = harness();
    assert_eq!(h.cfg_read(0, 4), 0x1044_1af4, "1af4:1040+4");
    assert_eq!(h.cfg_read(8, 1), 1, "revision 1: modern");
    assert_eq!(h.cfg_read(0x3d, 1), 1, "INTA#");
    assert_eq!(h.cfg_read(0x3c, 1), 17);
    let caps = capabilities(&mut h);
    assert_eq!(caps[0].0, 0x11, "MSI-X first");
    let vendor: Vec<u8> = caps.iter().filter(|c| c.0 == 0x09).map(|c| c.1).collect();
    assert_eq!(vendor, [1, 3, 4, 2, 5]);
    let notify = caps.iter().find(|c| c.0 == 0x09 && c.1 == 2).unwrap().2;
    assert_eq!(h.cfg_read(notify + 8, 4), 0x3000, "notify offset");
    assert_eq!(h.cfg_read(notify + 16, 4), 4, "notify_off_multiplier");
}

#[test]
fn features_are_offered_in_two_halves_and_version_1_is_required() {
    let mut h = harness();
    h.write(DEVICE_FEATURE_SELECT, 0, 4);
    assert_eq!(h.read(DEVICE_FEATURE, 4), 1 << 5);
    h.write(DEVICE_FEATURE_SELECT, 1, 4);
    assert_eq!(h.read(DEVICE_FEATURE, 4), 1);
    h.write(DEVICE_FEATURE_SELECT, 2, 4);
    assert_eq!(h.read(DEVICE_FEATURE, 4), 0);
    assert!(!h.negotiate(1 << 5), "no VERSION_1");
    h.write(DEVICE_STATUS, 0, 1);
    assert!(
        !h.negotiate(crate::features::VERSION_1 | 1 << 7),
        "feature not offered"
    );
    h.write(DEVICE_STATUS, 0, 1);
    assert!(h.negotiate(crate::features::VERSION_1 | 1 << 5));
}

#[test]
fn queues_set_up_through_common_config_reach_the_device_at_driver_ok() {
    let mut h = harness();
    assert_eq!(h.read(NUM_QUEUES, 2), 2);
    h.write(QUEUE_SELECT, 1, 2);
    assert_eq!(h.read(QUEUE_SIZE, 2), 8, "max size");
    assert_eq!(h.read(QUEUE_NOTIFY_OFF, 2), 1);
    assert!(h.negotiate(crate::features::VERSION_1));
    h.setup_queue(0, 8, 0x10_0000);
    h.setup_queue(1, 8, 0x20_0000);
    h.write(QUEUE_SELECT, 0, 2);
    assert_eq!(h.read(QUEUE_DESC, 8), 0x10_0000);
    h.driver_ok();
    assert!(h.pci.is_active());
    let log = h.log.lock().unwrap();
    assert_eq!(
        log.activated,
        vec![(
            vec![(0, 0x10_0000, 8), (1, 0x20_0000, 8)],
            crate::features::VERSION_1
        )]
    );
}

#[test]
fn enabled_queue_registers_cannot_change() {
    let mut h = harness();
    h.negotiate(crate::features::VERSION_1);
    h.setup_queue(0, 8, 0x10_0000);
    h.write(QUEUE_DESC, 0x30_0000, 8);
    h.write(QUEUE_ENABLE, 0, 2);
    assert_eq!(h.read(QUEUE_DESC, 8), 0x10_0000);
    assert_eq!(h.read(QUEUE_ENABLE, 2), 1);
}

#[test]
fn rings_outside_guest_memory_fail_activation_with_needs_reset() {
    let mut h = harness();
    h.negotiate(crate::features::VERSION_1);
    h.setup_queue(0, 8, 0x4000_0000);
    h.driver_ok();
    assert!(!h.pci.is_active());
    assert_ne!(h.status() & status::DEVICE_NEEDS_RESET, 0);
    assert_eq!(h.pci.interrupt.read_isr(), ISR_CONFIG);
    h.write(DEVICE_STATUS, 0, 1);
    assert_eq!(h.status(), 0);
}

#[test]
fn bad_queue_size_fails_activation_instead_of_panicking() {
    let mut h = harness();
    h.negotiate(crate::features::VERSION_1);
    h.setup_queue(0, 6, 0x10_0000);
    h.driver_ok();
    assert!(!h.pci.is_active());
}

#[test]
fn writing_zero_to_status_resets_device_and_registers() {
    let mut h = harness();
    h.negotiate(crate::features::VERSION_1);
    h.setup_queue(0, 8, 0x10_0000);
    h.driver_ok();
    h.write(DEVICE_STATUS, 0, 1);
    assert_eq!(h.status(), 0);
    assert!(!h.pci.is_active());
    assert_eq!(h.log.lock().unwrap().resets, 1);
    h.write(QUEUE_SELECT, 0, 2);
    assert_eq!(h.read(QUEUE_ENABLE, 2), 0);
    assert_eq!(h.read(QUEUE_SIZE, 2), 16);
    assert_eq!(h.read(QUEUE_DESC, 8), 0);
}

#[test]
fn intx_sets_the_isr_and_reading_it_clears_and_lowers_the_line() {
    let mut h = harness();
    h.negotiate(crate::features::VERSION_1);
    h.setup_queue(0, 8, 0x10_0000);
    h.driver_ok();
    let interrupt = h.log.lock().unwrap().interrupt.clone().unwrap();
    interrupt.signal_used_queue(0);
    assert_eq!(h.line.levels.lock().unwrap().last(), Some(&true));
    assert_eq!(h.read(0x1000, 1), u64::from(ISR_QUEUE));
    assert_eq!(h.line.levels.lock().unwrap().last(), Some(&false));
    assert_eq!(h.read(0x1000, 1), 0, "read clears");
    assert!(h.vectors.triggered.lock().unwrap().is_empty());
}

#[test]
fn msix_vectors_route_queue_and_config_interrupts() {
    let mut h = harness();
    let msix_cap = capabilities(&mut h)[0].2;
    h.pci
        .write_config(msix_cap + 2, &msix::CONTROL_ENABLE.to_le_bytes());
    // Table entry 1: address, data, unmasked.
    h.write(0x4000 + 16, 0xfee0_0000, 8);
    h.write(0x4000 + 24, 0x41, 4);
    h.write(0x4000 + 28, 0, 4);
    assert_eq!(h.read(0x4000 + 16, 8), 0xfee0_0000);
    h.negotiate(crate::features::VERSION_1);
    h.write(CONFIG_MSIX_VECTOR, 2, 2);
    h.write(QUEUE_SELECT, 0, 2);
    h.write(QUEUE_MSIX_VECTOR, 1, 2);
    assert_eq!(h.read(QUEUE_MSIX_VECTOR, 2), 1);
    h.write(QUEUE_SELECT, 1, 2);
    h.write(QUEUE_MSIX_VECTOR, 7, 2);
    assert_eq!(
        h.read(QUEUE_MSIX_VECTOR, 2),
        u64::from(NO_VECTOR),
        "no such vector"
    );
    h.setup_queue(0, 8, 0x10_0000);
    h.driver_ok();
    let interrupt = h.log.lock().unwrap().interrupt.clone().unwrap();
    interrupt.signal_used_queue(0);
    interrupt.signal_used_queue(1);
    assert_eq!(
        *h.vectors.triggered.lock().unwrap(),
        vec![1],
        "queue 1 has no vector"
    );
    interrupt.signal_config_changed();
    assert_eq!(
        *h.vectors.triggered.lock().unwrap(),
        vec![1],
        "vector 2 is masked"
    );
    let mut pba = [0u8; 1];
    h.pci.read_bar(0, 0x6000, &mut pba);
    assert_eq!(pba[0], 0b100);
    assert!(h.line.levels.lock().unwrap().is_empty(), "no INTx with MSI-X on");
    assert!(h.vectors.routes.lock().unwrap().contains(&(
        1,
        Some(MsiMessage {
            address: 0xfee0_0000,
            data: 0x41
        })
    )));
}

#[test]
fn device_config_goes_to_the_device() {
    let mut h = harness();
    assert_eq!(h.read(0x2000, 4), 0x0403_0201);
    h.write(0x2004, 0xaabb, 2);
    assert_eq!(h.read(0x2004, 2), 0xaabb);
    h.write(0x2000, 0xffff, 2);
    assert_eq!(h.read(0x2000, 2), 0x0201, "read-only part");
}

#[test]
fn notify_write_without_an_ioeventfd_kicks_the_queue_event() {
    let mut h = harness();
    h.write(0x3004, 1, 2);
    assert_eq!(h.pci.queue_events[1].read().unwrap(), 1);
    assert!(h.pci.queue_events[0].read().is_err(), "nothing for queue 0");
}

#[test]
fn ioeventfds_follow_the_bar() {
    let mut h = harness();
    let bar = BarRegion {
        index: 0,
        kind: BarKind::Memory32,
        prefetchable: false,
        address: BAR,
        size: layout::BAR_SIZE,
    };
    h.pci.bar_moved(&bar, None, Some(BAR));
    assert_eq!(
        *h.events.registered.lock().unwrap(),
        vec![
            IoEventAddress::Mmio(BAR + 0x3000),
            IoEventAddress::Mmio(BAR + 0x3004)
        ]
    );
    h.pci.bar_moved(&bar, Some(BAR), Some(BAR + 0x10_0000));
    assert_eq!(
        h.events.registered.lock().unwrap()[0],
        IoEventAddress::Mmio(BAR + 0x10_3000)
    );
    h.pci.bar_moved(&bar, Some(BAR + 0x10_0000), None);
    assert!(h.events.registered.lock().unwrap().is_empty());
}

#[test]
fn pci_cfg_capability_reaches_the_bar() {
    let mut h = harness();
    let cap = capabilities(&mut h)
        .iter()
        .find(|c| c.0 == 0x09 && c.1 == 5)
        .unwrap()
        .2;
    h.pci.write_config(cap + 4, &[0]);
    h.pci.write_config(cap + 8, &(NUM_QUEUES as u32).to_le_bytes());
    h.pci.write_config(cap + 12, &2u32.to_le_bytes());
    assert_eq!(h.cfg_read(cap + 16, 2), 2, "num_queues through config space");
    // A write through the window: device status.
    h.pci.write_config(cap + 8, &(DEVICE_STATUS as u32).to_le_bytes());
    h.pci.write_config(cap + 12, &1u32.to_le_bytes());
    h.pci.write_config(cap + 16, &[status::ACKNOWLEDGE]);
    assert_eq!(h.status(), status::ACKNOWLEDGE);
    // A window past the BAR reads nothing new and does not panic.
    h.pci.write_config(cap + 8, &0xffff_fff0u32.to_le_bytes());
    h.cfg_read(cap + 16, 4);
}

#[test]
fn bar_is_a_32_bit_memory_bar_that_the_root_can_map() {
    let mut h = harness();
    h.pci.write_config(0x10, &0xffff_ffffu32.to_le_bytes());
    assert_eq!(h.cfg_read(0x10, 4), !(layout::BAR_SIZE as u32 - 1));
    h.pci.write_config(0x10, &(BAR as u32).to_le_bytes());
    h.pci.write_config(0x04, &COMMAND_MEMORY.to_le_bytes());
    assert_eq!(h.pci.configuration().mapped_bars()[0].address, BAR);
}

#[test]
fn odd_accesses_to_the_bar_never_panic() {
    let mut h = harness();
    for offset in [
        0x0,
        0x37,
        0x38,
        0xfff,
        0x1003,
        0x2fff,
        0x3ffe,
        0x4ffc,
        0x7fff,
        0x8000,
        u64::MAX - 2,
    ] {
        for len in [1usize, 2, 3, 4, 8] {
            let mut b = vec![0u8; len];
            h.pci.read_bar(0, offset, &mut b);
            h.pci.write_bar(0, offset, &b);
        }
    }
}
