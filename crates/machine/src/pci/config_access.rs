//! The two ways to reach configuration space: mechanism #1 through ports 0xcf8/0xcfc (what
//! firmware and Linux probe first) and the memory-mapped ECAM window described by the MCFG.

use std::sync::{Arc, Mutex, MutexGuard};

use super::PciRoot;
use crate::bus::BusDevice;

fn lock(root: &Mutex<PciRoot>) -> MutexGuard<'_, PciRoot> {
    root.lock().unwrap_or_else(|p| p.into_inner())
}

/// CONFIG_ADDRESS: the enable bit.
const ADDRESS_ENABLE: u32 = 1 << 31;
/// Offset of CONFIG_DATA from CONFIG_ADDRESS on the port bus.
const DATA_OFFSET: u64 = 4;

/// Ports 0xcf8..0xd00: CONFIG_ADDRESS (a dword latch) and CONFIG_DATA (byte, word or dword
/// accesses into the dword CONFIG_ADDRESS selects).
pub struct PciConfigIo {
    root: Arc<Mutex<PciRoot>>,
    address: u32,
    reset: Option<Box<dyn Fn() + Send>>,
}

/// 0xcf9, the PC's reset control register, shares the config address's dword.
const RESET_CONTROL_OFFSET: u64 = 1;
/// Reset control: bit 2 starts the reset (bit 1 picks hard or soft, both reset us).
const RESET_CPU: u8 = 1 << 2;

impl PciConfigIo {
    pub fn new(root: Arc<Mutex<PciRoot>>) -> PciConfigIo {
        PciConfigIo {
            root,
            address: 0,
            reset: None,
        }
    }

    /// Also answers 0xcf9: a reset request there calls `reset`.
    pub fn with_reset(mut self, reset: Box<dyn Fn() + Send>) -> PciConfigIo {
        self.reset = Some(reset);
        self
    }

    /// (bus, device, function, register offset) of a CONFIG_DATA access of `len` bytes at port
    /// offset `offset`, if the address latch is enabled and the access fits in the dword.
    fn data_target(&self, offset: u64, len: usize) -> Option<(u8, u8, u8, usize)> {
        let data_offset = offset.checked_sub(DATA_OFFSET)?;
        if self.address & ADDRESS_ENABLE == 0 || !fits_in_dword(data_offset, len) {
            return None;
        }
        let bus = (self.address >> 16) as u8;
        let device = ((self.address >> 11) & 0x1f) as u8;
        let function = ((self.address >> 8) & 0x7) as u8;
        let register = (self.address & 0xfc) as usize;
        Some((bus, device, function, register + data_offset as usize))
    }
}

fn fits_in_dword(offset: u64, len: usize) -> bool {
    matches!(len, 1 | 2 | 4) && offset.is_multiple_of(len as u64) && offset + len as u64 <= 4
}

impl BusDevice for PciConfigIo {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset == 0 && data.len() == 4 {
            data.copy_from_slice(&self.address.to_le_bytes());
            return;
        }
        match self.data_target(offset, data.len()) {
            Some((bus, device, function, register)) => {
                lock(&self.root).read_config(bus, device, function, register, data)
            }
            None => data.fill(0xff),
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset == 0 && data.len() == 4 {
            let mut b = [0; 4];
            b.copy_from_slice(data);
            self.address = u32::from_le_bytes(b);
            return;
        }
        if offset == RESET_CONTROL_OFFSET && data.len() == 1 {
            if data[0] & RESET_CPU != 0 {
                if let Some(reset) = &self.reset {
                    reset();
                }
            }
            return;
        }
        if let Some((bus, device, function, register)) = self.data_target(offset, data.len()) {
            lock(&self.root).write_config(bus, device, function, register, data);
            return;
        }
        // Other byte and word accesses to 0xcf8..0xcfb are chipset registers nothing here has.
        tracing::trace!(offset, len = data.len(), "PCI config port access ignored");
    }
}

/// The ECAM window: 4 KiB of configuration space per function, at
/// `bus << 20 | device << 15 | function << 12 | register`.
pub struct PciConfigMmio {
    root: Arc<Mutex<PciRoot>>,
}

impl PciConfigMmio {
    pub fn new(root: Arc<Mutex<PciRoot>>) -> PciConfigMmio {
        PciConfigMmio { root }
    }
}

fn ecam_target(offset: u64, len: usize) -> Option<(u8, u8, u8, usize)> {
    let register = (offset & 0xfff) as usize;
    if !matches!(len, 1 | 2 | 4) || !register.is_multiple_of(len) {
        return None;
    }
    Some((
        (offset >> 20) as u8,
        ((offset >> 15) & 0x1f) as u8,
        ((offset >> 12) & 0x7) as u8,
        register,
    ))
}

impl BusDevice for PciConfigMmio {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        match ecam_target(offset, data.len()) {
            Some((bus, device, function, register)) => {
                lock(&self.root).read_config(bus, device, function, register, data)
            }
            None => data.fill(0xff),
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if let Some((bus, device, function, register)) = ecam_target(offset, data.len()) {
            lock(&self.root).write_config(bus, device, function, register, data);
        }
    }
}
