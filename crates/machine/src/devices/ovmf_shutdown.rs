//! OVMF's power-off port. OVMF's `ResetSystem(EfiResetShutdown)` on a 440FX (the UEFI shell's
//! `reset -s`, an OS loader's shutdown before an OS runs) does not look at the PIIX4's PMBA: it
//! writes SLP_TYP 0 and then SLP_EN to a PM1 control register at 0xB004, its own default PM base
//! plus 4 (edk2 `OvmfPkg/Library/ResetSystemLib/*ResetShutdown.c`), and spins if nothing
//! happens. An EFI machine decodes that register here and powers off. An OS shuts down through
//! the FADT's PM1 control block (0x604) as before.

use crate::bus::BusDevice;
use crate::layout::pm::SLP_EN;

use super::{GuestRequest, RequestSink};

/// The register's port, and its length.
pub const OVMF_PM1_CNT_PORT: u16 = 0xb004;
pub const OVMF_PM1_CNT_LEN: u64 = 2;

pub struct OvmfShutdown {
    requests: RequestSink,
    control: u16,
}

impl OvmfShutdown {
    pub fn new(requests: RequestSink) -> OvmfShutdown {
        OvmfShutdown { requests, control: 0 }
    }
}

impl BusDevice for OvmfShutdown {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let bytes = self.control.to_le_bytes();
        for (i, b) in data.iter_mut().enumerate() {
            *b = usize::try_from(offset)
                .ok()
                .and_then(|o| bytes.get(o + i))
                .copied()
                .unwrap_or(0xff);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let mut bytes = self.control.to_le_bytes();
        for (i, &b) in data.iter().enumerate() {
            if let Some(slot) = usize::try_from(offset).ok().and_then(|o| bytes.get_mut(o + i)) {
                *slot = b;
            }
        }
        let value = u16::from_le_bytes(bytes);
        if value & SLP_EN != 0 {
            (self.requests)(GuestRequest::PowerOff);
        }
        self.control = value & !SLP_EN;
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    #[test]
    fn ovmfs_two_writes_power_off_once() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let sink = seen.clone();
        let mut port = OvmfShutdown::new(Arc::new(move |r| sink.lock().unwrap().push(r)));
        // BaseResetShutdown.c: IoBitFieldWrite16 (SLP_TYP = 0), then IoOr16 (SLP_EN).
        port.write(0, &0u16.to_le_bytes());
        assert!(seen.lock().unwrap().is_empty());
        let mut now = [0u8; 2];
        port.read(0, &mut now);
        port.write(0, &(u16::from_le_bytes(now) | SLP_EN).to_le_bytes());
        assert_eq!(*seen.lock().unwrap(), [GuestRequest::PowerOff]);
        port.read(0, &mut now);
        assert_eq!(u16::from_le_bytes(now) & SLP_EN, 0, "SLP_EN reads as zero");
    }
}
