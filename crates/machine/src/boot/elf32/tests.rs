//! The ELF32 reader on images built in memory, good and hostile.

use super::*;
use crate::memory::{create_guest_memory, ram_ranges};

const MIB: u32 = 1 << 20;

/// One program header and the bytes it points at.
struct Ph {
    p_type: u32,
    paddr: u32,
    contents: Vec<u8>,
    memsz: u32,
}

impl Ph {
    fn load(paddr: u32, contents: Vec<u8>, memsz: u32) -> Ph {
        Ph {
            p_type: PT_LOAD,
            paddr,
            contents,
            memsz,
        }
    }

    fn note(contents: Vec<u8>) -> Ph {
        let memsz = contents.len() as u32;
        Ph {
            p_type: PT_NOTE,
            paddr: 0,
            contents,
            memsz,
        }
    }
}

fn put_u16(b: &mut [u8], at: usize, v: u16) {
    b[at..at + 2].copy_from_slice(&v.to_le_bytes());
}

fn put_u32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

/// An ELF32 `ET_EXEC` `EM_386` image: header, program headers, then each segment's contents
/// in order (so the file ends with the last segment's bytes).
fn image(phdrs: &[Ph], entry: u32) -> Vec<u8> {
    let phoff = EHDR_SIZE as usize;
    let mut b = vec![0u8; phoff + phdrs.len() * PHDR_SIZE as usize];
    b[..4].copy_from_slice(ELF_MAGIC);
    b[4] = ELFCLASS32;
    b[5] = ELFDATA2LSB;
    b[6] = 1;
    put_u16(&mut b, 16, ET_EXEC);
    put_u16(&mut b, 18, EM_386);
    put_u32(&mut b, 20, 1);
    put_u32(&mut b, 24, entry);
    put_u32(&mut b, 28, phoff as u32);
    put_u16(&mut b, 40, EHDR_SIZE as u16);
    put_u16(&mut b, 42, PHDR_SIZE);
    put_u16(&mut b, 44, phdrs.len() as u16);
    for (i, ph) in phdrs.iter().enumerate() {
        b.resize(b.len().next_multiple_of(4), 0);
        let offset = b.len() as u32;
        b.extend_from_slice(&ph.contents);
        let at = phoff + i * PHDR_SIZE as usize;
        put_u32(&mut b, at, ph.p_type);
        put_u32(&mut b, at + 4, offset);
        put_u32(&mut b, at + 8, ph.paddr);
        put_u32(&mut b, at + 12, ph.paddr);
        put_u32(&mut b, at + 16, ph.contents.len() as u32);
        put_u32(&mut b, at + 20, ph.memsz);
        put_u32(&mut b, at + 24, if ph.p_type == PT_LOAD { 7 } else { 4 });
        put_u32(&mut b, at + 28, 4);
    }
    b
}

/// One note: name (with its NUL), type and value, each padded to 4 bytes.
fn note(name: &[u8], kind: u32, desc: &[u8]) -> Vec<u8> {
    let mut n = Vec::new();
    n.extend_from_slice(&(name.len() as u32).to_le_bytes());
    n.extend_from_slice(&(desc.len() as u32).to_le_bytes());
    n.extend_from_slice(&kind.to_le_bytes());
    n.extend_from_slice(name);
    n.resize(n.len().next_multiple_of(4), 0);
    n.extend_from_slice(desc);
    n.resize(n.len().next_multiple_of(4), 0);
    n
}

fn pvh_note(entry: u32) -> Vec<u8> {
    note(b"Xen\0", XEN_ELFNOTE_PHYS32_ENTRY, &entry.to_le_bytes())
}

fn code() -> Vec<u8> {
    (0..200u32).map(|i| (i as u8) | 1).collect()
}

/// A good kernel: code at 1 MiB with a bss, data at 1 MiB + 64 KiB, a GNU note before the Xen
/// one, entry at 1 MiB + 16.
fn good() -> Vec<u8> {
    let mut notes = note(b"GNU\0", 3, b"abcdefgh");
    notes.extend(pvh_note(MIB + 16));
    image(
        &[
            Ph::load(MIB, code(), 0x3000),
            Ph::load(MIB + 0x10000, vec![0xd5; 10], 10),
            Ph::note(notes),
        ],
        MIB + 16,
    )
}

fn memory(size: u64) -> GuestMemoryMmap {
    create_guest_memory(&ram_ranges(size), &[]).unwrap()
}

#[test]
fn a_good_image_parses_and_loads_with_its_bss_zeroed() {
    let data = good();
    let kernel = parse(&data).unwrap();
    assert_eq!(kernel.entry, MIB + 16);
    assert_eq!(kernel.segments.len(), 2);
    assert_eq!(kernel.segments[0].paddr, MIB);
    assert_eq!(kernel.segments[0].filesz, 200);
    assert_eq!(kernel.segments[0].memsz, 0x3000);
    assert_eq!(kernel.segments[1].index, 1);
    assert_eq!(kernel.start(), u64::from(MIB));
    assert_eq!(kernel.end(), u64::from(MIB) + 0x10000 + 10);

    let mem = memory(64 << 20);
    // Dirty the bss first: the loader must zero it, not rely on fresh memory.
    mem.write_slice(&[0xee; 0x3000], GuestAddress(u64::from(MIB)))
        .unwrap();
    load(&mem, &data, &kernel, u64::from(MIB), 64 << 20).unwrap();
    let mut back = vec![0u8; 0x3000];
    mem.read_slice(&mut back, GuestAddress(u64::from(MIB))).unwrap();
    assert_eq!(&back[..200], &code()[..]);
    assert!(back[200..].iter().all(|b| *b == 0), "bss zero-filled");
    let mut data_seg = [0u8; 10];
    mem.read_slice(&mut data_seg, GuestAddress(u64::from(MIB) + 0x10000))
        .unwrap();
    assert_eq!(data_seg, [0xd5; 10]);
}

#[test]
fn an_x32_machine_and_an_8_byte_entry_note_are_accepted() {
    let notes = note(b"Xen\0", XEN_ELFNOTE_PHYS32_ENTRY, &u64::from(MIB).to_le_bytes());
    let mut data = image(&[Ph::load(MIB, code(), 200), Ph::note(notes)], MIB);
    put_u16(&mut data, 18, EM_X86_64);
    assert_eq!(parse(&data).unwrap().entry, MIB);
}

#[test]
fn every_truncation_of_a_good_image_is_an_error_not_a_panic() {
    let data = good();
    for len in 0..data.len() {
        let err = parse(&data[..len]).expect_err("truncated image parsed");
        assert!(
            matches!(
                err,
                Elf32Error::Truncated { .. } | Elf32Error::SegmentBeyondFile { .. }
            ),
            "{len}: {err}"
        );
    }
}

#[test]
fn a_short_header_names_what_is_missing() {
    let err = parse(&good()[..40]).unwrap_err();
    assert!(err.to_string().contains("ELF header"), "{err}");
    assert!(matches!(parse(b""), Err(Elf32Error::Truncated { .. })));
}

#[test]
fn program_header_offset_and_count_past_the_file_or_u32_are_refused() {
    for (phoff, phentsize, phnum) in [
        (0xffff_fff0u32, PHDR_SIZE, 1u16),
        (0xffff_ffff, 0xffff, 0xffff),
        (52, 0xffff, 0xffff),
        (52, PHDR_SIZE, 0xffff),
        (0x8000_0000, 0x8000, 0x8000),
    ] {
        let mut data = good();
        put_u32(&mut data, 28, phoff);
        put_u16(&mut data, 42, phentsize);
        put_u16(&mut data, 44, phnum);
        let err = parse(&data).unwrap_err();
        assert!(
            matches!(
                err,
                Elf32Error::Truncated {
                    what: "program header table",
                    ..
                }
            ),
            "{phoff:#x} {phentsize} {phnum}: {err}"
        );
    }
}

#[test]
fn a_program_header_entry_size_below_32_or_no_headers_are_refused() {
    let mut data = good();
    put_u16(&mut data, 42, 31);
    assert!(matches!(parse(&data), Err(Elf32Error::PhEntSize(31))));
    let mut data = good();
    put_u16(&mut data, 44, 0);
    assert!(matches!(parse(&data), Err(Elf32Error::NoLoadSegments)));
}

#[test]
fn a_segment_beyond_the_file_is_refused() {
    // p_offset near 4 GiB, and p_offset + p_filesz wrapping u32.
    for (offset, filesz) in [(0xffff_ff00u32, 0x200u32), (100, 0xffff_fff0), (0, 0x10_0000)] {
        let mut data = good();
        put_u32(&mut data, 52 + 4, offset);
        put_u32(&mut data, 52 + 16, filesz);
        put_u32(&mut data, 52 + 20, u32::MAX);
        let err = parse(&data).unwrap_err();
        assert!(
            matches!(err, Elf32Error::SegmentBeyondFile { index: 0, .. }),
            "{err}"
        );
    }
    // The same for the note segment.
    let mut data = good();
    put_u32(&mut data, 52 + 2 * 32 + 16, 0x1000);
    assert!(matches!(
        parse(&data),
        Err(Elf32Error::SegmentBeyondFile { index: 2, .. })
    ));
}

#[test]
fn file_size_over_memory_size_is_refused() {
    let data = image(&[Ph::load(MIB, code(), 100), Ph::note(pvh_note(MIB))], MIB);
    assert!(matches!(
        parse(&data),
        Err(Elf32Error::FileSizeOverMemSize {
            index: 0,
            filesz: 200,
            memsz: 100
        })
    ));
}

#[test]
fn a_segment_past_4_gib_is_refused() {
    let data = image(
        &[
            Ph::load(0xffff_f000, code(), 0x2000),
            Ph::note(pvh_note(0xffff_f000)),
        ],
        0,
    );
    assert!(matches!(
        parse(&data),
        Err(Elf32Error::SegmentBeyond4GiB { index: 0, .. })
    ));
    // Ending exactly at 4 GiB is representable (and then refused by load as outside RAM).
    let data = image(
        &[
            Ph::load(0xffff_f000, code(), 0x1000),
            Ph::note(pvh_note(0xffff_f000)),
        ],
        0,
    );
    let kernel = parse(&data).unwrap();
    assert_eq!(kernel.end(), 1 << 32);
    let err = load(&memory(64 << 20), &data, &kernel, u64::from(MIB), 64 << 20).unwrap_err();
    assert!(matches!(err, Elf32Error::SegmentOutsideRam { .. }), "{err}");
}

#[test]
fn segments_beyond_ram_or_over_the_boot_structures_are_refused() {
    let mem = memory(64 << 20);
    let cases = [
        (60 * MIB, 8 * MIB),    // runs past the end of RAM
        (80 * MIB, 0x1000),     // entirely past it
        (0x6000, 0x1000),       // hvm_start_info
        (0xe0000, 0x1000),      // ACPI tables
        (MIB - 0x1000, 0x2000), // straddles 1 MiB
    ];
    for (paddr, memsz) in cases {
        let data = image(
            &[Ph::load(paddr, code(), memsz), Ph::note(pvh_note(paddr))],
            paddr,
        );
        let kernel = parse(&data).unwrap();
        let err = load(&mem, &data, &kernel, u64::from(MIB), 64 << 20).unwrap_err();
        assert!(
            matches!(
                err,
                Elf32Error::SegmentOutsideRam {
                    index: 0,
                    ram_start: 0x10_0000,
                    ..
                }
            ),
            "{paddr:#x}: {err}"
        );
        assert!(err.to_string().contains("not inside guest RAM"), "{err}");
    }
    // Nothing was written for a refused kernel.
    let mut start_info = [0u8; 16];
    mem.read_slice(&mut start_info, GuestAddress(0x6000)).unwrap();
    assert_eq!(start_info, [0; 16]);
}

#[test]
fn notes_with_bad_sizes_are_refused() {
    let mut huge_name = pvh_note(MIB);
    put_u32(&mut huge_name, 0, u32::MAX);
    let mut huge_desc = pvh_note(MIB);
    put_u32(&mut huge_desc, 4, 0xffff_fffd);
    let mut desc_past_end = pvh_note(MIB);
    put_u32(&mut desc_past_end, 4, 8);
    for notes in [huge_name, huge_desc, desc_past_end] {
        let data = image(&[Ph::load(MIB, code(), 200), Ph::note(notes)], MIB);
        let err = parse(&data).unwrap_err();
        assert!(matches!(err, Elf32Error::BadNote { index: 1, .. }), "{err}");
    }
    // The Xen note with a value that is not a 32-bit address.
    for desc in [&[1u8, 2][..], &[0, 0, 0x10, 0, 1, 0, 0, 0][..], &[0; 12][..]] {
        let data = image(
            &[
                Ph::load(MIB, code(), 200),
                Ph::note(note(b"Xen\0", XEN_ELFNOTE_PHYS32_ENTRY, desc)),
            ],
            MIB,
        );
        let err = parse(&data).unwrap_err();
        assert!(matches!(err, Elf32Error::BadPvhEntry { .. }), "{desc:?}: {err}");
    }
}

#[test]
fn no_pvh_note_is_an_error() {
    // No PT_NOTE at all; other notes only; the right type under another name; Xen's other notes.
    let cases = [
        image(&[Ph::load(MIB, code(), 200)], MIB),
        image(
            &[Ph::load(MIB, code(), 200), Ph::note(note(b"GNU\0", 3, b"abcd"))],
            MIB,
        ),
        image(
            &[
                Ph::load(MIB, code(), 200),
                Ph::note(note(b"Xe\0", XEN_ELFNOTE_PHYS32_ENTRY, &MIB.to_le_bytes())),
            ],
            MIB,
        ),
        image(
            &[
                Ph::load(MIB, code(), 200),
                Ph::note(note(b"Xen\0", 1, &MIB.to_le_bytes())),
            ],
            MIB,
        ),
    ];
    for data in cases {
        let err = parse(&data).unwrap_err();
        assert!(matches!(err, Elf32Error::NoPvhNote), "{err}");
        assert!(err.to_string().contains("PHYS32_ENTRY"), "{err}");
    }
}

#[test]
fn an_entry_outside_the_loaded_segments_is_refused() {
    let data = image(&[Ph::load(MIB, code(), 200), Ph::note(pvh_note(2 * MIB))], MIB);
    assert!(matches!(
        parse(&data),
        Err(Elf32Error::EntryOutsideSegments { entry }) if entry == 2 * MIB
    ));
}

#[test]
fn headers_that_are_not_a_little_endian_x86_executable_are_refused() {
    let mut data = good();
    data[4] = 2;
    assert!(matches!(parse(&data), Err(Elf32Error::NotElf32)));
    let mut data = good();
    data[0] = b'E';
    assert!(matches!(parse(&data), Err(Elf32Error::NotElf32)));
    let mut data = good();
    data[5] = 2;
    assert!(matches!(parse(&data), Err(Elf32Error::NotLittleEndian(2))));
    let mut data = good();
    put_u16(&mut data, 18, 40); // EM_ARM
    assert!(matches!(parse(&data), Err(Elf32Error::Machine(40))));
    let mut data = good();
    put_u16(&mut data, 16, 1); // ET_REL
    assert!(matches!(parse(&data), Err(Elf32Error::Type(1))));
}

#[test]
fn random_corruptions_never_panic() {
    let base = good();
    let mem = memory(16 << 20);
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for _ in 0..20_000 {
        let mut data = base.clone();
        for _ in 0..1 + next() % 4 {
            let at = (next() % data.len() as u64) as usize;
            match next() % 3 {
                0 => data[at] = next() as u8,
                1 => data[at] ^= 0x80,
                _ => {
                    let at = at & !3;
                    if at + 4 <= data.len() {
                        data[at..at + 4].copy_from_slice(&(next() as u32).to_le_bytes());
                    }
                }
            }
        }
        if next() % 8 == 0 {
            data.truncate((next() % data.len() as u64) as usize);
        }
        if let Ok(kernel) = parse(&data) {
            let _ = load(&mem, &data, &kernel, u64::from(MIB), 16 << 20);
        }
    }
}
