//! The PCI-to-ISA bridge at 00:01.0: an Intel PIIX3 (82371SB function 0, 8086:7000, class
//! 0x0601), the south bridge a 440FX PC has and the one QEMU's `pc` machine puts there, with a
//! multi-function header as QEMU's (its other functions, IDE and USB, are absent here).
//!
//! Its registers are storage: everything from 0x40 reads back what was written, starting from
//! the datasheet's reset values. That includes the PIRQ route control registers 0x60..0x63
//! (PIRQA#..PIRQD#: bit 7 disables routing, bits 0..4 pick an ISA IRQ), which SeaBIOS programs
//! to IRQ 10, 10, 11, 11. They do not steer anything: every slot's INTx is wired to I/O APIC
//! pins 16..24 (`pci::intx_gsi`), which is what the DSDT's `_PRT` (with no link devices) and
//! the MADT tell the OS, so an ACPI OS never reads these registers. The interrupt line
//! SeaBIOS writes into each device (10 or 11) is advisory and unused by such an OS; a guest
//! that drives PCI interrupts through the 8259 PIC alone would not get them.

use super::header::STATUS;
use super::{PciConfiguration, PciDevice, PciHeader, COMMAND_BUS_MASTER, COMMAND_IO, COMMAND_MEMORY};
use crate::pci::host_bridge::{CLASS_BRIDGE, VENDOR_INTEL};

/// 82371SB PIIX3, function 0 (PCI-to-ISA bridge).
pub const DEVICE_PIIX3_ISA: u16 = 0x7000;
/// Where the machine puts it, as on a PC.
pub const ISA_BRIDGE_SLOT: u8 = 1;
/// Subclass 01 of the bridge class: ISA bridge.
const SUBCLASS_ISA: u8 = 0x01;
/// PIRQA# route control; PIRQB#..PIRQD# follow.
pub const PIRQ_ROUTE_START: usize = 0x60;
pub const PIRQ_COUNT: usize = 4;
/// A PIRQ route register: routing off (the reset value).
pub const PIRQ_ROUTING_DISABLED: u8 = 0x80;
/// The bits of a PIRQ route register that exist: IRQROUTEEN# and the IRQ number (bits 4..6 are
/// reserved and read as zero).
const PIRQ_WRITABLE: u8 = 0x8f;
/// The device-specific registers, all plain storage here.
const DEVICE_REGISTERS: usize = 0x40;
/// Status: DEVSEL# timing medium.
const STATUS_DEVSEL_MEDIUM: u16 = 0x0200;

/// Reset values of the device-specific registers (82371SB datasheet, as QEMU has them).
const RESET_VALUES: &[(usize, u8)] = &[
    (0x4c, 0x4d), // ISA I/O recovery timer
    (0x4e, 0x03), // X-bus chip select enable
    (0x69, 0x02), // top of memory
    (0x70, 0x80), // motherboard IRQ route 0: disabled
    (0x76, 0x0c), // motherboard DMA 0: none
    (0x77, 0x0c), // motherboard DMA 1: none
    (0x78, 0x02), // programmable chip select control
    (0xa0, 0x08), // SMI control
    (0xa8, 0x0f), // system event enable (fast-off timer)
];

/// The PIIX3 ISA bridge.
#[derive(Debug)]
pub struct IsaBridge {
    config: PciConfiguration,
}

impl Default for IsaBridge {
    fn default() -> Self {
        IsaBridge::new()
    }
}

impl IsaBridge {
    /// The bridge as after reset: PIRQ routing off everywhere.
    pub fn new() -> IsaBridge {
        let mut config = PciConfiguration::new(PciHeader {
            vendor_id: VENDOR_INTEL,
            device_id: DEVICE_PIIX3_ISA,
            revision_id: 0,
            class: CLASS_BRIDGE,
            subclass: SUBCLASS_ISA,
            prog_if: 0,
            subsystem_vendor_id: 0,
            subsystem_id: 0,
        });
        config.set_multi_function(true);
        config.enable(COMMAND_IO | COMMAND_MEMORY | COMMAND_BUS_MASTER);
        config.set_bytes(STATUS, &STATUS_DEVSEL_MEDIUM.to_le_bytes());
        config.set_writable(DEVICE_REGISTERS, super::CONFIG_SPACE_SIZE - DEVICE_REGISTERS);
        config.set_write_mask(PIRQ_ROUTE_START, PIRQ_COUNT, PIRQ_WRITABLE);
        for &(offset, value) in RESET_VALUES {
            config.set_bytes(offset, &[value]);
        }
        config.set_bytes(PIRQ_ROUTE_START, &[PIRQ_ROUTING_DISABLED; PIRQ_COUNT]);
        IsaBridge { config }
    }

    /// PIRQA#..PIRQD# route control as programmed.
    pub fn pirq_routes(&self) -> [u8; PIRQ_COUNT] {
        self.config.register_bytes(PIRQ_ROUTE_START)
    }
}

impl PciDevice for IsaBridge {
    fn configuration(&self) -> &PciConfiguration {
        &self.config
    }

    fn configuration_mut(&mut self) -> &mut PciConfiguration {
        &mut self.config
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pci::header::{CLASS_PROG_IF, COMMAND, HEADER_TYPE, REVISION_ID, VENDOR_ID};

    fn read32(bridge: &mut IsaBridge, offset: usize) -> u32 {
        let mut b = [0; 4];
        bridge.read_config(offset, &mut b);
        u32::from_le_bytes(b)
    }

    #[test]
    fn identifies_as_a_multi_function_piix3_isa_bridge() {
        let mut bridge = IsaBridge::new();
        assert_eq!(read32(&mut bridge, VENDOR_ID), 0x7000_8086);
        assert_eq!(read32(&mut bridge, REVISION_ID) >> 8, 0x06_01_00);
        assert_eq!(read32(&mut bridge, CLASS_PROG_IF - 1) & 0xff, 0, "revision 0");
        assert_eq!(read32(&mut bridge, HEADER_TYPE & !3) >> 16 & 0xff, 0x80);
        assert_eq!(read32(&mut bridge, COMMAND), 0x0200_0007);
        assert_eq!(read32(&mut bridge, 0x3c) >> 8 & 0xff, 0, "no INTx pin of its own");
    }

    #[test]
    fn pirq_routes_start_disabled_and_read_back_what_seabios_writes() {
        let mut bridge = IsaBridge::new();
        assert_eq!(read32(&mut bridge, PIRQ_ROUTE_START), 0x8080_8080);
        // SeaBIOS's piix_isa_bridge_setup: one byte write per PIRQ.
        for (i, irq) in [10u8, 10, 11, 11].into_iter().enumerate() {
            bridge.write_config(PIRQ_ROUTE_START + i, &[irq]);
        }
        assert_eq!(bridge.pirq_routes(), [10, 10, 11, 11]);
        assert_eq!(read32(&mut bridge, PIRQ_ROUTE_START), 0x0b0b_0a0a);
        bridge.write_config(PIRQ_ROUTE_START, &0xffff_ffffu32.to_le_bytes());
        assert_eq!(bridge.pirq_routes(), [0x8f; 4], "reserved bits stay zero");
    }

    #[test]
    fn other_chipset_registers_are_storage_and_the_header_is_not() {
        let mut bridge = IsaBridge::new();
        assert_eq!(read32(&mut bridge, 0x4c) & 0xff, 0x4d);
        // Linux's quirk_passive_release sets bit 1 of 0x82.
        bridge.write_config(0x82, &[0x02]);
        assert_eq!(read32(&mut bridge, 0x80) >> 16 & 0xff, 0x02);
        bridge.write_config(VENDOR_ID, &[0, 0, 0, 0]);
        assert_eq!(read32(&mut bridge, VENDOR_ID), 0x7000_8086);
    }
}
