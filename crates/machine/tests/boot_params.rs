//! What the loaders write for the stock Debian kernel, read back from guest memory the way the
//! kernel reads it: `boot_params` for the bzImage, `hvm_start_info` for the PVH ELF; and for an
//! ELF32 PVH kernel (a test guest), compared with the ELF64 one. No KVM.

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use virtkit_machine::boot::{load_linux, LinuxEntry};
use virtkit_machine::layout::{CMDLINE_START, PVH_INFO_START, RSDP_START, ZERO_PAGE_START};
use virtkit_machine::memory::{create_guest_memory, ram_ranges};

const MEMORY: u64 = 256 << 20;
const CMDLINE: &str = "console=ttyS0 virtkit.token=boot-params";

fn memory() -> GuestMemoryMmap {
    create_guest_memory(&ram_ranges(MEMORY), &[]).unwrap()
}

fn read<T: vm_memory::ByteValued>(mem: &GuestMemoryMmap, at: u64) -> T {
    mem.read_obj(GuestAddress(at)).unwrap()
}

fn cmdline_at(mem: &GuestMemoryMmap, at: u64) -> String {
    let mut buf = vec![0u8; CMDLINE.len() + 1];
    mem.read_slice(&mut buf, GuestAddress(at)).unwrap();
    assert_eq!(buf.last(), Some(&0), "NUL-terminated");
    String::from_utf8(buf[..CMDLINE.len()].to_vec()).unwrap()
}

#[test]
fn bzimage_boot_params_carry_cmdline_initrd_e820_and_rsdp() {
    let Some(assets) = virtkit_testkit::require_assets() else {
        return;
    };
    let mem = memory();
    let boot = load_linux(
        &mem,
        MEMORY,
        assets.vmlinuz(),
        Some(assets.guest_initramfs()),
        CMDLINE,
        true,
    )
    .unwrap();
    let LinuxEntry::Long64 { entry, boot_params } = boot.entry else {
        panic!("a bzImage enters through the 64-bit protocol: {:?}", boot.entry)
    };
    assert_eq!(boot_params, ZERO_PAGE_START);
    assert_eq!(
        entry,
        0x10_0000 + 0x200,
        "startup_64 is 0x200 into the protected-mode kernel at 1 MiB"
    );
    let zp = ZERO_PAGE_START;
    // Offsets from Documentation/arch/x86/boot.rst and zero-page.rst.
    assert_eq!(read::<u32>(&mem, zp + 0x202), 0x5372_6448, "HdrS");
    assert_eq!(read::<u8>(&mem, zp + 0x210), 0xff, "type_of_loader: undefined");
    assert_eq!(
        read::<u32>(&mem, zp + 0x228) as u64,
        CMDLINE_START,
        "cmd_line_ptr"
    );
    assert_eq!(cmdline_at(&mem, CMDLINE_START), CMDLINE);
    let (initrd_addr, initrd_size) = boot.initrd.unwrap();
    assert_eq!(read::<u32>(&mem, zp + 0x218) as u64, initrd_addr, "ramdisk_image");
    assert_eq!(read::<u32>(&mem, zp + 0x21c) as u64, initrd_size, "ramdisk_size");
    assert_eq!(
        initrd_size,
        std::fs::metadata(assets.guest_initramfs()).unwrap().len()
    );
    assert!(initrd_addr + initrd_size <= MEMORY && initrd_addr >= boot.kernel_end);
    assert_eq!(read::<u64>(&mem, zp + 0x070), RSDP_START, "acpi_rsdp_addr");
    let entries = read::<u8>(&mem, zp + 0x1e8);
    assert_eq!(entries, 2, "e820_entries");
    let e820 = |i: u64| -> (u64, u64, u32) {
        let at = zp + 0x2d0 + i * 20;
        (read(&mem, at), read(&mem, at + 8), read(&mem, at + 16))
    };
    assert_eq!(e820(0), (0, 0x9fc00, 1));
    assert_eq!(e820(1), (0x10_0000, MEMORY - 0x10_0000, 1));
    // The initrd bytes are in guest memory where the header says.
    let first: [u8; 2] = read(&mem, initrd_addr);
    assert_eq!(first, [0x1f, 0x8b], "gzip magic of the initramfs");
}

#[test]
fn pvh_start_info_carries_cmdline_module_memmap_and_rsdp() {
    let Some(assets) = virtkit_testkit::require_assets() else {
        return;
    };
    let mem = memory();
    let boot = load_linux(
        &mem,
        MEMORY,
        assets.vmlinux(),
        Some(assets.guest_initramfs()),
        CMDLINE,
        true,
    )
    .unwrap();
    let LinuxEntry::Pvh { entry, start_info } = boot.entry else {
        panic!("an ELF vmlinux enters through PVH: {:?}", boot.entry)
    };
    assert_eq!(start_info, PVH_INFO_START);
    assert!(
        entry > 0x100_0000 && entry < boot.kernel_end,
        "entry {entry:#x} inside the kernel"
    );
    let si = PVH_INFO_START;
    // struct hvm_start_info (xen/include/public/arch-x86/hvm/start_info.h).
    assert_eq!(read::<u32>(&mem, si), 0x336e_c578, "magic");
    assert_eq!(read::<u32>(&mem, si + 4), 1, "version");
    assert_eq!(read::<u32>(&mem, si + 12), 1, "nr_modules");
    let modlist: u64 = read(&mem, si + 16);
    assert_eq!(read::<u64>(&mem, si + 24), CMDLINE_START);
    assert_eq!(cmdline_at(&mem, CMDLINE_START), CMDLINE);
    assert_eq!(read::<u64>(&mem, si + 32), RSDP_START, "rsdp_paddr");
    let memmap: u64 = read(&mem, si + 40);
    assert_eq!(read::<u32>(&mem, si + 48), 2, "memmap_entries");
    let (initrd_addr, initrd_size) = boot.initrd.unwrap();
    assert_eq!(
        (read::<u64>(&mem, modlist), read::<u64>(&mem, modlist + 8)),
        (initrd_addr, initrd_size)
    );
    assert_eq!(
        (read::<u64>(&mem, memmap + 24), read::<u64>(&mem, memmap + 32)),
        (0x10_0000, MEMORY - 0x10_0000)
    );
    assert_eq!(read::<u32>(&mem, memmap + 24 + 16), 1, "RAM");
}

/// An ELF32 PVH kernel (the `hello_elf32` test guest) is loaded at its segments' `p_paddr` and
/// gets exactly the `hvm_start_info`, module list and memory map the ELF64 one (`hello`) gets.
#[test]
fn an_elf32_pvh_kernel_gets_the_same_start_info_as_an_elf64_one() {
    use virtkit_machine::boot::elf32;
    use virtkit_test_guests::Guest;

    let initrd = std::env::temp_dir().join(format!("virtkit-elf32-initrd-{}", std::process::id()));
    std::fs::write(&initrd, vec![0x42; 5000]).unwrap();
    let boot_it = |guest: Guest| {
        let mem = memory();
        let boot = load_linux(&mem, MEMORY, guest.path(), Some(&initrd), CMDLINE, true).unwrap();
        (mem, boot)
    };
    let (mem32, boot32) = boot_it(Guest::HelloElf32);
    let (mem64, boot64) = boot_it(Guest::Hello);
    std::fs::remove_file(&initrd).ok();

    let image = elf32::parse(Guest::HelloElf32.bytes()).unwrap();
    assert_eq!(
        boot32.entry,
        LinuxEntry::Pvh {
            entry: u64::from(image.entry),
            start_info: PVH_INFO_START
        }
    );
    assert_eq!(boot32.entry, boot64.entry, "both link pvh_entry at 1 MiB");
    assert_eq!(boot32.kernel_end, image.end());
    assert_eq!(boot32.initrd, boot64.initrd);
    let area = |mem: &GuestMemoryMmap| {
        let mut b = vec![0u8; 0x200];
        mem.read_slice(&mut b, GuestAddress(PVH_INFO_START)).unwrap();
        b
    };
    assert_eq!(
        area(&mem32),
        area(&mem64),
        "hvm_start_info, module list and memory map"
    );
    assert_eq!(read::<u32>(&mem32, PVH_INFO_START), 0x336e_c578, "magic");
    assert_eq!(cmdline_at(&mem32, CMDLINE_START), CMDLINE);

    for seg in &image.segments {
        let file = &Guest::HelloElf32.bytes()[seg.offset as usize..][..seg.filesz as usize];
        let mut loaded = vec![0xffu8; seg.memsz as usize];
        mem32
            .read_slice(&mut loaded, GuestAddress(u64::from(seg.paddr)))
            .unwrap();
        assert_eq!(&loaded[..file.len()], file, "segment {} at p_paddr", seg.index);
        assert!(
            loaded[file.len()..].iter().all(|b| *b == 0),
            "segment {} zero-filled",
            seg.index
        );
    }
}
