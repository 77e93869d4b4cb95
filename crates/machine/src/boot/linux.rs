//! Loading a Linux kernel, its initrd and command line, and writing the boot information the
//! kernel reads: `boot_params` for a bzImage, `hvm_start_info` for a PVH ELF (ELF64 through
//! linux-loader, ELF32 through our own [`super::elf32`] reader).

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use linux_loader::cmdline::Cmdline;
use linux_loader::configurator::linux::LinuxBootConfigurator;
use linux_loader::configurator::{BootConfigurator, BootParams};
use linux_loader::loader::bootparam::boot_params;
use linux_loader::loader::elf::start_info::{hvm_memmap_table_entry, hvm_modlist_entry, hvm_start_info};
use linux_loader::loader::{load_cmdline, BzImage, Elf, KernelLoader, KernelLoaderResult, PvhBootCapability};
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, ReadVolatile};

use super::e820::e820_map;
use super::elf32::{self, Elf32Error, Elf32Kernel, ELF32_MAX_FILE_SIZE};
use super::BootError;
use crate::layout::{
    CMDLINE_MAX_SIZE, CMDLINE_START, HIGH_RAM_START, PVH_INFO_START, PVH_MEMMAP_START, PVH_MODLIST_START,
    RSDP_START, ZERO_PAGE_START,
};
use crate::memory::low_ram_end;

/// How the boot vCPU enters the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinuxEntry {
    /// 64-bit boot protocol: long mode, RSI = `boot_params`.
    Long64 { entry: u64, boot_params: u64 },
    /// PVH: 32-bit protected mode, EBX = `hvm_start_info`.
    Pvh { entry: u64, start_info: u64 },
}

/// What `load_linux` put where.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LinuxBoot {
    pub entry: LinuxEntry,
    pub kernel_end: u64,
    pub initrd: Option<(u64, u64)>,
}

const HDRS_MAGIC: u32 = 0x5372_6448; // "HdrS"
const BOOT_FLAG: u16 = 0xaa55;
const LOADER_TYPE_UNDEFINED: u8 = 0xff;
const XLF_CAN_USE_HEAP: u8 = 0x80;
const PVH_MAGIC: u32 = 0x336e_c578;
/// Default initrd_addr_max of old kernels; newer ones report their own.
const DEFAULT_INITRD_ADDR_MAX: u64 = 0x37ff_ffff;

enum KernelFormat {
    BzImage,
    /// ELFCLASS64 (a vmlinux): linux-loader.
    Elf,
    /// ELFCLASS32: [`elf32`].
    Elf32,
}

/// The error of a failed read of the kernel file at `path`.
fn kernel_read_error(path: &Path) -> impl Fn(std::io::Error) -> BootError + Copy + '_ {
    move |source| BootError::Read {
        what: "kernel",
        path: path.to_owned(),
        source,
    }
}

/// The end of the memory a bzImage's decompressor uses: it moves the kernel to `pref_address`
/// (16 MiB for distribution kernels; never below where the kernel was loaded) and needs
/// `init_size` bytes there. Both come from the file: a crafted header saturates (asks for all
/// of memory) instead of overflowing.
fn bzimage_decompression_end(pref_address: u64, loaded_at: u64, init_size: u32) -> u64 {
    pref_address.max(loaded_at).saturating_add(u64::from(init_size))
}

fn sniff(path: &Path, file: &mut File) -> Result<KernelFormat, BootError> {
    let read_err = kernel_read_error(path);
    let mut head = [0u8; 0x206];
    let n = read_up_to(file, &mut head).map_err(read_err)?;
    file.seek(SeekFrom::Start(0)).map_err(read_err)?;
    if n >= 5 && head[..4] == *b"\x7fELF" {
        return match head[4] {
            1 => Ok(KernelFormat::Elf32),
            2 => Ok(KernelFormat::Elf),
            _ => Err(BootError::NotAKernel {
                path: path.to_owned(),
            }),
        };
    }
    if n >= 0x206 && u32::from_le_bytes([head[0x202], head[0x203], head[0x204], head[0x205]]) == HDRS_MAGIC {
        return Ok(KernelFormat::BzImage);
    }
    Err(BootError::NotAKernel {
        path: path.to_owned(),
    })
}

fn read_up_to(file: &mut File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match file.read(&mut buf[filled..])? {
            0 => break,
            n => filled += n,
        }
    }
    Ok(filled)
}

/// Reads a whole ELF32 kernel (at most [`ELF32_MAX_FILE_SIZE`] bytes) and parses it.
fn read_elf32(path: &Path, file: &mut File) -> Result<(Vec<u8>, Elf32Kernel), BootError> {
    let read_err = kernel_read_error(path);
    // Too large is refused before anything is read; otherwise the whole file in one read of
    // its length (`read_to_end` through `take` would read it in doubling pieces from 8 KiB).
    let length = file.metadata().map_err(read_err)?.len();
    if length > ELF32_MAX_FILE_SIZE {
        return Err(elf32_error(
            path,
            Elf32Error::TooLarge {
                max: ELF32_MAX_FILE_SIZE,
            },
        ));
    }
    let mut data = vec![0u8; length as usize];
    file.seek(SeekFrom::Start(0)).map_err(read_err)?;
    let n = read_up_to(file, &mut data).map_err(read_err)?;
    data.truncate(n);
    let kernel = elf32::parse(&data).map_err(|e| elf32_error(path, e))?;
    Ok((data, kernel))
}

fn elf32_error(path: &Path, source: Elf32Error) -> BootError {
    BootError::BadElf32 {
        path: path.to_owned(),
        source,
    }
}

/// What validation learns of a kernel file besides that it boots: the guest memory it needs
/// before it runs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KernelNeeds {
    /// A bzImage: the end of the memory its decompressor uses (pref_address + init_size, from
    /// the setup header).
    pub bzimage_memory_end: Option<u64>,
    /// An ELF32 kernel: the end of the guest RAM its segments occupy.
    pub elf32_end: Option<u64>,
}

/// Tells whether `path` is a kernel we can boot (bzImage, or a 64- or 32-bit ELF with a PVH
/// note), and what memory it needs, reading only its headers (all of an ELF32) through one
/// open file. Configuration validation uses this.
pub fn check_kernel(path: &Path) -> Result<KernelNeeds, BootError> {
    let read_err = kernel_read_error(path);
    let mut file = File::open(path).map_err(read_err)?;
    match sniff(path, &mut file)? {
        KernelFormat::BzImage => {
            let mut hdr = [0u8; 0x264];
            let bzimage_memory_end = if read_up_to(&mut file, &mut hdr).map_err(read_err)? < hdr.len() {
                None
            } else {
                let pref_address = u64::from_le_bytes(hdr[0x258..0x260].try_into().unwrap_or([0; 8]));
                let init_size = u32::from_le_bytes(hdr[0x260..0x264].try_into().unwrap_or([0; 4]));
                Some(bzimage_decompression_end(pref_address, HIGH_RAM_START, init_size))
            };
            Ok(KernelNeeds {
                bzimage_memory_end,
                elf32_end: None,
            })
        }
        KernelFormat::Elf32 => Ok(KernelNeeds {
            bzimage_memory_end: None,
            elf32_end: Some(read_elf32(path, &mut file)?.1.end()),
        }),
        KernelFormat::Elf => {
            if elf_has_pvh_note(&mut file).unwrap_or(false) {
                Ok(KernelNeeds::default())
            } else {
                Err(BootError::NoPvhNote {
                    path: path.to_owned(),
                })
            }
        }
    }
}

/// Scans an ELF's PT_NOTE segments for the Xen PHYS32_ENTRY note without loading it.
fn elf_has_pvh_note(file: &mut File) -> std::io::Result<bool> {
    // Program headers and notes sit near the start; 64 KiB covers every kernel we know. One
    // read of that size (`read_to_end` through `take` would take four, from 8 KiB up).
    let mut data = vec![0u8; 64 << 10];
    file.seek(SeekFrom::Start(0))?;
    let n = read_up_to(file, &mut data)?;
    data.truncate(n);
    let u16_at = |o: usize| data.get(o..o + 2).map(|b| u16::from_le_bytes([b[0], b[1]]));
    let u32_at = |o: usize| {
        data.get(o..o + 4)
            .map(|b| u32::from_le_bytes(b.try_into().unwrap_or([0; 4])))
    };
    let u64_at = |o: usize| {
        data.get(o..o + 8)
            .map(|b| u64::from_le_bytes(b.try_into().unwrap_or([0; 8])))
    };
    let is64 = data.get(4) == Some(&2);
    let (phoff, phentsize, phnum) = if is64 {
        (u64_at(0x20), u16_at(0x36), u16_at(0x38))
    } else {
        (u32_at(0x1c).map(u64::from), u16_at(0x2a), u16_at(0x2c))
    };
    let (Some(phoff), Some(phentsize), Some(phnum)) = (phoff, phentsize, phnum) else {
        return Ok(false);
    };
    for i in 0..phnum as u64 {
        let ph = (phoff + i * phentsize as u64) as usize;
        if u32_at(ph) != Some(4) {
            continue; // not PT_NOTE
        }
        let (off, size) = if is64 {
            (u64_at(ph + 8), u64_at(ph + 32))
        } else {
            (u32_at(ph + 4).map(u64::from), u32_at(ph + 16).map(u64::from))
        };
        let (Some(off), Some(size)) = (off, size) else {
            continue;
        };
        let mut pos = off as usize;
        let end = (off + size) as usize;
        // A note whose segment lies past what we read is searched in a fresh read.
        let notes = if end > data.len() {
            let mut buf = vec![0u8; size.min(1 << 20) as usize];
            file.seek(SeekFrom::Start(off))?;
            let n = read_up_to(file, &mut buf)?;
            buf.truncate(n);
            pos = 0;
            buf
        } else {
            data.clone()
        };
        let end = if end > data.len() { notes.len() } else { end };
        while pos + 12 <= end {
            let namesz = u32::from_le_bytes(notes[pos..pos + 4].try_into().unwrap_or([0; 4])) as usize;
            let descsz = u32::from_le_bytes(notes[pos + 4..pos + 8].try_into().unwrap_or([0; 4])) as usize;
            let kind = u32::from_le_bytes(notes[pos + 8..pos + 12].try_into().unwrap_or([0; 4]));
            let name = notes.get(pos + 12..pos + 12 + namesz).unwrap_or(&[]);
            if kind == 18 && name.starts_with(b"Xen") {
                return Ok(true);
            }
            pos += 12 + namesz.div_ceil(4) * 4 + descsz.div_ceil(4) * 4;
        }
    }
    Ok(false)
}

/// Loads the kernel, initrd and command line into `mem` and writes the boot information.
pub fn load_linux(
    mem: &GuestMemoryMmap,
    memory_size: u64,
    kernel: &Path,
    initrd: Option<&Path>,
    command_line: &str,
    has_acpi: bool,
) -> Result<LinuxBoot, BootError> {
    let mut file = File::open(kernel).map_err(kernel_read_error(kernel))?;
    let format = sniff(kernel, &mut file)?;
    let load_err = |source| BootError::LoadKernel {
        path: kernel.to_owned(),
        source,
    };
    let result: KernelLoaderResult = match format {
        KernelFormat::BzImage => {
            BzImage::load(mem, None, &mut file, Some(GuestAddress(HIGH_RAM_START))).map_err(load_err)?
        }
        KernelFormat::Elf => {
            Elf::load(mem, None, &mut file, Some(GuestAddress(HIGH_RAM_START))).map_err(load_err)?
        }
        KernelFormat::Elf32 => {
            // Segments go at or above 1 MiB, where linux-loader puts ELF64 ones too: below lie
            // the boot structures (GDT, hvm_start_info, memory map, command line, ACPI, SMBIOS).
            let (data, image) = read_elf32(kernel, &mut file)?;
            elf32::load(mem, &data, &image, HIGH_RAM_START, low_ram_end(memory_size))
                .map_err(|e| elf32_error(kernel, e))?;
            KernelLoaderResult {
                kernel_load: GuestAddress(image.start()),
                kernel_end: image.end(),
                setup_header: None,
                pvh_boot_cap: PvhBootCapability::PvhEntryPresent(GuestAddress(u64::from(image.entry))),
            }
        }
    };

    if let Some(hdr) = &result.setup_header {
        // With less RAM than the decompressor needs it faults before printing anything.
        let needed =
            bzimage_decompression_end(hdr.pref_address, result.kernel_load.raw_value(), hdr.init_size);
        if needed > low_ram_end(memory_size) {
            return Err(BootError::KernelNeedsMoreMemory {
                path: kernel.to_owned(),
                needed,
                available: low_ram_end(memory_size),
            });
        }
    }

    let cmdline = build_cmdline(command_line)?;
    load_cmdline(mem, GuestAddress(CMDLINE_START), &cmdline)
        .map_err(|e| BootError::CommandLine(e.to_string()))?;
    let cmdline_len = command_line.len() as u32 + 1;

    let initrd_max = match &result.setup_header {
        Some(hdr) if hdr.initrd_addr_max != 0 => hdr.initrd_addr_max as u64,
        Some(_) => DEFAULT_INITRD_ADDR_MAX,
        None => u32::MAX as u64,
    };
    let initrd = match initrd {
        Some(path) => Some(load_initrd(
            mem,
            memory_size,
            path,
            result.kernel_end,
            initrd_max,
        )?),
        None => None,
    };
    let rsdp = if has_acpi { RSDP_START } else { 0 };

    let entry = match format {
        KernelFormat::BzImage => {
            let Some(mut hdr) = result.setup_header else {
                return Err(BootError::NotAKernel {
                    path: kernel.to_owned(),
                });
            };
            hdr.type_of_loader = LOADER_TYPE_UNDEFINED;
            hdr.boot_flag = BOOT_FLAG;
            hdr.header = HDRS_MAGIC;
            hdr.cmd_line_ptr = CMDLINE_START as u32;
            hdr.cmdline_size = cmdline_len;
            hdr.loadflags |= XLF_CAN_USE_HEAP;
            hdr.heap_end_ptr = 0xfe00;
            if let Some((address, size)) = initrd {
                hdr.ramdisk_image = address as u32;
                hdr.ramdisk_size = size as u32;
            }
            let mut params = boot_params {
                hdr,
                ..Default::default()
            };
            params.acpi_rsdp_addr = rsdp;
            let map = e820_map(memory_size);
            for (i, e) in map.iter().enumerate() {
                params.e820_table[i].addr = e.address;
                params.e820_table[i].size = e.size;
                params.e820_table[i].r#type = e.kind;
            }
            params.e820_entries = map.len() as u8;
            LinuxBootConfigurator::write_bootparams::<GuestMemoryMmap>(
                &BootParams::new(&params, GuestAddress(ZERO_PAGE_START)),
                mem,
            )
            .map_err(|e| BootError::CommandLine(format!("cannot write boot_params: {e}")))?;
            // The 64-bit entry point is 0x200 past where the protected-mode kernel was loaded.
            LinuxEntry::Long64 {
                entry: result.kernel_load.raw_value() + 0x200,
                boot_params: ZERO_PAGE_START,
            }
        }
        KernelFormat::Elf | KernelFormat::Elf32 => {
            let PvhBootCapability::PvhEntryPresent(entry) = result.pvh_boot_cap else {
                return Err(BootError::NoPvhNote {
                    path: kernel.to_owned(),
                });
            };
            write_pvh_start_info(mem, memory_size, initrd, rsdp)?;
            LinuxEntry::Pvh {
                entry: entry.raw_value(),
                start_info: PVH_INFO_START,
            }
        }
    };
    Ok(LinuxBoot {
        entry,
        kernel_end: result.kernel_end,
        initrd,
    })
}

fn build_cmdline(command_line: &str) -> Result<Cmdline, BootError> {
    if command_line.len() + 1 > CMDLINE_MAX_SIZE {
        return Err(BootError::CommandLineTooLong {
            len: command_line.len(),
            max: CMDLINE_MAX_SIZE - 1,
        });
    }
    let mut cmdline = Cmdline::new(CMDLINE_MAX_SIZE).map_err(|e| BootError::CommandLine(e.to_string()))?;
    if !command_line.is_empty() {
        cmdline
            .insert_str(command_line)
            .map_err(|e| BootError::CommandLine(e.to_string()))?;
    }
    Ok(cmdline)
}

/// Places the initrd as high as the kernel allows, below the MMIO hole, page-aligned.
fn load_initrd(
    mem: &GuestMemoryMmap,
    memory_size: u64,
    path: &Path,
    kernel_end: u64,
    initrd_addr_max: u64,
) -> Result<(u64, u64), BootError> {
    let mut file = File::open(path).map_err(|source| BootError::Read {
        what: "initrd",
        path: path.to_owned(),
        source,
    })?;
    let size = file
        .metadata()
        .map_err(|source| BootError::Read {
            what: "initrd",
            path: path.to_owned(),
            source,
        })?
        .len();
    let top = low_ram_end(memory_size).min(initrd_addr_max.saturating_add(1));
    let too_large = || BootError::InitrdTooLarge {
        path: path.to_owned(),
        size,
        limit: top,
    };
    let address = top.checked_sub(size).ok_or_else(too_large)? & !0xfff;
    if address < kernel_end {
        return Err(too_large());
    }
    let mut slice_addr = GuestAddress(address);
    let mut remaining = size as usize;
    while remaining > 0 {
        let slice = mem
            .get_slice(slice_addr, remaining.min(16 << 20))
            .map_err(BootError::GuestMemory)?;
        let n = file
            .read_volatile(&mut slice.clone())
            .map_err(|e| BootError::Read {
                what: "initrd",
                path: path.to_owned(),
                source: std::io::Error::other(e.to_string()),
            })?;
        if n == 0 {
            return Err(BootError::Read {
                what: "initrd",
                path: path.to_owned(),
                source: std::io::Error::from(std::io::ErrorKind::UnexpectedEof),
            });
        }
        remaining -= n;
        slice_addr = slice_addr.unchecked_add(n as u64);
    }
    Ok((address, size))
}

fn write_pvh_start_info(
    mem: &GuestMemoryMmap,
    memory_size: u64,
    initrd: Option<(u64, u64)>,
    rsdp: u64,
) -> Result<(), BootError> {
    let map = e820_map(memory_size);
    let mut info = hvm_start_info {
        magic: PVH_MAGIC,
        version: 1,
        cmdline_paddr: CMDLINE_START,
        rsdp_paddr: rsdp,
        memmap_paddr: PVH_MEMMAP_START,
        memmap_entries: map.len() as u32,
        ..Default::default()
    };
    if let Some((paddr, size)) = initrd {
        info.nr_modules = 1;
        info.modlist_paddr = PVH_MODLIST_START;
        let module = hvm_modlist_entry {
            paddr,
            size,
            ..Default::default()
        };
        mem.write_obj(module, GuestAddress(PVH_MODLIST_START))
            .map_err(BootError::GuestMemory)?;
    }
    for (i, e) in map.iter().enumerate() {
        let entry = hvm_memmap_table_entry {
            addr: e.address,
            size: e.size,
            type_: e.kind,
            reserved: 0,
        };
        let at = PVH_MEMMAP_START + (i * std::mem::size_of::<hvm_memmap_table_entry>()) as u64;
        mem.write_obj(entry, GuestAddress(at))
            .map_err(BootError::GuestMemory)?;
    }
    mem.write_obj(info, GuestAddress(PVH_INFO_START))
        .map_err(BootError::GuestMemory)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_line_at_the_limit_is_refused_with_its_length() {
        let long = "a".repeat(CMDLINE_MAX_SIZE);
        match build_cmdline(&long) {
            Err(BootError::CommandLineTooLong { len, .. }) => assert_eq!(len, CMDLINE_MAX_SIZE),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn a_broken_32_bit_elf_is_refused_with_the_reason() {
        let path = std::env::temp_dir().join(format!("virtkit-elf32-{}", std::process::id()));
        let mut bytes = vec![0u8; 64];
        bytes[..5].copy_from_slice(b"\x7fELF\x01");
        std::fs::write(&path, bytes).unwrap();
        let err = check_kernel(&path).unwrap_err();
        std::fs::remove_file(&path).ok();
        assert!(
            matches!(
                err,
                BootError::BadElf32 {
                    source: Elf32Error::NotLittleEndian(0),
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn a_text_file_is_not_a_kernel() {
        let dir = std::env::temp_dir().join(format!("virtkit-notkernel-{}", std::process::id()));
        std::fs::write(&dir, b"hello, I am not a kernel").unwrap();
        let err = check_kernel(&dir).unwrap_err();
        std::fs::remove_file(&dir).ok();
        assert!(matches!(err, BootError::NotAKernel { .. }), "{err}");
    }

    #[test]
    fn initrd_goes_high_and_page_aligned_below_the_hole() {
        let mem = crate::memory::create_guest_memory(&crate::memory::ram_ranges(64 << 20), &[]).unwrap();
        let path = std::env::temp_dir().join(format!("virtkit-initrd-{}", std::process::id()));
        std::fs::write(&path, vec![0x5a; 10_000]).unwrap();
        let (addr, size) = load_initrd(&mem, 64 << 20, &path, 0x20_0000, DEFAULT_INITRD_ADDR_MAX).unwrap();
        std::fs::remove_file(&path).ok();
        assert_eq!(size, 10_000);
        assert_eq!(addr & 0xfff, 0);
        assert!(addr + size <= 64 << 20 && addr + size > (64 << 20) - 0x2000);
        assert_eq!(mem.read_obj::<u8>(GuestAddress(addr + 9_999)).unwrap(), 0x5a);
    }

    #[test]
    fn initrd_larger_than_memory_is_refused() {
        let mem = crate::memory::create_guest_memory(&crate::memory::ram_ranges(2 << 20), &[]).unwrap();
        let path = std::env::temp_dir().join(format!("virtkit-biginitrd-{}", std::process::id()));
        std::fs::write(&path, vec![0; 3 << 20]).unwrap();
        let err = load_initrd(&mem, 2 << 20, &path, 0x10_0000, DEFAULT_INITRD_ADDR_MAX).unwrap_err();
        std::fs::remove_file(&path).ok();
        assert!(matches!(err, BootError::InitrdTooLarge { .. }), "{err}");
    }
}
