//! PAM register decoding: which nibble controls which segment, and what each attribute means.

use super::*;

#[test]
fn segments_tile_the_window_in_index_order_with_their_nibbles() {
    assert_eq!(
        SEGMENTS[0],
        Segment {
            start: 0xf0000,
            size: 0x10000,
            register: 0,
            high_nibble: true
        }
    );
    let expected: Vec<(u64, usize, bool)> = (0..12)
        .map(|piece| (0xc0000 + piece as u64 * 0x4000, 1 + piece / 2, piece % 2 == 1))
        .collect();
    let actual: Vec<(u64, usize, bool)> = SEGMENTS[1..]
        .iter()
        .map(|s| (s.start, s.register, s.high_nibble))
        .collect();
    assert_eq!(actual, expected);
    assert_eq!(
        SEGMENTS[12].end(),
        SEGMENTS[0].start,
        "0xEC000 ends where the BIOS starts"
    );
    let covered: u64 = SEGMENTS.iter().map(|s| s.size).sum();
    assert_eq!(covered, PAM_WINDOW_END - PAM_WINDOW_START);
}

#[test]
fn every_address_in_the_window_finds_its_segment_and_none_outside() {
    for (index, segment) in SEGMENTS.iter().enumerate() {
        assert_eq!(Segment::index_of(segment.start), Some(index));
        assert_eq!(Segment::index_of(segment.end() - 1), Some(index));
    }
    assert_eq!(Segment::index_of(PAM_WINDOW_START - 1), None);
    assert_eq!(Segment::index_of(PAM_WINDOW_END), None);
}

#[test]
fn power_on_registers_give_no_read_and_no_write_anywhere() {
    assert!(decode(&[0; PAM_REGISTER_COUNT])
        .iter()
        .all(|a| *a == Attributes::default()));
}

#[test]
fn seabios_final_settings_decode_nibble_by_nibble() {
    // What SeaBIOS leaves before it boots: the BIOS read-only, 0xC0000 read-only, the rest RAM.
    let attributes = decode(&[0x10, 0x31, 0x33, 0x33, 0x33, 0x33, 0x33]);
    let read_only = Attributes {
        read_enable: true,
        write_enable: false,
    };
    assert_eq!(attributes[0], read_only, "0xF0000 from PAM0's high nibble");
    assert_eq!(attributes[1], read_only, "0xC0000 from PAM1's low nibble");
    assert_eq!(attributes[2], Attributes::RAM, "0xC4000 from PAM1's high nibble");
    assert!(attributes[3..].iter().all(|a| *a == Attributes::RAM));
}

#[test]
fn each_nibble_moves_only_its_own_segment() {
    for (index, segment) in SEGMENTS.iter().enumerate() {
        let mut registers = [0u8; PAM_REGISTER_COUNT];
        registers[segment.register] = if segment.high_nibble { 0x20 } else { 0x02 };
        let attributes = decode(&registers);
        for (other, a) in attributes.iter().enumerate() {
            let expected = if other == index {
                Attributes {
                    read_enable: false,
                    write_enable: true,
                }
            } else {
                Attributes::default()
            };
            assert_eq!(
                *a, expected,
                "segment {other} when only segment {index} is write-only"
            );
        }
    }
}

#[test]
fn reserved_bits_and_pam0_low_nibble_are_ignored() {
    let attributes = decode(&[0x0f, 0xcc, 0, 0, 0, 0, 0]);
    assert_eq!(
        attributes[0],
        Attributes::default(),
        "PAM0 bits 0..4 are reserved"
    );
    assert_eq!(
        attributes[1],
        Attributes::default(),
        "bits 2 and 3 of a nibble are reserved"
    );
    assert_eq!(attributes[2], Attributes::default());
}

#[test]
fn backing_follows_re_we_and_whether_a_rom_is_behind() {
    let a = |re, we| Attributes {
        read_enable: re,
        write_enable: we,
    };
    for rom in [false, true] {
        assert_eq!(Backing::of(a(true, true), rom), Backing::Ram);
        assert_eq!(Backing::of(a(true, false), rom), Backing::ReadOnlyRam);
    }
    for we in [false, true] {
        assert_eq!(Backing::of(a(false, we), true), Backing::Rom);
        assert_eq!(Backing::of(a(false, we), false), Backing::OpenBus);
    }
}
