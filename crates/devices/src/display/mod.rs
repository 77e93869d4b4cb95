//! A display: QEMU's `bochs-display` (PCI 1234:1111), which SeaBIOS (its bochs-display VGA
//! BIOS draws a text console into the framebuffer), OVMF (GOP through QemuVideoDxe) and Linux
//! (`bochs-drm`) all drive.
//!
//! - BAR 0: the framebuffer, host memory the guest reaches without exits ([`VideoMemory`]; in a
//!   machine a [`virtkit_machine::pci::RamBar`] that follows the BAR with a memory slot).
//! - BAR 2 (4 KiB of MMIO): the EDID block at 0 ([`edid`]), the dispi registers at 0x500
//!   ([`dispi`]), QEMU's extended registers at 0x600 (their size, the framebuffer's byte order).
//!
//! The VMM reads what the guest shows through a [`DisplayHandle`] ([`DisplayHandle::frame`]):
//! screenshots and, later, the VNC server.

pub mod dispi;
pub mod edid;
mod persist;

use std::sync::{Arc, Mutex, MutexGuard};

use virtkit_machine::pci::{BarKind, BarRegion, PciConfiguration, PciDevice, PciHeader};

pub use dispi::{Dispi, Mode};
pub use persist::{DisplayStateError, SavedDisplay, MAX_ENCODED_MEMORY};

pub const VENDOR_ID: u16 = 0x1234;
pub const DEVICE_ID: u16 = 0x1111;
/// VGA-compatible display controller. QEMU's bochs-display says "other display" and carries
/// its VGA BIOS in an expansion ROM BAR, which SeaBIOS looks for only on such a device; this
/// one has no ROM BAR, and SeaBIOS runs the VGA BIOS from fw_cfg (`pci1234,1111.rom`) only for
/// a VGA-class device. The guests' drivers (bochs-drm, OVMF's QemuVideoDxe) match the IDs.
/// It decodes no legacy VGA range (0x3c0, 0xa0000): nothing here needs them.
pub const PCI_CLASS: (u8, u8, u8) = (0x03, 0x00, 0x00);
pub const FRAMEBUFFER_BAR: u8 = 0;
pub const MMIO_BAR: u8 = 2;
pub const MMIO_BAR_SIZE: u64 = 4096;
const EDID_OFFSET: u64 = 0;
const EDID_LEN: u64 = 0x400;
const DISPI_OFFSET: u64 = 0x500;
const DISPI_LEN: u64 = 0x100;
const QEXT_OFFSET: u64 = 0x600;
/// QEMU's extended registers: their size, then the framebuffer's byte order (little endian).
const QEXT_SIZE: u32 = 8;
const QEXT_LITTLE_ENDIAN: u32 = 0x1e1e_1e1e;

/// The smallest and largest screen sizes offered.
pub const MIN_SIZE: (u16, u16) = (320, 200);
pub const MAX_SIZE: (u16, u16) = (dispi::MAX_XRES, dispi::MAX_YRES);

/// The framebuffer's memory.
pub trait VideoMemory: Send {
    fn size(&self) -> u64;
    fn read(&self, offset: u64, data: &mut [u8]);
    fn write(&self, offset: u64, data: &[u8]);
    /// `len` bytes from `offset` (`None` past the end).
    fn copy_out(&self, offset: u64, len: usize) -> Option<Vec<u8>>;
    /// The framebuffer BAR is now at `address` (or not decoded).
    fn moved(&mut self, address: Option<u64>);
    /// Whether the memory may have changed since the last call (yes when it cannot tell).
    fn take_changed(&self) -> bool {
        true
    }
}

impl VideoMemory for virtkit_machine::pci::RamBar {
    fn size(&self) -> u64 {
        virtkit_machine::pci::RamBar::size(self)
    }
    fn read(&self, offset: u64, data: &mut [u8]) {
        virtkit_machine::pci::RamBar::read(self, offset, data)
    }
    fn write(&self, offset: u64, data: &[u8]) {
        virtkit_machine::pci::RamBar::write(self, offset, data)
    }
    fn copy_out(&self, offset: u64, len: usize) -> Option<Vec<u8>> {
        virtkit_machine::pci::RamBar::copy_out(self, offset, len)
    }
    fn moved(&mut self, address: Option<u64>) {
        virtkit_machine::pci::RamBar::moved(self, address)
    }
    fn take_changed(&self) -> bool {
        virtkit_machine::pci::RamBar::take_changed(self)
    }
}

/// Video memory in a plain buffer (tests).
#[derive(Debug)]
pub struct BufferMemory(Mutex<Vec<u8>>);

impl BufferMemory {
    pub fn new(size: usize) -> BufferMemory {
        BufferMemory(Mutex::new(vec![0; size]))
    }
}

impl VideoMemory for BufferMemory {
    fn size(&self) -> u64 {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).len() as u64
    }
    fn read(&self, offset: u64, data: &mut [u8]) {
        data.fill(0xff);
        if let Some(bytes) = self.copy_out(offset, data.len()) {
            data.copy_from_slice(&bytes);
        }
    }
    fn write(&self, offset: u64, data: &[u8]) {
        let mut memory = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let Ok(start) = usize::try_from(offset) else {
            return;
        };
        if let Some(target) = start
            .checked_add(data.len())
            .and_then(|end| memory.get_mut(start..end))
        {
            target.copy_from_slice(data);
        }
    }
    fn copy_out(&self, offset: u64, len: usize) -> Option<Vec<u8>> {
        let memory = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let start = usize::try_from(offset).ok()?;
        memory.get(start..start.checked_add(len)?).map(<[u8]>::to_vec)
    }
    fn moved(&mut self, _address: Option<u64>) {}
}

/// What the display shows now, as 8-bit RGBA pixels, row by row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub width: u32,
    pub height: u32,
    pub rgba: Vec<u8>,
}

struct DisplayState {
    dispi: Dispi,
    memory: Box<dyn VideoMemory>,
    edid: [u8; 128],
    /// The mode as [`DisplayHandle::take_changed`] last saw it.
    reported_mode: Option<Mode>,
}

/// The VMM's side of a display: what it shows.
#[derive(Clone)]
pub struct DisplayHandle(Arc<Mutex<DisplayState>>);

impl DisplayHandle {
    fn lock(&self) -> MutexGuard<'_, DisplayState> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The mode the guest set, if any.
    pub fn mode(&self) -> Option<Mode> {
        self.lock().dispi.mode()
    }

    /// Whether what the screen shows may have changed since the last call: the mode (size,
    /// depth, stride, offset) or the framebuffer's memory (KVM's dirty log, through
    /// [`VideoMemory::take_changed`]). One follower of the screen (the VNC server) asks.
    pub fn take_changed(&self) -> bool {
        let mut state = self.lock();
        let mode = state.dispi.mode();
        let mode_changed = mode != state.reported_mode;
        state.reported_mode = mode;
        let memory_changed = state.memory.take_changed();
        mode_changed || memory_changed
    }

    /// What the screen shows (`None` while no mode is enabled: the screen is dark).
    pub fn frame(&self) -> Option<Frame> {
        let (width, height, pixels) = self.frame_xrgb()?;
        let rgba = pixels
            .iter()
            .flat_map(|p| [(p >> 16) as u8, (p >> 8) as u8, *p as u8, 0xff])
            .collect();
        Some(Frame { width, height, rgba })
    }

    /// What the screen shows as XRGB8888 pixels (`0x00RRGGBB`), row by row: the VNC server's
    /// format, so it takes them without a second conversion.
    pub fn frame_xrgb(&self) -> Option<(u32, u32, Vec<u32>)> {
        let state = self.lock();
        let mode = state.dispi.mode()?;
        let bytes = mode.bits_per_pixel.div_ceil(8) as usize;
        let (width, height) = (mode.width as usize, mode.height as usize);
        let mut pixels = Vec::with_capacity(width * height);
        for y in 0..height {
            let line = state
                .memory
                .copy_out(mode.offset + y as u64 * u64::from(mode.stride), width * bytes)?;
            for px in line.chunks_exact(bytes) {
                let (r, g, b) = match mode.bits_per_pixel {
                    32 | 24 => (px[2], px[1], px[0]),
                    16 => {
                        let v = u16::from_le_bytes([px[0], px[1]]);
                        (expand(v >> 11, 5), expand(v >> 5, 6), expand(v, 5))
                    }
                    15 => {
                        let v = u16::from_le_bytes([px[0], px[1]]);
                        (expand(v >> 10, 5), expand(v >> 5, 5), expand(v, 5))
                    }
                    // 8 bits: a palette the bochs-display does not have; grey levels.
                    _ => (px[0], px[0], px[0]),
                };
                pixels.push(u32::from(r) << 16 | u32::from(g) << 8 | u32::from(b));
            }
        }
        Some((mode.width, mode.height, pixels))
    }
}

/// The low `bits` of `v` scaled to 8 bits.
fn expand(v: u16, bits: u32) -> u8 {
    let max = (1u32 << bits) - 1;
    ((u32::from(v) & max) * 255 / max) as u8
}

/// The PCI function.
pub struct BochsDisplay {
    config: PciConfiguration,
    state: Arc<Mutex<DisplayState>>,
}

/// Why a display cannot be made.
#[derive(Debug, thiserror::Error)]
pub enum DisplayError {
    #[error("a display of {width}x{height} is outside {}x{} to {}x{}", MIN_SIZE.0, MIN_SIZE.1, MAX_SIZE.0, MAX_SIZE.1)]
    Size { width: u16, height: u16 },
    #[error("the framebuffer memory must be a power of two of at least the screen's size")]
    Memory,
}

impl BochsDisplay {
    /// The video memory a `width` × `height` screen needs at 32 bits per pixel: a power of two,
    /// at least 16 MiB (what QEMU gives, room for the firmware's modes).
    pub fn memory_size(width: u16, height: u16) -> u64 {
        (u64::from(width) * u64::from(height) * 4)
            .next_power_of_two()
            .max(16 << 20)
    }

    /// A display whose preferred mode (EDID) is `width` × `height`, over `memory`.
    pub fn new(
        width: u16,
        height: u16,
        memory: Box<dyn VideoMemory>,
    ) -> Result<(BochsDisplay, DisplayHandle), DisplayError> {
        if !(MIN_SIZE.0..=MAX_SIZE.0).contains(&width) || !(MIN_SIZE.1..=MAX_SIZE.1).contains(&height) {
            return Err(DisplayError::Size { width, height });
        }
        let size = memory.size();
        if !size.is_power_of_two() || size < u64::from(width) * u64::from(height) * 4 {
            return Err(DisplayError::Memory);
        }
        let mut config = PciConfiguration::new(PciHeader {
            vendor_id: VENDOR_ID,
            device_id: DEVICE_ID,
            revision_id: 2,
            class: PCI_CLASS.0,
            subclass: PCI_CLASS.1,
            prog_if: PCI_CLASS.2,
            subsystem_vendor_id: 0x1af4,
            subsystem_id: 0x1100,
        });
        config
            .add_bar(usize::from(FRAMEBUFFER_BAR), size, BarKind::Memory32, true)
            .map_err(|_| DisplayError::Memory)?;
        config
            .add_bar(usize::from(MMIO_BAR), MMIO_BAR_SIZE, BarKind::Memory32, false)
            .expect("a 4 KiB BAR fits");
        let state = Arc::new(Mutex::new(DisplayState {
            dispi: Dispi::new(size),
            memory,
            edid: edid::edid(width, height),
            reported_mode: None,
        }));
        Ok((
            BochsDisplay {
                config,
                state: state.clone(),
            },
            DisplayHandle(state),
        ))
    }

    fn lock(&self) -> MutexGuard<'_, DisplayState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl PciDevice for BochsDisplay {
    fn configuration(&self) -> &PciConfiguration {
        &self.config
    }

    fn configuration_mut(&mut self) -> &mut PciConfiguration {
        &mut self.config
    }

    fn read_bar(&mut self, bar: u8, offset: u64, data: &mut [u8]) {
        let state = self.lock();
        match bar {
            FRAMEBUFFER_BAR => state.memory.read(offset, data),
            MMIO_BAR => {
                data.fill(0);
                for (i, byte) in data.iter_mut().enumerate() {
                    *byte = mmio_byte(&state, offset + i as u64);
                }
            }
            _ => data.fill(0xff),
        }
    }

    fn write_bar(&mut self, bar: u8, offset: u64, data: &[u8]) {
        let mut state = self.lock();
        match bar {
            FRAMEBUFFER_BAR => state.memory.write(offset, data),
            MMIO_BAR
                if (DISPI_OFFSET..DISPI_OFFSET + DISPI_LEN).contains(&offset)
                    && data.len() == 2
                    && offset & 1 == 0 =>
            {
                let index = ((offset - DISPI_OFFSET) / 2) as usize;
                let value = u16::from_le_bytes([data[0], data[1]]);
                if state.dispi.write(index, value) == dispi::Effect::ClearMemory {
                    let size = state.memory.size();
                    let zeros = vec![0u8; 1 << 20];
                    let mut at = 0;
                    while at < size {
                        let len = (size - at).min(zeros.len() as u64) as usize;
                        state.memory.write(at, &zeros[..len]);
                        at += len as u64;
                    }
                }
            }
            _ => {}
        }
    }

    fn bar_moved(&mut self, bar: &BarRegion, _old: Option<u64>, new: Option<u64>) {
        if bar.index == FRAMEBUFFER_BAR {
            self.lock().memory.moved(new);
        }
    }
}

/// One byte of BAR 2.
fn mmio_byte(state: &DisplayState, offset: u64) -> u8 {
    if (EDID_OFFSET..EDID_OFFSET + EDID_LEN).contains(&offset) {
        return state.edid.get(offset as usize).copied().unwrap_or(0);
    }
    if (DISPI_OFFSET..DISPI_OFFSET + DISPI_LEN).contains(&offset) {
        let index = ((offset - DISPI_OFFSET) / 2) as usize;
        return state.dispi.read(index).to_le_bytes()[(offset % 2) as usize];
    }
    if (QEXT_OFFSET..QEXT_OFFSET + u64::from(QEXT_SIZE)).contains(&offset) {
        let regs = [QEXT_SIZE.to_le_bytes(), QEXT_LITTLE_ENDIAN.to_le_bytes()].concat();
        return regs[(offset - QEXT_OFFSET) as usize];
    }
    0
}

#[cfg(test)]
mod tests;
