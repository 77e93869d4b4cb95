//! The root bus, the config access paths and BAR mapping, with a small test device.

use std::sync::{Arc, Mutex};

use super::*;
use crate::bus::{Bus, BusDevice};
use crate::layout::{PCI_IO_START, PCI_MMIO32_START};

/// A device with a 4 KiB memory BAR 0 and a 64-byte I/O BAR 2 that echo the offset read, and
/// that records BAR moves and writes.
struct TestDevice {
    config: PciConfiguration,
    moves: Vec<(u8, Option<u64>, Option<u64>)>,
    writes: Vec<(u8, u64, Vec<u8>)>,
}

impl TestDevice {
    fn shared() -> Arc<Mutex<TestDevice>> {
        let mut config = PciConfiguration::new(PciHeader {
            vendor_id: 0x1af4,
            device_id: 0x1042,
            class: 0x01,
            ..Default::default()
        });
        config.add_bar(0, 0x1000, BarKind::Memory32, false).unwrap();
        config.add_bar(2, 0x40, BarKind::Io, false).unwrap();
        Arc::new(Mutex::new(TestDevice {
            config,
            moves: Vec::new(),
            writes: Vec::new(),
        }))
    }
}

impl PciDevice for TestDevice {
    fn configuration(&self) -> &PciConfiguration {
        &self.config
    }
    fn configuration_mut(&mut self) -> &mut PciConfiguration {
        &mut self.config
    }
    fn read_bar(&mut self, bar: u8, offset: u64, data: &mut [u8]) {
        data.fill(bar * 0x10 + offset as u8);
    }
    fn write_bar(&mut self, bar: u8, offset: u64, data: &[u8]) {
        self.writes.push((bar, offset, data.to_vec()));
    }
    fn bar_moved(&mut self, bar: &BarRegion, old: Option<u64>, new: Option<u64>) {
        self.moves.push((bar.index, old, new));
    }
}

struct Platform {
    root: Arc<Mutex<PciRoot>>,
    io: PciConfigIo,
    ecam: PciConfigMmio,
    pio: Bus,
    mmio: Bus,
}

fn platform() -> Platform {
    let pio = Bus::new();
    let mmio = Bus::new();
    let root = Arc::new(Mutex::new(PciRoot::new(pio.clone(), mmio.clone())));
    root.lock()
        .unwrap()
        .add_device(0, Arc::new(Mutex::new(HostBridge::new())))
        .unwrap();
    Platform {
        io: PciConfigIo::new(root.clone()),
        ecam: PciConfigMmio::new(root.clone()),
        root,
        pio,
        mmio,
    }
}

fn address(device: u8, register: u8) -> [u8; 4] {
    (0x8000_0000u32 | u32::from(device) << 11 | u32::from(register)).to_le_bytes()
}

impl Platform {
    fn io_read32(&mut self, device: u8, register: u8) -> u32 {
        self.io.write(0, &address(device, register));
        let mut b = [0; 4];
        self.io.read(4, &mut b);
        u32::from_le_bytes(b)
    }

    fn io_write32(&mut self, device: u8, register: u8, value: u32) {
        self.io.write(0, &address(device, register));
        self.io.write(4, &value.to_le_bytes());
    }

    fn ecam_read32(&mut self, bus: u8, device: u8, register: u64) -> u32 {
        let mut b = [0; 4];
        self.ecam
            .read(u64::from(bus) << 20 | u64::from(device) << 15 | register, &mut b);
        u32::from_le_bytes(b)
    }
}

#[test]
fn host_bridge_is_an_i440fx_at_slot_zero_through_both_mechanisms() {
    let mut p = platform();
    assert_eq!(p.io_read32(0, 0), 0x1237_8086);
    assert_eq!(p.ecam_read32(0, 0, 0), 0x1237_8086);
    assert_eq!(p.io_read32(0, 8) >> 16, 0x0600, "class: host bridge");
}

#[test]
fn absent_functions_read_all_ones() {
    let mut p = platform();
    assert_eq!(p.io_read32(5, 0), 0xffff_ffff);
    assert_eq!(p.ecam_read32(1, 0, 0), 0xffff_ffff, "bus 1");
    let mut b = [0; 4];
    p.ecam.read(1 << 12, &mut b);
    assert_eq!(u32::from_le_bytes(b), 0xffff_ffff, "function 1");
}

#[test]
fn config_address_latch_reads_back_and_disabled_latch_reads_ones() {
    let mut p = platform();
    p.io.write(0, &0x8000_0810u32.to_le_bytes());
    let mut b = [0; 4];
    p.io.read(0, &mut b);
    assert_eq!(u32::from_le_bytes(b), 0x8000_0810);
    p.io.write(0, &0u32.to_le_bytes());
    p.io.read(4, &mut b);
    assert_eq!(b, [0xff; 4]);
}

#[test]
fn byte_and_word_data_accesses_reach_the_selected_dword() {
    let mut p = platform();
    p.io.write(0, &address(0, 0));
    let mut w = [0; 2];
    p.io.read(6, &mut w);
    assert_eq!(u16::from_le_bytes(w), 0x1237);
    let mut b = [0; 1];
    p.io.read(5, &mut b);
    assert_eq!(b[0], 0x80);
    // A PAM register, written and read back as a byte through the data port.
    p.io.write(0, &address(0, 0x58));
    p.io.write(5, &[0x30]);
    p.io.read(5, &mut b);
    assert_eq!(b[0], 0x30);
    // A word straddling the data dword is not a config access.
    let mut odd = [0; 2];
    p.io.read(7, &mut odd);
    assert_eq!(odd, [0xff; 2]);
}

#[test]
fn programming_a_bar_and_enabling_decode_maps_it_and_moving_it_moves_it() {
    let mut p = platform();
    let dev = TestDevice::shared();
    p.root.lock().unwrap().add_device(3, dev.clone()).unwrap();
    // Size BAR 0 the way firmware does.
    p.io_write32(3, 0x10, 0xffff_ffff);
    assert_eq!(p.io_read32(3, 0x10), 0xffff_f000);
    p.io_write32(3, 0x10, 0xc000_0000);
    assert!(!p.mmio.is_occupied(0xc000_0000, 0x1000), "decode still off");
    p.io_write32(3, 0x04, u32::from(COMMAND_MEMORY));
    let mut b = [0; 4];
    assert!(p.mmio.read(0xc000_0008, &mut b));
    assert_eq!(b, [8; 4]);
    assert!(p.mmio.write(0xc000_0010, &[1, 2]));
    assert_eq!(dev.lock().unwrap().writes, vec![(0, 0x10, vec![1, 2])]);
    p.io_write32(3, 0x10, 0xd000_0000);
    assert!(!p.mmio.is_occupied(0xc000_0000, 0x1000));
    assert!(p.mmio.is_occupied(0xd000_0000, 0x1000));
    p.io_write32(3, 0x04, 0);
    assert!(!p.mmio.is_occupied(0xd000_0000, 0x1000));
    assert_eq!(
        dev.lock().unwrap().moves,
        vec![
            (0, None, Some(0xc000_0000)),
            (0, Some(0xc000_0000), Some(0xd000_0000)),
            (0, Some(0xd000_0000), None)
        ]
    );
}

#[test]
fn io_bar_goes_on_the_port_bus_through_ecam_writes() {
    let mut p = platform();
    p.root
        .lock()
        .unwrap()
        .add_device(2, TestDevice::shared())
        .unwrap();
    let base = 2u64 << 15;
    p.ecam.write(base + 0x18, &0xc100u32.to_le_bytes());
    p.ecam.write(base + 0x04, &COMMAND_IO.to_le_bytes());
    let mut b = [0; 1];
    assert!(p.pio.read(0xc101, &mut b));
    assert_eq!(b[0], 0x21);
}

#[test]
fn bar_over_another_device_stays_unmapped_until_moved() {
    let mut p = platform();
    p.mmio
        .insert(0xc000_0000, 0x1000, Arc::new(Mutex::new(HostBridgeBlocker)))
        .unwrap();
    let dev = TestDevice::shared();
    p.root.lock().unwrap().add_device(4, dev.clone()).unwrap();
    p.io_write32(4, 0x10, 0xc000_0000);
    p.io_write32(4, 0x04, u32::from(COMMAND_MEMORY));
    assert!(dev.lock().unwrap().moves.is_empty());
    p.io_write32(4, 0x10, 0xc000_1000);
    assert!(p.mmio.is_occupied(0xc000_1000, 0x1000));
}

struct HostBridgeBlocker;

impl BusDevice for HostBridgeBlocker {
    fn read(&mut self, _offset: u64, _data: &mut [u8]) {}
    fn write(&mut self, _offset: u64, _data: &[u8]) {}
}

#[test]
fn assign_bars_places_every_bar_in_the_windows_and_enables_decode() {
    let p = platform();
    let dev = TestDevice::shared();
    let mut root = p.root.lock().unwrap();
    root.add_device(1, dev.clone()).unwrap();
    root.assign_bars(&mut BarAllocator::new()).unwrap();
    let bars = dev.lock().unwrap().config.mapped_bars();
    assert_eq!(bars.len(), 2);
    assert_eq!(bars[0].address, PCI_MMIO32_START);
    assert_eq!(bars[1].address, PCI_IO_START);
    assert!(p.mmio.is_occupied(PCI_MMIO32_START, 0x1000));
    assert!(p.pio.is_occupied(PCI_IO_START, 0x40));
}

#[test]
fn slots_are_checked() {
    let p = platform();
    let mut root = p.root.lock().unwrap();
    assert_eq!(root.free_slot(), Some(1));
    assert_eq!(
        root.add_device(0, TestDevice::shared()).err(),
        Some(PciRootError::SlotTaken(0))
    );
    assert_eq!(
        root.add_device(32, TestDevice::shared()).err(),
        Some(PciRootError::NoSuchSlot(32))
    );
}

#[test]
fn intx_swizzle_spreads_slots_over_the_pci_lines() {
    assert_eq!(intx_gsi(1, 1), 17);
    assert_eq!(intx_gsi(1, 2), 18);
    assert_eq!(intx_gsi(7, 2), 16);
    assert!((0..32).all(|s| (16..24).contains(&intx_gsi(s, 1))));
}

#[test]
fn byte_and_word_accesses_below_the_data_port_never_panic() {
    let mut p = platform();
    p.io.write(0, &address(0, 0));
    // 0xcf9..0xcfb: what SeaBIOS and Linux touch for reset and probing.
    for offset in 1..4u64 {
        p.io.write(offset, &[0x06]);
        p.io.write(offset & !1, &[0x06, 0x00]);
        let mut b = [0u8; 1];
        p.io.read(offset, &mut b);
        let mut w = [0u8; 2];
        p.io.read(offset & !1, &mut w);
    }
}

#[test]
fn reset_control_register_resets_when_bit_2_is_set() {
    let root = platform().root;
    let resets = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = resets.clone();
    let mut io = PciConfigIo::new(root).with_reset(Box::new(move || {
        counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }));
    io.write(1, &[0x02]); // select hard reset, not yet
    assert_eq!(resets.load(std::sync::atomic::Ordering::SeqCst), 0);
    io.write(1, &[0x06]);
    assert_eq!(resets.load(std::sync::atomic::Ordering::SeqCst), 1);
}

#[test]
fn the_pm_function_answers_at_01_3_of_the_multi_function_isa_bridge_only() {
    let mut p = platform();
    let pm = || Arc::new(Mutex::new(Piix4Pm::new()));
    {
        let mut root = p.root.lock().unwrap();
        assert!(
            matches!(
                root.add_function(ISA_BRIDGE_SLOT, PIIX4_PM_FUNCTION, pm()),
                Err(PciRootError::BadFunction { .. })
            ),
            "no device at function 0 yet"
        );
        root.add_device(ISA_BRIDGE_SLOT, Arc::new(Mutex::new(IsaBridge::new())))
            .unwrap();
        root.add_function(ISA_BRIDGE_SLOT, PIIX4_PM_FUNCTION, pm())
            .unwrap();
        assert!(
            root.add_function(ISA_BRIDGE_SLOT, PIIX4_PM_FUNCTION, pm())
                .is_err(),
            "taken"
        );
        assert!(
            root.add_function(ISA_BRIDGE_SLOT, 8, pm()).is_err(),
            "functions are 0..8"
        );
        // The host bridge is single-function: nothing can join it.
        assert!(root.add_function(0, 1, pm()).is_err());
    }
    // Port 0xcf8: function in bits 8..10.
    let read = |p: &mut Platform, function: u8, register: u8| {
        let address = 0x8000_0000u32
            | u32::from(ISA_BRIDGE_SLOT) << 11
            | u32::from(function) << 8
            | u32::from(register);
        p.io.write(0, &address.to_le_bytes());
        let mut b = [0; 4];
        p.io.read(4, &mut b);
        u32::from_le_bytes(b)
    };
    assert_eq!(read(&mut p, 0, 0), 0x7000_8086, "the ISA bridge at function 0");
    assert_eq!(read(&mut p, PIIX4_PM_FUNCTION, 0), 0x7113_8086);
    assert_eq!(read(&mut p, PIIX4_PM_FUNCTION, PMBA as u8), 0x601);
    assert_eq!(read(&mut p, 2, 0), 0xffff_ffff, "absent functions read all ones");
    // ECAM: function in bits 12..14.
    let mut b = [0; 4];
    p.ecam.read(
        u64::from(ISA_BRIDGE_SLOT) << 15 | u64::from(PIIX4_PM_FUNCTION) << 12,
        &mut b,
    );
    assert_eq!(u32::from_le_bytes(b), 0x7113_8086);
}
