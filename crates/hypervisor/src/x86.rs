//! Plain x86 register types, so callers never see `kvm_bindings`.

use kvm_bindings::{kvm_cpuid_entry2, kvm_dtable, kvm_regs, kvm_segment, kvm_sregs};

/// One CPUID leaf (function, index) with its register values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct CpuidEntry {
    pub function: u32,
    pub index: u32,
    /// KVM_CPUID_FLAG_* bits; bit 0 says the index is significant.
    pub flags: u32,
    pub eax: u32,
    pub ebx: u32,
    pub ecx: u32,
    pub edx: u32,
}

/// KVM_CPUID_FLAG_SIGNIFCANT_INDEX: the leaf has sub-leaves selected by ECX.
pub const CPUID_FLAG_SIGNIFICANT_INDEX: u32 = 1;

impl From<&kvm_cpuid_entry2> for CpuidEntry {
    fn from(e: &kvm_cpuid_entry2) -> Self {
        CpuidEntry {
            function: e.function,
            index: e.index,
            flags: e.flags,
            eax: e.eax,
            ebx: e.ebx,
            ecx: e.ecx,
            edx: e.edx,
        }
    }
}

impl From<&CpuidEntry> for kvm_cpuid_entry2 {
    fn from(e: &CpuidEntry) -> Self {
        kvm_cpuid_entry2 {
            function: e.function,
            index: e.index,
            flags: e.flags,
            eax: e.eax,
            ebx: e.ebx,
            ecx: e.ecx,
            edx: e.edx,
            ..Default::default()
        }
    }
}

/// General-purpose registers, RIP and RFLAGS.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StandardRegisters {
    pub rax: u64,
    pub rbx: u64,
    pub rcx: u64,
    pub rdx: u64,
    pub rsi: u64,
    pub rdi: u64,
    pub rsp: u64,
    pub rbp: u64,
    pub r8: u64,
    pub r9: u64,
    pub r10: u64,
    pub r11: u64,
    pub r12: u64,
    pub r13: u64,
    pub r14: u64,
    pub r15: u64,
    pub rip: u64,
    pub rflags: u64,
}

impl From<kvm_regs> for StandardRegisters {
    fn from(r: kvm_regs) -> Self {
        StandardRegisters {
            rax: r.rax,
            rbx: r.rbx,
            rcx: r.rcx,
            rdx: r.rdx,
            rsi: r.rsi,
            rdi: r.rdi,
            rsp: r.rsp,
            rbp: r.rbp,
            r8: r.r8,
            r9: r.r9,
            r10: r.r10,
            r11: r.r11,
            r12: r.r12,
            r13: r.r13,
            r14: r.r14,
            r15: r.r15,
            rip: r.rip,
            rflags: r.rflags,
        }
    }
}

impl From<StandardRegisters> for kvm_regs {
    fn from(r: StandardRegisters) -> Self {
        kvm_regs {
            rax: r.rax,
            rbx: r.rbx,
            rcx: r.rcx,
            rdx: r.rdx,
            rsi: r.rsi,
            rdi: r.rdi,
            rsp: r.rsp,
            rbp: r.rbp,
            r8: r.r8,
            r9: r.r9,
            r10: r.r10,
            r11: r.r11,
            r12: r.r12,
            r13: r.r13,
            r14: r.r14,
            r15: r.r15,
            rip: r.rip,
            rflags: r.rflags,
        }
    }
}

/// A segment register with its hidden descriptor part.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Segment {
    pub base: u64,
    pub limit: u32,
    pub selector: u16,
    pub type_: u8,
    pub present: bool,
    pub dpl: u8,
    /// Default operation size (1 = 32-bit).
    pub db: bool,
    /// Code/data (true) or system (false) descriptor.
    pub s: bool,
    /// 64-bit code segment.
    pub l: bool,
    /// Granularity: limit in 4 KiB units.
    pub g: bool,
}

impl Segment {
    /// Builds a segment from a GDT entry, as the CPU would load it.
    pub fn from_gdt_entry(selector: u16, entry: u64) -> Segment {
        let base = ((entry >> 16) & 0xff_ffff) | (((entry >> 56) & 0xff) << 24);
        let limit = (entry & 0xffff) | (((entry >> 48) & 0xf) << 16);
        let g = (entry >> 55) & 1 == 1;
        Segment {
            base,
            // The hidden limit is in bytes.
            limit: if g {
                ((limit as u32) << 12) | 0xfff
            } else {
                limit as u32
            },
            selector,
            type_: ((entry >> 40) & 0xf) as u8,
            present: (entry >> 47) & 1 == 1,
            dpl: ((entry >> 45) & 0x3) as u8,
            db: (entry >> 54) & 1 == 1,
            s: (entry >> 44) & 1 == 1,
            l: (entry >> 53) & 1 == 1,
            g,
        }
    }
}

impl From<kvm_segment> for Segment {
    fn from(s: kvm_segment) -> Self {
        Segment {
            base: s.base,
            limit: s.limit,
            selector: s.selector,
            type_: s.type_,
            present: s.present != 0,
            dpl: s.dpl,
            db: s.db != 0,
            s: s.s != 0,
            l: s.l != 0,
            g: s.g != 0,
        }
    }
}

impl From<Segment> for kvm_segment {
    fn from(s: Segment) -> Self {
        kvm_segment {
            base: s.base,
            limit: s.limit,
            selector: s.selector,
            type_: s.type_,
            present: s.present.into(),
            dpl: s.dpl,
            db: s.db.into(),
            s: s.s.into(),
            l: s.l.into(),
            g: s.g.into(),
            avl: 0,
            unusable: (!s.present).into(),
            padding: 0,
        }
    }
}

/// GDTR or IDTR.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DescriptorTable {
    pub base: u64,
    pub limit: u16,
}

impl From<kvm_dtable> for DescriptorTable {
    fn from(d: kvm_dtable) -> Self {
        DescriptorTable {
            base: d.base,
            limit: d.limit,
        }
    }
}

impl From<DescriptorTable> for kvm_dtable {
    fn from(d: DescriptorTable) -> Self {
        kvm_dtable {
            base: d.base,
            limit: d.limit,
            padding: [0; 3],
        }
    }
}

/// Segment, control and descriptor-table registers that boot code sets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SpecialRegisters {
    pub cs: Segment,
    pub ds: Segment,
    pub es: Segment,
    pub fs: Segment,
    pub gs: Segment,
    pub ss: Segment,
    pub tr: Segment,
    pub ldt: Segment,
    pub gdt: DescriptorTable,
    pub idt: DescriptorTable,
    pub cr0: u64,
    pub cr2: u64,
    pub cr3: u64,
    pub cr4: u64,
    pub efer: u64,
    pub apic_base: u64,
}

impl SpecialRegisters {
    pub(crate) fn from_kvm(s: &kvm_sregs) -> Self {
        SpecialRegisters {
            cs: s.cs.into(),
            ds: s.ds.into(),
            es: s.es.into(),
            fs: s.fs.into(),
            gs: s.gs.into(),
            ss: s.ss.into(),
            tr: s.tr.into(),
            ldt: s.ldt.into(),
            gdt: s.gdt.into(),
            idt: s.idt.into(),
            cr0: s.cr0,
            cr2: s.cr2,
            cr3: s.cr3,
            cr4: s.cr4,
            efer: s.efer,
            apic_base: s.apic_base,
        }
    }

    /// Writes these values over `s`, keeping what this type does not model (CR8, the pending
    /// interrupt bitmap).
    pub(crate) fn apply_to(&self, s: &mut kvm_sregs) {
        s.cs = self.cs.into();
        s.ds = self.ds.into();
        s.es = self.es.into();
        s.fs = self.fs.into();
        s.gs = self.gs.into();
        s.ss = self.ss.into();
        s.tr = self.tr.into();
        s.ldt = self.ldt.into();
        s.gdt = self.gdt.into();
        s.idt = self.idt.into();
        s.cr0 = self.cr0;
        s.cr2 = self.cr2;
        s.cr3 = self.cr3;
        s.cr4 = self.cr4;
        s.efer = self.efer;
        s.apic_base = self.apic_base;
    }
}

/// The x87/SSE control words a booting kernel expects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FpuState {
    pub fcw: u16,
    pub mxcsr: u32,
}

impl Default for FpuState {
    fn default() -> Self {
        // The values after FNINIT and the SSE reset value.
        FpuState {
            fcw: 0x37f,
            mxcsr: 0x1f80,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gdt_entry_flat_64bit_code_segment_decodes() {
        // The boot GDT's 64-bit code entry: base 0, limit 0xfffff, G, L, P, S, type 0xb.
        let seg = Segment::from_gdt_entry(0x10, 0x00af_9b00_0000_ffff);
        assert_eq!(seg.base, 0);
        assert_eq!(seg.limit, 0xffff_ffff);
        assert!(seg.l && seg.g && seg.present && seg.s);
        assert!(!seg.db);
        assert_eq!(seg.type_, 0xb);
    }

    #[test]
    fn cpuid_entry_round_trips_through_kvm_type() {
        let e = CpuidEntry {
            function: 0xb,
            index: 1,
            flags: CPUID_FLAG_SIGNIFICANT_INDEX,
            eax: 1,
            ebx: 2,
            ecx: 3,
            edx: 4,
        };
        let k: kvm_cpuid_entry2 = (&e).into();
        assert_eq!(CpuidEntry::from(&k), e);
    }
}
