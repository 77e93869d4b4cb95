//! A small, defensive reader for 32-bit ELF kernels (ELFCLASS32) with a Xen PVH entry note, the
//! format QEMU and Xen boot with `-kernel` and linux-loader does not read (it takes ELF64 only).
//!
//! [`parse`] reads the ELF header, the program headers and the `PT_NOTE` segments from the bytes
//! of the file, checking every offset and size against the file (no panic and no arithmetic
//! overflow on any input); [`load`] copies the `PT_LOAD` segments to their physical addresses
//! (`p_paddr`) in guest memory, zero-filling `p_memsz` beyond `p_filesz`, after checking that
//! each lies inside the RAM range it is given. The entry point is the 32-bit value of the
//! `XEN_ELFNOTE_PHYS32_ENTRY` note (name "Xen", type 18), entered like the ELF64 PVH path: 32-bit
//! flat protected mode, EBX = `hvm_start_info`.

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

/// The largest ELF32 kernel file we read into memory. Everything an ELF32 file describes is
/// addressed with 32 bits and a guest's RAM below the MMIO hole is at most 3 GiB; real 32-bit
/// PVH kernels are a few MiB.
pub const ELF32_MAX_FILE_SIZE: u64 = 1 << 30;

const ELF_MAGIC: &[u8; 4] = b"\x7fELF";
const ELFCLASS32: u8 = 1;
const ELFDATA2LSB: u8 = 1;
const ET_EXEC: u16 = 2;
const ET_DYN: u16 = 3;
const EM_386: u16 = 3;
const EM_X86_64: u16 = 62;
const EHDR_SIZE: u64 = 52;
const PHDR_SIZE: u16 = 32;
const PT_LOAD: u32 = 1;
const PT_NOTE: u32 = 4;
const NOTE_HEADER_SIZE: u64 = 12;
/// `XEN_ELFNOTE_PHYS32_ENTRY`: the 32-bit physical address of the PVH entry point.
pub const XEN_ELFNOTE_PHYS32_ENTRY: u32 = 18;

/// A `PT_LOAD` segment, as its program header gives it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    /// The program header's index (for error messages).
    pub index: u16,
    pub offset: u32,
    pub paddr: u32,
    pub filesz: u32,
    pub memsz: u32,
}

impl Segment {
    /// The first guest-physical address after the segment (may be 4 GiB).
    pub fn end(&self) -> u64 {
        u64::from(self.paddr) + u64::from(self.memsz)
    }
}

/// What [`parse`] found in an ELF32 PVH kernel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Elf32Kernel {
    /// The PVH entry point (`XEN_ELFNOTE_PHYS32_ENTRY`).
    pub entry: u32,
    /// The non-empty `PT_LOAD` segments, in program header order.
    pub segments: Vec<Segment>,
}

impl Elf32Kernel {
    /// The lowest guest-physical address the kernel occupies.
    pub fn start(&self) -> u64 {
        self.segments
            .iter()
            .map(|s| u64::from(s.paddr))
            .min()
            .unwrap_or(0)
    }

    /// The first guest-physical address after everything the kernel occupies.
    pub fn end(&self) -> u64 {
        self.segments.iter().map(Segment::end).max().unwrap_or(0)
    }
}

/// Why an ELF32 kernel cannot be booted.
#[derive(Debug, thiserror::Error)]
pub enum Elf32Error {
    #[error("the file is {len} bytes, too short for its {what} (bytes {start:#x}..{end:#x})")]
    Truncated {
        what: &'static str,
        start: u64,
        end: u64,
        len: u64,
    },
    #[error("the file is larger than {max} bytes, more than any 32-bit kernel")]
    TooLarge { max: u64 },
    #[error("not a 32-bit ELF file (no ELF magic, or EI_CLASS is not ELFCLASS32)")]
    NotElf32,
    #[error("EI_DATA is {0}, not little-endian (1)")]
    NotLittleEndian(u8),
    #[error("e_machine is {0}, not x86 (EM_386 = 3, or EM_X86_64 = 62)")]
    Machine(u16),
    #[error("e_type is {0}, not an executable (ET_EXEC = 2 or ET_DYN = 3)")]
    Type(u16),
    #[error("e_phentsize is {0}, smaller than an ELF32 program header (32 bytes)")]
    PhEntSize(u16),
    #[error("program header {index}: the segment's file bytes {offset:#x}+{filesz:#x} lie beyond the end of the file ({len} bytes)")]
    SegmentBeyondFile {
        index: u16,
        offset: u32,
        filesz: u32,
        len: u64,
    },
    #[error("program header {index}: p_filesz {filesz:#x} is larger than p_memsz {memsz:#x}")]
    FileSizeOverMemSize { index: u16, filesz: u32, memsz: u32 },
    #[error("program header {index}: the segment at {paddr:#x} with {memsz:#x} bytes runs past 4 GiB")]
    SegmentBeyond4GiB { index: u16, paddr: u32, memsz: u32 },
    #[error("no PT_LOAD segment with contents")]
    NoLoadSegments,
    #[error("program header {index}: the note at file offset {offset:#x} has sizes (namesz {namesz}, descsz {descsz}) that run past its PT_NOTE segment")]
    BadNote {
        index: u16,
        offset: u64,
        namesz: u32,
        descsz: u32,
    },
    #[error("the Xen PHYS32_ENTRY note's value is {descsz} bytes; it must be a 32-bit address (4 bytes, or 8 with the high half zero)")]
    BadPvhEntry { descsz: u32 },
    #[error("no Xen PHYS32_ENTRY note (PT_NOTE, name \"Xen\", type 18) giving the PVH entry point")]
    NoPvhNote,
    #[error("the PVH entry point {entry:#x} is outside every PT_LOAD segment")]
    EntryOutsideSegments { entry: u32 },
    #[error("program header {index}: the segment at {start:#x}..{end:#x} is not inside guest RAM {ram_start:#x}..{ram_end:#x} (below 1 MiB lie the boot structures: GDT, hvm_start_info, memory map, command line, ACPI and SMBIOS tables)")]
    SegmentOutsideRam {
        index: u16,
        start: u64,
        end: u64,
        ram_start: u64,
        ram_end: u64,
    },
    #[error("writing the kernel into guest memory failed")]
    GuestMemory(#[source] vm_memory::GuestMemoryError),
}

/// `len` bytes of `data` from `start`, or [`Elf32Error::Truncated`] naming `what`.
fn bytes<'a>(data: &'a [u8], start: u64, len: u64, what: &'static str) -> Result<&'a [u8], Elf32Error> {
    let end = start.saturating_add(len);
    let truncated = || Elf32Error::Truncated {
        what,
        start,
        end,
        len: data.len() as u64,
    };
    let start_i = usize::try_from(start).map_err(|_| truncated())?;
    let end_i = usize::try_from(end).map_err(|_| truncated())?;
    data.get(start_i..end_i).ok_or_else(truncated)
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    match b.get(at..at + 2) {
        Some(s) => u16::from_le_bytes([s[0], s[1]]),
        None => 0,
    }
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    match b.get(at..at + 4) {
        Some(s) => u32::from_le_bytes([s[0], s[1], s[2], s[3]]),
        None => 0,
    }
}

fn align4(n: u64) -> u64 {
    n.saturating_add(3) & !3
}

/// Whether `data` starts like an ELF32 file (magic and `EI_CLASS`).
pub fn is_elf32(data: &[u8]) -> bool {
    data.len() > 4 && data[..4] == *ELF_MAGIC && data[4] == ELFCLASS32
}

/// Parses an ELF32 PVH kernel: header, `PT_LOAD` segments and the PVH entry note.
pub fn parse(data: &[u8]) -> Result<Elf32Kernel, Elf32Error> {
    if data.len() as u64 > ELF32_MAX_FILE_SIZE {
        return Err(Elf32Error::TooLarge {
            max: ELF32_MAX_FILE_SIZE,
        });
    }
    if data.len() >= 5 && !is_elf32(data) {
        return Err(Elf32Error::NotElf32);
    }
    let ehdr = bytes(data, 0, EHDR_SIZE, "ELF header")?;
    if !is_elf32(ehdr) {
        return Err(Elf32Error::NotElf32);
    }
    if ehdr[5] != ELFDATA2LSB {
        return Err(Elf32Error::NotLittleEndian(ehdr[5]));
    }
    let e_type = u16_at(ehdr, 16);
    if e_type != ET_EXEC && e_type != ET_DYN {
        return Err(Elf32Error::Type(e_type));
    }
    let machine = u16_at(ehdr, 18);
    if machine != EM_386 && machine != EM_X86_64 {
        return Err(Elf32Error::Machine(machine));
    }
    let phoff = u64::from(u32_at(ehdr, 28));
    let phentsize = u16_at(ehdr, 42);
    let phnum = u16_at(ehdr, 44);
    if phnum == 0 {
        return Err(Elf32Error::NoLoadSegments);
    }
    if phentsize < PHDR_SIZE {
        return Err(Elf32Error::PhEntSize(phentsize));
    }
    // At most 0xffff * 0xffff bytes: no overflow in u64.
    let table_len = u64::from(phentsize) * u64::from(phnum);
    let table = bytes(data, phoff, table_len, "program header table")?;

    let mut segments = Vec::new();
    let mut entry = None;
    for index in 0..phnum {
        let at = usize::from(index) * usize::from(phentsize);
        let ph = table
            .get(at..at + usize::from(PHDR_SIZE))
            .ok_or(Elf32Error::Truncated {
                what: "program header table",
                start: phoff,
                end: phoff.saturating_add(table_len),
                len: data.len() as u64,
            })?;
        let p_type = u32_at(ph, 0);
        let offset = u32_at(ph, 4);
        let paddr = u32_at(ph, 12);
        let filesz = u32_at(ph, 16);
        let memsz = u32_at(ph, 20);
        if p_type != PT_LOAD && p_type != PT_NOTE {
            continue;
        }
        let file_bytes = data
            .get(offset as usize..)
            .and_then(|rest| rest.get(..filesz as usize))
            .ok_or(Elf32Error::SegmentBeyondFile {
                index,
                offset,
                filesz,
                len: data.len() as u64,
            })?;
        if p_type == PT_NOTE {
            if entry.is_none() {
                entry = find_pvh_entry(file_bytes, index, u64::from(offset))?;
            }
            continue;
        }
        if filesz > memsz {
            return Err(Elf32Error::FileSizeOverMemSize { index, filesz, memsz });
        }
        if memsz == 0 {
            continue;
        }
        if paddr.checked_add(memsz - 1).is_none() {
            return Err(Elf32Error::SegmentBeyond4GiB { index, paddr, memsz });
        }
        segments.push(Segment {
            index,
            offset,
            paddr,
            filesz,
            memsz,
        });
    }
    if segments.is_empty() {
        return Err(Elf32Error::NoLoadSegments);
    }
    let entry = entry.ok_or(Elf32Error::NoPvhNote)?;
    if !segments
        .iter()
        .any(|s| u64::from(s.paddr) <= u64::from(entry) && u64::from(entry) < s.end())
    {
        return Err(Elf32Error::EntryOutsideSegments { entry });
    }
    Ok(Elf32Kernel { entry, segments })
}

/// Walks the notes of one `PT_NOTE` segment (`notes`, at file offset `base`) for the Xen
/// PHYS32_ENTRY note. Trailing bytes too few for a note header are ignored.
fn find_pvh_entry(notes: &[u8], index: u16, base: u64) -> Result<Option<u32>, Elf32Error> {
    let len = notes.len() as u64;
    let mut pos: u64 = 0;
    while pos.saturating_add(NOTE_HEADER_SIZE) <= len {
        let header = bytes(notes, pos, NOTE_HEADER_SIZE, "note header")?;
        let namesz = u32_at(header, 0);
        let descsz = u32_at(header, 4);
        let kind = u32_at(header, 8);
        let bad = || Elf32Error::BadNote {
            index,
            offset: base.saturating_add(pos),
            namesz,
            descsz,
        };
        // u32 sizes in u64 arithmetic: none of these sums can overflow.
        let name_start = pos + NOTE_HEADER_SIZE;
        let desc_start = name_start + align4(u64::from(namesz));
        let desc_end = desc_start + u64::from(descsz);
        if desc_start > len || desc_end > len {
            return Err(bad());
        }
        let name = bytes(notes, name_start, u64::from(namesz), "note name").map_err(|_| bad())?;
        let desc = bytes(notes, desc_start, u64::from(descsz), "note value").map_err(|_| bad())?;
        if kind == XEN_ELFNOTE_PHYS32_ENTRY && (name == b"Xen\0" || name == b"Xen") {
            let entry = match desc.len() {
                4 => Some(u32_at(desc, 0)),
                8 => u32::try_from(u64::from(u32_at(desc, 0)) | (u64::from(u32_at(desc, 4)) << 32)).ok(),
                _ => None,
            };
            return entry.map(Some).ok_or(Elf32Error::BadPvhEntry { descsz });
        }
        // The last note's padding may be missing: stop at the end of the segment.
        pos = (desc_start + align4(u64::from(descsz))).min(len);
    }
    Ok(None)
}

/// Checks that every segment of `kernel` lies inside `ram_start..ram_end`, then copies the
/// segments from `data` (the file `kernel` was parsed from) to their physical addresses and
/// zero-fills each beyond its file bytes. Every write is checked by vm-memory.
pub fn load(
    mem: &GuestMemoryMmap,
    data: &[u8],
    kernel: &Elf32Kernel,
    ram_start: u64,
    ram_end: u64,
) -> Result<(), Elf32Error> {
    for s in &kernel.segments {
        let (start, end) = (u64::from(s.paddr), s.end());
        if start < ram_start || end > ram_end {
            return Err(Elf32Error::SegmentOutsideRam {
                index: s.index,
                start,
                end,
                ram_start,
                ram_end,
            });
        }
    }
    let zeros = vec![0u8; 64 << 10];
    for s in &kernel.segments {
        let file_bytes = data
            .get(s.offset as usize..)
            .and_then(|rest| rest.get(..s.filesz as usize))
            .ok_or(Elf32Error::SegmentBeyondFile {
                index: s.index,
                offset: s.offset,
                filesz: s.filesz,
                len: data.len() as u64,
            })?;
        mem.write_slice(file_bytes, GuestAddress(u64::from(s.paddr)))
            .map_err(Elf32Error::GuestMemory)?;
        let mut at = u64::from(s.paddr) + u64::from(s.filesz);
        while at < s.end() {
            let n = (s.end() - at).min(zeros.len() as u64);
            mem.write_slice(&zeros[..n as usize], GuestAddress(at))
                .map_err(Elf32Error::GuestMemory)?;
            at += n;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
