//! Shadow RAM against a recording fake of KVM's slots: which slots a register change makes or
//! removes, where they point, and what the MMIO device does with accesses KVM leaves to it.

use std::sync::Mutex;

use super::*;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Map {
        slot: u32,
        guest: u64,
        size: u64,
        host: u64,
        read_only: bool,
    },
    Unmap(u32),
}

#[derive(Default)]
struct FakeSlots {
    ops: Mutex<Vec<Op>>,
    next: Mutex<u32>,
}

impl FakeSlots {
    fn take_ops(&self) -> Vec<Op> {
        std::mem::take(&mut self.ops.lock().unwrap())
    }
}

impl MemorySlots for FakeSlots {
    unsafe fn map(&self, guest: u64, size: u64, host: u64, read_only: bool) -> Result<u32, HypervisorError> {
        let mut next = self.next.lock().unwrap();
        let slot = *next;
        *next += 1;
        self.ops.lock().unwrap().push(Op::Map {
            slot,
            guest,
            size,
            host,
            read_only,
        });
        Ok(slot)
    }

    fn unmap(&self, slot: u32) -> Result<(), HypervisorError> {
        self.ops.lock().unwrap().push(Op::Unmap(slot));
        Ok(())
    }
}

const ROM_128K: usize = 0x20000;

/// Guest RAM of 2 MiB with a recognisable pattern, a ROM whose bytes differ from it.
fn setup(rom_len: usize) -> (Arc<FakeSlots>, GuestMemoryMmap, ShadowRam) {
    let ram = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 2 << 20)]).unwrap();
    let pattern: Vec<u8> = (0..PAM_WINDOW_END - PAM_WINDOW_START).map(|i| i as u8).collect();
    ram.write_slice(&pattern, GuestAddress(PAM_WINDOW_START)).unwrap();
    let rom: Vec<u8> = (0..rom_len).map(|i| !(i as u8 ^ 0x5a)).collect();
    let slots = Arc::new(FakeSlots::default());
    let shadow = ShadowRam::new(slots.clone(), ram.clone(), &rom).unwrap();
    (slots, ram, shadow)
}

fn ram_host(ram: &GuestMemoryMmap, address: u64) -> u64 {
    ram.get_host_address(GuestAddress(address)).unwrap() as u64
}

fn rom_byte(rom_len: usize, address: u64) -> u8 {
    let offset = (address - (PAM_WINDOW_END - rom_len as u64)) as u8;
    !(offset ^ 0x5a)
}

fn read(shadow: &mut ShadowRam, address: u64) -> u8 {
    let mut b = [0u8];
    shadow.read(address - PAM_WINDOW_START, &mut b);
    b[0]
}

fn ram_byte(ram: &GuestMemoryMmap, address: u64) -> u8 {
    ram.read_obj(GuestAddress(address)).unwrap()
}

/// The map operations in `ops`, as (guest start, read-only, host address).
fn maps(ops: &[Op]) -> Vec<(u64, bool, u64)> {
    ops.iter()
        .filter_map(|op| match *op {
            Op::Map {
                guest,
                host,
                read_only,
                ..
            } => Some((guest, read_only, host)),
            Op::Unmap(_) => None,
        })
        .collect()
}

#[test]
fn power_on_maps_the_128k_rom_read_only_and_leaves_0xc0000_to_0xdffff_open() {
    let (slots, _ram, mut shadow) = setup(ROM_128K);
    let ops = slots.take_ops();
    let mut expected: Vec<(u64, bool, u64)> = SEGMENTS
        .iter()
        .filter(|s| s.start >= 0xe0000)
        .map(|s| (s.start, true, shadow.rom_host_address(s.start)))
        .collect();
    let mut got = maps(&ops);
    expected.sort_unstable();
    got.sort_unstable();
    assert_eq!(got, expected);
    assert!(ops
        .iter()
        .all(|op| matches!(op, Op::Map { size, guest, .. } if *size == SEGMENTS[Segment::index_of(*guest).unwrap()].size)));
    // What KVM leaves to the device: open-bus reads, ROM reads, dropped writes.
    assert_eq!(read(&mut shadow, 0xc0000), 0xff);
    assert_eq!(read(&mut shadow, 0xdffff), 0xff);
    assert_eq!(read(&mut shadow, 0xffff0), rom_byte(ROM_128K, 0xffff0));
    assert_eq!(read(&mut shadow, 0xe0000), rom_byte(ROM_128K, 0xe0000));
}

#[test]
fn writes_without_we_are_dropped_and_reads_without_re_see_the_rom() {
    let (_slots, ram, mut shadow) = setup(ROM_128K);
    let before = ram_byte(&ram, 0xf1234);
    shadow.write(0xf1234 - PAM_WINDOW_START, &[!before]);
    assert_eq!(ram_byte(&ram, 0xf1234), before, "WE=0: RAM unchanged");
    assert_eq!(
        read(&mut shadow, 0xf1234),
        rom_byte(ROM_128K, 0xf1234),
        "ROM unchanged"
    );

    // Write-only (WE without RE): the write reaches RAM, reads still see the ROM.
    shadow.set_registers(&[0x20, 0, 0, 0, 0, 0, 0]);
    shadow.write(0xf1234 - PAM_WINDOW_START, &[0xa5]);
    assert_eq!(ram_byte(&ram, 0xf1234), 0xa5);
    assert_eq!(read(&mut shadow, 0xf1234), rom_byte(ROM_128K, 0xf1234));
    // Read-only RAM: now the write shows, and a further write is dropped.
    shadow.set_registers(&[0x10, 0, 0, 0, 0, 0, 0]);
    assert_eq!(read(&mut shadow, 0xf1234), 0xa5);
    shadow.write(0xf1234 - PAM_WINDOW_START, &[0x11]);
    assert_eq!(ram_byte(&ram, 0xf1234), 0xa5);
}

#[test]
fn seabios_unlock_then_lock_remaps_only_what_changed() {
    let (slots, ram, _) = setup(ROM_128K);
    // `setup` dropped its ShadowRam: every ROM slot it made is gone.
    let ops = slots.take_ops();
    let made = ops.iter().filter(|op| matches!(op, Op::Map { .. })).count();
    assert_eq!(ops.iter().filter(|op| matches!(op, Op::Unmap(_))).count(), made);

    let rom = vec![0u8; ROM_128K];
    let mut shadow = ShadowRam::new(slots.clone(), ram.clone(), &rom).unwrap();
    slots.take_ops();

    // SeaBIOS's make_bios_writable: everything RAM.
    shadow.set_registers(&[0x30, 0x33, 0x33, 0x33, 0x33, 0x33, 0x33]);
    let ops = slots.take_ops();
    let mut got = maps(&ops);
    got.sort_unstable();
    let mut expected: Vec<(u64, bool, u64)> = SEGMENTS
        .iter()
        .map(|s| (s.start, false, ram_host(&ram, s.start)))
        .collect();
    expected.sort_unstable();
    assert_eq!(got, expected, "every segment onto guest RAM, read-write");
    // Each ROM slot was removed before its range was mapped again.
    for (i, op) in ops.iter().enumerate() {
        if let Op::Map { guest, .. } = op {
            if *guest >= 0xe0000 {
                assert!(
                    matches!(ops.get(i.wrapping_sub(1)), Some(Op::Unmap(_))),
                    "{guest:#x}: {ops:?}"
                );
            }
        }
    }
    assert!(shadow.attributes().iter().all(|a| *a == Attributes::RAM));

    // make_bios_readonly: the BIOS and 0xC0000 read-only; nothing else is touched.
    shadow.set_registers(&[0x10, 0x31, 0x33, 0x33, 0x33, 0x33, 0x33]);
    let ops = slots.take_ops();
    assert_eq!(ops.len(), 4, "two segments, each unmapped and mapped: {ops:?}");
    let mut got = maps(&ops);
    got.sort_unstable();
    assert_eq!(
        got,
        vec![
            (0xc0000, true, ram_host(&ram, 0xc0000)),
            (0xf0000, true, ram_host(&ram, 0xf0000)),
        ]
    );
    // The same values again change nothing.
    shadow.set_registers(&[0x10, 0x31, 0x33, 0x33, 0x33, 0x33, 0x33]);
    assert!(slots.take_ops().is_empty());
}

#[test]
fn a_64k_rom_leaves_0xe0000_to_0xeffff_open() {
    let (slots, _ram, mut shadow) = setup(0x10000);
    let got = maps(&slots.take_ops());
    assert_eq!(got, vec![(0xf0000, true, shadow.rom_host_address(0xf0000))]);
    assert_eq!(read(&mut shadow, 0xe8000), 0xff);
    assert_eq!(read(&mut shadow, 0xf0010), rom_byte(0x10000, 0xf0010));
}

#[test]
fn an_access_across_two_segments_follows_each_one() {
    let (_slots, ram, mut shadow) = setup(ROM_128K);
    // 0xC0000 RAM, 0xC4000 left at power-on (open bus).
    shadow.set_registers(&[0, 0x03, 0, 0, 0, 0, 0]);
    let mut data = [0u8; 4];
    shadow.read(0xc3ffe - PAM_WINDOW_START, &mut data);
    assert_eq!(
        data,
        [ram_byte(&ram, 0xc3ffe), ram_byte(&ram, 0xc3fff), 0xff, 0xff]
    );
    shadow.write(0xc3ffe - PAM_WINDOW_START, &[1, 2, 3, 4]);
    assert_eq!(ram_byte(&ram, 0xc3fff), 2);
    assert_eq!(
        ram_byte(&ram, 0xc4000),
        0x00,
        "the pattern's byte: the write was dropped"
    );
}

#[test]
fn bad_roms_and_missing_ram_are_refused() {
    let ram = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 2 << 20)]).unwrap();
    let slots: Arc<FakeSlots> = Arc::default();
    for len in [0, 0x1000, 0x30000] {
        assert!(matches!(
            ShadowRam::new(slots.clone(), ram.clone(), &vec![0; len]),
            Err(ShadowRamError::RomSize(l)) if l == len
        ));
    }
    let small = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0xc0000)]).unwrap();
    assert!(matches!(
        ShadowRam::new(slots.clone(), small, &[0; ROM_128K]),
        Err(ShadowRamError::NoRam)
    ));
    assert!(slots.take_ops().is_empty());
}
