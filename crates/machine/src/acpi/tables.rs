//! The tables themselves, built with the `acpi_tables` crate where it has a builder.
//!
//! What the crate lacks and is written here by hand: the MADT's PCAT_COMPAT flag, Interrupt
//! Source Override and Local APIC NMI entries (its MADT builder has none of them, so the MADT goes
//! through its generic [`Sdt`] builder instead), and the short `IRQNoFlags` resource descriptor.

use core::mem::offset_of;

use acpi_tables::aml::{
    AddressSpace as ResourceAddressSpace, AddressSpaceCacheable, Device, EISAName, Memory32Fixed, Name,
    Package, Path, ResourceTemplate, Scope, IO, ZERO,
};
use acpi_tables::facs::FACS;
use acpi_tables::fadt::{FADTBuilder, Flags};
use acpi_tables::gas::{AccessSize, AddressSpace, GAS};
use acpi_tables::madt::{EnabledStatus, IoApic, ProcessorLocalApic};
use acpi_tables::mcfg::MCFG;
use acpi_tables::rsdp::Rsdp;
use acpi_tables::sdt::Sdt;
use acpi_tables::xsdt::XSDT;
use acpi_tables::{Aml, AmlSink};

use super::loader::{AcpiTables, Blob, LoaderCommand};
use super::{AcpiConfig, AcpiError, OEM_ID, OEM_REVISION, OEM_TABLE_ID};
use crate::devices::PVPANIC_PORT;
use crate::layout::{
    irqs, pm, ports, APIC_START, IOAPIC_START, PCI_ECAM_SIZE, PCI_ECAM_START, PCI_LAST_BUS,
    PCI_MMIO32_HIGH_END, PCI_MMIO32_HIGH_START, PCI_MMIO32_SIZE, PCI_MMIO32_START,
};
use crate::pci::{intx_gsi, SLOTS};

/// Length of the header every table but the FACS starts with.
const SDT_HEADER_LEN: usize = 36;
/// Offset of the checksum byte in that header.
const SDT_CHECKSUM_OFFSET: usize = 9;
/// The part of the RSDP that ACPI 1.0 OSes checksum.
const RSDP_V1_LEN: usize = 20;
/// The spec wants the FACS 64-byte aligned.
const FACS_ALIGN: usize = 64;
/// Not required by the spec, but keeps the XSDT's 64-bit entries naturally aligned.
const SDT_ALIGN: usize = 8;

/// FADT IAPC_BOOT_ARCH: there are user-visible ISA devices (the serial port), so the OS must not
/// assume that everything can be enumerated.
const IAPC_BOOT_ARCH_LEGACY_DEVICES: u16 = 1 << 0;
/// FADT P_LVL2_LAT / P_LVL3_LAT: anything above 100 (C2) or 1000 (C3) microseconds says the state
/// is not supported, so no OS tries the P_BLK-based C-states we do not have.
const P_LVL2_LAT_UNSUPPORTED: u16 = 0x0fff;
const P_LVL3_LAT_UNSUPPORTED: u16 = 0x0fff;
/// FADT CENTURY: the CMOS register holding the BCD century, the one PCs and our CMOS device use.
/// Without it Linux guesses the century from the two-digit year.
const CMOS_CENTURY_REGISTER: u8 = 0x32;

/// MADT revision of ACPI 6.3/6.4. The entries we emit have not changed since ACPI 1.0, so any
/// OS reads them; the value only needs to be plausible next to a revision 6 FADT.
const MADT_REVISION: u8 = 5;
/// MADT flag PCAT_COMPAT: the dual 8259 PICs exist (KVM's in-kernel irqchip emulates them), as
/// on any PC.
const MADT_PCAT_COMPAT: u32 = 1 << 0;
/// I/O APIC ID 0: what KVM's I/O APIC reports in its ID register, and what QEMU uses. A 64-bit
/// Linux only needs the ID to be unique among I/O APICs, not distinct from the local APIC IDs.
const IOAPIC_ID: u8 = 0;
/// MADT entry types and lengths the crate has no builder for.
const MADT_INTERRUPT_SOURCE_OVERRIDE: u8 = 2;
const MADT_INTERRUPT_SOURCE_OVERRIDE_LEN: u8 = 10;
const MADT_LOCAL_APIC_NMI: u8 = 4;
const MADT_LOCAL_APIC_NMI_LEN: u8 = 6;
/// MPS INTI flags of the override and NMI entries.
const INTI_ACTIVE_HIGH: u16 = 0b01;
const INTI_EDGE: u16 = 0b01 << 2;
const INTI_LEVEL: u16 = 0b11 << 2;
/// Processor UID 0xff in a Local APIC NMI entry: every processor.
const ALL_PROCESSORS: u8 = 0xff;
/// LINT1 carries NMI on a PC (LINT0 takes the 8259's ExtINT).
const NMI_LINT: u8 = 1;
/// The ISA bus in an Interrupt Source Override.
const ISA_BUS: u8 = 0;

const _: () = assert!(APIC_START <= u32::MAX as u64);
const _: () = assert!(IOAPIC_START <= u32::MAX as u64);
const _: () = assert!(
    irqs::SCI <= u16::MAX as u32
        && irqs::COM1 < 16
        && irqs::RTC < 16
        && irqs::KEYBOARD < 16
        && irqs::MOUSE < 16
);
const _: () =
    assert!(PCI_ECAM_START + PCI_ECAM_SIZE <= PCI_MMIO32_HIGH_END && PCI_MMIO32_HIGH_END <= 1 << 32);

/// Builds every table for `config` as relocatable blobs plus the loader commands that link them
/// (see [`AcpiTables::link`]), without touching guest memory.
pub fn build_tables(config: &AcpiConfig) -> Result<AcpiTables, AcpiError> {
    if config.num_cpus == 0 {
        return Err(AcpiError::NoCpus);
    }

    let mut blob = TablesBlob::default();
    // First, so that the alignment of the blob is the alignment of the FACS.
    let facs = blob.push(&aml_bytes(&FACS::new()), FACS_ALIGN);
    let dsdt = blob.push_sdt(&dsdt(config));
    let fadt = blob.push_sdt(&fadt(offset32(facs), offset32(dsdt)));
    blob.pointer(fadt + offset_of!(FADTBuilder, firmware_ctrl), 4);
    blob.pointer(fadt + offset_of!(FADTBuilder, dsdt), 4);
    blob.pointer(fadt + offset_of!(FADTBuilder, x_dsdt), 8);
    let madt = blob.push_sdt(&madt(config));
    let mcfg = blob.push_sdt(&mcfg());
    // More tables: push them here and list them.
    let listed = [fadt, madt, mcfg];

    let mut xsdt_table = XSDT::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    for &table in &listed {
        xsdt_table.add_entry(table as u64);
    }
    let xsdt = blob.push_sdt(&aml_bytes(&xsdt_table));
    for i in 0..listed.len() {
        blob.pointer(xsdt + SDT_HEADER_LEN + 8 * i, 8);
    }

    let rsdp = aml_bytes(&Rsdp::new(OEM_ID, xsdt as u64));
    let mut commands = blob.pointers;
    commands.push(LoaderCommand::AddPointer {
        blob: Blob::Rsdp,
        offset: offset_of!(Rsdp, xsdt_addr),
        size: 8,
        target: Blob::Tables,
    });
    commands.extend(blob.checksums);
    // The ACPI 1.0 checksum first: the extended one covers it.
    commands.push(LoaderCommand::AddChecksum {
        blob: Blob::Rsdp,
        offset: offset_of!(Rsdp, checksum),
        start: 0,
        len: RSDP_V1_LEN,
    });
    commands.push(LoaderCommand::AddChecksum {
        blob: Blob::Rsdp,
        offset: offset_of!(Rsdp, extended_checksum),
        start: 0,
        len: rsdp.len(),
    });
    Ok(AcpiTables::new(rsdp, blob.data, commands))
}

/// The tables blob as it is being built, with the loader commands it needs.
#[derive(Default)]
struct TablesBlob {
    data: Vec<u8>,
    pointers: Vec<LoaderCommand>,
    checksums: Vec<LoaderCommand>,
}

impl TablesBlob {
    fn push(&mut self, bytes: &[u8], align: usize) -> usize {
        let offset = self.data.len().next_multiple_of(align);
        self.data.resize(offset, 0);
        self.data.extend_from_slice(bytes);
        offset
    }

    /// Pushes a table with a standard header. Its checksum is redone after linking because the
    /// pointers inside it change.
    fn push_sdt(&mut self, table: &[u8]) -> usize {
        let offset = self.push(table, SDT_ALIGN);
        self.checksums.push(LoaderCommand::AddChecksum {
            blob: Blob::Tables,
            offset: offset + SDT_CHECKSUM_OFFSET,
            start: offset,
            len: table.len(),
        });
        offset
    }

    /// Records a pointer field at `offset` whose value is an offset into this same blob.
    fn pointer(&mut self, offset: usize, size: u8) {
        self.pointers.push(LoaderCommand::AddPointer {
            blob: Blob::Tables,
            offset,
            size,
            target: Blob::Tables,
        });
    }
}

fn aml_bytes(aml: &dyn Aml) -> Vec<u8> {
    let mut bytes = Vec::new();
    aml.to_aml_bytes(&mut bytes);
    bytes
}

/// Offsets in the blob end up in 32-bit pointer fields; the blob is a few KiB.
fn offset32(offset: usize) -> u32 {
    u32::try_from(offset).expect("the ACPI tables blob is far smaller than 4 GiB")
}

/// A fixed-size I/O port register block, for the FADT's X_ fields.
fn io_gas(port: u16, len: u8, access: AccessSize) -> GAS {
    GAS::new(AddressSpace::SystemIo, len * 8, 0, access, u64::from(port))
}

fn fadt(facs: u32, dsdt: u32) -> Vec<u8> {
    // Not hardware-reduced, no PWR_BUTTON flag: the power button is the fixed-feature one in
    // PM1. SLP_BUTTON set: there is no sleep button. TMR_VAL_EXT clear: the PM timer is 24 bits.
    let mut fadt = FADTBuilder::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION)
        .firmware_ctrl_32(facs)
        .flag(Flags::Wbinvd)
        .flag(Flags::ProcC1)
        .flag(Flags::SlpButton);
    // Both DSDT fields, equal, as QEMU fills them: ACPICA is silent while they agree, and OSes
    // that only know the 32-bit field still find it. The FACS has only the 32-bit field because
    // the spec wants X_FIRMWARE_CTRL zero when FIRMWARE_CTRL is set.
    fadt.dsdt = dsdt.into();
    fadt.x_dsdt = u64::from(dsdt).into();
    fadt.sci_int = (irqs::SCI as u16).into();
    // SMI_CMD, ACPI_ENABLE and ACPI_DISABLE stay zero: with no SMI command port, ACPICA takes
    // the machine to be in ACPI mode already (SCI_EN always reads 1) and never switches modes.
    fadt.pm1a_evt_blk = u32::from(ports::PM1A_EVT_BLK).into();
    fadt.pm1a_cnt_blk = u32::from(ports::PM1A_CNT_BLK).into();
    fadt.pm_tmr_blk = u32::from(ports::PM_TMR_BLK).into();
    fadt.pm1_evt_len = ports::PM1A_EVT_LEN;
    fadt.pm1_cnt_len = ports::PM1A_CNT_LEN;
    fadt.pm_tmr_len = ports::PM_TMR_LEN;
    // The X_ copies must agree with the legacy fields, widths included, or ACPICA warns about a
    // 32/64X mismatch. PM1 status and enable are 16-bit registers, hence word access.
    fadt.x_pm1a_evt_blk = io_gas(ports::PM1A_EVT_BLK, ports::PM1A_EVT_LEN, AccessSize::WordAccess);
    fadt.x_pm1a_cnt_blk = io_gas(ports::PM1A_CNT_BLK, ports::PM1A_CNT_LEN, AccessSize::WordAccess);
    fadt.x_pm_tmr_blk = io_gas(ports::PM_TMR_BLK, ports::PM_TMR_LEN, AccessSize::DwordAccess);
    fadt.p_lvl2_lat = P_LVL2_LAT_UNSUPPORTED.into();
    fadt.p_lvl3_lat = P_LVL3_LAT_UNSUPPORTED.into();
    fadt.century = CMOS_CENTURY_REGISTER;
    // The 8042 flag stays clear: our i8042 is only a reset line, with no keyboard controller
    // behind it, and with the flag set Linux probes it for seconds of timeouts. Without it (and
    // no PNP0303 in the DSDT) the i8042 driver does not probe; the reset through 0x64 still works.
    fadt.iapc_boot_arch = IAPC_BOOT_ARCH_LEGACY_DEVICES.into();
    aml_bytes(&fadt.finalize())
}

fn madt(config: &AcpiConfig) -> Vec<u8> {
    let mut madt = Sdt::new(*b"APIC", 44, MADT_REVISION, OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    madt.write_u32(36, APIC_START as u32);
    madt.write_u32(40, MADT_PCAT_COMPAT);
    // UID = APIC ID = index: the DSDT's processor devices find their MADT entry through the UID.
    for id in 0..config.num_cpus {
        madt.append_slice(&aml_bytes(&ProcessorLocalApic::new(
            id,
            id,
            EnabledStatus::Enabled,
        )));
    }
    madt.append_slice(&aml_bytes(&IoApic::new(IOAPIC_ID, IOAPIC_START as u32, 0)));
    // No IRQ0 -> GSI 2 override: KVM's default GSI routing delivers the in-kernel PIT on I/O APIC
    // pin 0, so the identity mapping is the truth here (as in Firecracker). Describing the PC's
    // pin 2 would need our own GSI routing table first.
    // Our SCI line is level-triggered and active-high (as QEMU's). Without this override the OS
    // assumes the ACPI default for the SCI, level and active-low, and sees the idle line as
    // asserted.
    madt.append_slice(&interrupt_source_override(
        irqs::SCI as u8,
        irqs::SCI,
        INTI_ACTIVE_HIGH | INTI_LEVEL,
    ));
    madt.append_slice(&local_apic_nmi(
        ALL_PROCESSORS,
        INTI_ACTIVE_HIGH | INTI_EDGE,
        NMI_LINT,
    ));
    madt.as_slice().to_vec()
}

/// The ECAM window for PCI segment 0.
fn mcfg() -> Vec<u8> {
    let mut mcfg = MCFG::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    mcfg.add_ecam(PCI_ECAM_START, 0, 0, PCI_LAST_BUS);
    aml_bytes(&mcfg)
}

fn interrupt_source_override(irq: u8, gsi: u32, flags: u16) -> Vec<u8> {
    let mut entry = vec![
        MADT_INTERRUPT_SOURCE_OVERRIDE,
        MADT_INTERRUPT_SOURCE_OVERRIDE_LEN,
        ISA_BUS,
        irq,
    ];
    entry.extend_from_slice(&gsi.to_le_bytes());
    entry.extend_from_slice(&flags.to_le_bytes());
    entry
}

fn local_apic_nmi(processor_uid: u8, flags: u16, lint: u8) -> Vec<u8> {
    let mut entry = vec![MADT_LOCAL_APIC_NMI, MADT_LOCAL_APIC_NMI_LEN, processor_uid];
    entry.extend_from_slice(&flags.to_le_bytes());
    entry.push(lint);
    entry
}

/// `IRQNoFlags () {n}`: the short IRQ descriptor real firmware uses for ISA devices (edge,
/// active-high, exclusive). The crate only has the Extended Interrupt descriptor.
struct IrqNoFlags(u32);

impl Aml for IrqNoFlags {
    fn to_aml_bytes(&self, sink: &mut dyn AmlSink) {
        // Small resource item, type 4 (IRQ), 2 bytes long: the mask only, flags implied.
        sink.byte(0x22);
        sink.word(1u16 << self.0);
    }
}

fn dsdt(config: &AcpiConfig) -> Vec<u8> {
    // \_S5: what to write to SLP_TYPa and SLP_TYPb for soft-off. The last two are reserved.
    let s5_slp_typ = pm::S5_SLP_TYP;
    let s5 = Package::new(vec![&s5_slp_typ, &s5_slp_typ, &ZERO, &ZERO]);
    let s5 = Name::new(Path::new("_S5_"), &s5);

    // Under \_SB rather than a PCI/ISA bridge: there is no PCI host bridge (yet). Described at
    // all so that the serial and RTC drivers bind through PNP as on real hardware, with the
    // resources coming from here instead of hard-coded defaults.
    let com1_io = IO::new(ports::COM1, ports::COM1, 1, ports::COM1_LEN as u8);
    let com1_irq = IrqNoFlags(irqs::COM1);
    let com1_crs = ResourceTemplate::new(vec![&com1_io, &com1_irq]);
    let com1_hid = Name::new(Path::new("_HID"), &EISAName::new("PNP0501"));
    let com1_uid = Name::new(Path::new("_UID"), &0u8);
    let com1_crs = Name::new(Path::new("_CRS"), &com1_crs);
    let com1 = Device::new(Path::new("COM1"), vec![&com1_hid, &com1_uid, &com1_crs]);

    let rtc_io = IO::new(ports::CMOS_INDEX, ports::CMOS_INDEX, 1, 2);
    let rtc_irq = IrqNoFlags(irqs::RTC);
    let rtc_crs = ResourceTemplate::new(vec![&rtc_io, &rtc_irq]);
    let rtc_hid = Name::new(Path::new("_HID"), &EISAName::new("PNP0B00"));
    let rtc_crs = Name::new(Path::new("_CRS"), &rtc_crs);
    let rtc = Device::new(Path::new("RTC_"), vec![&rtc_hid, &rtc_crs]);

    // pvpanic, as QEMU describes it: Linux's pvpanic driver binds to QEMU0001 and writes to the
    // port when the kernel panics, so a crash ends the VM with a reason instead of a hang.
    let panic_io = IO::new(PVPANIC_PORT, PVPANIC_PORT, 1, 1);
    let panic_crs = ResourceTemplate::new(vec![&panic_io]);
    let panic_hid = Name::new(Path::new("_HID"), &"QEMU0001");
    let panic_crs = Name::new(Path::new("_CRS"), &panic_crs);
    let pvpanic = Device::new(Path::new("PEVT"), vec![&panic_hid, &panic_crs]);

    // Processor devices, not needed for SMP (the MADT is enough) but present on real machines;
    // Linux binds its ACPI processor driver to them and matches each to its MADT entry by
    // _UID. Device(ACPI0007) rather than the Processor op, deprecated since ACPI 6.0.
    let cpu_hid = Name::new(Path::new("_HID"), &"ACPI0007");
    let cpu_uids: Vec<Name> = (0..config.num_cpus)
        .map(|uid| Name::new(Path::new("_UID"), &uid))
        .collect();
    let cpus: Vec<Device> = cpu_uids
        .iter()
        .enumerate()
        .map(|(uid, cpu_uid)| {
            Device::new(
                Path::new(&format!("C{uid:03X}")),
                vec![&cpu_hid, cpu_uid as &dyn Aml],
            )
        })
        .collect();

    let pci = PciHostBridge::new();
    let pci = pci.device();
    // The ECAM window as a motherboard resource: Linux uses the MCFG's window only when firmware
    // reserved it, in the e820 map or here.
    let ecam_mem = Memory32Fixed::new(true, PCI_ECAM_START as u32, PCI_ECAM_SIZE as u32);
    let ecam_crs = ResourceTemplate::new(vec![&ecam_mem]);
    let ecam_hid = Name::new(Path::new("_HID"), &EISAName::new("PNP0C02"));
    let ecam_uid = Name::new(Path::new("_UID"), &1u8);
    let ecam_crs = Name::new(Path::new("_CRS"), &ecam_crs);
    let ecam = Device::new(Path::new("ECAM"), vec![&ecam_hid, &ecam_uid, &ecam_crs]);

    // The i8042's keyboard and mouse, as QEMU describes them: the controller's two ports and
    // IRQ 1 on the keyboard, IRQ 12 on the mouse.
    let kbd_data = IO::new(ports::I8042_DATA, ports::I8042_DATA, 1, 1);
    let kbd_command = IO::new(ports::I8042_COMMAND, ports::I8042_COMMAND, 1, 1);
    let kbd_irq = IrqNoFlags(irqs::KEYBOARD);
    let kbd_crs = ResourceTemplate::new(vec![&kbd_data, &kbd_command, &kbd_irq]);
    let kbd_hid = Name::new(Path::new("_HID"), &EISAName::new("PNP0303"));
    let kbd_crs = Name::new(Path::new("_CRS"), &kbd_crs);
    let keyboard = Device::new(Path::new("PS2K"), vec![&kbd_hid, &kbd_crs]);
    let mouse_irq = IrqNoFlags(irqs::MOUSE);
    let mouse_crs = ResourceTemplate::new(vec![&mouse_irq]);
    let mouse_hid = Name::new(Path::new("_HID"), &EISAName::new("PNP0F13"));
    let mouse_crs = Name::new(Path::new("_CRS"), &mouse_crs);
    let mouse = Device::new(Path::new("PS2M"), vec![&mouse_hid, &mouse_crs]);

    let mut sb_children: Vec<&dyn Aml> = vec![&com1, &rtc, &pvpanic, &pci, &ecam];
    if config.ps2 {
        sb_children.extend([&keyboard as &dyn Aml, &mouse]);
    }
    sb_children.extend(cpus.iter().map(|cpu| cpu as &dyn Aml));
    let sb = Scope::new(Path::new("\\_SB_"), sb_children);

    let mut dsdt = Sdt::new(*b"DSDT", 36, 2, OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    dsdt.append_slice(&aml_bytes(&s5));
    dsdt.append_slice(&aml_bytes(&sb));
    dsdt.as_slice().to_vec()
}

/// The PCI host bridge `\_SB.PCI0`: bus 0 and the windows it forwards, and the `_PRT` that says
/// which GSI each slot's INTx pins drive (no link devices: the GSIs are fixed, level-triggered).
struct PciHostBridge {
    hid: Name,
    uid: Name,
    bbn: Name,
    crs: Name,
    prt: Name,
}

impl PciHostBridge {
    fn new() -> PciHostBridge {
        let buses = ResourceAddressSpace::new_bus_number(0u16, u16::from(PCI_LAST_BUS));
        let config_ports = IO::new(
            ports::PCI_CONFIG_ADDRESS,
            ports::PCI_CONFIG_ADDRESS,
            1,
            ports::PCI_CONFIG_LEN as u8,
        );
        let io_low = ResourceAddressSpace::new_io(0u16, ports::PCI_CONFIG_ADDRESS - 1, None);
        let io_high =
            ResourceAddressSpace::new_io(ports::PCI_CONFIG_ADDRESS + ports::PCI_CONFIG_LEN, 0xffff, None);
        let mem_low = ResourceAddressSpace::new_memory(
            AddressSpaceCacheable::NotCacheable,
            true,
            PCI_MMIO32_START as u32,
            (PCI_MMIO32_START + PCI_MMIO32_SIZE - 1) as u32,
            None,
        );
        let mem_high = ResourceAddressSpace::new_memory(
            AddressSpaceCacheable::NotCacheable,
            true,
            PCI_MMIO32_HIGH_START as u32,
            (PCI_MMIO32_HIGH_END - 1) as u32,
            None,
        );
        let crs = ResourceTemplate::new(vec![
            &buses,
            &config_ports,
            &io_low,
            &io_high,
            &mem_low,
            &mem_high,
        ]);

        // Package {Address (slot << 16 | 0xffff: any function), Pin (0 = INTA#), Source (0: a
        // GSI, not a link device), Source Index (the GSI)}, for every slot and pin.
        let entries: Vec<(u32, u8, u32)> = (0..SLOTS)
            .flat_map(|slot| {
                (1..=4u8).map(move |pin| (u32::from(slot) << 16 | 0xffff, pin - 1, intx_gsi(slot, pin)))
            })
            .collect();
        let packages: Vec<Package> = entries
            .iter()
            .map(|(address, pin, gsi)| Package::new(vec![address, pin, &ZERO, gsi]))
            .collect();
        let prt = Package::new(packages.iter().map(|p| p as &dyn Aml).collect());

        PciHostBridge {
            hid: Name::new(Path::new("_HID"), &EISAName::new("PNP0A03")),
            uid: Name::new(Path::new("_UID"), &0u8),
            bbn: Name::new(Path::new("_BBN"), &0u8),
            crs: Name::new(Path::new("_CRS"), &crs),
            prt: Name::new(Path::new("_PRT"), &prt),
        }
    }

    fn device(&self) -> Device<'_> {
        Device::new(
            Path::new("PCI0"),
            vec![&self.hid, &self.uid, &self.bbn, &self.crs, &self.prt],
        )
    }
}
