//! A type-0 PCI configuration space: the standard header, BARs with their sizing and relocation
//! semantics, the command register's decode bits and a capabilities list.
//!
//! Every register a device does not override behaves as on hardware: read-only fields ignore
//! writes, a BAR keeps only the address bits its size allows (so writing all ones and reading
//! back tells the size), and a 64-bit BAR takes two registers.

use super::{BarKind, BarRegion, PciConfigError};

/// Bytes of conventional configuration space (the ECAM's 4 KiB beyond it read as zero).
pub const CONFIG_SPACE_SIZE: usize = 256;
/// Number of BAR registers in a type-0 header.
pub const NUM_BARS: usize = 6;

pub const VENDOR_ID: usize = 0x00;
pub const DEVICE_ID: usize = 0x02;
pub const COMMAND: usize = 0x04;
pub const STATUS: usize = 0x06;
pub const REVISION_ID: usize = 0x08;
pub const CLASS_PROG_IF: usize = 0x09;
pub const CACHE_LINE_SIZE: usize = 0x0c;
pub const LATENCY_TIMER: usize = 0x0d;
pub const HEADER_TYPE: usize = 0x0e;
pub const BAR0: usize = 0x10;
pub const SUBSYSTEM_VENDOR_ID: usize = 0x2c;
pub const SUBSYSTEM_ID: usize = 0x2e;
pub const CAPABILITIES_POINTER: usize = 0x34;
pub const INTERRUPT_LINE: usize = 0x3c;
pub const INTERRUPT_PIN: usize = 0x3d;
/// Where the capabilities list starts: right after the standard header.
pub const FIRST_CAPABILITY: usize = 0x40;

/// Command register: respond to I/O space accesses.
pub const COMMAND_IO: u16 = 1 << 0;
/// Command register: respond to memory space accesses.
pub const COMMAND_MEMORY: u16 = 1 << 1;
/// Command register: may master the bus (DMA, and so MSI).
pub const COMMAND_BUS_MASTER: u16 = 1 << 2;
/// Command register: INTx is disabled.
pub const COMMAND_INTX_DISABLE: u16 = 1 << 10;
/// What a guest may change in the command register (parity and SERR enable are kept too).
const COMMAND_WRITABLE: u16 =
    COMMAND_IO | COMMAND_MEMORY | COMMAND_BUS_MASTER | (1 << 6) | (1 << 8) | COMMAND_INTX_DISABLE;
/// Status register: an INTx is pending.
pub const STATUS_INTERRUPT: u16 = 1 << 3;
/// Status register: the capabilities pointer is valid.
pub const STATUS_CAPABILITIES: u16 = 1 << 4;

const BAR_IO_FLAG: u32 = 1 << 0;
const BAR_MEM64_FLAGS: u32 = 0b10 << 1;
const BAR_PREFETCHABLE: u32 = 1 << 3;

/// The identity of a function: what the header's read-only fields say.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PciHeader {
    pub vendor_id: u16,
    pub device_id: u16,
    pub revision_id: u8,
    /// Base class, subclass and programming interface.
    pub class: u8,
    pub subclass: u8,
    pub prog_if: u8,
    pub subsystem_vendor_id: u16,
    pub subsystem_id: u16,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct BarDef {
    size: u64,
    kind: BarKind,
    prefetchable: bool,
}

/// One function's configuration space.
#[derive(Clone)]
pub struct PciConfiguration {
    bytes: [u8; CONFIG_SPACE_SIZE],
    /// Bits a plain write may change, outside the BARs.
    writable: [u8; CONFIG_SPACE_SIZE],
    /// The BAR defined at each index; the upper half of a 64-bit BAR has `None` and is marked in
    /// `upper_half`.
    bars: [Option<BarDef>; NUM_BARS],
    upper_half: [bool; NUM_BARS],
    /// Offset of the last capability, whose next pointer the next one is linked into.
    last_capability: Option<usize>,
    next_capability: usize,
}

impl std::fmt::Debug for PciConfiguration {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PciConfiguration")
            .field("vendor_id", &format_args!("{:#06x}", self.read_u16(VENDOR_ID)))
            .field("device_id", &format_args!("{:#06x}", self.read_u16(DEVICE_ID)))
            .field("bars", &self.bars)
            .finish()
    }
}

impl PciConfiguration {
    pub fn new(header: PciHeader) -> PciConfiguration {
        let mut config = PciConfiguration {
            bytes: [0; CONFIG_SPACE_SIZE],
            writable: [0; CONFIG_SPACE_SIZE],
            bars: [None; NUM_BARS],
            upper_half: [false; NUM_BARS],
            last_capability: None,
            next_capability: FIRST_CAPABILITY,
        };
        config.set_u16(VENDOR_ID, header.vendor_id);
        config.set_u16(DEVICE_ID, header.device_id);
        config.bytes[REVISION_ID] = header.revision_id;
        config.bytes[CLASS_PROG_IF] = header.prog_if;
        config.bytes[CLASS_PROG_IF + 1] = header.subclass;
        config.bytes[CLASS_PROG_IF + 2] = header.class;
        config.set_u16(SUBSYSTEM_VENDOR_ID, header.subsystem_vendor_id);
        config.set_u16(SUBSYSTEM_ID, header.subsystem_id);
        config.writable[COMMAND..COMMAND + 2].copy_from_slice(&COMMAND_WRITABLE.to_le_bytes());
        config.writable[CACHE_LINE_SIZE] = 0xff;
        config.writable[LATENCY_TIMER] = 0xff;
        config.writable[INTERRUPT_LINE] = 0xff;
        config
    }

    fn read_u16(&self, offset: usize) -> u16 {
        u16::from_le_bytes([self.bytes[offset], self.bytes[offset + 1]])
    }

    fn set_u16(&mut self, offset: usize, value: u16) {
        self.bytes[offset..offset + 2].copy_from_slice(&value.to_le_bytes());
    }

    fn read_u32(&self, offset: usize) -> u32 {
        let mut b = [0; 4];
        b.copy_from_slice(&self.bytes[offset..offset + 4]);
        u32::from_le_bytes(b)
    }

    fn set_u32(&mut self, offset: usize, value: u32) {
        self.bytes[offset..offset + 4].copy_from_slice(&value.to_le_bytes());
    }

    /// Sets the header type's multi-function bit.
    pub fn set_multi_function(&mut self, multi: bool) {
        self.bytes[HEADER_TYPE] = if multi { 0x80 } else { 0 };
    }

    /// Whether the header type's multi-function bit is set.
    pub fn is_multi_function(&self) -> bool {
        self.bytes[HEADER_TYPE] & 0x80 != 0
    }

    /// Says which INTx pin (1 = INTA# .. 4 = INTD#, 0 = none) the function uses and which
    /// interrupt line firmware would have routed it to.
    pub fn set_interrupt(&mut self, pin: u8, line: u8) {
        self.bytes[INTERRUPT_PIN] = pin;
        self.bytes[INTERRUPT_LINE] = line;
    }

    /// The INTx pin, 0 for none.
    pub fn interrupt_pin(&self) -> u8 {
        self.bytes[INTERRUPT_PIN]
    }

    pub fn command(&self) -> u16 {
        self.read_u16(COMMAND)
    }

    /// Whether the guest turned INTx off in the command register.
    pub fn intx_disabled(&self) -> bool {
        self.command() & COMMAND_INTX_DISABLE != 0
    }

    /// Reflects the INTx line's state in the status register's interrupt bit.
    pub fn set_interrupt_status(&mut self, pending: bool) {
        let status = self.read_u16(STATUS);
        let status = if pending {
            status | STATUS_INTERRUPT
        } else {
            status & !STATUS_INTERRUPT
        };
        self.set_u16(STATUS, status);
    }

    /// Defines BAR `index` of `size` bytes (a power of two: at least 16 for memory, 4 for I/O).
    /// A 64-bit BAR takes `index` and `index + 1`.
    pub fn add_bar(
        &mut self,
        index: usize,
        size: u64,
        kind: BarKind,
        prefetchable: bool,
    ) -> Result<(), PciConfigError> {
        let last = if kind == BarKind::Memory64 {
            index + 1
        } else {
            index
        };
        if last >= NUM_BARS {
            return Err(PciConfigError::BarIndex(index));
        }
        if self.bars[index].is_some()
            || self.upper_half[index]
            || self.bars[last].is_some()
            || self.upper_half[last]
        {
            return Err(PciConfigError::BarInUse(index));
        }
        let min = if kind == BarKind::Io { 4 } else { 16 };
        let max = match kind {
            BarKind::Io => 1 << 16,
            BarKind::Memory32 => 1 << 31,
            BarKind::Memory64 => 1 << 63,
        };
        if !size.is_power_of_two() || size < min || size > max {
            return Err(PciConfigError::BarSize { index, size });
        }
        let prefetchable = prefetchable && kind != BarKind::Io;
        self.bars[index] = Some(BarDef {
            size,
            kind,
            prefetchable,
        });
        self.upper_half[last] = last != index;
        let flags = bar_flags(kind, prefetchable);
        self.set_u32(BAR0 + 4 * index, flags);
        Ok(())
    }

    /// Appends a capability with `id` and `body` (the bytes after the id and next pointer) to the
    /// list; `writable` masks which bits of the body a guest write may change (shorter means the
    /// rest is read-only). Returns the capability's offset in configuration space.
    pub fn add_capability(&mut self, id: u8, body: &[u8], writable: &[u8]) -> Result<usize, PciConfigError> {
        let offset = self.next_capability;
        let len = body.len() + 2;
        let end = offset + len;
        if end > CONFIG_SPACE_SIZE || writable.len() > body.len() {
            return Err(PciConfigError::CapabilitySpace { id, len });
        }
        self.bytes[offset] = id;
        self.bytes[offset + 1] = 0;
        self.bytes[offset + 2..end].copy_from_slice(body);
        self.writable[offset + 2..offset + 2 + writable.len()].copy_from_slice(writable);
        match self.last_capability {
            // Capability offsets are below 256.
            Some(last) => self.bytes[last + 1] = offset as u8,
            None => {
                self.bytes[CAPABILITIES_POINTER] = offset as u8;
                let status = self.read_u16(STATUS) | STATUS_CAPABILITIES;
                self.set_u16(STATUS, status);
            }
        }
        self.last_capability = Some(offset);
        self.next_capability = end.next_multiple_of(4);
        Ok(offset)
    }

    /// Makes `len` bytes at `offset` (outside the BARs) writable by the guest, for
    /// device-specific registers such as chipset bytes.
    pub fn set_writable(&mut self, offset: usize, len: usize) {
        self.set_write_mask(offset, len, 0xff);
    }

    /// Makes the `mask` bits of each of the `len` bytes at `offset` (outside the BARs) writable
    /// by the guest and its other bits read-only, for registers with reserved bits.
    pub fn set_write_mask(&mut self, offset: usize, len: usize, mask: u8) {
        let end = (offset + len).min(CONFIG_SPACE_SIZE);
        for byte in &mut self.writable[offset.min(end)..end] {
            *byte = mask;
        }
    }

    /// The bytes at `offset..offset + len` as they are now, for a device reading back its own
    /// registers (capabilities included). Out-of-range bytes are left out.
    pub fn bytes(&self, offset: usize, len: usize) -> &[u8] {
        let end = offset.saturating_add(len).min(CONFIG_SPACE_SIZE);
        &self.bytes[offset.min(end)..end]
    }

    /// The `N` bytes at `offset` as they are now (zeros beyond configuration space), for a
    /// device reading back a block of its own registers.
    pub fn register_bytes<const N: usize>(&self, offset: usize) -> [u8; N] {
        let mut registers = [0; N];
        self.read(offset, &mut registers);
        registers
    }

    /// Overwrites bytes a device owns (a capability's state), ignoring the write mask.
    pub fn set_bytes(&mut self, offset: usize, data: &[u8]) {
        let end = offset.saturating_add(data.len()).min(CONFIG_SPACE_SIZE);
        let start = offset.min(end);
        self.bytes[start..end].copy_from_slice(&data[..end - start]);
    }

    /// Reads `data.len()` bytes at `offset`. Beyond the 256 bytes of conventional space reads
    /// give zeros (no extended capabilities).
    pub fn read(&self, offset: usize, data: &mut [u8]) {
        for (i, byte) in data.iter_mut().enumerate() {
            *byte = self.bytes.get(offset + i).copied().unwrap_or(0);
        }
    }

    /// Writes `data` at `offset` as a guest (or firmware) would.
    pub fn write(&mut self, offset: usize, data: &[u8]) {
        for (i, &value) in data.iter().enumerate() {
            let at = offset + i;
            if at >= CONFIG_SPACE_SIZE {
                return;
            }
            if (BAR0..BAR0 + 4 * NUM_BARS).contains(&at) {
                continue;
            }
            let mask = self.writable[at];
            self.bytes[at] = (self.bytes[at] & !mask) | (value & mask);
        }
        // BAR registers: merge the bytes into each dword touched, then apply the BAR's mask.
        for index in 0..NUM_BARS {
            let reg = BAR0 + 4 * index;
            let lo = offset.max(reg);
            let hi = (offset + data.len()).min(reg + 4);
            if lo >= hi {
                continue;
            }
            let mut value = self.read_u32(reg).to_le_bytes();
            value[lo - reg..hi - reg].copy_from_slice(&data[lo - offset..hi - offset]);
            self.write_bar_register(index, u32::from_le_bytes(value));
        }
    }

    fn write_bar_register(&mut self, index: usize, value: u32) {
        let reg = BAR0 + 4 * index;
        if self.upper_half[index] {
            let Some(def) = self.bars[index - 1] else { return };
            let mask = (!(def.size - 1) >> 32) as u32;
            self.set_u32(reg, value & mask);
            return;
        }
        let Some(def) = self.bars[index] else { return };
        let flags = bar_flags(def.kind, def.prefetchable);
        // The low dword keeps the address bits the size allows; the flag bits never change.
        let mask = !(def.size - 1) as u32 & if def.kind == BarKind::Io { !0b11 } else { !0b1111 };
        self.set_u32(reg, (value & mask) | flags);
    }

    /// Where BAR `index` is programmed now (whatever the command register says), `None` for an
    /// undefined BAR.
    pub fn bar_address(&self, index: usize) -> Option<u64> {
        let def = (*self.bars.get(index)?)?;
        let reg = BAR0 + 4 * index;
        let low = u64::from(self.read_u32(reg));
        Some(match def.kind {
            BarKind::Io => low & !0b11,
            BarKind::Memory32 => low & !0b1111,
            BarKind::Memory64 => ((u64::from(self.read_u32(reg + 4))) << 32) | (low & !0b1111),
        })
    }

    /// Programs BAR `index` to `address` (firmware's job, done by us on a direct kernel boot).
    pub fn set_bar_address(&mut self, index: usize, address: u64) -> Result<(), PciConfigError> {
        let def = self
            .bars
            .get(index)
            .copied()
            .flatten()
            .ok_or(PciConfigError::BarIndex(index))?;
        if !address.is_multiple_of(def.size)
            || (def.kind != BarKind::Memory64 && address > u64::from(u32::MAX))
        {
            return Err(PciConfigError::BarAddress { index, address });
        }
        self.write_bar_register(index, address as u32);
        if def.kind == BarKind::Memory64 {
            self.write_bar_register(index + 1, (address >> 32) as u32);
        }
        Ok(())
    }

    /// Every defined BAR at its programmed address, decoded or not.
    pub fn bars(&self) -> Vec<BarRegion> {
        (0..NUM_BARS)
            .filter_map(|index| {
                let def = self.bars[index]?;
                Some(BarRegion {
                    index: index as u8,
                    kind: def.kind,
                    prefetchable: def.prefetchable,
                    address: self.bar_address(index)?,
                    size: def.size,
                })
            })
            .collect()
    }

    /// The BARs the function decodes now: their space is enabled in the command register and they
    /// have an address (zero means unassigned) that does not wrap.
    pub fn mapped_bars(&self) -> Vec<BarRegion> {
        let command = self.command();
        self.bars()
            .into_iter()
            .filter(|bar| {
                let enabled = match bar.kind {
                    BarKind::Io => command & COMMAND_IO != 0,
                    BarKind::Memory32 | BarKind::Memory64 => command & COMMAND_MEMORY != 0,
                };
                enabled && bar.address != 0 && bar.address.checked_add(bar.size).is_some()
            })
            .collect()
    }

    /// The configuration space as a state file keeps it: all 256 bytes, command register and
    /// BARs included.
    pub fn saved_bytes(&self) -> Vec<u8> {
        self.bytes.to_vec()
    }

    /// Takes a configuration space a state file kept ([`PciConfiguration::saved_bytes`]), or
    /// refuses it with why, changing nothing: it is not 256 bytes, it was saved from another kind
    /// of device (the ranges the device fixes differ: IDs, revision and class, subsystem,
    /// capability pointer, interrupt pin), or a BAR's address is not aligned to its size.
    pub fn restore_saved(&mut self, saved: &[u8]) -> Result<(), &'static str> {
        const IDENTITY_RANGES: [(usize, usize); 5] = [
            (VENDOR_ID, 4),
            (REVISION_ID, 4),
            (SUBSYSTEM_VENDOR_ID, 4),
            (CAPABILITIES_POINTER, 1),
            (INTERRUPT_PIN, 1),
        ];
        let saved: &[u8; CONFIG_SPACE_SIZE] = saved
            .try_into()
            .map_err(|_| "the PCI configuration space is not 256 bytes")?;
        if IDENTITY_RANGES
            .iter()
            .any(|&(at, len)| saved[at..at + len] != self.bytes[at..at + len])
        {
            return Err("it was saved from another kind of PCI device");
        }
        let old = self.bytes;
        self.bytes = *saved;
        if self
            .bars()
            .iter()
            .any(|bar| !bar.address.is_multiple_of(bar.size))
        {
            self.bytes = old;
            return Err("a saved BAR address is not aligned to its size");
        }
        Ok(())
    }

    /// Sets command register bits (firmware's job on a direct kernel boot).
    pub fn enable(&mut self, bits: u16) {
        let command = self.command() | (bits & COMMAND_WRITABLE);
        self.set_u16(COMMAND, command);
    }
}

fn bar_flags(kind: BarKind, prefetchable: bool) -> u32 {
    let prefetch = if prefetchable { BAR_PREFETCHABLE } else { 0 };
    match kind {
        BarKind::Io => BAR_IO_FLAG,
        BarKind::Memory32 => prefetch,
        BarKind::Memory64 => BAR_MEM64_FLAGS | prefetch,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> PciConfiguration {
        PciConfiguration::new(PciHeader {
            vendor_id: 0x1af4,
            device_id: 0x1042,
            class: 0x01,
            subclass: 0x00,
            ..Default::default()
        })
    }

    fn read32(c: &PciConfiguration, offset: usize) -> u32 {
        let mut b = [0; 4];
        c.read(offset, &mut b);
        u32::from_le_bytes(b)
    }

    #[test]
    fn header_fields_read_back_and_ignore_writes() {
        let mut c = config();
        assert_eq!(read32(&c, 0), 0x1042_1af4);
        c.write(0, &[0xff; 4]);
        assert_eq!(read32(&c, 0), 0x1042_1af4);
        assert_eq!(read32(&c, 8) >> 16, 0x0100);
        c.write(0x3c, &[11]);
        assert_eq!(read32(&c, 0x3c) & 0xff, 11);
    }

    #[test]
    fn memory_bar_sizing_returns_the_size_mask_and_keeps_its_flags() {
        let mut c = config();
        c.add_bar(0, 0x4000, BarKind::Memory32, false).unwrap();
        c.write(BAR0, &0xffff_ffffu32.to_le_bytes());
        assert_eq!(read32(&c, BAR0), 0xffff_c000);
        c.write(BAR0, &0xc000_1234u32.to_le_bytes());
        assert_eq!(read32(&c, BAR0), 0xc000_0000);
        assert_eq!(c.bar_address(0), Some(0xc000_0000));
    }

    #[test]
    fn sixty_four_bit_bar_sizes_and_relocates_through_both_registers() {
        let mut c = config();
        c.add_bar(2, 0x1_0000, BarKind::Memory64, true).unwrap();
        c.write(BAR0 + 8, &0xffff_ffffu32.to_le_bytes());
        c.write(BAR0 + 12, &0xffff_ffffu32.to_le_bytes());
        assert_eq!(read32(&c, BAR0 + 8), 0xffff_0000 | 0b1100);
        assert_eq!(read32(&c, BAR0 + 12), 0xffff_ffff);
        c.write(BAR0 + 8, &0xfe00_0000u32.to_le_bytes());
        c.write(BAR0 + 12, &0x1u32.to_le_bytes());
        assert_eq!(c.bar_address(2), Some(0x1_fe00_0000));
        assert_eq!(
            c.add_bar(3, 16, BarKind::Memory32, false),
            Err(PciConfigError::BarInUse(3))
        );
    }

    #[test]
    fn io_bar_and_byte_writes_into_a_bar() {
        let mut c = config();
        c.add_bar(1, 0x40, BarKind::Io, false).unwrap();
        c.write(BAR0 + 4, &[0xff, 0xff]);
        assert_eq!(read32(&c, BAR0 + 4), 0x0000_ffc1);
        c.write(BAR0 + 5, &[0xc0]);
        assert_eq!(c.bar_address(1), Some(0xc0c0));
    }

    #[test]
    fn undefined_bars_read_zero_and_bad_bars_are_refused() {
        let mut c = config();
        c.write(BAR0 + 16, &0xffff_ffffu32.to_le_bytes());
        assert_eq!(read32(&c, BAR0 + 16), 0);
        assert!(c.add_bar(5, 16, BarKind::Memory64, false).is_err());
        assert!(c.add_bar(0, 0x3000, BarKind::Memory32, false).is_err());
        assert!(c.add_bar(0, 8, BarKind::Memory32, false).is_err());
        assert!(c.add_bar(6, 16, BarKind::Memory32, false).is_err());
    }

    #[test]
    fn mapped_bars_follow_the_command_register_decode_bits() {
        let mut c = config();
        c.add_bar(0, 0x1000, BarKind::Memory32, false).unwrap();
        c.add_bar(1, 0x20, BarKind::Io, false).unwrap();
        c.set_bar_address(0, 0xc000_0000).unwrap();
        c.set_bar_address(1, 0xc000).unwrap();
        assert!(c.mapped_bars().is_empty());
        c.write(COMMAND, &COMMAND_MEMORY.to_le_bytes());
        assert_eq!(c.mapped_bars().len(), 1);
        assert_eq!(c.mapped_bars()[0].address, 0xc000_0000);
        c.write(COMMAND, &(COMMAND_MEMORY | COMMAND_IO).to_le_bytes());
        assert_eq!(c.mapped_bars().len(), 2);
        c.write(COMMAND, &0xffffu16.to_le_bytes());
        assert_eq!(c.command(), COMMAND_WRITABLE);
        assert!(c.set_bar_address(0, 0xc000_0800).is_err(), "misaligned");
    }

    #[test]
    fn capabilities_are_linked_and_flagged_in_status() {
        let mut c = config();
        let first = c.add_capability(0x09, &[0xaa; 6], &[]).unwrap();
        let second = c
            .add_capability(0x11, &[0, 0, 1, 2, 3, 4, 5, 6, 7, 8], &[0x00, 0xc0])
            .unwrap();
        assert_eq!(first, FIRST_CAPABILITY);
        assert_eq!(second, 0x48);
        let mut b = [0; 1];
        c.read(CAPABILITIES_POINTER, &mut b);
        assert_eq!(b[0] as usize, first);
        c.read(first + 1, &mut b);
        assert_eq!(b[0] as usize, second);
        assert_ne!(read32(&c, COMMAND) >> 16 & u32::from(STATUS_CAPABILITIES), 0);
        c.write(second + 2, &[0xff, 0xff]);
        assert_eq!(c.bytes(second + 2, 2), &[0x00, 0xc0]);
        assert!(c.add_capability(0x09, &[0; 200], &[]).is_err());
    }

    #[test]
    fn accesses_beyond_conventional_space_read_zero_and_are_ignored() {
        let mut c = config();
        c.write(0xfe, &[1, 2, 3, 4]);
        let mut b = [0xff; 4];
        c.read(0x100, &mut b);
        assert_eq!(b, [0; 4]);
    }

    #[test]
    fn a_saved_space_comes_back_and_refusals_change_nothing() {
        let mut saved = config();
        saved.add_bar(0, 0x1000, BarKind::Memory32, false).unwrap();
        saved.set_bar_address(0, 0xc000_0000).unwrap();
        saved.write(COMMAND, &COMMAND_MEMORY.to_le_bytes());
        let bytes = saved.saved_bytes();
        assert_eq!(bytes.len(), CONFIG_SPACE_SIZE);

        let mut fresh = config();
        fresh.add_bar(0, 0x1000, BarKind::Memory32, false).unwrap();
        let before = fresh.saved_bytes();
        assert_eq!(
            fresh.restore_saved(&bytes[..255]),
            Err("the PCI configuration space is not 256 bytes")
        );
        let mut other = bytes.clone();
        other[DEVICE_ID] ^= 1;
        assert_eq!(
            fresh.restore_saved(&other),
            Err("it was saved from another kind of PCI device")
        );
        let mut misaligned = bytes.clone();
        misaligned[BAR0 + 1] = 0x08;
        assert_eq!(
            fresh.restore_saved(&misaligned),
            Err("a saved BAR address is not aligned to its size")
        );
        assert_eq!(fresh.saved_bytes(), before, "a refusal changes nothing");
        fresh.restore_saved(&bytes).unwrap();
        assert_eq!(fresh.mapped_bars(), saved.mapped_bars());
    }
}
