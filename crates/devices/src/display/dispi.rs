//! The Bochs VBE "dispi" registers (BAR 2 at 0x500, one 16-bit register every 2 bytes), as
//! QEMU's bochs-display has them: the mode (size, depth, enable), the virtual size and offset,
//! and the video memory size. Pure: [`super::BochsDisplay`] puts it on the bus.

pub const INDEX_ID: usize = 0;
pub const INDEX_XRES: usize = 1;
pub const INDEX_YRES: usize = 2;
pub const INDEX_BPP: usize = 3;
pub const INDEX_ENABLE: usize = 4;
pub const INDEX_BANK: usize = 5;
pub const INDEX_VIRT_WIDTH: usize = 6;
pub const INDEX_VIRT_HEIGHT: usize = 7;
pub const INDEX_X_OFFSET: usize = 8;
pub const INDEX_Y_OFFSET: usize = 9;
pub const INDEX_VIDEO_MEMORY_64K: usize = 10;
pub const REGISTER_COUNT: usize = 11;

/// The newest interface id, which the VGA BIOS and the drivers look for.
pub const ID5: u16 = 0xb0c5;
pub const ENABLED: u16 = 0x01;
pub const GETCAPS: u16 = 0x02;
pub const LFB_ENABLED: u16 = 0x40;
pub const NOCLEARMEM: u16 = 0x80;

/// The largest mode offered (the VGA BIOS and drivers read it with GETCAPS).
pub const MAX_XRES: u16 = 4096;
pub const MAX_YRES: u16 = 4096;
pub const MAX_BPP: u16 = 32;

/// What the guest shows, once it enabled a mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mode {
    pub width: u32,
    pub height: u32,
    pub bits_per_pixel: u32,
    /// Bytes from one line to the next.
    pub stride: u32,
    /// Where the visible frame starts in video memory.
    pub offset: u64,
}

/// The registers.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Dispi {
    regs: [u16; REGISTER_COUNT],
    vram_size: u64,
}

/// What a register write asks of the device besides the register.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Effect {
    None,
    /// A mode was enabled without NOCLEARMEM: the video memory is cleared.
    ClearMemory,
}

impl Dispi {
    pub fn new(vram_size: u64) -> Dispi {
        let mut regs = [0u16; REGISTER_COUNT];
        regs[INDEX_ID] = ID5;
        regs[INDEX_VIDEO_MEMORY_64K] = (vram_size / (64 << 10)).min(u64::from(u16::MAX)) as u16;
        Dispi { regs, vram_size }
    }

    /// The video memory these registers were made for.
    pub fn video_memory_size(&self) -> u64 {
        self.vram_size
    }

    /// Whether saved registers are ones a display can hold: the registers it fixes as it fixes
    /// them and a depth it takes. (The mode's size and offsets need no check: [`Dispi::mode`]
    /// shows nothing that does not fit the video memory.)
    pub fn check(&self) -> Result<(), &'static str> {
        let fixed = Dispi::new(self.vram_size);
        if self.regs[INDEX_ID] != fixed.regs[INDEX_ID]
            || self.regs[INDEX_VIDEO_MEMORY_64K] != fixed.regs[INDEX_VIDEO_MEMORY_64K]
        {
            return Err("the interface id or the video memory size is not the display's");
        }
        if !matches!(self.regs[INDEX_BPP], 0 | 8 | 15 | 16 | 24 | 32)
            || self.regs[INDEX_XRES] > MAX_XRES
            || self.regs[INDEX_YRES] > MAX_YRES
        {
            return Err("the mode is not one the display takes");
        }
        Ok(())
    }

    pub fn read(&self, index: usize) -> u16 {
        let caps = self.regs[INDEX_ENABLE] & GETCAPS != 0;
        match index {
            INDEX_XRES if caps => MAX_XRES,
            INDEX_YRES if caps => MAX_YRES,
            INDEX_BPP if caps => MAX_BPP,
            i if i < REGISTER_COUNT => self.regs[i],
            _ => 0,
        }
    }

    pub fn write(&mut self, index: usize, value: u16) -> Effect {
        match index {
            // The id and memory size are read-only (a driver writes an id to ask for an
            // interface; the newest one is always there).
            INDEX_ID | INDEX_VIDEO_MEMORY_64K => Effect::None,
            INDEX_XRES => {
                self.regs[index] = value.min(MAX_XRES);
                Effect::None
            }
            INDEX_YRES => {
                self.regs[index] = value.min(MAX_YRES);
                Effect::None
            }
            INDEX_BPP => {
                self.regs[index] = match value {
                    8 | 15 | 16 | 24 | 32 => value,
                    _ => 32,
                };
                Effect::None
            }
            INDEX_ENABLE => {
                let was = self.regs[INDEX_ENABLE] & ENABLED != 0;
                self.regs[INDEX_ENABLE] = value;
                if value & ENABLED != 0 && !was {
                    // As QEMU: the virtual size follows the mode, the offsets go back to 0.
                    let bytes = self.bytes_per_pixel();
                    let width = self.regs[INDEX_XRES].max(1);
                    self.regs[INDEX_VIRT_WIDTH] = width;
                    let lines = self.vram_size / (u64::from(width) * u64::from(bytes));
                    self.regs[INDEX_VIRT_HEIGHT] = lines.min(u64::from(u16::MAX)) as u16;
                    self.regs[INDEX_X_OFFSET] = 0;
                    self.regs[INDEX_Y_OFFSET] = 0;
                    if value & NOCLEARMEM == 0 {
                        return Effect::ClearMemory;
                    }
                }
                Effect::None
            }
            INDEX_BANK | INDEX_VIRT_WIDTH | INDEX_VIRT_HEIGHT | INDEX_X_OFFSET | INDEX_Y_OFFSET => {
                self.regs[index] = value;
                Effect::None
            }
            _ => Effect::None,
        }
    }

    /// The depth shown: 0 (never written: a guest may enable a mode without setting it) is 8,
    /// as QEMU's `vbe_fixup_regs` makes it.
    fn bits_per_pixel(&self) -> u32 {
        match self.regs[INDEX_BPP] {
            0 => 8,
            bits => u32::from(bits),
        }
    }

    fn bytes_per_pixel(&self) -> u32 {
        self.bits_per_pixel().div_ceil(8)
    }

    /// The mode shown, if one is enabled and fits the video memory.
    pub fn mode(&self) -> Option<Mode> {
        if self.regs[INDEX_ENABLE] & ENABLED == 0 {
            return None;
        }
        let (width, height) = (u32::from(self.regs[INDEX_XRES]), u32::from(self.regs[INDEX_YRES]));
        let bytes = self.bytes_per_pixel();
        let stride = u32::from(self.regs[INDEX_VIRT_WIDTH]).max(width) * bytes;
        let offset = u64::from(self.regs[INDEX_Y_OFFSET]) * u64::from(stride)
            + u64::from(self.regs[INDEX_X_OFFSET]) * u64::from(bytes);
        let end = offset + u64::from(stride) * u64::from(height.saturating_sub(1)) + u64::from(width * bytes);
        if width == 0 || height == 0 || end > self.vram_size {
            return None;
        }
        Some(Mode {
            width,
            height,
            bits_per_pixel: self.bits_per_pixel(),
            stride,
            offset,
        })
    }
}
