//! The device as a guest sees it, through its ports and guest memory, with parsers written from
//! the specification (and SeaBIOS's reading of it) rather than from the code under test.

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::*;
use crate::acpi::{build_tables, AcpiConfig};
use crate::boot::{E820_RAM, E820_RESERVED};

const MEM_SIZE: usize = 1 << 20;
/// Where the tests put their `FWCfgDmaAccess`.
const ACCESS: u64 = 0x1000;
/// Where DMA reads land.
const BUFFER: u64 = 0x2000;

fn memory() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap()
}

fn device() -> (FwCfg, GuestMemoryMmap) {
    let mem = memory();
    (FwCfg::new(mem.clone()), mem)
}

/// `outw key, 0x510`.
fn select(dev: &mut FwCfg, key: u16) {
    dev.write(SELECTOR_OFFSET, &key.to_le_bytes());
}

/// `len` times `inb 0x511`.
fn read_bytes(dev: &mut FwCfg, len: usize) -> Vec<u8> {
    (0..len)
        .map(|_| {
            let mut b = [0xffu8];
            dev.read(DATA_OFFSET, &mut b);
            b[0]
        })
        .collect()
}

fn read_item(dev: &mut FwCfg, key: u16, len: usize) -> Vec<u8> {
    select(dev, key);
    read_bytes(dev, len)
}

/// Puts a `FWCfgDmaAccess` at `at` and writes its address to the ports the way SeaBIOS does:
/// the high half, then the low half (which starts the operation). Returns the control word
/// the device left.
fn dma(dev: &mut FwCfg, mem: &GuestMemoryMmap, at: u64, control: u32, length: u32, address: u64) -> u32 {
    let mut access = Vec::new();
    access.extend_from_slice(&control.to_be_bytes());
    access.extend_from_slice(&length.to_be_bytes());
    access.extend_from_slice(&address.to_be_bytes());
    mem.write_slice(&access, GuestAddress(at)).unwrap();
    dev.write(DMA_HIGH_OFFSET, &((at >> 32) as u32).to_be_bytes());
    dev.write(DMA_LOW_OFFSET, &(at as u32).to_be_bytes());
    let mut control = [0u8; 4];
    mem.read_slice(&mut control, GuestAddress(at)).unwrap();
    u32::from_be_bytes(control)
}

fn guest_bytes(mem: &GuestMemoryMmap, at: u64, len: usize) -> Vec<u8> {
    let mut buf = vec![0; len];
    mem.read_slice(&mut buf, GuestAddress(at)).unwrap();
    buf
}

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes(b[at..at + 4].try_into().unwrap())
}

fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}

/// A C string out of a fixed-size name field: everything before the first NUL, and the field
/// must have one.
fn name_field(field: &[u8]) -> String {
    let end = field.iter().position(|b| *b == 0).expect("NUL-terminated name");
    String::from_utf8(field[..end].to_vec()).unwrap()
}

#[derive(Debug, PartialEq, Eq)]
struct DirEntry {
    name: String,
    key: u16,
    size: u32,
}

/// The file directory, read through the data port as SeaBIOS reads it without DMA.
fn directory(dev: &mut FwCfg) -> Vec<DirEntry> {
    let count = be32(&read_item(dev, keys::FILE_DIR, 4), 0);
    (0..count)
        .map(|_| {
            let e = read_bytes(dev, 64);
            assert_eq!(&e[6..8], [0, 0], "reserved");
            DirEntry {
                size: be32(&e, 0),
                key: u16::from_be_bytes([e[4], e[5]]),
                name: name_field(&e[8..64]),
            }
        })
        .collect()
}

fn find_file(dev: &mut FwCfg, name: &str) -> DirEntry {
    directory(dev)
        .into_iter()
        .find(|e| e.name == name)
        .unwrap_or_else(|| panic!("{name} not in the directory"))
}

#[test]
fn signature_reads_qemu_through_the_data_port_then_zeros() {
    let (mut dev, _) = device();
    assert_eq!(read_item(&mut dev, keys::SIGNATURE, 6), b"QEMU\0\0");
    // Selecting again rewinds; byte-wide selector writes work too.
    dev.write(SELECTOR_OFFSET, &[0]);
    assert_eq!(read_bytes(&mut dev, 2), b"QE");
}

#[test]
fn id_says_port_and_dma_and_wider_reads_return_consecutive_bytes() {
    let (mut dev, _) = device();
    select(&mut dev, keys::ID);
    let mut id = [0u8; 4];
    dev.read(DATA_OFFSET, &mut id);
    assert_eq!(u32::from_le_bytes(id), ID_TRADITIONAL | ID_DMA);
    assert_eq!(u32::from_le_bytes(id), 3);
    // A 2-byte read of the signature: the next two bytes, in order.
    select(&mut dev, keys::SIGNATURE);
    let mut two = [0u8; 2];
    dev.read(DATA_OFFSET, &mut two);
    assert_eq!(&two, b"QE");
    dev.read(DATA_OFFSET, &mut two);
    assert_eq!(&two, b"MU");
}

#[test]
fn dma_address_register_reads_the_dma_signature() {
    let (mut dev, _) = device();
    let mut high = [0u8; 4];
    let mut low = [0u8; 4];
    dev.read(DMA_HIGH_OFFSET, &mut high);
    dev.read(DMA_LOW_OFFSET, &mut low);
    let value = (u64::from(u32::from_be_bytes(high)) << 32) | u64::from(u32::from_be_bytes(low));
    assert_eq!(value, 0x5145_4d55_2043_4647);
}

#[test]
fn unknown_selector_reads_zeros_and_the_selector_port_reads_zero() {
    let (mut dev, _) = device();
    assert_eq!(read_item(&mut dev, 0x0017, 8), [0; 8]);
    assert_eq!(read_item(&mut dev, 0x3fff, 3), [0; 3]);
    assert_eq!(read_item(&mut dev, 0x8123, 3), [0; 3]);
    let mut sel = [0xffu8; 2];
    dev.read(SELECTOR_OFFSET, &mut sel);
    assert_eq!(sel, [0, 0]);
}

#[test]
fn directory_lists_files_in_order_with_sizes_and_keys() {
    let (mut dev, _) = device();
    assert_eq!(directory(&mut dev), vec![]);
    let a = dev.add_file("etc/a", vec![1, 2, 3]).unwrap();
    let b = dev.add_file("opt/org.virtkit/b", vec![0; 300]).unwrap();
    assert_eq!((a, b), (0x20, 0x21));
    assert_eq!(
        directory(&mut dev),
        vec![
            DirEntry {
                name: "etc/a".into(),
                key: 0x20,
                size: 3
            },
            DirEntry {
                name: "opt/org.virtkit/b".into(),
                key: 0x21,
                size: 300
            },
        ]
    );
    assert_eq!(dev.file_key("etc/a"), Some(0x20));
    assert_eq!(dev.file_key("etc/c"), None);
}

#[test]
fn a_file_found_by_name_reads_bytewise_and_through_dma() {
    let (dev, mem) = device();
    let content: Vec<u8> = (0..1000u32).map(|i| (i * 7) as u8).collect();
    let mut dev = dev;
    dev.add_file("etc/other", vec![9; 10]).unwrap();
    dev.add_file("etc/data", content.clone()).unwrap();
    let file = find_file(&mut dev, "etc/data");
    assert_eq!(file.size, 1000);

    assert_eq!(read_item(&mut dev, file.key, 1000), content);

    // Select and read in one DMA operation, as SeaBIOS's qemu_cfg_read_entry does.
    let control = (u32::from(file.key) << 16) | dma::SELECT | dma::READ;
    assert_eq!(dma(&mut dev, &mem, ACCESS, control, 1000, BUFFER), 0);
    assert_eq!(guest_bytes(&mem, BUFFER, 1000), content);

    // Two reads continue where the first stopped.
    select(&mut dev, file.key);
    assert_eq!(read_bytes(&mut dev, 1), [content[0]]);
    assert_eq!(dma(&mut dev, &mem, ACCESS, dma::READ, 99, BUFFER), 0);
    assert_eq!(guest_bytes(&mem, BUFFER, 99), content[1..100]);
    assert_eq!(read_bytes(&mut dev, 1), [content[100]]);
}

#[test]
fn dma_read_past_the_end_fills_zeros() {
    let (mut dev, mem) = device();
    let key = dev.add_file("etc/short", vec![0xaa; 5]).unwrap();
    mem.write_slice(&[0x55; 16], GuestAddress(BUFFER)).unwrap();
    let control = (u32::from(key) << 16) | dma::SELECT | dma::READ;
    assert_eq!(dma(&mut dev, &mem, ACCESS, control, 8, BUFFER), 0);
    assert_eq!(
        guest_bytes(&mem, BUFFER, 16),
        [0xaa, 0xaa, 0xaa, 0xaa, 0xaa, 0, 0, 0, 0x55, 0x55, 0x55, 0x55, 0x55, 0x55, 0x55, 0x55]
    );
    // Once past the end, the data port reads zeros too.
    assert_eq!(read_bytes(&mut dev, 2), [0, 0]);
}

#[test]
fn dma_skip_moves_the_offset() {
    let (mut dev, mem) = device();
    let key = dev.add_file("etc/data", (0..=255u8).collect()).unwrap();
    let control = (u32::from(key) << 16) | dma::SELECT | dma::SKIP;
    assert_eq!(dma(&mut dev, &mem, ACCESS, control, 100, 0), 0);
    assert_eq!(read_bytes(&mut dev, 2), [100, 101]);
    assert_eq!(dma(&mut dev, &mem, ACCESS, dma::SKIP, 50, 0), 0);
    assert_eq!(dma(&mut dev, &mem, ACCESS, dma::READ, 3, BUFFER), 0);
    assert_eq!(guest_bytes(&mem, BUFFER, 3), [152, 153, 154]);
    // Skipping past the end leaves the offset at the end.
    assert_eq!(dma(&mut dev, &mem, ACCESS, dma::SKIP, u32::MAX, 0), 0);
    assert_eq!(read_bytes(&mut dev, 1), [0]);
}

#[test]
fn dma_select_alone_and_a_64_bit_write_work() {
    let (mut dev, mem) = device();
    let control = (u32::from(keys::SIGNATURE) << 16) | dma::SELECT;
    assert_eq!(dma(&mut dev, &mem, ACCESS, control, 0, 0), 0);
    assert_eq!(read_bytes(&mut dev, 4), b"QEMU");

    // One 8-byte big-endian write (the MMIO flavour) also starts an operation.
    let mut access = Vec::new();
    access.extend_from_slice(&((u32::from(keys::ID) << 16) | dma::SELECT | dma::READ).to_be_bytes());
    access.extend_from_slice(&4u32.to_be_bytes());
    access.extend_from_slice(&BUFFER.to_be_bytes());
    mem.write_slice(&access, GuestAddress(ACCESS)).unwrap();
    dev.write(DMA_HIGH_OFFSET, &ACCESS.to_be_bytes());
    assert_eq!(guest_bytes(&mem, ACCESS, 4), [0; 4]);
    assert_eq!(le32(&guest_bytes(&mem, BUFFER, 4), 0), 3);
}

#[test]
fn dma_to_a_bad_address_sets_the_error_bit_and_writes_nothing() {
    let (mut dev, mem) = device();
    let key = dev.add_file("etc/data", vec![0x11; 64]).unwrap();
    let control = (u32::from(key) << 16) | dma::SELECT | dma::READ;
    // Entirely outside guest memory.
    assert_eq!(
        dma(&mut dev, &mem, ACCESS, control, 64, 0x1_0000_0000),
        dma::ERROR
    );
    // Straddling the end of guest memory: not even the part inside is written.
    let near_end = MEM_SIZE as u64 - 16;
    assert_eq!(dma(&mut dev, &mem, ACCESS, control, 64, near_end), dma::ERROR);
    assert_eq!(guest_bytes(&mem, near_end, 16), [0; 16]);
    // Wrapping around the address space.
    assert_eq!(dma(&mut dev, &mem, ACCESS, control, 64, u64::MAX - 8), dma::ERROR);
    // A length far beyond guest memory, past the item's end.
    assert_eq!(dma(&mut dev, &mem, ACCESS, control, u32::MAX, BUFFER), dma::ERROR);
    // The device still works.
    assert_eq!(dma(&mut dev, &mem, ACCESS, control, 64, BUFFER), 0);
    assert_eq!(guest_bytes(&mem, BUFFER, 64), [0x11; 64]);
}

#[test]
fn dma_access_structure_outside_memory_is_ignored_without_panicking() {
    let (mut dev, _) = device();
    dev.write(DMA_HIGH_OFFSET, &0x10u32.to_be_bytes());
    dev.write(DMA_LOW_OFFSET, &0u32.to_be_bytes());
    // Straddling the end of memory.
    dev.write(DMA_LOW_OFFSET, &(MEM_SIZE as u32 - 8).to_be_bytes());
    // Odd-sized writes to the DMA registers and data port writes are ignored.
    dev.write(DMA_LOW_OFFSET, &[1, 2]);
    dev.write(DATA_OFFSET, &[1]);
    dev.write(SELECTOR_OFFSET, &[]);
    dev.read(SELECTOR_OFFSET, &mut []);
    dev.read(DATA_OFFSET, &mut []);
    assert_eq!(read_item(&mut dev, keys::SIGNATURE, 4), b"QEMU");
}

#[test]
fn dma_write_is_refused_with_the_error_bit_and_changes_nothing() {
    let (mut dev, mem) = device();
    let key = dev.add_file("etc/data", vec![0x11; 8]).unwrap();
    mem.write_slice(&[0x99; 8], GuestAddress(BUFFER)).unwrap();
    let control = (u32::from(key) << 16) | dma::SELECT | dma::WRITE;
    assert_eq!(dma(&mut dev, &mem, ACCESS, control, 8, BUFFER), dma::ERROR);
    assert_eq!(dev.item(key).unwrap(), [0x11; 8]);
    assert_eq!(read_item(&mut dev, key, 8), [0x11; 8]);
}

#[test]
fn selector_bit_14_selects_the_same_item() {
    let (mut dev, _) = device();
    assert_eq!(read_item(&mut dev, keys::SIGNATURE | 0x4000, 4), b"QEMU");
}

#[test]
fn numbered_items_are_little_endian_and_reserved_keys_are_refused() {
    let (dev, _) = device();
    let mut dev = dev
        .with_ram_size(0x1_2345_6789)
        .unwrap()
        .with_cpus(4, 8)
        .unwrap()
        .with_boot_menu(false)
        .unwrap();
    assert_eq!(
        read_item(&mut dev, keys::RAM_SIZE, 8),
        0x1_2345_6789u64.to_le_bytes()
    );
    assert_eq!(read_item(&mut dev, keys::NB_CPUS, 2), [4, 0]);
    assert_eq!(read_item(&mut dev, keys::MAX_CPUS, 2), [8, 0]);
    assert_eq!(read_item(&mut dev, keys::BOOT_MENU, 2), [0, 0]);
    assert_eq!(dev.item(keys::NUMA).unwrap(), vec![0; 8 * 9]);
    dev.add_u32(keys::IRQ0_OVERRIDE, 1).unwrap();
    assert_eq!(read_item(&mut dev, keys::IRQ0_OVERRIDE, 4), [1, 0, 0, 0]);

    for key in [
        keys::SIGNATURE,
        keys::ID,
        keys::FILE_DIR,
        keys::FILE_FIRST,
        0x3fff,
        0x4003,
    ] {
        assert_eq!(
            dev.add_u16(key, 1),
            Err(FwCfgError::ReservedKey { key }),
            "{key:#x}"
        );
    }
}

#[test]
fn bad_file_names_and_duplicates_are_refused() {
    let (mut dev, _) = device();
    let long = "x".repeat(56);
    for name in ["", long.as_str(), "a\0b", "é"] {
        assert!(
            matches!(dev.add_file(name, vec![]), Err(FwCfgError::BadFileName { .. })),
            "{name:?}"
        );
    }
    dev.add_file(&"y".repeat(55), vec![]).unwrap();
    dev.add_file("etc/x", vec![]).unwrap();
    assert_eq!(
        dev.add_file("etc/x", vec![]),
        Err(FwCfgError::DuplicateFile { name: "etc/x".into() })
    );
    assert_eq!(find_file(&mut dev, &"y".repeat(55)).size, 0);
}

#[test]
fn e820_file_has_20_byte_entries() {
    let map = [
        E820Entry {
            address: 0,
            size: 0x8000_0000,
            kind: E820_RAM,
        },
        E820Entry {
            address: 0xfeff_c000,
            size: 0x4000,
            kind: E820_RESERVED,
        },
    ];
    let (dev, _) = device();
    let mut dev = dev.with_e820(&map).unwrap();
    let file = find_file(&mut dev, "etc/e820");
    assert_eq!(file.size, 40);
    let data = read_item(&mut dev, file.key, 40);
    let parsed: Vec<E820Entry> = data
        .chunks(20)
        .map(|e| E820Entry {
            address: u64::from_le_bytes(e[0..8].try_into().unwrap()),
            size: u64::from_le_bytes(e[8..16].try_into().unwrap()),
            kind: le32(e, 16),
        })
        .collect();
    assert_eq!(parsed, map);
}

#[test]
fn bootorder_is_newline_separated_and_nul_terminated() {
    let (dev, _) = device();
    let mut dev = dev
        .with_bootorder(["/pci@i0cf8/*@4", "/pci@i0cf8/*@5"])
        .unwrap()
        .with_boot_fail_wait_ms(1500)
        .unwrap();
    let file = find_file(&mut dev, "bootorder");
    assert_eq!(
        read_item(&mut dev, file.key, file.size as usize),
        b"/pci@i0cf8/*@4\n/pci@i0cf8/*@5\0"
    );
    let wait = find_file(&mut dev, "etc/boot-fail-wait");
    assert_eq!(read_item(&mut dev, wait.key, 4), 1500u32.to_le_bytes());

    let (dev, _) = device();
    assert!(matches!(
        dev.with_bootorder(["a\nb"]),
        Err(FwCfgError::BadBootOrderEntry { .. })
    ));
}

/// A parsed `etc/table-loader` command.
#[derive(Debug, PartialEq, Eq)]
enum Command {
    Allocate {
        file: String,
        align: u32,
        zone: u8,
    },
    AddPointer {
        dest: String,
        src: String,
        offset: u32,
        size: u8,
    },
    AddChecksum {
        file: String,
        offset: u32,
        start: u32,
        length: u32,
    },
}

/// Parses the loader with the byte offsets of SeaBIOS's `romfile_loader_entry_s`.
fn parse_loader(data: &[u8]) -> Vec<Command> {
    assert_eq!(data.len() % 128, 0, "128-byte entries");
    data.chunks(128)
        .map(|e| match le32(e, 0) {
            1 => {
                assert!(e[65..].iter().all(|b| *b == 0), "padding");
                Command::Allocate {
                    file: name_field(&e[4..60]),
                    align: le32(e, 60),
                    zone: e[64],
                }
            }
            2 => {
                assert!(e[121..].iter().all(|b| *b == 0), "padding");
                Command::AddPointer {
                    dest: name_field(&e[4..60]),
                    src: name_field(&e[60..116]),
                    offset: le32(e, 116),
                    size: e[120],
                }
            }
            3 => {
                assert!(e[72..].iter().all(|b| *b == 0), "padding");
                Command::AddChecksum {
                    file: name_field(&e[4..60]),
                    offset: le32(e, 60),
                    start: le32(e, 64),
                    length: le32(e, 68),
                }
            }
            c => panic!("unknown command {c}"),
        })
        .collect()
}

fn acpi_device(num_cpus: u8) -> (FwCfg, AcpiTables) {
    let tables = build_tables(&AcpiConfig { num_cpus, ps2: false }).unwrap();
    let (dev, _) = device();
    (dev.with_acpi(&tables).unwrap(), tables)
}

#[test]
fn table_loader_has_the_right_128_byte_entries() {
    let (mut dev, tables) = acpi_device(2);
    let rsdp = find_file(&mut dev, "etc/acpi/rsdp");
    let blob = find_file(&mut dev, "etc/acpi/tables");
    let loader = find_file(&mut dev, "etc/table-loader");
    assert_eq!(rsdp.size as usize, tables.blob(Blob::Rsdp).len());
    assert_eq!(blob.size as usize, tables.blob(Blob::Tables).len());
    assert_eq!(
        read_item(&mut dev, rsdp.key, rsdp.size as usize),
        tables.blob(Blob::Rsdp)
    );
    assert_eq!(
        read_item(&mut dev, blob.key, blob.size as usize),
        tables.blob(Blob::Tables)
    );

    let commands = parse_loader(&read_item(&mut dev, loader.key, loader.size as usize));
    assert_eq!(commands.len(), 2 + tables.commands().len());
    assert_eq!(
        commands[0],
        Command::Allocate {
            file: "etc/acpi/tables".into(),
            align: 64,
            zone: 1
        }
    );
    assert_eq!(
        commands[1],
        Command::Allocate {
            file: "etc/acpi/rsdp".into(),
            align: 16,
            zone: 2
        }
    );
    // Each command after the allocations is the in-tree one, field for field.
    for (parsed, ours) in commands[2..].iter().zip(tables.commands()) {
        let expected = match *ours {
            LoaderCommand::AddPointer {
                blob,
                offset,
                size,
                target,
            } => Command::AddPointer {
                dest: blob.fw_cfg_file().into(),
                src: target.fw_cfg_file().into(),
                offset: offset as u32,
                size,
            },
            LoaderCommand::AddChecksum {
                blob,
                offset,
                start,
                len,
            } => Command::AddChecksum {
                file: blob.fw_cfg_file().into(),
                offset: offset as u32,
                start: start as u32,
                length: len as u32,
            },
        };
        assert_eq!(*parsed, expected);
    }
    // The RSDP's pointer to the XSDT is an 8-byte pointer into the tables at offset 24.
    assert!(commands.contains(&Command::AddPointer {
        dest: "etc/acpi/rsdp".into(),
        src: "etc/acpi/tables".into(),
        offset: 24,
        size: 8
    }));
    // Both RSDP checksums: ACPI 1.0 (byte 8 over 20 bytes) and extended (byte 32 over 36).
    assert!(commands.contains(&Command::AddChecksum {
        file: "etc/acpi/rsdp".into(),
        offset: 8,
        start: 0,
        length: 20
    }));
    assert!(commands.contains(&Command::AddChecksum {
        file: "etc/acpi/rsdp".into(),
        offset: 32,
        start: 0,
        length: 36
    }));
    // Every file a command names was allocated before it.
    let mut allocated = Vec::new();
    for command in &commands {
        match command {
            Command::Allocate { file, .. } => allocated.push(file.clone()),
            Command::AddPointer { dest, src, .. } => {
                assert!(allocated.contains(dest) && allocated.contains(src))
            }
            Command::AddChecksum { file, .. } => assert!(allocated.contains(file)),
        }
    }
}

/// Runs the loader the way SeaBIOS does (allocate, add pointers, subtract checksums), from the
/// fw_cfg files alone, and checks the result equals our own linking for the same addresses.
#[test]
fn executing_the_table_loader_gives_the_same_tables_as_linking_them() {
    for num_cpus in [1, 4, 255] {
        let (mut dev, tables) = acpi_device(num_cpus);
        let loader = find_file(&mut dev, "etc/table-loader");
        let commands = parse_loader(&read_item(&mut dev, loader.key, loader.size as usize));
        let mut placed: Vec<(String, u64, Vec<u8>)> = Vec::new();
        let addresses = [("etc/acpi/tables", 0x7ffe_0000u64), ("etc/acpi/rsdp", 0xf_5a30)];
        for command in &commands {
            match command {
                Command::Allocate { file, align, zone } => {
                    let (_, address) = addresses.iter().find(|(n, _)| n == file).unwrap();
                    assert_eq!(address % u64::from(*align), 0);
                    assert_eq!(*zone == 2, (0xe0000..0x100000).contains(address));
                    let entry = find_file(&mut dev, file);
                    let data = read_item(&mut dev, entry.key, entry.size as usize);
                    placed.push((file.clone(), *address, data));
                }
                Command::AddPointer {
                    dest,
                    src,
                    offset,
                    size,
                } => {
                    let src_address = placed.iter().find(|p| p.0 == *src).unwrap().1;
                    let dest = &mut placed.iter_mut().find(|p| p.0 == *dest).unwrap().2;
                    let field = &mut dest[*offset as usize..*offset as usize + usize::from(*size)];
                    let mut value = [0u8; 8];
                    value[..field.len()].copy_from_slice(field);
                    let patched = u64::from_le_bytes(value) + src_address;
                    let n = field.len();
                    field.copy_from_slice(&patched.to_le_bytes()[..n]);
                }
                Command::AddChecksum {
                    file,
                    offset,
                    start,
                    length,
                } => {
                    let data = &mut placed.iter_mut().find(|p| p.0 == *file).unwrap().2;
                    let sum = data[*start as usize..(*start + *length) as usize]
                        .iter()
                        .fold(0u8, |a, b| a.wrapping_add(*b));
                    data[*offset as usize] = data[*offset as usize].wrapping_sub(sum);
                }
            }
        }
        let linked = tables.link(addresses[1].1, addresses[0].1).unwrap();
        let blob = |name: &str| &placed.iter().find(|p| p.0 == name).unwrap().2;
        assert_eq!(*blob("etc/acpi/tables"), linked.blob(Blob::Tables));
        assert_eq!(*blob("etc/acpi/rsdp"), linked.blob(Blob::Rsdp));
        assert_eq!(&blob("etc/acpi/rsdp")[..8], b"RSD PTR ");
    }
}

#[test]
fn the_device_sits_on_a_port_bus_at_0x510() {
    use std::sync::{Arc, Mutex};

    use crate::bus::Bus;

    let (dev, _) = device();
    // `mut` for a bus whose `insert` takes `&mut self`.
    #[allow(unused_mut)]
    let mut bus = Bus::new();
    bus.insert(
        FW_CFG_PORT_BASE.into(),
        FW_CFG_PORT_LEN,
        Arc::new(Mutex::new(dev)),
    )
    .unwrap();
    assert!(bus.write(FW_CFG_PORT_SELECTOR.into(), &0u16.to_le_bytes()));
    let mut sig = Vec::new();
    for _ in 0..4 {
        let mut b = [0u8];
        assert!(bus.read(FW_CFG_PORT_DATA.into(), &mut b));
        sig.push(b[0]);
    }
    assert_eq!(sig, b"QEMU");
    let mut dma_sig = [0u8; 4];
    assert!(bus.read(FW_CFG_PORT_DMA_LOW.into(), &mut dma_sig));
    assert_eq!(&dma_sig, b" CFG");
    assert!(!bus.read(u64::from(FW_CFG_PORT_BASE) + FW_CFG_PORT_LEN, &mut [0u8]));
}
