//! Register state of the boot vCPU for each entry protocol.

use virtkit_hypervisor::{DescriptorTable, FpuState, Segment, StandardRegisters, Vcpu};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::linux::LinuxEntry;
use super::BootError;
use crate::layout::{BOOT_GDT_START, BOOT_IDT_START, BOOT_STACK_POINTER, PDE_START, PDPTE_START, PML4_START};

/// Where the boot vCPU starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BootEntry {
    Linux(LinuxEntry),
    /// The architectural reset state (CS:IP = F000:FFF0): KVM's default, nothing to set.
    ResetVector,
}

const CR0_PE: u64 = 1;
const CR0_ET: u64 = 1 << 4;
const CR0_PG: u64 = 1 << 31;
const CR4_PAE: u64 = 1 << 5;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;

/// Flat GDT entries: null, code, data, TSS. Code is 64-bit for the Linux 64-bit entry and
/// 32-bit for PVH.
fn gdt(long_mode: bool) -> [u64; 4] {
    let code = if long_mode {
        0x00af_9b00_0000_ffff
    } else {
        0x00cf_9b00_0000_ffff
    };
    [0, code, 0x00cf_9300_0000_ffff, 0x008f_8b00_0000_ffff]
}

fn write_gdt_idt(mem: &GuestMemoryMmap, table: &[u64; 4]) -> Result<(), BootError> {
    for (i, entry) in table.iter().enumerate() {
        mem.write_obj(*entry, GuestAddress(BOOT_GDT_START + i as u64 * 8))
            .map_err(BootError::GuestMemory)?;
    }
    mem.write_obj(0u64, GuestAddress(BOOT_IDT_START))
        .map_err(BootError::GuestMemory)
}

/// Identity-maps the first 4 GiB with 2 MiB pages: the kernel, boot_params, command line and
/// initrd all sit there.
fn write_identity_page_tables(mem: &GuestMemoryMmap) -> Result<(), BootError> {
    let w = |value: u64, at: u64| {
        mem.write_obj(value, GuestAddress(at))
            .map_err(BootError::GuestMemory)
    };
    w(PDPTE_START | 0x3, PML4_START)?;
    for gib in 0..4u64 {
        let pd = PDE_START + gib * 0x1000;
        w(pd | 0x3, PDPTE_START + gib * 8)?;
        for i in 0..512u64 {
            // Present, writable, 2 MiB page.
            w(((gib << 30) + (i << 21)) | 0x83, pd + i * 8)?;
        }
    }
    Ok(())
}

/// Sets up vCPU 0 for the chosen entry. Application processors are left in their reset state:
/// the guest starts them with INIT-SIPI-SIPI through the in-kernel LAPIC.
pub fn configure_boot_vcpu(vcpu: &Vcpu, mem: &GuestMemoryMmap, entry: BootEntry) -> Result<(), BootError> {
    let BootEntry::Linux(linux) = entry else {
        return Ok(());
    };
    vcpu.set_fpu(&FpuState::default()).map_err(BootError::Vcpu)?;
    let long_mode = matches!(linux, LinuxEntry::Long64 { .. });
    let table = gdt(long_mode);
    write_gdt_idt(mem, &table)?;
    let mut sregs = vcpu.special_registers().map_err(BootError::Vcpu)?;
    let code = Segment::from_gdt_entry(0x08, table[1]);
    let data = Segment::from_gdt_entry(0x10, table[2]);
    let tss = Segment::from_gdt_entry(0x18, table[3]);
    sregs.cs = code;
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = tss;
    sregs.gdt = DescriptorTable {
        base: BOOT_GDT_START,
        limit: (table.len() * 8 - 1) as u16,
    };
    sregs.idt = DescriptorTable {
        base: BOOT_IDT_START,
        limit: 7,
    };
    let mut regs = StandardRegisters {
        rflags: 0x2,
        ..Default::default()
    };
    match linux {
        LinuxEntry::Long64 { entry, boot_params } => {
            write_identity_page_tables(mem)?;
            sregs.cr3 = PML4_START;
            sregs.cr4 |= CR4_PAE;
            sregs.cr0 |= CR0_PE | CR0_PG | CR0_ET;
            sregs.efer |= EFER_LME | EFER_LMA;
            regs.rip = entry;
            regs.rsi = boot_params;
            regs.rsp = BOOT_STACK_POINTER;
            regs.rbp = BOOT_STACK_POINTER;
        }
        LinuxEntry::Pvh { entry, start_info } => {
            sregs.cr0 = CR0_PE | CR0_ET;
            sregs.cr4 = 0;
            sregs.efer = 0;
            regs.rip = entry;
            regs.rbx = start_info;
        }
    }
    vcpu.set_special_registers(&sregs).map_err(BootError::Vcpu)?;
    vcpu.set_registers(&regs).map_err(BootError::Vcpu)?;
    Ok(())
}

#[cfg(test)]
fn flat_code_segment(long_mode: bool) -> Segment {
    Segment::from_gdt_entry(0x08, gdt(long_mode)[1])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pvh_code_segment_is_flat_32_bit() {
        let cs = flat_code_segment(false);
        assert!(cs.db && !cs.l);
        assert_eq!((cs.base, cs.limit), (0, 0xffff_ffff));
    }

    #[test]
    fn identity_map_covers_4_gib_with_2_mib_pages() {
        let mem = crate::memory::create_guest_memory(&crate::memory::ram_ranges(16 << 20), &[]).unwrap();
        write_identity_page_tables(&mem).unwrap();
        let pml4: u64 = mem.read_obj(GuestAddress(PML4_START)).unwrap();
        assert_eq!(pml4 & !0xfff, PDPTE_START);
        // The last 2 MiB page below 4 GiB maps to itself.
        let last_pd: u64 = mem.read_obj(GuestAddress(PDPTE_START + 3 * 8)).unwrap();
        let last: u64 = mem.read_obj(GuestAddress((last_pd & !0xfff) + 511 * 8)).unwrap();
        assert_eq!(last & !0xfff, 0xffe0_0000);
        assert_eq!(last & 0x83, 0x83);
    }
}
