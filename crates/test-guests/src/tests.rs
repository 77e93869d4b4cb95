//! Checks that every built artifact is well-formed, by reading its bytes (no ELF library).

use super::*;

const PT_LOAD: u32 = 1;
const PT_NOTE: u32 = 4;
const PF_X: u32 = 1;
const EM_386: u16 = 3;
const EM_X86_64: u16 = 62;
const XEN_ELFNOTE_PHYS32_ENTRY: u32 = 18;

fn u16_at(b: &[u8], off: usize) -> u16 {
    u16::from_le_bytes(b[off..off + 2].try_into().unwrap())
}

fn u32_at(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes(b[off..off + 4].try_into().unwrap())
}

fn u64_at(b: &[u8], off: usize) -> u64 {
    u64::from_le_bytes(b[off..off + 8].try_into().unwrap())
}

#[derive(Debug)]
struct Phdr {
    p_type: u32,
    flags: u32,
    offset: u64,
    paddr: u64,
    filesz: u64,
    memsz: u64,
}

struct Elf {
    class64: bool,
    machine: u16,
    entry: u64,
    phdrs: Vec<Phdr>,
}

fn parse_elf(b: &[u8]) -> Elf {
    assert!(b.len() >= 52, "too short for an ELF header");
    assert_eq!(&b[..4], b"\x7fELF", "ELF magic");
    let class64 = match b[4] {
        1 => false,
        2 => true,
        c => panic!("bad EI_CLASS {c}"),
    };
    assert_eq!(b[5], 1, "little-endian");
    assert_eq!(u16_at(b, 16), 2, "e_type ET_EXEC");
    let machine = u16_at(b, 18);
    let (entry, phoff, phentsize, phnum) = if class64 {
        (
            u64_at(b, 24),
            u64_at(b, 32) as usize,
            u16_at(b, 54) as usize,
            u16_at(b, 56) as usize,
        )
    } else {
        (
            u64::from(u32_at(b, 24)),
            u32_at(b, 28) as usize,
            u16_at(b, 42) as usize,
            u16_at(b, 44) as usize,
        )
    };
    assert_eq!(phentsize, if class64 { 56 } else { 32 }, "e_phentsize");
    assert!(phoff + phnum * phentsize <= b.len(), "program headers in file");
    let phdrs = (0..phnum)
        .map(|i| {
            let p = &b[phoff + i * phentsize..][..phentsize];
            if class64 {
                Phdr {
                    p_type: u32_at(p, 0),
                    flags: u32_at(p, 4),
                    offset: u64_at(p, 8),
                    paddr: u64_at(p, 24),
                    filesz: u64_at(p, 32),
                    memsz: u64_at(p, 40),
                }
            } else {
                Phdr {
                    p_type: u32_at(p, 0),
                    offset: u64::from(u32_at(p, 4)),
                    paddr: u64::from(u32_at(p, 12)),
                    filesz: u64::from(u32_at(p, 16)),
                    memsz: u64::from(u32_at(p, 20)),
                    flags: u32_at(p, 24),
                }
            }
        })
        .collect();
    Elf {
        class64,
        machine,
        entry,
        phdrs,
    }
}

/// The (name, type, desc) of every note in the PT_NOTE segments.
fn notes<'a>(b: &'a [u8], elf: &Elf) -> Vec<(&'a [u8], u32, &'a [u8])> {
    let align4 = |n: usize| (n + 3) & !3;
    let mut found = Vec::new();
    for ph in elf.phdrs.iter().filter(|p| p.p_type == PT_NOTE) {
        let start = ph.offset as usize;
        let end = start + ph.filesz as usize;
        assert!(end <= b.len(), "PT_NOTE inside the file");
        let mut off = start;
        while off + 12 <= end {
            let namesz = u32_at(b, off) as usize;
            let descsz = u32_at(b, off + 4) as usize;
            let ntype = u32_at(b, off + 8);
            let name_off = off + 12;
            let desc_off = name_off + align4(namesz);
            let next = desc_off + align4(descsz);
            assert!(next <= end, "note overruns its PT_NOTE segment");
            found.push((
                &b[name_off..name_off + namesz],
                ntype,
                &b[desc_off..desc_off + descsz],
            ));
            off = next;
        }
    }
    found
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

fn pvh_guests() -> impl Iterator<Item = Guest> {
    Guest::ALL
        .into_iter()
        .filter(|g| matches!(g.boot(), Boot::Pvh | Boot::PvhElf32))
}

#[test]
fn all_lists_every_guest_once_with_distinct_artifacts() {
    let mut names: Vec<_> = Guest::ALL.iter().map(|g| g.name()).collect();
    names.sort_unstable();
    names.dedup();
    assert_eq!(names.len(), Guest::ALL.len());
    for guest in Guest::ALL {
        let path = guest.path();
        assert!(path.is_absolute(), "{guest:?}: {}", path.display());
        let on_disk = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert_eq!(on_disk, guest.bytes(), "{guest:?}: path() and bytes() agree");
        let file_name = path.file_name().unwrap().to_str().unwrap();
        assert!(file_name.starts_with(guest.name()), "{file_name}");
    }
}

#[test]
fn pvh_guests_have_a_phys32_entry_note_inside_an_executable_load_segment() {
    for guest in pvh_guests() {
        let b = guest.bytes();
        let elf = parse_elf(b);
        if guest.boot() == Boot::PvhElf32 {
            assert!(!elf.class64, "{guest:?}: ELFCLASS32");
            assert_eq!(elf.machine, EM_386, "{guest:?}: e_machine");
        } else {
            assert!(elf.class64, "{guest:?}: ELFCLASS64, like a vmlinux");
            assert!(
                elf.machine == EM_386 || elf.machine == EM_X86_64,
                "{guest:?}: e_machine {}",
                elf.machine
            );
        }

        let xen: Vec<_> = notes(b, &elf)
            .into_iter()
            .filter(|(name, ntype, _)| *name == b"Xen\0" && *ntype == XEN_ELFNOTE_PHYS32_ENTRY)
            .collect();
        assert_eq!(xen.len(), 1, "{guest:?}: one Xen PHYS32_ENTRY note");
        let desc = xen[0].2;
        let entry = match desc.len() {
            4 => u64::from(u32_at(desc, 0)),
            8 => u64_at(desc, 0),
            n => panic!("{guest:?}: PHYS32_ENTRY desc of {n} bytes"),
        };
        assert!(entry < 1 << 32, "{guest:?}: 32-bit entry");
        assert_eq!(entry, elf.entry, "{guest:?}: note agrees with e_entry");

        let loads: Vec<_> = elf.phdrs.iter().filter(|p| p.p_type == PT_LOAD).collect();
        assert!(!loads.is_empty(), "{guest:?}: has PT_LOAD segments");
        for ph in &loads {
            assert!(
                ph.paddr >= 0x10_0000,
                "{guest:?}: loads at or above 1 MiB: {ph:?}"
            );
            assert!(
                ph.paddr + ph.memsz <= 0xc000_0000,
                "{guest:?}: below the MMIO hole"
            );
            assert!(ph.filesz <= ph.memsz, "{guest:?}: {ph:?}");
            assert!(ph.offset + ph.filesz <= b.len() as u64, "{guest:?}: {ph:?}");
        }
        let seg = loads
            .iter()
            .find(|p| p.paddr <= entry && entry < p.paddr + p.filesz)
            .unwrap_or_else(|| panic!("{guest:?}: entry {entry:#x} outside every PT_LOAD"));
        assert_ne!(seg.flags & PF_X, 0, "{guest:?}: entry segment is executable");
        // The shared entry code (asm/pvh.inc) starts with `cli; cld`.
        let file_off = (seg.offset + entry - seg.paddr) as usize;
        assert_eq!(&b[file_off..file_off + 2], [0xfa, 0xfc], "{guest:?}: cli; cld");
    }
}

#[test]
fn reset_vector_image_is_64k_and_jumps_into_itself() {
    let guest = Guest::ResetVector;
    assert_eq!(guest.boot(), Boot::Firmware);
    let b = guest.bytes();
    assert_eq!(b.len(), FIRMWARE_SIZE);
    assert_eq!(b.len(), 65536);
    let vector = &b[FIRMWARE_SIZE - 16..];
    // Near jmp rel16 (0xe9), short jmp (0xeb) or far jmp ptr16:16 (0xea).
    assert!(
        [0xe9, 0xeb, 0xea].contains(&vector[0]),
        "reset vector starts with a jmp, not {:#04x}",
        vector[0]
    );
    // Ours is a near jmp; follow it (IP wraps within the 64 KiB segment).
    assert_eq!(vector[0], 0xe9);
    let rel = u16::from_le_bytes([vector[1], vector[2]]);
    let target = 0xfff3u16.wrapping_add(rel) as usize;
    assert!(
        target < FIRMWARE_SIZE - 16,
        "jump target {target:#x} before the vector"
    );
    assert_eq!(b[target], 0xfa, "target starts with cli");
}

#[test]
fn artifacts_carry_the_documented_lines() {
    let expect: &[(Guest, &[&str])] = &[
        (Guest::Hello, &[output::HELLO]),
        (Guest::HelloElf32, &[output::HELLO_ELF32]),
        (Guest::Smoke, &[output::SMOKE_READY]),
        (
            Guest::Echo,
            &[output::ECHO_READY, &format!("\n{}", output::ECHO_DONE)],
        ),
        (
            Guest::IoProbe,
            &["pio-read=", "mmio-read=", output::IO_PROBE_DONE],
        ),
        (Guest::CmosProbe, &["cmos-probe mismatches="]),
        (
            Guest::Smp,
            &["cpu apic=", " bsp", " ap", "cpus-up=", output::SMP_TIMEOUT],
        ),
        (Guest::Counter, &["tick "]),
        (Guest::Flood, &[output::FLOOD_PREFIX, output::FLOOD_POWER_BUTTON]),
        (Guest::Stream, &[output::STREAM_PREFIX]),
        (
            Guest::PowerButton,
            &[output::POWER_BUTTON_WAITING, output::POWER_BUTTON_PRESSED],
        ),
        (Guest::Reset, &[output::RESETTING]),
        (Guest::TripleFault, &[output::TRIPLE_FAULT_NEXT]),
        (Guest::ResetVector, &[output::RESET_VECTOR]),
        (
            Guest::FlashProbe,
            &[
                "virtkit-guest: flash probe clear=",
                " status=",
                "virtkit-guest: flash count=",
                "virtkit-guest: flash erase-status=",
                " erased=",
                "virtkit-guest: flash programmed=",
                "virtkit-guest: pm id=",
                " pmba=",
                " misc=",
                "virtkit-guest: flash no power-off",
            ],
        ),
        (
            Guest::MbrRead,
            &["ext lba=", "chs lba=", " sum=", " error=", output::MBR_READ_DONE],
        ),
        (
            Guest::MbrWrite,
            &[
                "write lba=",
                " ok",
                " error=",
                " read-error=",
                " mismatch",
                output::MBR_WRITE_DONE,
            ],
        ),
        (
            Guest::MbrDrives,
            &[
                "drive ",
                " sectors=",
                "drives=",
                "bios-hd-count=",
                output::MBR_DRIVES_DONE,
            ],
        ),
        (
            Guest::MbrBench,
            &[
                output::MBR_BENCH_PREFIX,
                "bench-read error=",
                " lba=",
                output::MBR_BENCH_DONE,
            ],
        ),
        (
            Guest::MbrId,
            &["boot-drive=", "boot-disk", " error=", output::MBR_ID_DONE],
        ),
        (Guest::MbrKeys, &["keys: ready", "keys: enter"]),
        (Guest::MbrTicker, &["ticker: ready"]),
        (Guest::MbrRtc, &["rtc: periodic=", " status-c="]),
        (
            Guest::MbrMouse,
            &[
                "mouse: ready",
                "mouse: error=",
                " function=c2",
                "mouse: status=",
                " x=",
                " y=",
            ],
        ),
        (
            Guest::MbrSession,
            &[
                output::SESSION_LOAD_ERROR_PREFIX,
                "session: boot ",
                " (not saved: error ",
                " (not saved: read-back error ",
                " (not saved: read-back mismatch)",
                "session: uuid=",
                "session: serial=",
                output::SESSION_SMBIOS_NONE,
                output::SESSION_READY,
                "session: tick ",
                output::SESSION_POWER_BUTTON,
            ],
        ),
        (
            Guest::MbrPam,
            &[
                output::PAM_LOAD_ERROR_PREFIX,
                "pam=",
                "\npam-writes=",
                "\npam-probe rom=",
                " write-only=",
                " read-only=",
                " dropped=",
                " wrote=",
                "\nisa-bridge id=",
                " class=",
                " header=",
                " pirq=",
                &format!("\n{}", output::MBR_PAM_DONE),
            ],
        ),
    ];
    assert_eq!(expect.len(), Guest::ALL.len());
    for (guest, lines) in expect {
        for line in *lines {
            // Full lines end with "\n"; the prefixes ("pio-read=") are followed by a NUL.
            let full = format!("{line}\n");
            let prefix = format!("{line}\0");
            assert!(
                contains(guest.bytes(), full.as_bytes()) || contains(guest.bytes(), prefix.as_bytes()),
                "{guest:?} prints {line:?}"
            );
        }
    }
}

#[test]
fn output_helpers_format_like_the_guests() {
    assert_eq!(output::pio_read(0x1234_5678), "pio-read=12345678");
    assert_eq!(output::mmio_read(0xff), "mmio-read=000000ff");
    assert_eq!(output::smp_cpu(0, true), "cpu apic=0 bsp");
    assert_eq!(output::smp_cpu(12, false), "cpu apic=12 ap");
    assert_eq!(output::smp_cpus_up(4), "cpus-up=4");
    assert_eq!(output::tick(7), "tick 7");
}

fn mbr_guests() -> impl Iterator<Item = Guest> {
    Guest::ALL.into_iter().filter(|g| g.boot() == Boot::Mbr)
}

#[test]
fn mbr_programs_are_512_byte_boot_sectors() {
    assert_eq!(mbr_guests().count(), 11);
    for guest in mbr_guests() {
        let b = guest.bytes();
        if guest == Guest::MbrSession {
            assert_eq!(b.len(), mbr::SESSION_SECTORS * MBR_SIZE, "{guest:?}");
        } else if guest == Guest::MbrPam {
            assert_eq!(b.len(), mbr::PAM_SECTORS * MBR_SIZE, "{guest:?}");
        } else {
            assert_eq!(b.len(), MBR_SIZE, "{guest:?}");
            assert_eq!(b.len(), 512, "{guest:?}");
        }
        assert_eq!(&b[510..512], [0x55, 0xaa], "{guest:?}: boot signature");
        assert!(guest.path().to_str().unwrap().ends_with(".mbr"), "{guest:?}");
        // The shared entry code (asm/mbr.inc) starts with `xor %ax, %ax; mov %ax, %ds`.
        assert_eq!(&b[..4], [0x31, 0xc0, 0x8e, 0xd8], "{guest:?}: entry code");
    }
}

#[test]
fn mbr_programs_carry_the_numbers_the_crate_documents() {
    let lbas: Vec<u8> = mbr::READ_LBAS.iter().flat_map(|l| l.to_le_bytes()).collect();
    assert!(
        contains(Guest::MbrRead.bytes(), &lbas),
        "READ_LBAS table in mbr_read"
    );
    assert!(contains(Guest::MbrWrite.bytes(), mbr::WRITE_MAGIC));
    assert_eq!(
        mbr::BENCH_BYTES / 512 % u64::from(mbr::BENCH_CHUNK_SECTORS),
        0,
        "whole requests"
    );
    assert!(mbr::READ_DISK_BYTES >= (u64::from(*mbr::READ_LBAS.iter().max().unwrap()) + 1) * 512);
    assert_eq!(mbr::READ_DISK_BYTES / 512 - 1, u64::from(mbr::READ_LBAS[5]));
}

#[test]
fn mbr_helpers_format_like_the_programs() {
    use output::{ReadKind, WriteResult};
    assert_eq!(
        output::mbr_read_sum(ReadKind::Extended, 16_777_221, 0x0e2d_29f0),
        "ext lba=16777221 sum=0e2d29f0"
    );
    assert_eq!(output::mbr_read_error(ReadKind::Chs, 1, 1), "chs lba=1 error=01");
    assert_eq!(output::mbr_write(3, WriteResult::Ok), "write lba=3 ok");
    assert_eq!(
        output::mbr_write(4, WriteResult::Error(0xc)),
        "write lba=4 error=0c"
    );
    assert_eq!(
        output::mbr_write(3, WriteResult::ReadError(0x20)),
        "write lba=3 read-error=20"
    );
    assert_eq!(
        output::mbr_write(3, WriteResult::Mismatch),
        "write lba=3 mismatch"
    );
    assert_eq!(
        output::mbr_drive(0x80, 0x200_0000),
        "drive 80 sectors=0000000002000000"
    );
    assert_eq!(output::mbr_drives(3), "drives=3");
    assert_eq!(output::mbr_bios_hd_count(3), "bios-hd-count=3");
    let bench = output::mbr_bench(0x52ef_10ea);
    assert_eq!(bench, "bench-read bytes=67108864 tsc=0000000052ef10ea");
    assert_eq!(output::parse_mbr_bench(&bench), Some(0x52ef_10ea));
    assert_eq!(output::parse_mbr_bench("bench-read error=0c lba=65473"), None);
    assert_eq!(output::mbr_boot_drive(0x80), "boot-drive=80");
    assert_eq!(output::mbr_id("disk-y"), "boot-disk=disk-y");
}

#[test]
fn mbr_data_helpers() {
    let mut sector = [0u8; 512];
    assert_eq!(mbr::sector_sum(&sector), 0);
    sector[0] = 1;
    sector[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
    assert_eq!(mbr::sector_sum(&sector), 0, "wraps");
    sector[511] = 0x80;
    assert_eq!(mbr::sector_sum(&sector), 0x8000_0000);

    // What QEMU + SeaBIOS left on the disk (checked with xxd).
    let p = mbr::write_pattern(3);
    assert_eq!(&p[..16], b"VIRTKIT-WRITE\0\0\0");
    assert_eq!(&p[16..24], [3, 0, 0, 0, 0x17, 0x16, 0x15, 0x14]);
    assert_eq!(p[511], 0xff ^ 3);
    assert_eq!(
        &mbr::write_pattern(4)[16..24],
        [4, 0, 0, 0, 0x10, 0x11, 0x12, 0x13]
    );

    assert_eq!(mbr::id_marker(b"disk-x\nmore"), "disk-x");
    assert_eq!(mbr::id_marker(b"abc\0def"), "abc");
    assert_eq!(mbr::id_marker(&[b'a'; 100]).len(), mbr::ID_MARKER_MAX);
}

#[test]
fn mbr_session_is_a_multi_sector_program_below_its_state_sector() {
    let b = Guest::MbrSession.bytes();
    assert!(b.len() > MBR_SIZE, "longer than its boot sector");
    assert_eq!(b.len() % MBR_SIZE, 0, "whole sectors");
    assert_eq!(b.len(), mbr::SESSION_SECTORS * 512);
    assert_eq!(&b[510..512], [0x55, 0xaa], "boot signature");
    assert_eq!(&b[..4], [0x31, 0xc0, 0x8e, 0xd8], "shared entry code");
    let program_sectors = (b.len() / MBR_SIZE) as u64;
    assert!(
        u64::from(mbr::SESSION_STATE_LBA) >= program_sectors,
        "the state sector lies beyond the program"
    );
    assert_eq!(
        mbr::SESSION_MIN_DISK_BYTES,
        (u64::from(mbr::SESSION_STATE_LBA) + 1) * 512
    );
    // The boot sector loads the other sectors: a DAP count of SESSION_SECTORS - 1 is stored
    // with `movw $imm16, dap_count` (c7 06 <addr> <imm16>).
    let loaded = ((mbr::SESSION_SECTORS - 1) as u16).to_le_bytes();
    assert!(
        b[..510]
            .windows(6)
            .any(|w| w[..2] == [0xc7, 0x06] && w[4..] == loaded),
        "the boot sector loads {} sectors",
        mbr::SESSION_SECTORS - 1
    );
    assert!(contains(b, mbr::SESSION_STATE_MAGIC), "state magic");
    assert!(
        contains(b, &mbr::SESSION_STATE_LBA.to_le_bytes()),
        "state LBA as an immediate"
    );
    // Strings printed after loading live beyond the boot sector; the load error text inside it.
    assert!(contains(&b[..512], output::SESSION_LOAD_ERROR_PREFIX.as_bytes()));
    assert!(!contains(&b[..512], output::SESSION_READY.as_bytes()));
    assert!(contains(&b[512..], output::SESSION_READY.as_bytes()));
}

#[test]
fn mbr_session_state_sector_round_trips() {
    let state = mbr::session_state(0x0102_0304);
    assert_eq!(&state[..16], b"VIRTKIT-SESSION\0");
    assert_eq!(&state[16..20], [4, 3, 2, 1]);
    assert!(state[20..].iter().all(|&b| b == 0));
    assert_eq!(mbr::session_boots(&state), Some(0x0102_0304));
    assert_eq!(mbr::session_boots(&mbr::session_state(1)), Some(1));
    assert_eq!(mbr::session_boots(&[0u8; 512]), None, "blank disk");
    let mut wrong = state;
    wrong[0] = b'v';
    assert_eq!(mbr::session_boots(&wrong), None, "magic is case-sensitive");
    assert_eq!(mbr::session_boots(&state[..18]), None, "truncated");
}

#[test]
fn mbr_session_helpers_format_and_parse_like_the_program() {
    use output::SessionSave;
    let cases = [
        (1, SessionSave::Saved, "session: boot 1"),
        (
            2,
            SessionSave::WriteError(0x0c),
            "session: boot 2 (not saved: error 0c)",
        ),
        (
            30,
            SessionSave::ReadBackError(0xaa),
            "session: boot 30 (not saved: read-back error aa)",
        ),
        (
            4_000_000_000,
            SessionSave::ReadBackMismatch,
            "session: boot 4000000000 (not saved: read-back mismatch)",
        ),
    ];
    for (boots, save, line) in cases {
        assert_eq!(output::session_boot(boots, save), line);
        assert_eq!(output::parse_session_boot(line), Some((boots, save)), "{line}");
        assert_eq!(
            output::parse_session_boot(&format!("{line}\r\n")),
            Some((boots, save))
        );
    }
    for bad in [
        "session: boot",
        "session: boot ",
        "session: boot -1",
        "session: boot 01",
        "session: boot 1 (not saved: error 0C)",
        "session: boot 1 (not saved: error c)",
        "session: boot 1 (not saved: oops)",
        "session: boot 1 extra",
        "session: tick 1",
        "session: boot 4294967296",
    ] {
        assert_eq!(output::parse_session_boot(bad), None, "{bad:?}");
    }

    let uuid = "3f2b8a7e-1c4d-4e5f-9a6b-7c8d9e0f1a2b";
    let line = output::session_uuid("3F2B8A7E-1C4D-4E5F-9A6B-7C8D9E0F1A2B");
    assert_eq!(line, format!("session: uuid={uuid}"));
    assert_eq!(output::parse_session_uuid(&line), Some(uuid));
    for bad in [
        "session: uuid=3f2b8a7e1c4d4e5f9a6b7c8d9e0f1a2b",
        "session: uuid=3f2b8a7e-1c4d-4e5f-9a6b-7c8d9e0f1a2",
        "session: uuid=3F2B8A7E-1c4d-4e5f-9a6b-7c8d9e0f1a2b",
        "session: uuid=3f2b8a7g-1c4d-4e5f-9a6b-7c8d9e0f1a2b",
        "session: smbios none",
    ] {
        assert_eq!(output::parse_session_uuid(bad), None, "{bad:?}");
    }

    assert_eq!(output::session_serial("VK-TEST"), "session: serial=VK-TEST");
    assert_eq!(
        output::parse_session_serial("session: serial=VK TEST \r\n"),
        Some("VK TEST ")
    );
    assert_eq!(output::parse_session_serial("session: serial="), Some(""));
    assert_eq!(output::parse_session_serial("session: uuid=x"), None);

    assert_eq!(output::session_tick(12), "session: tick 12");
    assert_eq!(output::parse_session_tick("session: tick 12\n"), Some(12));
    assert_eq!(output::parse_session_tick("session: tick x"), None);
    assert_eq!(output::parse_session_tick("tick 12"), None);
}

#[test]
fn mbr_pam_loads_its_second_sector_and_probes_what_it_documents() {
    let b = Guest::MbrPam.bytes();
    assert_eq!(b.len(), mbr::PAM_SECTORS * MBR_SIZE);
    // `movw $imm16, dap_count` (c7 06 <addr> <imm16>) with the sectors after the boot sector.
    let loaded = ((mbr::PAM_SECTORS - 1) as u16).to_le_bytes();
    assert!(b[..510]
        .windows(6)
        .any(|w| w[..2] == [0xc7, 0x06] && w[4..] == loaded));
    assert!(contains(&b[..512], output::PAM_LOAD_ERROR_PREFIX.as_bytes()));
    assert!(contains(&b[512..], output::MBR_PAM_DONE.as_bytes()));
    // Real-mode segments: the probe (mov $imm16, %ax: b8 <imm16>), the first write probe of
    // 0xF0000 and of 0xC0000, and the probe's xor (xor $imm8, %al: 34 <imm8>).
    let segment = |address: u64| ((address >> 4) as u16).to_le_bytes();
    for address in [
        mbr::PAM_PROBE_ADDRESS,
        mbr::PAM_SEGMENT_STARTS[0] + mbr::PAM_WRITE_PROBE_OFFSET,
        mbr::PAM_SEGMENT_STARTS[1] + mbr::PAM_WRITE_PROBE_OFFSET,
    ] {
        let s = segment(address);
        assert!(contains(b, &[0xb8, s[0], s[1]]), "{address:#x}");
    }
    assert!(contains(b, &[0x34, mbr::PAM_PROBE_XOR]));
    let starts = mbr::PAM_SEGMENT_STARTS;
    assert!(starts[1..].windows(2).all(|w| w[1] == w[0] + 0x4000));
    assert_eq!(starts[12] + 0x4000, starts[0]);
    assert_eq!(mbr::PAM_PROBE_ADDRESS & !0x3fff, starts[12], "PAM6's high nibble");
}

#[test]
fn mbr_pam_helpers_read_what_the_program_prints() {
    assert_eq!(
        output::parse_pam_registers("pam=10313333333333"),
        Some([0x10, 0x31, 0x33, 0x33, 0x33, 0x33, 0x33])
    );
    assert_eq!(output::parse_pam_registers("pam=1031333333333"), None);
    assert_eq!(output::parse_pam_registers("pam=1031333333333G"), None);
    let writes = output::parse_pam_writes("pam-writes=--wwwwwwwwwww").unwrap();
    assert_eq!(writes.iter().filter(|w| **w).count(), 11);
    assert!(!writes[0] && !writes[1] && writes[2]);
    assert_eq!(output::parse_pam_writes("pam-writes=--www"), None);
    assert_eq!(output::parse_pam_writes("pam-writes=--wwwwwwwwwwx"), None);

    let probe = output::PamProbe {
        rom: 0x0f,
        write_only: 0x0f,
        read_only: 0x55,
        dropped: 0x55,
        wrote: 0x55,
    };
    let line = probe.line();
    assert_eq!(
        line,
        "pam-probe rom=0f write-only=0f read-only=55 dropped=55 wrote=55"
    );
    assert_eq!(output::PamProbe::parse(&line), Some(probe));
    assert_eq!(output::PamProbe::parse("pam-probe rom=0f"), None);

    let isa = output::IsaBridgeInfo {
        id: 0x7000_8086,
        class: 0x0601_0000,
        header: 0x80,
        pirq: 0x0b0b_0a0a,
    };
    let line = isa.line();
    assert_eq!(
        line,
        "isa-bridge id=70008086 class=06010000 header=80 pirq=0b0b0a0a"
    );
    assert_eq!(output::IsaBridgeInfo::parse(&line), Some(isa));
    assert_eq!(output::IsaBridgeInfo::parse("isa-bridge id=70008086"), None);
}
