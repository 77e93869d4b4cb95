//! PAM (Programmable Attribute Map) shadow-RAM control of the i440FX host bridge: what each of
//! the 13 segments of 0xC0000..0x100000 is, decoded from the PAM registers (configuration
//! bytes 0x59..0x5F of 00:00.0), and the machine's `ShadowRam`, which carries that out with
//! KVM memory slots.
//!
//! Every segment has a 4-bit attribute: bit 0 is RE (read enable: reads hit DRAM, otherwise
//! the ROM or PCI behind it) and bit 1 is WE (write enable: writes reach DRAM, otherwise they
//! are dropped). PAM0's high nibble covers the BIOS at 0xF0000..0x100000 (its low nibble is
//! reserved); PAM1..PAM6 cover 0xC0000..0xF0000 in 16 KiB pieces, low nibble first. At
//! power-on every attribute is 0, so the BIOS area reads the firmware ROM. Firmware (SeaBIOS)
//! sets everything to RAM, copies itself there, and before it boots an OS makes its own segment
//! read-only (attribute 1). The same as the i440FX datasheet and QEMU's `pam.c`.
//!
//! Only a firmware boot has PAM: a direct kernel boot keeps plain RAM in the window (the ACPI
//! tables and SMBIOS live there, and no firmware is there to enable RAM), so the registers are
//! storage only then.

mod shadow;
#[cfg(test)]
mod tests;

pub(crate) use shadow::ShadowRam;
pub use shadow::ShadowRamError;

use crate::layout::{PAM_WINDOW_END, PAM_WINDOW_START};

/// Number of PAM registers (PAM0..PAM6).
pub const PAM_REGISTER_COUNT: usize = 7;
/// Number of segments the PAM registers control.
pub const SEGMENT_COUNT: usize = 13;

/// Size of the BIOS segment (0xF0000) and of the others.
const BIOS_SEGMENT_SIZE: u64 = 0x1_0000;
const SEGMENT_SIZE: u64 = 0x4000;
const BIOS_SEGMENT_START: u64 = PAM_WINDOW_END - BIOS_SEGMENT_SIZE;

/// Attribute bit: reads hit DRAM.
const READ_ENABLE: u8 = 1 << 0;
/// Attribute bit: writes reach DRAM.
const WRITE_ENABLE: u8 = 1 << 1;

/// One range the PAM registers control, and which nibble of which register says how.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    pub start: u64,
    pub size: u64,
    /// 0 for PAM0 .. 6 for PAM6.
    pub register: usize,
    /// The attribute is in bits 4..8 of the register (else bits 0..4).
    pub high_nibble: bool,
}

impl Segment {
    /// Segment `index`: 0 is the BIOS at 0xF0000, 1..=12 are 0xC0000, 0xC4000, .. 0xEC000.
    pub const fn at_index(index: usize) -> Segment {
        if index == 0 {
            return Segment {
                start: BIOS_SEGMENT_START,
                size: BIOS_SEGMENT_SIZE,
                register: 0,
                high_nibble: true,
            };
        }
        let piece = index - 1;
        Segment {
            start: PAM_WINDOW_START + piece as u64 * SEGMENT_SIZE,
            size: SEGMENT_SIZE,
            register: 1 + piece / 2,
            high_nibble: piece % 2 == 1,
        }
    }

    pub fn end(&self) -> u64 {
        self.start + self.size
    }

    /// The index of the segment holding `address`, if it is in the PAM window.
    pub fn index_of(address: u64) -> Option<usize> {
        if (BIOS_SEGMENT_START..PAM_WINDOW_END).contains(&address) {
            Some(0)
        } else if (PAM_WINDOW_START..BIOS_SEGMENT_START).contains(&address) {
            Some(1 + ((address - PAM_WINDOW_START) / SEGMENT_SIZE) as usize)
        } else {
            None
        }
    }
}

/// Every segment, in index order (see [`Segment::at_index`]).
pub const SEGMENTS: [Segment; SEGMENT_COUNT] = {
    let mut segments = [Segment::at_index(0); SEGMENT_COUNT];
    let mut i = 1;
    while i < SEGMENT_COUNT {
        segments[i] = Segment::at_index(i);
        i += 1;
    }
    segments
};

/// A segment's attribute.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Attributes {
    /// RE: reads hit DRAM (else the ROM or PCI behind it).
    pub read_enable: bool,
    /// WE: writes reach DRAM (else they are dropped).
    pub write_enable: bool,
}

impl Attributes {
    /// Plain RAM (attribute 3).
    pub const RAM: Attributes = Attributes {
        read_enable: true,
        write_enable: true,
    };

    /// The attribute in the low 4 bits of `nibble` (bits 2 and 3 are reserved).
    pub const fn from_nibble(nibble: u8) -> Attributes {
        Attributes {
            read_enable: nibble & READ_ENABLE != 0,
            write_enable: nibble & WRITE_ENABLE != 0,
        }
    }
}

/// The attributes of every segment, in index order, as the PAM registers say.
pub fn decode(registers: &[u8; PAM_REGISTER_COUNT]) -> [Attributes; SEGMENT_COUNT] {
    SEGMENTS.map(|segment| {
        let register = registers[segment.register];
        let nibble = if segment.high_nibble {
            register >> 4
        } else {
            register
        };
        Attributes::from_nibble(nibble)
    })
}

/// What a segment is for the guest's reads, given its attribute and whether a ROM lies behind
/// it (the firmware's last 128 KiB behind 0xE0000..0x100000, as on a PC; nothing behind
/// 0xC0000..0xE0000, as virtkit loads no option ROMs). Writes with WE reach RAM and others
/// are dropped, whatever this says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backing {
    /// RE and WE: plain RAM.
    Ram,
    /// RE without WE: reads see RAM, writes are dropped.
    ReadOnlyRam,
    /// No RE, a ROM behind: reads see the ROM.
    Rom,
    /// No RE, nothing behind: reads see an open bus (all ones).
    OpenBus,
}

impl Backing {
    pub fn of(attributes: Attributes, rom_behind: bool) -> Backing {
        match (attributes.read_enable, attributes.write_enable, rom_behind) {
            (true, true, _) => Backing::Ram,
            (true, false, _) => Backing::ReadOnlyRam,
            (false, _, true) => Backing::Rom,
            (false, _, false) => Backing::OpenBus,
        }
    }
}
