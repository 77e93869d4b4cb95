//! The CFI flash OVMF keeps its UEFI variables in: QEMU's `pflash_cfi01` (Intel/Sharp command
//! set, one byte wide), the part of it OVMF's `QemuFlashFvbServicesRuntimeDxe` drives, over a
//! [`FlashStore`] (the bundle's `aux.img`, made from `OVMF_VARS_4M.fd`).
//!
//! OVMF's sequences (edk2 `OvmfPkg/QemuFlashFvbServicesRuntimeDxe/QemuFlash.c`):
//! - **probe**: read a byte that is none of 0x50, 0x70, 0x00; write `0x50` (clear status) and
//!   read it back (RAM would return 0x50; flash returns the array); write `0x70` (read status)
//!   and read: `0x00` (cleared status) says flash; then `0x10` + the original byte (program it
//!   back), `0x70`, read (bit 4 clear: no programming error), `0xff` (read array);
//! - **write**: for each byte `0x10` then the byte at its address; `0xff` at the last address;
//! - **erase**: `0x20` then `0xd0` at the block's first address (the block turns to 0xff).
//!
//! Reads in read-array mode return the store's bytes; in any other mode the status register
//! (or the identification codes after `0x90`), as QEMU does. Every program and erase is written
//! through to the store at once; the store is synced when the flash goes back to read-array mode
//! (the end of OVMF's write of a run of bytes) and after every erase, the points where OVMF's
//! fault-tolerant write moves on to its next step.

use std::io;

use crate::bus::BusDevice;

/// The erase block OVMF's variable store uses (`BLOCK_SIZE` in its FVB driver).
pub const FLASH_BLOCK_SIZE: u64 = 4096;

const CMD_READ_ARRAY: u8 = 0xff;
const CMD_READ_ARRAY_ALT: u8 = 0x00;
const CMD_PROGRAM: u8 = 0x10;
const CMD_PROGRAM_ALT: u8 = 0x40;
const CMD_BLOCK_ERASE: u8 = 0x20;
const CMD_ERASE_CONFIRM: u8 = 0xd0;
const CMD_CLEAR_STATUS: u8 = 0x50;
const CMD_READ_STATUS: u8 = 0x70;
const CMD_READ_ID: u8 = 0x90;

/// Status register: ready.
pub const STATUS_READY: u8 = 0x80;
/// Status register: an erase failed (or an erase sequence was broken).
pub const STATUS_ERASE_ERROR: u8 = 0x20;
/// Status register: a program failed.
pub const STATUS_PROGRAM_ERROR: u8 = 0x10;

/// Intel's manufacturer code and a 28F008SA-like device code, as QEMU answers by default.
const MANUFACTURER_ID: u8 = 0x89;
const DEVICE_ID: u8 = 0x18;

/// Where the flash's bytes live.
pub trait FlashStore: Send {
    /// The store's size in bytes (the flash's).
    fn size(&self) -> u64;
    /// Fills `buf` from `offset` (within the store).
    fn read(&mut self, offset: u64, buf: &mut [u8]) -> io::Result<()>;
    /// Writes `data` at `offset` (within the store).
    fn write(&mut self, offset: u64, data: &[u8]) -> io::Result<()>;
    /// Makes every write so far durable.
    fn sync(&mut self) -> io::Result<()>;
}

/// A store in memory (tests, and a flash whose contents need not outlive the VM).
#[derive(Debug, Clone)]
pub struct MemoryFlash {
    pub data: Vec<u8>,
    pub syncs: usize,
}

impl MemoryFlash {
    pub fn new(data: Vec<u8>) -> MemoryFlash {
        MemoryFlash { data, syncs: 0 }
    }

    fn range(&self, offset: u64, len: usize) -> io::Result<std::ops::Range<usize>> {
        let start = usize::try_from(offset).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        let end = start
            .checked_add(len)
            .filter(|&e| e <= self.data.len())
            .ok_or_else(|| io::Error::from(io::ErrorKind::UnexpectedEof))?;
        Ok(start..end)
    }
}

impl FlashStore for MemoryFlash {
    fn size(&self) -> u64 {
        self.data.len() as u64
    }
    fn read(&mut self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        let range = self.range(offset, buf.len())?;
        buf.copy_from_slice(&self.data[range]);
        Ok(())
    }
    fn write(&mut self, offset: u64, data: &[u8]) -> io::Result<()> {
        let range = self.range(offset, data.len())?;
        self.data[range].copy_from_slice(data);
        Ok(())
    }
    fn sync(&mut self) -> io::Result<()> {
        self.syncs += 1;
        Ok(())
    }
}

/// A store over a file (the bundle's `aux.img`), read into memory once and written through.
#[derive(Debug)]
pub struct FileFlash {
    file: std::fs::File,
    memory: MemoryFlash,
}

impl FileFlash {
    /// Reads all of `file` (the flash is its size).
    pub fn new(mut file: std::fs::File) -> io::Result<FileFlash> {
        use std::io::{Read, Seek};
        file.rewind()?;
        let mut data = Vec::new();
        file.read_to_end(&mut data)?;
        Ok(FileFlash {
            file,
            memory: MemoryFlash::new(data),
        })
    }
}

impl FileFlash {
    /// The store's bytes as they are now.
    pub fn bytes(&self) -> &[u8] {
        &self.memory.data
    }
}

impl FlashStore for FileFlash {
    fn size(&self) -> u64 {
        self.memory.size()
    }
    fn read(&mut self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.memory.read(offset, buf)
    }
    fn write(&mut self, offset: u64, data: &[u8]) -> io::Result<()> {
        use std::os::unix::fs::FileExt;
        self.memory.range(offset, data.len())?;
        self.file.write_all_at(data, offset)?;
        self.memory.write(offset, data)
    }
    fn sync(&mut self) -> io::Result<()> {
        self.file.sync_data()
    }
}

/// What the next write means, or what reads return.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    ReadArray,
    ReadStatus,
    ReadId,
    /// `0x10`/`0x40` came: the next write is the byte to program.
    ProgramData,
    /// `0x20` came: the next write must be `0xd0` at the block to erase.
    EraseConfirm,
}

/// The flash device. Offsets are from the flash's first byte.
pub struct Pflash<S: FlashStore> {
    store: S,
    mode: Mode,
    status: u8,
    /// Programs or erases not yet synced.
    unsynced: bool,
}

impl<S: FlashStore> Pflash<S> {
    pub fn new(store: S) -> Pflash<S> {
        Pflash {
            store,
            mode: Mode::ReadArray,
            status: 0,
            unsynced: false,
        }
    }

    pub fn store(&self) -> &S {
        &self.store
    }

    /// Whether reads return the array (the flash could be mapped as read-only memory).
    pub fn reads_array(&self) -> bool {
        self.mode == Mode::ReadArray
    }

    /// The size in bytes.
    pub fn size(&self) -> u64 {
        self.store.size()
    }

    fn sync_if_needed(&mut self) {
        if std::mem::take(&mut self.unsynced) {
            if let Err(e) = self.store.sync() {
                crate::warn_ratelimited!("the flash's file cannot be synced: {e}");
            }
        }
    }

    fn program(&mut self, offset: u64, data: &[u8]) {
        match self.store.write(offset, data) {
            Ok(()) => {
                self.unsynced = true;
                self.status |= STATUS_READY;
            }
            Err(e) => {
                crate::warn_ratelimited!(offset, "the flash's file cannot be written: {e}");
                self.status |= STATUS_READY | STATUS_PROGRAM_ERROR;
            }
        }
        self.mode = Mode::ReadStatus;
    }

    fn erase(&mut self, offset: u64) {
        let start = offset - offset % FLASH_BLOCK_SIZE;
        let len = FLASH_BLOCK_SIZE.min(self.store.size() - start) as usize;
        match self.store.write(start, &vec![0xff; len]) {
            Ok(()) => {
                self.unsynced = true;
                self.status |= STATUS_READY;
                self.sync_if_needed();
            }
            Err(e) => {
                crate::warn_ratelimited!(offset, "the flash's file cannot be erased: {e}");
                self.status |= STATUS_READY | STATUS_ERASE_ERROR;
            }
        }
        self.mode = Mode::ReadStatus;
    }

    fn command(&mut self, command: u8) {
        self.mode = match command {
            CMD_READ_ARRAY | CMD_READ_ARRAY_ALT => {
                self.sync_if_needed();
                Mode::ReadArray
            }
            CMD_PROGRAM | CMD_PROGRAM_ALT => Mode::ProgramData,
            CMD_BLOCK_ERASE => Mode::EraseConfirm,
            CMD_CLEAR_STATUS => {
                // As QEMU: the status is cleared and the flash reads its array again.
                self.status = 0;
                Mode::ReadArray
            }
            CMD_READ_STATUS => Mode::ReadStatus,
            CMD_READ_ID => Mode::ReadId,
            other => {
                crate::warn_ratelimited!(
                    command = other,
                    "the guest sent the flash a command it does not support"
                );
                Mode::ReadArray
            }
        };
    }
}

impl<S: FlashStore> BusDevice for Pflash<S> {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let in_range = offset
            .checked_add(data.len() as u64)
            .is_some_and(|end| end <= self.store.size());
        if !in_range {
            data.fill(0xff);
            return;
        }
        match self.mode {
            Mode::ReadArray => {
                if self.store.read(offset, data).is_err() {
                    data.fill(0xff);
                }
            }
            Mode::ReadId => {
                for (i, byte) in data.iter_mut().enumerate() {
                    *byte = match (offset + i as u64) & 1 {
                        0 => MANUFACTURER_ID,
                        _ => DEVICE_ID,
                    };
                }
            }
            // Status in every byte, whatever mode the flash waits in.
            Mode::ReadStatus | Mode::ProgramData | Mode::EraseConfirm => data.fill(self.status),
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let in_range = offset
            .checked_add(data.len() as u64)
            .is_some_and(|end| end <= self.store.size());
        let Some(&first) = data.first() else { return };
        if !in_range {
            crate::warn_ratelimited!(offset, "the guest wrote past the end of the flash");
            return;
        }
        match self.mode {
            Mode::ProgramData => self.program(offset, data),
            Mode::EraseConfirm => {
                if first == CMD_ERASE_CONFIRM {
                    self.erase(offset);
                } else {
                    // A broken erase sequence: both error bits, as the command set says.
                    self.status |= STATUS_READY | STATUS_ERASE_ERROR | STATUS_PROGRAM_ERROR;
                    self.mode = Mode::ReadStatus;
                }
            }
            Mode::ReadArray | Mode::ReadStatus | Mode::ReadId => self.command(first),
        }
    }
}

#[cfg(test)]
mod tests;

/// The flash on arbitrary guest accesses (the `pflash_commands` fuzz target, and a `cargo test`
/// over seeded inputs): each 11-byte record is a read or write of 1–8 bytes at an offset in or
/// just past a 64 KiB flash. Nothing may panic, and nothing past the flash is touched.
#[doc(hidden)]
pub fn fuzz_input(data: &[u8]) {
    const SIZE: u64 = 16 * FLASH_BLOCK_SIZE;
    let mut flash = Pflash::new(MemoryFlash::new(vec![0xff; SIZE as usize]));
    for record in data.chunks_exact(11) {
        let offset = u64::from(u16::from_le_bytes([record[1], record[2]])) * 2 % (SIZE + 16);
        let len = usize::from(record[0] & 7) + 1;
        let bytes = &record[3..3 + len];
        if record[0] & 0x80 == 0 {
            flash.write(offset, bytes);
        } else {
            let mut buf = [0u8; 8];
            flash.read(offset, &mut buf[..len]);
        }
    }
    assert_eq!(flash.size(), SIZE);
}
