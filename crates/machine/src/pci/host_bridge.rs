//! The host bridge at 00:00.0: an Intel 440FX (8086:1237), the PCI host SeaBIOS and Linux know
//! for a PC. Its PAM registers (0x59..0x60) read back what was written; on a firmware boot the
//! machine gives it a handler that makes them take effect (`crate::pam`), on a direct kernel
//! boot they are storage only.

use super::{PciConfiguration, PciDevice, PciHeader};

pub const VENDOR_INTEL: u16 = 0x8086;
pub const DEVICE_I440FX: u16 = 0x1237;
/// Base class 06 (bridge; the ISA bridge's too), subclass 00 (host bridge).
pub(super) const CLASS_BRIDGE: u8 = 0x06;
const SUBCLASS_HOST: u8 = 0x00;
/// First PAM register and how many there are.
pub const PAM_START: usize = 0x59;
pub const PAM_COUNT: usize = 7;

/// Called with PAM0..PAM6 after every write that touched one of them.
pub type PamHandler = Box<dyn FnMut(&[u8; PAM_COUNT]) + Send>;

/// The 440FX host bridge.
pub struct HostBridge {
    config: PciConfiguration,
    pam_handler: Option<PamHandler>,
}

impl std::fmt::Debug for HostBridge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostBridge")
            .field("pam", &self.pam_registers())
            .field("pam_handler", &self.pam_handler.is_some())
            .finish()
    }
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
        HostBridge {
            config,
            pam_handler: None,
        }
    }

    /// Makes PAM writes take effect: `handler` gets the registers after each write to them.
    pub fn with_pam_handler(mut self, handler: PamHandler) -> HostBridge {
        self.pam_handler = Some(handler);
        self
    }

    /// PAM0..PAM6 as they are now.
    pub fn pam_registers(&self) -> [u8; PAM_COUNT] {
        self.config.register_bytes(PAM_START)
    }
}

impl PciDevice for HostBridge {
    fn configuration(&self) -> &PciConfiguration {
        &self.config
    }

    fn configuration_mut(&mut self) -> &mut PciConfiguration {
        &mut self.config
    }

    fn write_config(&mut self, offset: usize, data: &[u8]) {
        self.config.write(offset, data);
        let touches_pam = offset < PAM_START + PAM_COUNT && offset + data.len() > PAM_START;
        if touches_pam {
            let registers = self.pam_registers();
            if let Some(handler) = &mut self.pam_handler {
                handler(&registers);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    fn recording_bridge() -> (HostBridge, Arc<Mutex<Vec<[u8; PAM_COUNT]>>>) {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let record = seen.clone();
        let bridge = HostBridge::new().with_pam_handler(Box::new(move |r| record.lock().unwrap().push(*r)));
        (bridge, seen)
    }

    #[test]
    fn pam_handler_gets_the_registers_after_each_write_that_touches_them() {
        let (mut bridge, seen) = recording_bridge();
        // SeaBIOS writes PAM0..PAM6 as the dwords at 0x58 and 0x5c.
        bridge.write_config(0x58, &0x3333_3000u32.to_le_bytes());
        bridge.write_config(0x5c, &0x3333_3333u32.to_le_bytes());
        // A byte write to PAM6 alone.
        bridge.write_config(0x5f, &[0x11]);
        assert_eq!(
            *seen.lock().unwrap(),
            vec![
                [0x30, 0x33, 0x33, 0, 0, 0, 0],
                [0x30, 0x33, 0x33, 0x33, 0x33, 0x33, 0x33],
                [0x30, 0x33, 0x33, 0x33, 0x33, 0x33, 0x11],
            ]
        );
        assert_eq!(bridge.pam_registers(), [0x30, 0x33, 0x33, 0x33, 0x33, 0x33, 0x11]);
    }

    #[test]
    fn writes_beside_the_pam_registers_do_not_call_the_handler() {
        let (mut bridge, seen) = recording_bridge();
        bridge.write_config(0x58, &[0xaa]); // 0x58 is not a PAM register
        bridge.write_config(0x60, &0xffff_ffffu32.to_le_bytes());
        bridge.write_config(0x04, &0x0006u16.to_le_bytes());
        assert!(seen.lock().unwrap().is_empty());
        assert_eq!(bridge.pam_registers(), [0; PAM_COUNT]);
    }
}
