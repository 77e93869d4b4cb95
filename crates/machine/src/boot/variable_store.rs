//! The EFI variable store: the file (a bundle's `aux.img`, made from OVMF's `OVMF_VARS*.fd`) that
//! becomes the CFI flash right below the firmware's code, as QEMU's second `pflash` does.
//!
//! OVMF is built as one flash image of 1, 2 or 4 MiB split into a variables file and a code file;
//! the code finds the variables at a fixed address (the bottom of that flash), so a store only
//! works with the code file it was built with. The check is the one that needs no parsing of the
//! code: the two sizes add up to a power of two. The store itself must be a firmware volume of
//! non-volatile data (`_FVH`, `EFI_SYSTEM_NV_DATA_FV_GUID`) as long as the file.

use std::fs::File;
use std::path::{Path, PathBuf};

use super::{BootError, FirmwareImage, FIRMWARE_MAX_SIZE};
use crate::devices::pflash::{FileFlash, FLASH_BLOCK_SIZE};
use crate::layout::FIRMWARE_END;

/// `EFI_SYSTEM_NV_DATA_FV_GUID` (fff12b8d-7696-4c8b-a985-2747075b4f50) as stored.
const NV_DATA_FV_GUID: [u8; 16] = [
    0x8d, 0x2b, 0xf1, 0xff, 0x96, 0x76, 0x8b, 0x4c, 0xa9, 0x85, 0x27, 0x47, 0x07, 0x5b, 0x4f, 0x50,
];
/// Firmware volume header: FileSystemGuid, FvLength, Signature.
const FV_GUID_OFFSET: usize = 0x10;
const FV_LENGTH_OFFSET: usize = 0x20;
const FV_SIGNATURE_OFFSET: usize = 0x28;
const FV_SIGNATURE: &[u8; 4] = b"_FVH";

/// Why a variable store cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum VariableStoreError {
    #[error("cannot open the EFI variable store {path} for reading and writing")]
    Open {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not an EFI variable store (no firmware volume of non-volatile data at its start); make it from the firmware's VARS file, e.g. a copy of /usr/share/OVMF/OVMF_VARS_4M.fd")]
    NotAStore { path: PathBuf },
    #[error("the EFI variable store {path} is {size} bytes but its header says {header} bytes; it is cut short or damaged: make a new one from the firmware's VARS file")]
    Truncated { path: PathBuf, size: u64, header: u64 },
    #[error("the EFI variable store {path} ({vars} bytes) does not belong to the firmware {code} ({code_size} bytes): OVMF's code and variables files together make one flash of 1, 2 or 4 MiB; use the VARS file built with this CODE file (OVMF_VARS_4M.fd with OVMF_CODE_4M.fd)")]
    OtherFirmware {
        path: PathBuf,
        vars: u64,
        code: PathBuf,
        code_size: u64,
    },
}

/// A checked variable store, open for the flash.
#[derive(Debug)]
pub struct VariableStore {
    pub flash: FileFlash,
    /// Where its flash starts in guest physical memory (right below the code).
    pub address: u64,
    pub size: u64,
}

/// Opens and checks the store at `path` for the firmware `code` read from `code_path`.
pub fn open_variable_store(
    path: &Path,
    code: &FirmwareImage,
    code_path: &Path,
) -> Result<VariableStore, BootError> {
    let file = File::options()
        .read(true)
        .write(true)
        .open(path)
        .map_err(|source| VariableStoreError::Open {
            path: path.to_owned(),
            source,
        })?;
    let flash = FileFlash::new(file).map_err(|source| VariableStoreError::Open {
        path: path.to_owned(),
        source,
    })?;
    let size = flash.bytes().len() as u64;
    check_store(path, flash.bytes(), code.bytes.len() as u64, code_path)?;
    let (code_start, _) = code.range();
    Ok(VariableStore {
        flash,
        address: code_start.0 - size,
        size,
    })
}

fn check_store(
    path: &Path,
    bytes: &[u8],
    code_size: u64,
    code_path: &Path,
) -> Result<(), VariableStoreError> {
    let size = bytes.len() as u64;
    let header = bytes.get(..FV_SIGNATURE_OFFSET + 4);
    let is_store = header.is_some_and(|h| {
        &h[FV_SIGNATURE_OFFSET..] == FV_SIGNATURE && h[FV_GUID_OFFSET..FV_GUID_OFFSET + 16] == NV_DATA_FV_GUID
    });
    if !is_store {
        return Err(VariableStoreError::NotAStore {
            path: path.to_owned(),
        });
    }
    let mut length = [0u8; 8];
    length.copy_from_slice(&bytes[FV_LENGTH_OFFSET..FV_LENGTH_OFFSET + 8]);
    let header_length = u64::from_le_bytes(length);
    if header_length > size || !size.is_multiple_of(FLASH_BLOCK_SIZE) {
        return Err(VariableStoreError::Truncated {
            path: path.to_owned(),
            size,
            header: header_length,
        });
    }
    let total = size + code_size;
    if !total.is_power_of_two() || !((1 << 20)..=FIRMWARE_MAX_SIZE).contains(&total) {
        return Err(VariableStoreError::OtherFirmware {
            path: path.to_owned(),
            vars: size,
            code: code_path.to_owned(),
            code_size,
        });
    }
    debug_assert!(FIRMWARE_END - total >= crate::layout::APIC_START + (1 << 20));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A store as OVMF_VARS_4M.fd begins: zero vector, the NV data GUID, the length, `_FVH`.
    fn store(size: usize, header_length: u64) -> Vec<u8> {
        let mut b = vec![0xff; size];
        b[..FV_GUID_OFFSET].fill(0);
        b[FV_GUID_OFFSET..FV_GUID_OFFSET + 16].copy_from_slice(&NV_DATA_FV_GUID);
        b[FV_LENGTH_OFFSET..FV_LENGTH_OFFSET + 8].copy_from_slice(&header_length.to_le_bytes());
        b[FV_SIGNATURE_OFFSET..FV_SIGNATURE_OFFSET + 4].copy_from_slice(FV_SIGNATURE);
        b
    }

    const CODE_4M: u64 = 0x37c000;
    const VARS_4M: usize = 0x84000;

    fn check(bytes: &[u8], code: u64) -> Result<(), VariableStoreError> {
        check_store(Path::new("aux.img"), bytes, code, Path::new("OVMF_CODE.fd"))
    }

    #[test]
    fn ovmfs_4m_and_2m_pairs_are_accepted() {
        check(&store(VARS_4M, VARS_4M as u64), CODE_4M).unwrap();
        check(&store(0x20000, 0x20000), 0x1e0000).unwrap();
    }

    #[test]
    fn a_store_of_another_build_is_named_as_such() {
        let e = check(&store(0x20000, 0x20000), CODE_4M).unwrap_err();
        assert!(matches!(e, VariableStoreError::OtherFirmware { .. }), "{e}");
        assert!(
            e.to_string().contains("OVMF_VARS_4M.fd with OVMF_CODE_4M.fd"),
            "{e}"
        );
    }

    #[test]
    fn files_that_are_not_stores_or_are_cut_short_are_refused() {
        let e = check(&[0u8; 100], CODE_4M).unwrap_err();
        assert!(matches!(e, VariableStoreError::NotAStore { .. }), "{e}");
        let mut other = store(VARS_4M, VARS_4M as u64);
        other[FV_GUID_OFFSET] ^= 1;
        assert!(matches!(
            check(&other, CODE_4M),
            Err(VariableStoreError::NotAStore { .. })
        ));
        let e = check(&store(0x40000, VARS_4M as u64), CODE_4M).unwrap_err();
        assert!(matches!(e, VariableStoreError::Truncated { .. }), "{e}");
        let e = check(&store(VARS_4M - 1, VARS_4M as u64 - 0x1000), CODE_4M).unwrap_err();
        assert!(matches!(e, VariableStoreError::Truncated { .. }), "{e}");
    }

    #[test]
    fn debians_ovmf_files_pair_up() {
        let (code, vars) = (
            Path::new("/usr/share/OVMF/OVMF_CODE_4M.fd"),
            Path::new("/usr/share/OVMF/OVMF_VARS_4M.fd"),
        );
        if !code.exists() || !vars.exists() {
            println!("SKIPPED: Debian's ovmf package is not installed");
            return;
        }
        let code_size = std::fs::metadata(code).unwrap().len();
        check(&std::fs::read(vars).unwrap(), code_size).unwrap();
        let image = FirmwareImage::read(code).unwrap();
        let dir = std::env::temp_dir().join(format!("virtkit-vars-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let copy = dir.join("aux.img");
        std::fs::copy(vars, &copy).unwrap();
        let store = open_variable_store(&copy, &image, code).unwrap();
        assert_eq!((store.address, store.size), (0xffc0_0000, VARS_4M as u64));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
