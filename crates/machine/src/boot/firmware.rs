//! Firmware images: mapped so they end at 4 GiB, where the reset vector is, and mirrored into
//! the legacy BIOS window below 1 MiB, as a PC's chipset does at power-on.

use std::path::Path;

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::BootError;
use crate::layout::{FIRMWARE_END, LEGACY_BIOS_SIZE, LEGACY_BIOS_START};

/// Largest firmware image we map (OVMF is 4 MiB; leave room for bigger builds).
pub const FIRMWARE_MAX_SIZE: u64 = 16 << 20;
const FIRMWARE_ALIGN: u64 = 64 << 10;

/// A firmware image read into host memory, with where it goes.
#[derive(Debug, Clone)]
pub struct FirmwareImage {
    pub bytes: Vec<u8>,
}

impl FirmwareImage {
    /// Reads and checks a firmware image.
    pub fn read(path: &Path) -> Result<FirmwareImage, BootError> {
        let bytes = std::fs::read(path).map_err(|source| BootError::Read {
            what: "firmware",
            path: path.to_owned(),
            source,
        })?;
        let size = bytes.len() as u64;
        if size == 0 || !size.is_multiple_of(FIRMWARE_ALIGN) || size > FIRMWARE_MAX_SIZE {
            return Err(BootError::FirmwareSize {
                path: path.to_owned(),
                size,
                max: FIRMWARE_MAX_SIZE,
            });
        }
        Ok(FirmwareImage { bytes })
    }

    /// The guest range the image occupies, ending at 4 GiB.
    pub fn range(&self) -> (GuestAddress, u64) {
        let size = self.bytes.len() as u64;
        (GuestAddress(FIRMWARE_END - size), size)
    }
}

/// Copies the image to the top of 4 GiB and its last 128 KiB to the legacy BIOS window.
pub fn load_firmware(mem: &GuestMemoryMmap, image: &FirmwareImage) -> Result<(), BootError> {
    let (start, _) = image.range();
    mem.write_slice(&image.bytes, start)
        .map_err(BootError::GuestMemory)?;
    let legacy_len = (image.bytes.len() as u64).min(LEGACY_BIOS_SIZE) as usize;
    let tail = &image.bytes[image.bytes.len() - legacy_len..];
    let legacy_start = LEGACY_BIOS_START + LEGACY_BIOS_SIZE - legacy_len as u64;
    mem.write_slice(tail, GuestAddress(legacy_start))
        .map_err(BootError::GuestMemory)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_file(name: &str, bytes: &[u8]) -> std::path::PathBuf {
        let path = std::env::temp_dir().join(format!("virtkit-fw-{name}-{}", std::process::id()));
        std::fs::write(&path, bytes).unwrap();
        path
    }

    #[test]
    fn odd_sized_image_is_refused_with_its_size() {
        let path = temp_file("odd", &[0u8; 1000]);
        let err = FirmwareImage::read(&path).unwrap_err();
        std::fs::remove_file(&path).ok();
        assert!(matches!(err, BootError::FirmwareSize { size: 1000, .. }), "{err}");
    }

    #[test]
    fn image_ends_at_4_gib_and_its_tail_is_mirrored_below_1_mib() {
        let mut bytes = vec![0u8; 64 << 10];
        bytes[0xfff0] = 0xea; // far jmp opcode at the reset vector
        let path = temp_file("ok", &bytes);
        let image = FirmwareImage::read(&path).unwrap();
        std::fs::remove_file(&path).ok();
        let (start, size) = image.range();
        assert_eq!(start.0 + size, FIRMWARE_END);
        let ram = crate::memory::ram_ranges(16 << 20);
        let mem = crate::memory::create_guest_memory(&ram, &[image.range()]).unwrap();
        load_firmware(&mem, &image).unwrap();
        assert_eq!(mem.read_obj::<u8>(GuestAddress(0xffff_fff0)).unwrap(), 0xea);
        assert_eq!(mem.read_obj::<u8>(GuestAddress(0xffff0)).unwrap(), 0xea);
    }
}
