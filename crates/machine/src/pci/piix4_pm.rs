//! The power-management function at 00:01.3: an Intel PIIX4 ACPI function (82371AB function 3,
//! 8086:7113), what OVMF looks for on a 440FX machine before it touches the ACPI PM timer.
//!
//! OVMF's platform code (`OvmfPkg/Library/PlatformInitLib` and its `AcpiTimerLib`s) reads the
//! PM I/O base from PMBA (0x40) and, when PMREGMISC (0x80) bit 0 says the PM I/O space is
//! already on, takes it as it is instead of programming its own (0xb000). This function comes
//! already programmed with the machine's fixed PM block (0x600: PM1 event, PM1 control, the
//! timer at 0x608, what the FADT says), and its registers are read-only, so every reader finds
//! the same base. It has no BARs and no state to save. Only an EFI machine has it: SeaBIOS
//! would otherwise reprogram it and take its timer from it, which changes the BIOS boot.

use super::{PciConfiguration, PciDevice, PciHeader, COMMAND_IO};
use crate::layout::ports::PM1A_EVT_BLK;
use crate::pci::host_bridge::{CLASS_BRIDGE, VENDOR_INTEL};

/// 82371AB PIIX4, function 3 (power management).
pub const DEVICE_PIIX4_PM: u16 = 0x7113;
/// Where it is: the ISA bridge's slot, function 3, as on a PC.
pub const PIIX4_PM_FUNCTION: u8 = 3;
/// The PM I/O base register (PMBA); bit 0 reads as one (I/O space).
pub const PMBA: usize = 0x40;
/// PMREGMISC: bit 0 enables the PM I/O space.
pub const PMREGMISC: usize = 0x80;
/// Subclass 0x80 of the bridge class: other bridge (what the PIIX4 says).
const SUBCLASS_OTHER: u8 = 0x80;
/// The revision QEMU's PIIX4 PM reports.
const REVISION: u8 = 0x03;

/// The PIIX4 power-management function, fixed at the machine's PM block.
#[derive(Debug)]
pub struct Piix4Pm {
    config: PciConfiguration,
}

impl Default for Piix4Pm {
    fn default() -> Self {
        Piix4Pm::new()
    }
}

impl Piix4Pm {
    pub fn new() -> Piix4Pm {
        let mut config = PciConfiguration::new(PciHeader {
            vendor_id: VENDOR_INTEL,
            device_id: DEVICE_PIIX4_PM,
            revision_id: REVISION,
            class: CLASS_BRIDGE,
            subclass: SUBCLASS_OTHER,
            prog_if: 0,
            subsystem_vendor_id: 0,
            subsystem_id: 0,
        });
        config.enable(COMMAND_IO);
        config.set_bytes(PMBA, &(u32::from(PM1A_EVT_BLK) | 1).to_le_bytes());
        config.set_bytes(PMREGMISC, &[0x01]);
        Piix4Pm { config }
    }
}

impl PciDevice for Piix4Pm {
    fn configuration(&self) -> &PciConfiguration {
        &self.config
    }

    fn configuration_mut(&mut self) -> &mut PciConfiguration {
        &mut self.config
    }

    /// Read-only: the PM block does not move, and its header stays as it is.
    fn write_config(&mut self, offset: usize, data: &[u8]) {
        static LIMIT: crate::ratelimit::RateLimit = crate::ratelimit::RateLimit::new();
        if let Some(suppressed) = LIMIT.check() {
            tracing::debug!(
                suppressed,
                offset,
                len = data.len(),
                "write to the PIIX4 PM function ignored"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pci::header::{COMMAND, VENDOR_ID};

    fn read32(pm: &mut Piix4Pm, offset: usize) -> u32 {
        let mut b = [0; 4];
        pm.read_config(offset, &mut b);
        u32::from_le_bytes(b)
    }

    #[test]
    fn says_its_pm_block_is_on_at_the_machines_fixed_ports() {
        let mut pm = Piix4Pm::new();
        assert_eq!(read32(&mut pm, VENDOR_ID), 0x7113_8086);
        assert_eq!(read32(&mut pm, 0x08), 0x0680_0003, "class 06/80, revision 3");
        assert_eq!(read32(&mut pm, PMBA), 0x601);
        assert_eq!(read32(&mut pm, PMREGMISC) & 1, 1);
        assert_eq!(read32(&mut pm, COMMAND) & 1, 1, "I/O decoding on");
    }

    #[test]
    fn ovmfs_programming_changes_nothing() {
        let mut pm = Piix4Pm::new();
        // OVMF's PlatformPei on a 440FX when the PM I/O space is off: PMBA, command, PMREGMISC.
        pm.write_config(PMBA, &0xb000u32.to_le_bytes());
        pm.write_config(COMMAND, &[0x01]);
        pm.write_config(PMREGMISC, &[0x00]);
        pm.write_config(VENDOR_ID, &[0; 4]);
        assert_eq!(read32(&mut pm, PMBA), 0x601);
        assert_eq!(read32(&mut pm, PMREGMISC) & 1, 1);
        assert_eq!(read32(&mut pm, VENDOR_ID), 0x7113_8086);
    }
}
