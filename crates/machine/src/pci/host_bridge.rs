//! The host bridge at 00:00.0: an Intel 440FX (8086:1237), the PCI host SeaBIOS and Linux know
//! for a PC. Chipset registers are storage only for now: the PAM bytes (0x59..0x60) read back
//! what was written, so firmware that programs shadow RAM sees its values; what they mean is the
//! firmware path's to add.

use super::{PciConfiguration, PciDevice, PciHeader};

pub const VENDOR_INTEL: u16 = 0x8086;
pub const DEVICE_I440FX: u16 = 0x1237;
/// Base class 06 (bridge), subclass 00 (host bridge).
const CLASS_BRIDGE: u8 = 0x06;
const SUBCLASS_HOST: u8 = 0x00;
/// First PAM register and how many there are.
pub const PAM_START: usize = 0x59;
pub const PAM_COUNT: usize = 7;

/// The 440FX host bridge.
#[derive(Debug)]
pub struct HostBridge {
    config: PciConfiguration,
}

impl Default for HostBridge {
    fn default() -> Self {
        HostBridge::new()
    }
}

impl HostBridge {
    pub fn new() -> HostBridge {
        let mut config = PciConfiguration::new(PciHeader {
            vendor_id: VENDOR_INTEL,
            device_id: DEVICE_I440FX,
            revision_id: 0x02,
            class: CLASS_BRIDGE,
            subclass: SUBCLASS_HOST,
            prog_if: 0,
            subsystem_vendor_id: 0,
            subsystem_id: 0,
        });
        config.set_writable(PAM_START, PAM_COUNT);
        HostBridge { config }
    }
}

impl PciDevice for HostBridge {
    fn configuration(&self) -> &PciConfiguration {
        &self.config
    }

    fn configuration_mut(&mut self) -> &mut PciConfiguration {
        &mut self.config
    }
}
