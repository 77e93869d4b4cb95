//! QEMU's firmware configuration device (fw_cfg) on the x86 port bus, written from QEMU's
//! specification (`docs/specs/fw_cfg.rst`): how SeaBIOS (and OVMF) learn the machine they run
//! on, and how they receive the ACPI tables.
//!
//! # Guest interface
//!
//! | port | width | what |
//! |---|---|---|
//! | 0x510 | 16-bit write, little-endian | selector: picks an item and rewinds its data offset to 0 |
//! | 0x511 | 8-bit read (wider reads too) | data: the next byte(s) of the item, then zeros past its end |
//! | 0x514 | 32-bit write, big-endian | DMA address, high half |
//! | 0x518 | 32-bit write, big-endian | DMA address, low half; the write starts the operation |
//!
//! Reading 0x514..0x51c gives `"QEMU CFG"`, the DMA interface's signature. Writes to the data
//! port are ignored, as in QEMU since 2.4. Selector bit 14 (the old "write" channel) is ignored;
//! bit 15 selects the architecture-specific items (0x8000..).
//!
//! A DMA operation reads a `FWCfgDmaAccess` from guest memory: big-endian `control` (bit 0
//! error, 1 read, 2 skip, 3 select with the item in bits 31:16, 4 write), `length` and
//! `address`. Select happens first; then read copies `length` bytes of the item, from the
//! current offset, to `address` (zeros past the item's end); skip moves the offset on by
//! `length`; write is refused (no item is writable here) and sets the error bit. When it is done
//! the device stores `control` back as 0, or with only the error bit set. Every guest range is
//! checked before the first byte moves, so a bad address or length sets the error bit and
//! never panics; the bytes copied are bounded by the item, the zero fill by guest memory, and
//! nothing on the host grows with the guest's `length`.
//!
//! # What SeaBIOS reads (1.16, the Debian build)
//!
//! - key 0x0000 `"QEMU"` through the data port (detection), key 0x0001 for the DMA bit;
//! - the file directory (key 0x0019) and, through it, `etc/e820` (RAM and reserved ranges: with
//!   it SeaBIOS no longer takes the RAM size from CMOS), `etc/table-loader` with
//!   `etc/acpi/rsdp` and `etc/acpi/tables` (with a table loader present SeaBIOS also moves the
//!   ACPI PM base to 0x600, which is where ours is), `bootorder`, `etc/boot-fail-wait`;
//! - key 0x0005 `NB_CPUS` (LE16; SeaBIOS waits until that many CPUs answered its SIPI, so it must
//!   be the real count), key 0x000f `MAX_CPUS` (LE16), key 0x000d `NUMA` (LE64 node count, 0
//!   here), key 0x000e `BOOT_MENU` (LE16, read as `etc/show-boot-menu`: 0 = no boot menu
//!   prompt), key 0x0004 `NOGRAPHIC` (LE16; non-zero makes SeaBIOS mirror its screen and int 10h
//!   output to COM1), key 0x8002 `IRQ0_OVERRIDE` (its first byte: 1 says the MP table should
//!   route IRQ0 to pin 2, as our MADT does).
//!
//! Key 0x0003 `RAM_SIZE` (LE64) is read by other firmware (OVMF, Linux's fw_cfg driver), not by
//! SeaBIOS. The kernel, initrd and command line keys (0x07..0x18) are unused for now.
//!
//! # What a firmware boot should register
//!
//! ```text
//! let mut fw_cfg = FwCfg::new(memory.clone())
//!     .with_ram_size(memory_size)?                        // key 0x03
//!     .with_cpus(vcpus, vcpus)?                           // keys 0x05, 0x0f, 0x0d (no NUMA)
//!     .with_e820(&firmware_e820_map(memory_size))?        // "etc/e820"
//!     .with_acpi(&acpi::build_tables(&acpi_config)?)?     // "etc/acpi/rsdp", "etc/acpi/tables",
//!                                                         // "etc/table-loader"
//!     .with_bootorder(["/pci@i0cf8/*@4"])?                // "bootorder", the disk to boot first
//!     .with_boot_menu(false)?                             // key 0x0e: no "Press ESC" wait
//!     .with_boot_fail_wait_ms(0)?;                        // "etc/boot-fail-wait": see below
//! fw_cfg.add_u32(keys::IRQ0_OVERRIDE, 1)?;                // optional: keys::NOGRAPHIC too
//! io_bus.insert(FW_CFG_PORT_BASE.into(), FW_CFG_PORT_LEN, Arc::new(Mutex::new(fw_cfg)))?;
//! ```
//!
//! With a boot-fail wait of 0, "No bootable device" is followed at once by SeaBIOS's reset
//! (ACPI reset register if the FADT has one, then the i8042's 0xfe, then port 0xcf9), so a VM
//! with nothing to boot stops with a reset instead of waiting SeaBIOS's default 60 s; `u32::MAX`
//! waits forever.
//!
//! `crate::boot::firmware_e820_map` is the map as QEMU gives it: RAM from 0 to the end of low
//! RAM in one entry (SeaBIOS reserves its own EBDA and BIOS areas), RAM above 4 GiB, and
//! reserved entries for anything else the guest must keep off (KVM's identity-map and TSS
//! pages). Without
//! `etc/e820` SeaBIOS falls back to the CMOS memory bytes. The tables written by
//! `write_acpi_tables` at 0xE0000 are for direct kernel boots only; a firmware boot hands the
//! unplaced blobs over here instead.

use std::collections::BTreeMap;

use tracing::debug;
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

use crate::acpi::{AcpiTables, Blob, LoaderCommand, Zone};
use crate::boot::E820Entry;
use crate::bus::BusDevice;

#[cfg(test)]
mod tests;

/// First port of the device: the selector. Data is at +1, the DMA address at +4 and +8.
pub const FW_CFG_PORT_BASE: u16 = 0x510;
/// Ports the device answers: 0x510..0x51c.
pub const FW_CFG_PORT_LEN: u64 = 12;
/// The selector register (16-bit, little-endian).
pub const FW_CFG_PORT_SELECTOR: u16 = 0x510;
/// The data register (8-bit).
pub const FW_CFG_PORT_DATA: u16 = 0x511;
/// High half of the DMA address (32-bit, big-endian).
pub const FW_CFG_PORT_DMA_HIGH: u16 = 0x514;
/// Low half of the DMA address (32-bit, big-endian); writing it starts the operation.
pub const FW_CFG_PORT_DMA_LOW: u16 = 0x518;

const SELECTOR_OFFSET: u64 = 0;
const DATA_OFFSET: u64 = 1;
const DMA_HIGH_OFFSET: u64 = 4;
const DMA_LOW_OFFSET: u64 = 8;

/// What reading the DMA address register returns: `"QEMU CFG"` as a big-endian 64-bit value.
pub const DMA_SIGNATURE: [u8; 8] = *b"QEMU CFG";

/// Item keys (selector values). The numbers are QEMU's.
pub mod keys {
    /// `"QEMU"`.
    pub const SIGNATURE: u16 = 0x0000;
    /// LE32 feature bits: [`super::ID_TRADITIONAL`], [`super::ID_DMA`].
    pub const ID: u16 = 0x0001;
    /// 16-byte VM UUID.
    pub const UUID: u16 = 0x0002;
    /// LE64 RAM size in bytes.
    pub const RAM_SIZE: u16 = 0x0003;
    /// LE16: non-zero when the VM has no display (SeaBIOS then uses COM1 as its console).
    pub const NOGRAPHIC: u16 = 0x0004;
    /// LE16 number of vCPUs started at boot.
    pub const NB_CPUS: u16 = 0x0005;
    /// LE16 machine id.
    pub const MACHINE_ID: u16 = 0x0006;
    /// Direct kernel boot (unused for now): load address, size, command line, initrd.
    pub const KERNEL_ADDR: u16 = 0x0007;
    pub const KERNEL_SIZE: u16 = 0x0008;
    pub const KERNEL_CMDLINE: u16 = 0x0009;
    pub const INITRD_ADDR: u16 = 0x000a;
    pub const INITRD_SIZE: u16 = 0x000b;
    /// LE16 legacy boot device.
    pub const BOOT_DEVICE: u16 = 0x000c;
    /// LE64 NUMA node count, then per-CPU node numbers and per-node memory sizes.
    pub const NUMA: u16 = 0x000d;
    /// LE16: show the boot menu.
    pub const BOOT_MENU: u16 = 0x000e;
    /// LE16 highest number of vCPUs.
    pub const MAX_CPUS: u16 = 0x000f;
    /// More direct kernel boot items (unused for now).
    pub const KERNEL_ENTRY: u16 = 0x0010;
    pub const KERNEL_DATA: u16 = 0x0011;
    pub const INITRD_DATA: u16 = 0x0012;
    pub const CMDLINE_ADDR: u16 = 0x0013;
    pub const CMDLINE_SIZE: u16 = 0x0014;
    pub const CMDLINE_DATA: u16 = 0x0015;
    pub const SETUP_ADDR: u16 = 0x0016;
    pub const SETUP_SIZE: u16 = 0x0017;
    pub const SETUP_DATA: u16 = 0x0018;
    /// The file directory: BE32 count, then 64-byte entries.
    pub const FILE_DIR: u16 = 0x0019;
    /// Files get keys from here on, in the order they are added.
    pub const FILE_FIRST: u16 = 0x0020;
    /// Architecture-specific items (selector bit 15).
    pub const ARCH_LOCAL: u16 = 0x8000;
    /// Legacy ACPI tables list (superseded by the table loader).
    pub const ACPI_TABLES: u16 = ARCH_LOCAL;
    /// Legacy SMBIOS entries.
    pub const SMBIOS_ENTRIES: u16 = ARCH_LOCAL + 1;
    /// IRQ0 is routed to I/O APIC pin 2 (first byte non-zero).
    pub const IRQ0_OVERRIDE: u16 = ARCH_LOCAL + 2;
    /// Legacy e820 reservations (superseded by the `etc/e820` file).
    pub const E820_TABLE: u16 = ARCH_LOCAL + 3;
}

/// [`keys::ID`] bit: the port interface (always).
pub const ID_TRADITIONAL: u32 = 1 << 0;
/// [`keys::ID`] bit: the DMA interface.
pub const ID_DMA: u32 = 1 << 1;

/// `FWCfgDmaAccess.control` bits.
pub mod dma {
    pub const ERROR: u32 = 1 << 0;
    pub const READ: u32 = 1 << 1;
    pub const SKIP: u32 = 1 << 2;
    pub const SELECT: u32 = 1 << 3;
    pub const WRITE: u32 = 1 << 4;
    /// Size of `FWCfgDmaAccess`: control (BE32), length (BE32), address (BE64).
    pub const ACCESS_SIZE: usize = 16;
}

/// Selector bit 14: the old write channel. Ignored: it selects the same item.
const SELECTOR_WRITE_CHANNEL: u16 = 0x4000;
/// Highest key a file can get (the generic range ends at 0x3fff).
const FILE_LAST: u16 = 0x3fff;
/// Bytes in a directory entry's name field, the terminating NUL included.
pub const FILE_NAME_SIZE: usize = 56;
/// Bytes in a directory entry.
pub const FILE_DIR_ENTRY_SIZE: usize = 64;

/// File names the builders use.
pub mod files {
    pub const E820: &str = "etc/e820";
    pub const TABLE_LOADER: &str = "etc/table-loader";
    pub const BOOTORDER: &str = "bootorder";
    pub const BOOT_FAIL_WAIT: &str = "etc/boot-fail-wait";
}

/// The table loader's commands, as SeaBIOS and OVMF read `etc/table-loader`: 128-byte entries,
/// a LE32 command number, then the command's fields, little-endian, zero-padded.
pub mod loader {
    /// Size of one command.
    pub const ENTRY_SIZE: usize = 128;
    /// Size of a file name field, the terminating NUL included.
    pub const FILE_SIZE: usize = 56;
    /// ALLOCATE: file\[56\], align LE32, zone u8.
    pub const ALLOCATE: u32 = 1;
    /// ADD_POINTER: dest_file\[56\], src_file\[56\], offset LE32, size u8.
    pub const ADD_POINTER: u32 = 2;
    /// ADD_CHECKSUM: file\[56\], result_offset LE32, start LE32, length LE32.
    pub const ADD_CHECKSUM: u32 = 3;
    /// ALLOCATE zone: anywhere in high memory below 4 GiB.
    pub const ZONE_HIGH: u8 = 1;
    /// ALLOCATE zone: the F segment (0xe0000..0x100000).
    pub const ZONE_FSEG: u8 = 2;
}

/// Why an item could not be added.
#[derive(thiserror::Error, Debug, PartialEq, Eq)]
pub enum FwCfgError {
    /// A file name must be 1 to 55 bytes of ASCII without NUL (the field is 56 bytes).
    #[error(
        "fw_cfg file name {name:?} is not 1 to {max} ASCII characters without NUL",
        max = FILE_NAME_SIZE - 1
    )]
    BadFileName { name: String },
    /// Every file name must be unique.
    #[error("fw_cfg already has a file named {name:?}")]
    DuplicateFile { name: String },
    /// The generic key range is full.
    #[error("fw_cfg has no key left for file {name:?} (at most {max} files)",
        max = FILE_LAST - keys::FILE_FIRST + 1)]
    TooManyFiles { name: String },
    /// An item's size must fit the directory's 32-bit size field.
    #[error("fw_cfg item {what} is {size} bytes; items are at most 4 GiB - 1")]
    TooLarge { what: String, size: usize },
    /// The key is the device's own (signature, ID, directory), a file's, or has bit 14 set.
    #[error("fw_cfg key {key:#06x} cannot be set directly")]
    ReservedKey { key: u16 },
    /// A boot order entry must be a non-empty line without NUL.
    #[error("boot order entry {entry:?} must be non-empty and contain no newline or NUL")]
    BadBootOrderEntry { entry: String },
}

#[derive(Clone, Debug)]
struct FileEntry {
    name: String,
    key: u16,
}

/// The fw_cfg device. `M` is the guest memory the DMA interface reads and writes.
pub struct FwCfg<M: GuestMemoryBackend = GuestMemoryMmap> {
    memory: M,
    items: BTreeMap<u16, Vec<u8>>,
    files: Vec<FileEntry>,
    /// The selected item's key, bit 14 cleared.
    selected: u16,
    /// Data offset into the selected item.
    offset: usize,
    /// High half of the DMA address, written before the low half.
    dma_high: u32,
}

impl<M: GuestMemoryBackend> std::fmt::Debug for FwCfg<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FwCfg")
            .field("items", &self.items.keys().collect::<Vec<_>>())
            .field("files", &self.files)
            .field("selected", &self.selected)
            .field("offset", &self.offset)
            .finish_non_exhaustive()
    }
}

/// Where the firmware is in its fw_cfg reads, as saved. The items themselves are not: a
/// machine built from the same configuration has the same ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FwCfgState {
    pub selected: u16,
    pub offset: u64,
    pub dma_high: u32,
}

impl<M: GuestMemoryBackend> FwCfg<M> {
    pub fn state(&self) -> FwCfgState {
        FwCfgState {
            selected: self.selected,
            offset: self.offset as u64,
            dma_high: self.dma_high,
        }
    }

    /// Puts the selection back; reads past the item's end give zeros, as for the guest.
    pub fn restore_state(&mut self, state: &FwCfgState) {
        self.selected = state.selected;
        self.offset = usize::try_from(state.offset).unwrap_or(usize::MAX);
        self.dma_high = state.dma_high;
    }

    /// A device with the signature, the ID (port and DMA interfaces) and an empty directory.
    pub fn new(memory: M) -> Self {
        let mut items = BTreeMap::new();
        items.insert(keys::SIGNATURE, b"QEMU".to_vec());
        items.insert(keys::ID, (ID_TRADITIONAL | ID_DMA).to_le_bytes().to_vec());
        let mut fw_cfg = FwCfg {
            memory,
            items,
            files: Vec::new(),
            selected: keys::SIGNATURE,
            offset: 0,
            dma_high: 0,
        };
        fw_cfg.rebuild_directory();
        fw_cfg
    }

    /// Sets a numbered (non-file) item. Replaces an earlier value of the same key.
    pub fn add_item(&mut self, key: u16, data: Vec<u8>) -> Result<(), FwCfgError> {
        let generic = key & keys::ARCH_LOCAL == 0;
        let reserved = key & SELECTOR_WRITE_CHANNEL != 0
            || matches!(key, keys::SIGNATURE | keys::ID | keys::FILE_DIR)
            || (generic && key >= keys::FILE_FIRST);
        if reserved {
            return Err(FwCfgError::ReservedKey { key });
        }
        check_size(&format!("{key:#06x}"), data.len())?;
        self.items.insert(key, data);
        Ok(())
    }

    /// Sets a numbered item to a little-endian u16.
    pub fn add_u16(&mut self, key: u16, value: u16) -> Result<(), FwCfgError> {
        self.add_item(key, value.to_le_bytes().to_vec())
    }

    /// Sets a numbered item to a little-endian u32.
    pub fn add_u32(&mut self, key: u16, value: u32) -> Result<(), FwCfgError> {
        self.add_item(key, value.to_le_bytes().to_vec())
    }

    /// Sets a numbered item to a little-endian u64.
    pub fn add_u64(&mut self, key: u16, value: u64) -> Result<(), FwCfgError> {
        self.add_item(key, value.to_le_bytes().to_vec())
    }

    /// Adds a named file and returns its key. Keys are given out from
    /// [`keys::FILE_FIRST`] in the order files are added.
    pub fn add_file(&mut self, name: &str, data: Vec<u8>) -> Result<u16, FwCfgError> {
        if name.is_empty() || name.len() >= FILE_NAME_SIZE || !name.is_ascii() || name.contains('\0') {
            return Err(FwCfgError::BadFileName { name: name.into() });
        }
        if self.files.iter().any(|f| f.name == name) {
            return Err(FwCfgError::DuplicateFile { name: name.into() });
        }
        check_size(name, data.len())?;
        let key = u16::try_from(self.files.len())
            .ok()
            .and_then(|n| keys::FILE_FIRST.checked_add(n))
            .filter(|key| *key <= FILE_LAST)
            .ok_or_else(|| FwCfgError::TooManyFiles { name: name.into() })?;
        self.items.insert(key, data);
        self.files.push(FileEntry {
            name: name.into(),
            key,
        });
        self.rebuild_directory();
        Ok(key)
    }

    /// The key of the file called `name`.
    pub fn file_key(&self, name: &str) -> Option<u16> {
        self.files.iter().find(|f| f.name == name).map(|f| f.key)
    }

    /// The bytes of an item (file or numbered), as the guest reads them.
    pub fn item(&self, key: u16) -> Option<&[u8]> {
        self.items
            .get(&(key & !SELECTOR_WRITE_CHANNEL))
            .map(Vec::as_slice)
    }

    /// [`keys::RAM_SIZE`]: the guest's RAM in bytes.
    pub fn with_ram_size(mut self, bytes: u64) -> Result<Self, FwCfgError> {
        self.add_u64(keys::RAM_SIZE, bytes)?;
        Ok(self)
    }

    /// [`keys::NB_CPUS`] and [`keys::MAX_CPUS`], and an empty NUMA description
    /// ([`keys::NUMA`]: node count 0, then a zero node number for each of `max` CPUs).
    pub fn with_cpus(mut self, boot: u16, max: u16) -> Result<Self, FwCfgError> {
        self.add_u16(keys::NB_CPUS, boot)?;
        self.add_u16(keys::MAX_CPUS, max.max(boot))?;
        self.add_item(keys::NUMA, vec![0; 8 * (1 + usize::from(max.max(boot)))])?;
        Ok(self)
    }

    /// [`keys::BOOT_MENU`]: whether SeaBIOS offers its boot menu (and waits for a key).
    pub fn with_boot_menu(mut self, show: bool) -> Result<Self, FwCfgError> {
        self.add_u16(keys::BOOT_MENU, u16::from(show))?;
        Ok(self)
    }

    /// `etc/e820`: the memory map, each entry LE64 address, LE64 length, LE32 type.
    pub fn with_e820(mut self, map: &[E820Entry]) -> Result<Self, FwCfgError> {
        self.add_file(files::E820, e820_file(map))?;
        Ok(self)
    }

    /// The ACPI tables as the firmware wants them: `etc/acpi/rsdp` and `etc/acpi/tables`
    /// unplaced, and `etc/table-loader` with the commands that place and link them.
    pub fn with_acpi(mut self, tables: &AcpiTables) -> Result<Self, FwCfgError> {
        let loader = table_loader(tables)?;
        self.add_file(Blob::Rsdp.fw_cfg_file(), tables.blob(Blob::Rsdp).to_vec())?;
        self.add_file(Blob::Tables.fw_cfg_file(), tables.blob(Blob::Tables).to_vec())?;
        self.add_file(files::TABLE_LOADER, loader)?;
        Ok(self)
    }

    /// `bootorder`: OpenFirmware device paths, most preferred first (for SeaBIOS, e.g.
    /// `/pci@i0cf8/*@4` for a virtio-blk disk in PCI slot 4). Written as QEMU writes it: lines
    /// joined by `\n`, with a terminating NUL.
    pub fn with_bootorder<I, S>(mut self, entries: I) -> Result<Self, FwCfgError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        self.add_bootorder(entries)?;
        Ok(self)
    }

    /// [`FwCfg::with_bootorder`] on a device already built (once, before the firmware runs).
    pub fn add_bootorder<I, S>(&mut self, entries: I) -> Result<(), FwCfgError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut lines = Vec::new();
        for entry in entries {
            let entry = entry.as_ref();
            if entry.is_empty() || entry.contains(['\n', '\0']) {
                return Err(FwCfgError::BadBootOrderEntry { entry: entry.into() });
            }
            lines.push(entry.to_owned());
        }
        let mut data = lines.join("\n").into_bytes();
        data.push(0);
        self.add_file(files::BOOTORDER, data)?;
        Ok(())
    }

    /// `etc/boot-fail-wait` (LE32): how long SeaBIOS waits after finding nothing to boot
    /// before it reboots, in milliseconds (its default is 60 s); `u32::MAX` never reboots.
    pub fn with_boot_fail_wait_ms(mut self, ms: u32) -> Result<Self, FwCfgError> {
        self.add_file(files::BOOT_FAIL_WAIT, ms.to_le_bytes().to_vec())?;
        Ok(self)
    }

    fn rebuild_directory(&mut self) {
        let mut dir = Vec::with_capacity(4 + FILE_DIR_ENTRY_SIZE * self.files.len());
        dir.extend_from_slice(&(self.files.len() as u32).to_be_bytes());
        for file in &self.files {
            let size = self.items.get(&file.key).map_or(0, Vec::len);
            dir.extend_from_slice(&(size as u32).to_be_bytes());
            dir.extend_from_slice(&file.key.to_be_bytes());
            dir.extend_from_slice(&[0, 0]);
            let mut name = [0u8; FILE_NAME_SIZE];
            name[..file.name.len()].copy_from_slice(file.name.as_bytes());
            dir.extend_from_slice(&name);
        }
        self.items.insert(keys::FILE_DIR, dir);
    }

    fn select(&mut self, key: u16) {
        self.selected = key & !SELECTOR_WRITE_CHANNEL;
        self.offset = 0;
    }

    fn selected_data(&self) -> &[u8] {
        self.items.get(&self.selected).map_or(&[], Vec::as_slice)
    }

    /// The next byte through the data port: zero past the end, where the offset stops.
    fn next_byte(&mut self) -> u8 {
        let byte = self.selected_data().get(self.offset).copied();
        if byte.is_some() {
            self.offset += 1;
        }
        byte.unwrap_or(0)
    }

    /// Runs the DMA operation whose `FWCfgDmaAccess` is at `address`.
    fn dma(&mut self, address: u64) {
        let mut access = [0u8; dma::ACCESS_SIZE];
        if let Err(e) = self.memory.read_slice(&mut access, GuestAddress(address)) {
            // Nowhere to report it: the guest will find its control word unchanged.
            debug!(address = format_args!("{address:#x}"), error = %e, "fw_cfg DMA access outside guest memory");
            return;
        }
        let control = u32::from_be_bytes(access[0..4].try_into().unwrap());
        let length = u32::from_be_bytes(access[4..8].try_into().unwrap());
        let target = u64::from_be_bytes(access[8..16].try_into().unwrap());

        if control & dma::SELECT != 0 {
            self.select((control >> 16) as u16);
        }
        let ok = if control & dma::READ != 0 {
            self.dma_read(target, length)
        } else if control & dma::WRITE != 0 {
            // No item is writable.
            debug!(key = self.selected, "fw_cfg DMA write refused");
            false
        } else if control & dma::SKIP != 0 {
            self.offset = self
                .offset
                .saturating_add(length as usize)
                .min(self.selected_data().len());
            true
        } else {
            true
        };
        let result = if ok { 0 } else { dma::ERROR };
        if let Err(e) = self
            .memory
            .write_slice(&result.to_be_bytes(), GuestAddress(address))
        {
            debug!(address = format_args!("{address:#x}"), error = %e, "fw_cfg DMA status write failed");
        }
    }

    /// Copies `length` bytes of the selected item to guest memory at `target`, zeros past the
    /// item's end. Nothing is written unless the whole range is guest memory.
    fn dma_read(&mut self, target: u64, length: u32) -> bool {
        let length = length as usize;
        let in_range = target.checked_add(length as u64).is_some()
            && GuestMemoryBackend::check_range(&self.memory, GuestAddress(target), length);
        if !in_range {
            debug!(
                target = format_args!("{target:#x}"),
                length, "fw_cfg DMA read outside guest memory"
            );
            return false;
        }
        let data = self.selected_data();
        let start = self.offset.min(data.len());
        let copied = length.min(data.len() - start);
        let mut written = self
            .memory
            .write_slice(&data[start..start + copied], GuestAddress(target))
            .is_ok();
        const ZEROS: [u8; 4096] = [0; 4096];
        let mut filled = copied;
        while written && filled < length {
            let chunk = (length - filled).min(ZEROS.len());
            written = self
                .memory
                .write_slice(&ZEROS[..chunk], GuestAddress(target + filled as u64))
                .is_ok();
            filled += chunk;
        }
        self.offset = start + copied;
        written
    }
}

impl<M: GuestMemoryBackend + Send> BusDevice for FwCfg<M> {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        match offset {
            DATA_OFFSET => data.iter_mut().for_each(|b| *b = self.next_byte()),
            DMA_HIGH_OFFSET..=11 => {
                for (i, b) in data.iter_mut().enumerate() {
                    let at = (offset - DMA_HIGH_OFFSET) as usize + i;
                    *b = DMA_SIGNATURE.get(at).copied().unwrap_or(0);
                }
            }
            // The selector is write-only.
            _ => data.fill(0),
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        match (offset, data.len()) {
            (SELECTOR_OFFSET, 1) => self.select(u16::from(data[0])),
            (SELECTOR_OFFSET, n) if n >= 2 => self.select(u16::from_le_bytes([data[0], data[1]])),
            (DMA_HIGH_OFFSET, 4) => self.dma_high = u32::from_be_bytes(data.try_into().unwrap()),
            (DMA_HIGH_OFFSET, 8) => {
                self.dma_high = 0;
                self.dma(u64::from_be_bytes(data.try_into().unwrap()));
            }
            (DMA_LOW_OFFSET, 4) => {
                let address = (u64::from(self.dma_high) << 32)
                    | u64::from(u32::from_be_bytes(data.try_into().unwrap()));
                self.dma_high = 0;
                self.dma(address);
            }
            // Data port writes are ignored, as in QEMU since 2.4; so are odd-sized DMA writes.
            _ => debug!(offset, len = data.len(), "fw_cfg write ignored"),
        }
    }
}

fn check_size(what: &str, size: usize) -> Result<(), FwCfgError> {
    if u32::try_from(size).is_err() {
        return Err(FwCfgError::TooLarge {
            what: what.into(),
            size,
        });
    }
    Ok(())
}

/// The `etc/e820` file: 20 bytes an entry, LE64 address, LE64 length, LE32 type.
pub fn e820_file(map: &[E820Entry]) -> Vec<u8> {
    let mut data = Vec::with_capacity(20 * map.len());
    for entry in map {
        data.extend_from_slice(&entry.address.to_le_bytes());
        data.extend_from_slice(&entry.size.to_le_bytes());
        data.extend_from_slice(&entry.kind.to_le_bytes());
    }
    data
}

/// The `etc/table-loader` file for `tables`: an ALLOCATE for each blob (the tables first, as
/// QEMU orders them, then the RSDP in the F segment), then the blobs' pointer and checksum
/// commands in their order.
pub fn table_loader(tables: &AcpiTables) -> Result<Vec<u8>, FwCfgError> {
    let mut out = Vec::new();
    for blob in [Blob::Tables, Blob::Rsdp] {
        let mut entry = LoaderEntry::new(loader::ALLOCATE);
        entry.file(blob.fw_cfg_file());
        entry.u32(blob.align() as u32);
        entry.u8(match blob.zone() {
            Zone::High => loader::ZONE_HIGH,
            Zone::FSeg => loader::ZONE_FSEG,
        });
        out.extend_from_slice(&entry.bytes);
    }
    let field = |what: &str, value: usize| {
        u32::try_from(value).map_err(|_| FwCfgError::TooLarge {
            what: format!("table-loader {what}"),
            size: value,
        })
    };
    for command in tables.commands() {
        let entry = match *command {
            LoaderCommand::AddPointer {
                blob,
                offset,
                size,
                target,
            } => {
                let mut entry = LoaderEntry::new(loader::ADD_POINTER);
                entry.file(blob.fw_cfg_file());
                entry.file(target.fw_cfg_file());
                entry.u32(field("pointer offset", offset)?);
                entry.u8(size);
                entry
            }
            LoaderCommand::AddChecksum {
                blob,
                offset,
                start,
                len,
            } => {
                let mut entry = LoaderEntry::new(loader::ADD_CHECKSUM);
                entry.file(blob.fw_cfg_file());
                entry.u32(field("checksum offset", offset)?);
                entry.u32(field("checksum start", start)?);
                entry.u32(field("checksum length", len)?);
                entry
            }
        };
        out.extend_from_slice(&entry.bytes);
    }
    Ok(out)
}

/// One 128-byte loader command, filled field by field.
struct LoaderEntry {
    bytes: [u8; loader::ENTRY_SIZE],
    at: usize,
}

impl LoaderEntry {
    fn new(command: u32) -> Self {
        let mut entry = LoaderEntry {
            bytes: [0; loader::ENTRY_SIZE],
            at: 0,
        };
        entry.u32(command);
        entry
    }

    fn put(&mut self, data: &[u8]) {
        self.bytes[self.at..self.at + data.len()].copy_from_slice(data);
        self.at += data.len();
    }

    /// A NUL-padded name field; our blob names are short constants.
    fn file(&mut self, name: &str) {
        let mut field = [0u8; loader::FILE_SIZE];
        field[..name.len()].copy_from_slice(name.as_bytes());
        self.put(&field);
    }

    fn u32(&mut self, value: u32) {
        self.put(&value.to_le_bytes());
    }

    fn u8(&mut self, value: u8) {
        self.put(&[value]);
    }
}
