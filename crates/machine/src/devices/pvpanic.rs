//! pvpanic (QEMU's ISA device, ACPI `QEMU0001`): the guest kernel writes here when it panics,
//! so a crash ends the VM with a reason instead of a silent hang.

use crate::bus::BusDevice;

use super::{GuestRequest, RequestSink};

/// The port QEMU uses, which Linux's pvpanic driver finds through the DSDT.
pub const PVPANIC_PORT: u16 = 0x505;
const PANICKED: u8 = 1 << 0;
const CRASH_LOADED: u8 = 1 << 1;

pub struct PvPanic {
    requests: RequestSink,
}

impl PvPanic {
    pub fn new(requests: RequestSink) -> PvPanic {
        PvPanic { requests }
    }
}

impl BusDevice for PvPanic {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        // The events we support, as the driver reads them at probe.
        data.fill(0);
        if let Some(b) = data.first_mut() {
            *b = PANICKED | CRASH_LOADED;
        }
    }

    fn write(&mut self, _offset: u64, data: &[u8]) {
        if data.first().is_some_and(|b| b & PANICKED != 0) {
            (self.requests)(GuestRequest::Panic);
        }
    }
}
