//! The state file format on bytes: what is accepted, and the one sentence for each refusal.

use super::format::{page_align, parse, Header, Metadata, FORMAT_VERSION, HEADER_LEN, PAGE_SIZE};
use super::*;

fn metadata() -> Metadata {
    Metadata {
        configuration: serde_json::json!({"cpu_count": 1, "memory_size": 67108864}),
        machine: MachineState {
            vcpus: Vec::new(),
            vm: VmState {
                pic_master: vec![1; 8],
                pic_slave: vec![2; 8],
                ioapic: vec![3; 8],
                pit: vec![4; 8],
                clock_ns: Some(5),
            },
            platform: PlatformState {
                serial: crate::devices::SerialState {
                    baud_divisor_low: 12,
                    baud_divisor_high: 0,
                    interrupt_enable: 0,
                    interrupt_identification: 1,
                    line_control: 3,
                    line_status: 0x60,
                    modem_control: 8,
                    modem_status: 0xb0,
                    scratch: 0,
                    in_buffer: vec![b'x'],
                },
                pm: crate::devices::PmState {
                    status: 0,
                    enable: 0x100,
                    control: 1,
                    timer_elapsed_ns: 7,
                },
                i8042: crate::devices::I8042State {
                    output: None,
                    config: 0x70,
                    status_flags: 4,
                    config_write_pending: false,
                    queued: vec![0x1e, 0x08],
                    keyboard_argument: None,
                    scanning: true,
                    output_from_mouse: false,
                    queued_from_mouse: vec![false, true],
                    aux_write_pending: false,
                    leds: 0b100,
                    mouse: Some(crate::devices::Ps2MouseState {
                        reporting: true,
                        sample_rate: 100,
                        resolution: 2,
                        ..Default::default()
                    }),
                },
                cmos: crate::devices::CmosState {
                    index: 0,
                    ram: vec![0; 128],
                },
                pci: Vec::new(),
                fw_cfg: None,
            },
        },
        memory: vec![MemoryRange {
            guest_address: 0,
            size: 2 * PAGE_SIZE,
        }],
        devices: serde_json::json!({"version": 1, "devices": [{"name": "blk0"}]}),
    }
}

/// A whole state file's header and metadata (memory is not needed to parse).
fn file_bytes(metadata: &Metadata) -> Vec<u8> {
    let bytes = format::encode_metadata(metadata).unwrap();
    let header = Header::for_metadata(&bytes, 2 * PAGE_SIZE);
    let mut file = header.encode();
    file.extend_from_slice(&bytes);
    file
}

#[test]
fn a_written_file_parses_back_to_the_same_metadata() {
    let m = metadata();
    let (header, parsed) = parse(&file_bytes(&m)).unwrap();
    assert_eq!(parsed, m);
    assert_eq!(header.version, FORMAT_VERSION);
    assert_eq!(
        header.memory_offset % PAGE_SIZE,
        0,
        "memory is page-aligned so it can be mapped"
    );
    assert_eq!(header.memory_offset, page_align(HEADER_LEN + header.metadata_len));
}

#[test]
fn every_flipped_byte_of_header_fields_or_metadata_is_refused() {
    let good = file_bytes(&metadata());
    let field_bytes = (0..112).chain(HEADER_LEN as usize..good.len());
    for at in field_bytes {
        let mut bad = good.clone();
        bad[at] ^= 0x01;
        let result = parse(&bad);
        assert!(result.is_err(), "a flipped bit at {at} went unnoticed");
    }
}

#[test]
fn a_damaged_metadata_byte_says_the_file_is_damaged_and_what_to_do() {
    let mut bytes = file_bytes(&metadata());
    let last = bytes.len() - 3;
    bytes[last] ^= 0xff;
    let e = parse(&bytes).unwrap_err();
    assert_eq!(
        e,
        FormatError::Damaged {
            what: "the metadata's checksum does not match"
        }
    );
    let text = e.to_string();
    assert!(
        text.contains("damaged") && text.contains("save the machine again"),
        "{text}"
    );
}

#[test]
fn a_version_1_file_without_a_devices_section_still_parses() {
    let mut m = metadata();
    m.devices = serde_json::Value::Null;
    let mut json = serde_json::to_value(&m).unwrap();
    json.as_object_mut().unwrap().remove("devices");
    let bytes = serde_json::to_vec(&json).unwrap();
    let mut header = Header::for_metadata(&bytes, 2 * PAGE_SIZE);
    header.version = 1;
    let mut file = header.encode();
    file.extend_from_slice(&bytes);
    let (header, parsed) = parse(&file).unwrap();
    assert_eq!(header.version, 1);
    assert_eq!(parsed, m, "no devices section reads as null");
}

#[test]
fn a_newer_format_version_is_told_apart_from_damage() {
    let mut bytes = file_bytes(&metadata());
    bytes[8..12].copy_from_slice(&(FORMAT_VERSION + 1).to_le_bytes());
    let e = parse(&bytes).unwrap_err();
    assert_eq!(
        e,
        FormatError::NewerVersion {
            found: FORMAT_VERSION + 1
        }
    );
    assert!(e.to_string().contains("newer"), "{e}");
}

#[test]
fn other_files_and_short_files_are_refused_without_panicking() {
    assert_eq!(parse(b"").unwrap_err(), FormatError::NotAStateFile);
    assert_eq!(parse(b"\x7fELF....").unwrap_err(), FormatError::NotAStateFile);
    let bytes = file_bytes(&metadata());
    for len in [8, 100, HEADER_LEN as usize, bytes.len() - 1] {
        assert!(parse(&bytes[..len]).is_err(), "cut at {len}");
    }
}

#[test]
fn memory_ranges_that_do_not_add_up_are_refused() {
    let mut m = metadata();
    m.memory[0].size = PAGE_SIZE;
    let e = parse(&file_bytes(&m)).unwrap_err();
    assert!(matches!(e, FormatError::Damaged { .. }), "{e}");
}

#[test]
fn configuration_differences_name_each_field_with_both_values() {
    let saved = serde_json::json!({"cpu_count": 2, "memory_size": 64, "platform": {"seccomp": "kill"}});
    let here = serde_json::json!({"cpu_count": 1, "memory_size": 64, "platform": {"seccomp": "off"}});
    let mut out = Vec::new();
    describe_differences("", &saved, &here, &mut out);
    assert_eq!(
        out,
        [
            "cpu_count: 2 in the file, 1 here",
            "platform.seccomp: \"kill\" in the file, \"off\" here"
        ]
    );
}
