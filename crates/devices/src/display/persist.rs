//! A display's part of a machine state file: its PCI configuration space (where the guest put
//! its BARs), the dispi registers (the mode) and the whole video memory, not only the visible
//! frame: a guest may pan, or draw off screen and flip. Only its pages that are not all zeros
//! are kept (a bitmap says which), zlib-compressed and base64-encoded into the devices section:
//! most of 16 MiB is never drawn, and a drawn screen is mostly one colour.

use std::io::{Read, Write};

use base64::Engine;
use flate2::read::ZlibDecoder;
use flate2::write::ZlibEncoder;
use serde::{Deserialize, Serialize};

use super::{BochsDisplay, Dispi};

/// The unit of the bitmap of pages kept.
const PAGE: usize = 4096;
/// The largest encoded video memory a save writes: the state file's whole metadata, devices
/// section included, must stay under the machine's 64 MiB limit.
pub const MAX_ENCODED_MEMORY: usize = 48 << 20;

/// A display as saved.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedDisplay {
    /// The 256 bytes of configuration space.
    pub pci_config: Vec<u8>,
    pub dispi: Dispi,
    pub video_memory_size: u64,
    /// Which pages of the video memory are kept (bit `i % 8` of byte `i / 8` for page `i`); the
    /// others are zeros. Base64.
    pub pages: String,
    /// The pages kept, in order, zlib then base64.
    pub video_memory: String,
}

/// Why a display's state was not saved or taken.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum DisplayStateError {
    #[error("its video memory encodes (zlib, base64) to more than {} MiB, more than a state file holds", MAX_ENCODED_MEMORY >> 20)]
    TooLarge,
    #[error("it was saved with {saved} bytes of video memory and has {here}; restore into a VM with the display size it was saved with")]
    MemorySize { saved: u64, here: u64 },
    #[error("its saved registers are not a display's: {0}")]
    Registers(&'static str),
    #[error("its saved video memory cannot be decoded")]
    Damaged,
}

impl BochsDisplay {
    /// The display's state: call it while no vCPU runs (a paused machine), or the video memory
    /// may change under the copy.
    pub fn save_state(&self) -> Result<SavedDisplay, DisplayStateError> {
        let state = self.lock();
        let size = state.memory.size();
        let mut pages = vec![0u8; (size as usize).div_ceil(PAGE).div_ceil(8)];
        let mut encoder = ZlibEncoder::new(Vec::new(), flate2::Compression::fast());
        for (i, at) in (0..size).step_by(PAGE).enumerate() {
            // `size` is the memory's own: every page below it is there.
            let page = state.memory.copy_out(at, PAGE).unwrap_or_default();
            if page.iter().all(|&b| b == 0) {
                continue;
            }
            pages[i / 8] |= 1 << (i % 8);
            encoder
                .write_all(&page)
                .map_err(|_| DisplayStateError::TooLarge)?;
            if encoder.get_ref().len() > MAX_ENCODED_MEMORY / 4 * 3 {
                return Err(DisplayStateError::TooLarge);
            }
        }
        let compressed = encoder.finish().map_err(|_| DisplayStateError::TooLarge)?;
        let base64 = &base64::engine::general_purpose::STANDARD;
        let video_memory = base64.encode(compressed);
        if video_memory.len() > MAX_ENCODED_MEMORY {
            return Err(DisplayStateError::TooLarge);
        }
        Ok(SavedDisplay {
            pci_config: self.config.saved_bytes(),
            dispi: state.dispi.clone(),
            video_memory_size: size,
            pages: base64.encode(pages),
            video_memory,
        })
    }

    /// Takes a saved state, on a display the guest has not run with yet; everything is checked
    /// before anything changes, so a refusal leaves the display as it was. Its framebuffer BAR
    /// is mapped where the saved configuration puts it when the machine's PCI bus next syncs
    /// its BARs.
    pub fn restore_state(&mut self, saved: &SavedDisplay) -> Result<(), DisplayStateError> {
        let here = self.lock().memory.size();
        if saved.video_memory_size != here || saved.dispi.video_memory_size() != here {
            return Err(DisplayStateError::MemorySize {
                saved: saved.video_memory_size,
                here,
            });
        }
        saved.dispi.check().map_err(DisplayStateError::Registers)?;
        let base64 = &base64::engine::general_purpose::STANDARD;
        let pages = base64
            .decode(&saved.pages)
            .map_err(|_| DisplayStateError::Damaged)?;
        let page_count = (here as usize).div_ceil(PAGE);
        if pages.len() != page_count.div_ceil(8) {
            return Err(DisplayStateError::Damaged);
        }
        let kept: Vec<usize> = (0..page_count)
            .filter(|i| pages[i / 8] & (1 << (i % 8)) != 0)
            .collect();
        let compressed = base64
            .decode(&saved.video_memory)
            .map_err(|_| DisplayStateError::Damaged)?;
        let expected = (kept.len() * PAGE) as u64;
        let mut memory = Vec::with_capacity(expected as usize);
        // One byte more than the pages kept tells a stream that is too long.
        ZlibDecoder::new(compressed.as_slice())
            .take(expected + 1)
            .read_to_end(&mut memory)
            .map_err(|_| DisplayStateError::Damaged)?;
        if memory.len() as u64 != expected {
            return Err(DisplayStateError::Damaged);
        }
        let mut config = self.config.clone();
        config
            .restore_saved(&saved.pci_config)
            .map_err(DisplayStateError::Registers)?;
        self.config = config;
        let mut state = self.lock();
        // The display has not run: the pages not kept are zeros already.
        for (page, bytes) in kept.iter().zip(memory.chunks(PAGE)) {
            state.memory.write((page * PAGE) as u64, bytes);
        }
        state.dispi = saved.dispi.clone();
        // A follower of the screen (the VNC server) sends it whole.
        state.reported_mode = None;
        Ok(())
    }
}
