//! The x86_64 platform layout: where things live in guest physical memory and port space.
//!
//! One place for every fixed address, so the boot loaders, the ACPI tables, the devices and the
//! test guests agree. Test guests in `crates/test-guests/asm` hard-code the same numbers.

/// Global descriptor table for the 64-bit Linux boot.
pub const BOOT_GDT_START: u64 = 0x500;
/// Interrupt descriptor table (empty) for the 64-bit Linux boot.
pub const BOOT_IDT_START: u64 = 0x520;
/// PVH `hvm_start_info` structure.
pub const PVH_INFO_START: u64 = 0x6000;
/// PVH module list (the initrd), right after the start info.
pub const PVH_MODLIST_START: u64 = 0x6040;
/// PVH memory map, after the module list.
pub const PVH_MEMMAP_START: u64 = 0x6080;
/// Linux `boot_params` ("zero page").
pub const ZERO_PAGE_START: u64 = 0x7000;
/// Initial stack pointer for the 64-bit Linux boot.
pub const BOOT_STACK_POINTER: u64 = 0x8ff0;
/// Identity-mapping page tables for the 64-bit Linux boot: PML4, PDPT, then four PDs.
pub const PML4_START: u64 = 0x9000;
pub const PDPTE_START: u64 = 0xa000;
pub const PDE_START: u64 = 0xb000;
/// Kernel command line.
pub const CMDLINE_START: u64 = 0x20000;
/// Largest command line we accept (Linux's COMMAND_LINE_SIZE on x86 is 2048).
pub const CMDLINE_MAX_SIZE: usize = 2048;
/// End of the low RAM that the e820 map reports usable (the EBDA/VGA/BIOS area follows).
pub const LOW_RAM_END: u64 = 0x9fc00;
/// Start of the BIOS area; the ACPI RSDP sits here, where Linux scans for it.
pub const BIOS_AREA_START: u64 = 0xe0000;
/// ACPI RSDP.
pub const RSDP_START: u64 = 0xe0000;
/// ACPI tables (XSDT, FADT, MADT, DSDT, ...), after the RSDP.
pub const ACPI_TABLES_START: u64 = 0xe0100;
/// End of the ACPI tables area.
pub const ACPI_TABLES_END: u64 = 0xf0000;
/// SMBIOS entry point (`_SM_`) on a direct kernel boot, where Linux scans for it
/// (0xF0000..0x100000, 16-byte aligned). The e820 map does not report this range as RAM.
pub const SMBIOS_START: u64 = 0xf0000;
/// SMBIOS structure table, right after the 31-byte entry point.
pub const SMBIOS_TABLES_START: u64 = 0xf0020;
/// End of the SMBIOS area.
pub const SMBIOS_END: u64 = 0x10_0000;
/// Where the kernel and everything above live (1 MiB).
pub const HIGH_RAM_START: u64 = 0x10_0000;
/// Start of the 32-bit MMIO hole below 4 GiB. RAM above this goes above 4 GiB.
pub const MMIO_HOLE_START: u64 = 0xc000_0000;
/// First address above 4 GiB.
pub const HIGH_MEMORY_START: u64 = 0x1_0000_0000;
/// PCI Express enhanced configuration (ECAM, "MMCONFIG") window: 4 KiB per function, 1 MiB per
/// bus, buses 0..=[`PCI_ECAM_LAST_BUS`]. The ACPI MCFG table and a motherboard-resource device in
/// the DSDT describe it, so no OS or firmware puts anything else here.
pub const PCI_ECAM_START: u64 = 0xe000_0000;
pub const PCI_ECAM_SIZE: u64 = 0x1000_0000;
pub const PCI_ECAM_LAST_BUS: u8 = 0xff;
/// The last bus the machine has: bus 0 only (no PCI bridges). The MCFG and the host bridge's
/// `_CRS` describe these buses only, not the window's 256: Linux on x86 takes the MCFG's end bus
/// as its last bus and then looks for peer host bridges on every bus up to it through port
/// 0xcf8 (`pcibios_fixup_peer_bridges`, 32 reads per bus). With 255 buses that could not exist,
/// that was 8,160 reads and ~16,700 exits, most of a stock kernel's exits to init (measured with
/// `virtkit run --stats` in the emulated KVM host: 17,950 exits and 4.55 s to init, against
/// 1,603 and 2.86 s with `pci=nommconf`).
pub const PCI_LAST_BUS: u8 = 0;
/// 32-bit PCI memory window below the ECAM, where BARs go on a direct kernel boot.
pub const PCI_MMIO32_START: u64 = MMIO_HOLE_START;
pub const PCI_MMIO32_SIZE: u64 = PCI_ECAM_START - PCI_MMIO32_START;
/// The 32-bit PCI memory above the ECAM and below the I/O APIC. Firmware (SeaBIOS) assigns BARs
/// top-down from the I/O APIC, so on a firmware boot they usually land here; the host bridge's
/// ACPI resources include it for that reason. The direct boot leaves it alone.
pub const PCI_MMIO32_HIGH_START: u64 = PCI_ECAM_START + PCI_ECAM_SIZE;
pub const PCI_MMIO32_HIGH_END: u64 = IOAPIC_START;
/// PCI I/O port window for I/O BARs (what SeaBIOS uses too).
pub const PCI_IO_START: u64 = 0xc000;
pub const PCI_IO_SIZE: u64 = 0x4000;
/// I/O APIC base (in-kernel irqchip).
pub const IOAPIC_START: u64 = 0xfec0_0000;
/// Local APIC base (in-kernel irqchip).
pub const APIC_START: u64 = 0xfee0_0000;
/// Top of the 32-bit address space: firmware images end here.
pub const FIRMWARE_END: u64 = 0x1_0000_0000;
/// Legacy BIOS window at the top of the first MiB that mirrors the end of the firmware.
pub const LEGACY_BIOS_START: u64 = 0xe0000;
pub const LEGACY_BIOS_SIZE: u64 = 0x20000;
/// The window below 1 MiB that the host bridge's PAM registers switch between RAM, read-only
/// RAM and what lies behind it (option ROMs from 0xC0000, the BIOS from 0xE0000); see `pam`.
pub const PAM_WINDOW_START: u64 = 0xc0000;
pub const PAM_WINDOW_END: u64 = 0x10_0000;

/// KVM needs three pages for the TSS and one for the identity map, in the hole below 4 GiB.
pub const KVM_TSS_ADDRESS: u64 = 0xfffb_c000;
pub const KVM_IDENTITY_MAP_ADDRESS: u64 = 0xfffb_b000;

/// Port I/O addresses of the legacy devices.
pub mod ports {
    /// i8042 keyboard controller data port.
    pub const I8042_DATA: u16 = 0x60;
    /// i8042 command/status port; writing 0xfe pulses the CPU reset line.
    pub const I8042_COMMAND: u16 = 0x64;
    /// CMOS RTC index and data ports.
    pub const CMOS_INDEX: u16 = 0x70;
    pub const CMOS_DATA: u16 = 0x71;
    /// ACPI PM1a event block: PM1_STS (2 bytes) then PM1_EN (2 bytes).
    pub const PM1A_EVT_BLK: u16 = 0x600;
    pub const PM1A_EVT_LEN: u8 = 4;
    /// ACPI PM1a control block (2 bytes).
    pub const PM1A_CNT_BLK: u16 = 0x604;
    pub const PM1A_CNT_LEN: u8 = 2;
    /// ACPI PM timer (4 bytes, 3.579545 MHz, 24 bits).
    pub const PM_TMR_BLK: u16 = 0x608;
    pub const PM_TMR_LEN: u8 = 4;
    /// COM1 16550 UART.
    pub const COM1: u16 = 0x3f8;
    pub const COM1_LEN: u16 = 8;
    /// PCI configuration mechanism #1: CONFIG_ADDRESS (dword) and CONFIG_DATA (4 bytes).
    pub const PCI_CONFIG_ADDRESS: u16 = 0xcf8;
    pub const PCI_CONFIG_DATA: u16 = 0xcfc;
    /// Both registers, as one range on the port bus.
    pub const PCI_CONFIG_LEN: u16 = 8;
}

/// Legacy interrupt lines (ISA IRQs, identity-mapped to GSIs except IRQ 0 -> GSI 2).
pub mod irqs {
    /// The i8042's keyboard (edge-triggered, ISA).
    pub const KEYBOARD: u32 = 1;
    /// The i8042's auxiliary port (the PS/2 mouse).
    pub const MOUSE: u32 = 12;
    pub const COM1: u32 = 4;
    /// ACPI System Control Interrupt: level-triggered, active high.
    pub const SCI: u32 = 9;
    pub const RTC: u32 = 8;
    /// PCI INTx lines: I/O APIC pins 16..24, level-triggered; the DSDT's `_PRT` says which slot
    /// and pin use which (see `pci::intx_gsi`).
    pub const PCI_INTX_FIRST: u32 = 16;
    pub const PCI_INTX_COUNT: u32 = 8;
    /// GSIs above the I/O APIC pins, handed out for MSI routes.
    pub const MSI_GSI_FIRST: u32 = 24;
    pub const MSI_GSI_LAST: u32 = 1023;
}

/// ACPI PM register bits.
pub mod pm {
    /// PM1_STS / PM1_EN: power button.
    pub const PWRBTN: u16 = 1 << 8;
    /// PM1_STS / PM1_EN: timer overflow.
    pub const TMR: u16 = 1 << 0;
    /// PM1_CNT: SCI_EN (ACPI mode is on; we have no SMI, so always set).
    pub const SCI_EN: u16 = 1 << 0;
    /// PM1_CNT: SLP_EN.
    pub const SLP_EN: u16 = 1 << 13;
    /// PM1_CNT: SLP_TYP field shift and mask.
    pub const SLP_TYP_SHIFT: u16 = 10;
    pub const SLP_TYP_MASK: u16 = 0x7;
    /// The SLP_TYP value of S5 (soft off), as the DSDT's `\_S5` package says.
    pub const S5_SLP_TYP: u16 = 5;
}
