//! The flash driven with OVMF's own sequences (`QemuFlash.c`, transcribed below as
//! `OvmfDriver`), on memory and on a copy of Debian's `OVMF_VARS_4M.fd` reopened afterwards.

use super::*;

/// OVMF's `QemuFlashDetected`, `QemuFlashWrite` and `QemuFlashEraseBlock`, byte for byte in the
/// order OVMF issues its accesses (8-bit volatile reads and writes through the mapping).
struct OvmfDriver<'a, S: FlashStore> {
    flash: &'a mut Pflash<S>,
}

impl<S: FlashStore> OvmfDriver<'_, S> {
    fn peek(&mut self, offset: u64) -> u8 {
        let mut b = [0u8];
        self.flash.read(offset, &mut b);
        b[0]
    }

    fn poke(&mut self, offset: u64, value: u8) {
        self.flash.write(offset, &[value]);
    }

    /// `QemuFlashDetected`: true when the device "behaves as FLASH".
    fn detected(&mut self) -> bool {
        let mut offset = 0;
        while offset < FLASH_BLOCK_SIZE {
            let probe = self.peek(offset);
            if probe != CMD_CLEAR_STATUS && probe != CMD_READ_STATUS && probe != 0x00 {
                break;
            }
            offset += 1;
        }
        assert!(offset < FLASH_BLOCK_SIZE, "no probe location");
        let original = self.peek(offset);
        self.poke(offset, CMD_CLEAR_STATUS);
        let probe = self.peek(offset);
        if original != CMD_CLEAR_STATUS && probe == CMD_CLEAR_STATUS {
            self.poke(offset, original);
            return false; // RAM
        }
        self.poke(offset, CMD_READ_STATUS);
        let probe = self.peek(offset);
        if probe == original || probe == CMD_READ_STATUS {
            return false; // ROM or RAM
        }
        if probe != 0x00 {
            return false;
        }
        self.poke(offset, CMD_PROGRAM);
        self.poke(offset, original);
        self.poke(offset, CMD_READ_STATUS);
        let status = self.peek(offset);
        self.poke(offset, CMD_READ_ARRAY);
        status & STATUS_PROGRAM_ERROR == 0
    }

    fn write(&mut self, offset: u64, bytes: &[u8]) {
        for (i, &b) in bytes.iter().enumerate() {
            self.poke(offset + i as u64, CMD_PROGRAM);
            self.poke(offset + i as u64, b);
        }
        if !bytes.is_empty() {
            self.poke(offset + bytes.len() as u64 - 1, CMD_READ_ARRAY);
        }
    }

    fn erase_block(&mut self, lba: u64) {
        self.poke(lba * FLASH_BLOCK_SIZE, CMD_BLOCK_ERASE);
        self.poke(lba * FLASH_BLOCK_SIZE, CMD_ERASE_CONFIRM);
    }

    /// `QemuFlashRead`: a plain copy through the mapping.
    fn read(&mut self, offset: u64, len: usize) -> Vec<u8> {
        let mut out = vec![0u8; len];
        self.flash.read(offset, &mut out);
        out
    }
}

fn varstore_like() -> Vec<u8> {
    // A firmware volume header's start: `_FVH` at 0x28, as OVMF_VARS has; the rest erased.
    let mut data = vec![0xffu8; 16 * FLASH_BLOCK_SIZE as usize];
    data[..0x28].fill(0);
    data[0x28..0x2c].copy_from_slice(b"_FVH");
    data
}

#[test]
fn ovmf_detects_it_as_flash_and_the_probe_changes_no_byte() {
    let mut flash = Pflash::new(MemoryFlash::new(varstore_like()));
    let before = flash.store().data.clone();
    assert!(OvmfDriver { flash: &mut flash }.detected());
    assert!(flash.reads_array());
    assert_eq!(flash.store().data, before);
}

#[test]
fn ovmf_writes_erases_and_reads_back_through_the_mapping() {
    let mut flash = Pflash::new(MemoryFlash::new(varstore_like()));
    let mut ovmf = OvmfDriver { flash: &mut flash };
    ovmf.write(0x1000, b"VariableName=value");
    assert_eq!(ovmf.read(0x1000, 18), b"VariableName=value");
    // After an erase the flash reads its status until the next command, as QEMU's does.
    ovmf.erase_block(1);
    assert_eq!(ovmf.read(0x1000, 2), [STATUS_READY, STATUS_READY]);
    ovmf.poke(0x1000, CMD_READ_ARRAY);
    assert_eq!(ovmf.read(0x1000, 18), vec![0xff; 18]);
    // Block 0 (the volume header) is untouched by block 1's erase.
    assert_eq!(&ovmf.read(0x28, 4), b"_FVH");
    // Each run of programmed bytes and each erase was synced.
    assert_eq!(flash.store().syncs, 2);
}

#[test]
fn the_status_register_reports_broken_sequences_and_clear_status_clears_it() {
    let mut flash = Pflash::new(MemoryFlash::new(varstore_like()));
    flash.write(0x2000, &[CMD_BLOCK_ERASE]);
    flash.write(0x2000, &[0x42]); // not the confirm
    let mut status = [0u8];
    flash.read(0x2000, &mut status);
    assert_eq!(status[0] & (STATUS_ERASE_ERROR | STATUS_PROGRAM_ERROR), 0x30);
    // Nothing was erased.
    flash.write(0, &[CMD_READ_ARRAY]);
    let mut b = [0u8; 4];
    flash.read(0x28, &mut b);
    assert_eq!(&b, b"_FVH");
    flash.write(0, &[CMD_CLEAR_STATUS]);
    flash.write(0, &[CMD_READ_STATUS]);
    flash.read(0, &mut status);
    assert_eq!(status[0], 0);
}

#[test]
fn reads_and_writes_past_the_end_change_nothing_and_do_not_panic() {
    let mut flash = Pflash::new(MemoryFlash::new(vec![0xff; 8192]));
    let before = flash.store().data.clone();
    for offset in [8192, 8191, u64::MAX - 1, u64::MAX] {
        // Two bytes from 8191 end past the flash as well.
        flash.write(offset, &[CMD_PROGRAM, 0]);
        flash.write(offset, &[0, 0]);
        let mut buf = [0u8; 2];
        flash.read(offset, &mut buf);
        assert_eq!(buf, [0xff, 0xff]);
        assert!(flash.reads_array());
    }
    flash.write(0, &[]);
    assert_eq!(flash.store().data, before);
    // A programmed byte at the last address works.
    flash.write(8191, &[CMD_PROGRAM]);
    flash.write(8191, &[0x5a]);
    assert_eq!(flash.store().data[8191], 0x5a);
}

#[test]
fn a_copy_of_debians_ovmf_vars_keeps_what_ovmf_wrote_when_reopened() {
    let vars = std::path::Path::new("/usr/share/OVMF/OVMF_VARS_4M.fd");
    let Ok(original) = std::fs::read(vars) else {
        println!(
            "SKIPPED: {} is not installed (Debian package ovmf)",
            vars.display()
        );
        return;
    };
    let dir = std::env::temp_dir().join(format!("virtkit-pflash-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("aux.img");
    std::fs::write(&path, &original).unwrap();
    let open = || {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .unwrap();
        Pflash::new(FileFlash::new(file).unwrap())
    };
    let mut flash = open();
    assert_eq!(flash.size(), original.len() as u64);
    let mut ovmf = OvmfDriver { flash: &mut flash };
    assert!(ovmf.detected());
    // The first block after the volume header (OVMF's variable area is blocks 0..), far from it.
    let at = 40 * FLASH_BLOCK_SIZE;
    ovmf.erase_block(40);
    ovmf.poke(at, CMD_READ_ARRAY);
    ovmf.write(at + 16, b"virtkit was here");
    drop(flash);

    let mut again = open();
    let mut ovmf = OvmfDriver { flash: &mut again };
    assert_eq!(ovmf.read(at + 16, 16), b"virtkit was here");
    assert_eq!(ovmf.read(at, 16), vec![0xff; 16], "erased");
    let now = std::fs::read(&path).unwrap();
    assert_eq!(now.len(), original.len());
    let changed = now.iter().zip(&original).filter(|(a, b)| a != b).count();
    assert!(
        changed <= FLASH_BLOCK_SIZE as usize,
        "only block 40 changed: {changed} bytes"
    );
    assert_eq!(now[..at as usize], original[..at as usize]);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn arbitrary_access_sequences_never_panic() {
    // The fuzz target's entry point over seeded pseudo-random inputs, weighted towards the
    // command bytes.
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let commands = [0xff, 0x00, 0x10, 0x40, 0x20, 0xd0, 0x50, 0x70, 0x90];
    for _ in 0..3000 {
        let mut input = vec![0u8; (next() % 400) as usize];
        for (i, byte) in input.iter_mut().enumerate() {
            let r = next();
            *byte = if i % 11 == 3 && r % 2 == 0 {
                commands[(r >> 8) as usize % commands.len()]
            } else {
                r as u8
            };
        }
        fuzz_input(&input);
    }
}
