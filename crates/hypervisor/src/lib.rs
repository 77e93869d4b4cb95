//! KVM access for virtkit.
//!
//! This is the only crate that issues KVM ioctls. Everything above it talks to [`Kvm`], [`Vm`]
//! and [`Vcpu`] in terms of the plain types defined here, so `kvm_bindings` types never leave
//! the crate.

mod coalesced;
mod error;
mod host;
mod routing;
mod state;
mod teardown;
mod vcpu;
mod vcpu_state;
mod vm;
mod vm_state;
mod x86;

pub use coalesced::CoalescedSink;
pub use error::HypervisorError;
pub use host::{HostKvmInfo, Kvm, KvmFlavor};
pub use routing::{GsiRoute, IrqChip};
pub use state::{FpuSnapshot, MsrValue, VcpuState, VmState};
pub use vcpu::{Vcpu, VcpuExit};
pub use vm::{IoEventAddress, Vm};
pub use x86::{
    CpuidEntry, DescriptorTable, FpuState, Segment, SpecialRegisters, StandardRegisters,
    CPUID_FLAG_SIGNIFICANT_INDEX,
};

/// Result type of this crate.
pub type Result<T> = std::result::Result<T, HypervisorError>;
