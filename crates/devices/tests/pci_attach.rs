//! A virtio-blk disk on a real machine's PCI bus (real `/dev/kvm`, vCPUs not started): it sits
//! in slot 2 (after the host bridge and the ISA bridge) as 1af4:1042 behind the 0xcf8/0xcfc
//! ports, with its MSI vectors allocated, and its BAR maps where the configuration space says
//! once decoding is on.

use std::path::PathBuf;

use virtkit_devices::block::{Block, BlockConfig, PCI_CLASS};
use virtkit_hypervisor::Kvm;
use virtkit_machine::{BootSource, Machine, MachineConfig};
use virtkit_virtio::transport::pci::attach;

struct TempFile(PathBuf);

impl TempFile {
    fn new(name: &str, bytes: &[u8]) -> TempFile {
        let path = std::env::temp_dir().join(format!("virtkit-attach-{}-{name}", std::process::id()));
        std::fs::write(&path, bytes).unwrap();
        TempFile(path)
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn config_read(machine: &mut Machine, slot: u8, register: u8) -> u32 {
    let address = 0x8000_0000u32 | u32::from(slot) << 11 | u32::from(register);
    let bus = machine.pio_bus_mut();
    assert!(bus.write(0xcf8, &address.to_le_bytes()));
    let mut data = [0u8; 4];
    assert!(bus.read(0xcfc, &mut data));
    u32::from_le_bytes(data)
}

fn config_write(machine: &mut Machine, slot: u8, register: u8, value: u32) {
    let address = 0x8000_0000u32 | u32::from(slot) << 11 | u32::from(register);
    let bus = machine.pio_bus_mut();
    assert!(bus.write(0xcf8, &address.to_le_bytes()));
    assert!(bus.write(0xcfc, &value.to_le_bytes()));
}

#[test]
fn virtio_blk_appears_in_a_slot_and_its_bar_maps_when_programmed() {
    if !virtkit_testkit::require_kvm() {
        return;
    }
    // A firmware image that is never run: 64 KiB of HLT.
    let firmware = TempFile::new("fw.bin", &[0xf4; 64 * 1024]);
    let image = TempFile::new("disk.img", &[0; 1 << 20]);
    let kvm = Kvm::open().unwrap();
    let mut machine = Machine::new(
        &kvm,
        MachineConfig {
            vcpus: 1,
            memory_size: 128 << 20,
            boot: BootSource::Firmware {
                path: firmware.0.clone(),
                variables: None,
            },
            serial_output: Box::new(std::io::sink()),
            serial_input: None,
            smbios_identity: None,
            shared_memory: false,
            ps2_input: false,
        },
    )
    .unwrap();
    let block = Block::open(&BlockConfig::new(&image.0)).unwrap();
    let slot = attach(&machine, block, PCI_CLASS).unwrap().slot;
    assert_eq!(slot, 2);
    assert_eq!(config_read(&mut machine, 0, 0), 0x1237_8086, "host bridge");
    assert_eq!(config_read(&mut machine, 1, 0), 0x7000_8086, "PIIX3 ISA bridge");
    assert_eq!(
        config_read(&mut machine, slot, 0),
        0x1042_1af4,
        "virtio-blk, modern"
    );
    assert_eq!(config_read(&mut machine, slot, 0x3c) >> 8 & 0xff, 1, "INTA#");
    // Program BAR 0 as firmware would, turn memory decoding on, read num_queues from the BAR.
    config_write(&mut machine, slot, 0x10, 0xffff_ffff);
    let size = !(config_read(&mut machine, slot, 0x10) & !0xf) + 1;
    assert_eq!(size, 0x8000);
    config_write(&mut machine, slot, 0x10, 0xfebf_0000);
    config_write(&mut machine, slot, 0x04, 0x2);
    let mut num_queues = [0u8; 2];
    assert!(machine.mmio_bus_mut().read(0xfebf_0012, &mut num_queues));
    assert_eq!(u16::from_le_bytes(num_queues), 1);
    let mut capacity = [0u8; 8];
    assert!(machine.mmio_bus_mut().read(0xfebf_2000, &mut capacity));
    assert_eq!(u64::from_le_bytes(capacity), 2048, "1 MiB in sectors");
}
