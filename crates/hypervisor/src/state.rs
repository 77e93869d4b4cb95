//! Saved vCPU and VM state as plain, serde-able bytes and numbers.
//!
//! KVM's state structures are fixed C layouts of the kernel ABI. They are kept here as their
//! bytes (checked for length when read back) so that no `kvm_bindings` type leaves this crate
//! and a state file needs no schema of its own for them. A file is therefore only good for a
//! host with the same KVM ABI, which `KVM_API_VERSION` (12 since 2007) and the x86 layouts keep
//! stable.

use serde::{Deserialize, Serialize};

use crate::x86::CpuidEntry;

/// One model-specific register and its value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct MsrValue {
    pub index: u32,
    pub data: u64,
}

/// The x87/SSE/AVX register file, in the richest form this KVM gave.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum FpuSnapshot {
    /// `KVM_GET_XSAVE`: the 4 KiB XSAVE area.
    Xsave(Vec<u8>),
    /// `KVM_GET_FPU` (x87 and SSE only), where this KVM has no XSAVE (recorded, not hidden).
    Legacy(Vec<u8>),
}

/// Everything KVM keeps for one vCPU.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VcpuState {
    /// `KVM_GET_MP_STATE` (running, halted, waiting for INIT or SIPI).
    pub mp_state: u32,
    /// `struct kvm_regs`.
    pub regs: Vec<u8>,
    /// `struct kvm_sregs` (with CR8 and the pending interrupt bitmap).
    pub sregs: Vec<u8>,
    pub fpu: FpuSnapshot,
    /// `struct kvm_xcrs`; `None` where this KVM has no `KVM_GET_XCRS`.
    pub xcrs: Option<Vec<u8>>,
    /// `struct kvm_debugregs`; `None` where this KVM has no `KVM_GET_DEBUGREGS`.
    pub debug_regs: Option<Vec<u8>>,
    /// `struct kvm_lapic_state`: the in-kernel local APIC's registers.
    pub lapic: Vec<u8>,
    /// Every MSR KVM lists as saveable that reads back on this vCPU (TSC and kvmclock's
    /// included).
    pub msrs: Vec<MsrValue>,
    /// `struct kvm_vcpu_events`: pending exceptions, interrupts, NMIs and SMIs.
    pub events: Vec<u8>,
    /// The CPUID the vCPU was given.
    pub cpuid: Vec<CpuidEntry>,
    /// The guest's TSC frequency in kHz; `None` where this KVM cannot say.
    pub tsc_khz: Option<u32>,
}

/// What KVM keeps for the whole VM: the in-kernel irqchip, the PIT and the kvmclock.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmState {
    /// `struct kvm_irqchip` of the master PIC, the slave PIC and the IOAPIC.
    pub pic_master: Vec<u8>,
    pub pic_slave: Vec<u8>,
    pub ioapic: Vec<u8>,
    /// `struct kvm_pit_state2`.
    pub pit: Vec<u8>,
    /// The kvmclock's value in ns (`KVM_GET_CLOCK`); `None` where this KVM has no
    /// `KVM_GET_CLOCK`.
    pub clock_ns: Option<u64>,
}

/// A C structure of the KVM ABI that may be copied to and from bytes.
///
/// # Safety
///
/// Implement only for `#[repr(C)]` bindgen structures of plain integers (and arrays and unions
/// of them) whose padding is spelled out as fields, so every byte is initialised and every bit
/// pattern is a valid value.
pub(crate) unsafe trait KvmAbi: Default {}

// SAFETY: each is a bindgen `#[repr(C)]` struct of integers with explicit padding fields.
unsafe impl KvmAbi for kvm_bindings::kvm_regs {}
// SAFETY: as above (kvm_segment and kvm_dtable carry their padding as fields).
unsafe impl KvmAbi for kvm_bindings::kvm_sregs {}
// SAFETY: as above.
unsafe impl KvmAbi for kvm_bindings::kvm_fpu {}
// SAFETY: as above (an array of u32 plus a flexible array of size 0).
unsafe impl KvmAbi for kvm_bindings::kvm_xsave {}
// SAFETY: as above.
unsafe impl KvmAbi for kvm_bindings::kvm_xcrs {}
// SAFETY: as above.
unsafe impl KvmAbi for kvm_bindings::kvm_debugregs {}
// SAFETY: as above (1024 chars).
unsafe impl KvmAbi for kvm_bindings::kvm_lapic_state {}
// SAFETY: as above (nested event structs with explicit pad fields).
unsafe impl KvmAbi for kvm_bindings::kvm_vcpu_events {}
// SAFETY: as above (chip id, pad, and a union that is an array of 512 chars at its largest).
unsafe impl KvmAbi for kvm_bindings::kvm_irqchip {}
// SAFETY: as above.
unsafe impl KvmAbi for kvm_bindings::kvm_pit_state2 {}

/// The bytes of `value`.
pub(crate) fn to_bytes<T: KvmAbi>(value: &T) -> Vec<u8> {
    // SAFETY: `KvmAbi` promises every byte of `T` is initialised; the slice covers exactly
    // `value` and lives only for the copy.
    unsafe { std::slice::from_raw_parts((value as *const T).cast::<u8>(), size_of::<T>()) }.to_vec()
}

/// The value whose bytes are `bytes`, or `None` when the length is not `T`'s.
pub(crate) fn from_bytes<T: KvmAbi>(bytes: &[u8]) -> Option<T> {
    if bytes.len() != size_of::<T>() {
        return None;
    }
    let mut value = T::default();
    // SAFETY: `bytes` and `value` are both `size_of::<T>()` long and do not overlap; `KvmAbi`
    // promises any bit pattern is a valid `T`.
    unsafe {
        std::ptr::copy_nonoverlapping(bytes.as_ptr(), (&mut value as *mut T).cast::<u8>(), bytes.len());
    }
    Some(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kvm_structures_round_trip_through_bytes_and_refuse_another_length() {
        let regs = kvm_bindings::kvm_regs {
            rax: 1,
            rip: 0x1234,
            rflags: 2,
            ..Default::default()
        };
        let bytes = to_bytes(&regs);
        assert_eq!(bytes.len(), size_of::<kvm_bindings::kvm_regs>());
        let back: kvm_bindings::kvm_regs = from_bytes(&bytes).unwrap();
        assert_eq!(back.rip, 0x1234);
        assert_eq!(back.rax, 1);
        assert!(from_bytes::<kvm_bindings::kvm_regs>(&bytes[1..]).is_none());
    }
}
