//! Firmware images: mapped so they end at 4 GiB, where the reset vector is, and their last
//! 128 KiB (the "ISA BIOS") seen in the legacy BIOS window below 1 MiB, as a PC's chipset does
//! at power-on. With PAM (`crate::pam`) that window is a ROM holding [`FirmwareImage::isa_bios`];
//! without it, [`mirror_isa_bios`] copies the same bytes into RAM there.

use std::path::Path;

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::BootError;
use crate::layout::{FIRMWARE_END, LEGACY_BIOS_SIZE, LEGACY_BIOS_START};

/// Largest firmware image we map (OVMF is 4 MiB; leave room for bigger builds).
pub const FIRMWARE_MAX_SIZE: u64 = 16 << 20;
/// Pages: OVMF's 4 MiB build's code file is 3,568 KiB (0x37c000).
const FIRMWARE_ALIGN: u64 = 4 << 10;

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

    /// The image's last 128 KiB (all of it if smaller): what a PC shows below 1 MiB, ending
    /// there, while PAM does not select RAM.
    pub fn isa_bios(&self) -> &[u8] {
        let len = (self.bytes.len() as u64).min(LEGACY_BIOS_SIZE) as usize;
        &self.bytes[self.bytes.len() - len..]
    }
}

/// Copies the image to the top of 4 GiB.
pub fn load_firmware(mem: &GuestMemoryMmap, image: &FirmwareImage) -> Result<(), BootError> {
    let (start, _) = image.range();
    mem.write_slice(&image.bytes, start)
        .map_err(BootError::GuestMemory)
}

/// Copies [`FirmwareImage::isa_bios`] into RAM so that it ends at 1 MiB: the legacy BIOS window
/// for a machine whose KVM cannot make it a ROM (no read-only memory slots).
pub fn mirror_isa_bios(mem: &GuestMemoryMmap, image: &FirmwareImage) -> Result<(), BootError> {
    let tail = image.isa_bios();
    let start = LEGACY_BIOS_START + LEGACY_BIOS_SIZE - tail.len() as u64;
    mem.write_slice(tail, GuestAddress(start))
        .map_err(BootError::GuestMemory)
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
    fn image_ends_at_4_gib_and_its_tail_can_be_mirrored_below_1_mib() {
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
        assert_eq!(
            mem.read_obj::<u8>(GuestAddress(0xffff0)).unwrap(),
            0,
            "RAM below 1 MiB is the PAM's business"
        );
        mirror_isa_bios(&mem, &image).unwrap();
        assert_eq!(mem.read_obj::<u8>(GuestAddress(0xffff0)).unwrap(), 0xea);
    }

    #[test]
    fn isa_bios_is_the_last_128k_of_a_bigger_image() {
        let mut bytes = vec![0u8; 256 << 10];
        bytes[(128 << 10) - 1] = 1; // the last byte before the ISA BIOS
        bytes[128 << 10] = 2; // its first byte
        let path = temp_file("big", &bytes);
        let image = FirmwareImage::read(&path).unwrap();
        std::fs::remove_file(&path).ok();
        assert_eq!(image.isa_bios().len(), 128 << 10);
        assert_eq!(image.isa_bios()[0], 2);
    }
}
