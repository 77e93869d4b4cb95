//! The virtkit x86_64 machine: guest memory, vCPUs, boot setup, ACPI, buses and legacy devices.
//!
//! A [`Machine`] is built from a [`MachineConfig`], started, and waited on; a [`MachineHandle`]
//! pauses, resumes, presses the power button or stops it from other threads.

pub mod acpi;
pub mod boot;
pub mod bus;
pub mod cpuid;
pub mod devices;
pub mod exit_stats;
pub mod interrupt;
pub mod ioevent;
pub mod layout;
mod machine;
pub mod memory;
pub mod pam;
pub mod pci;
pub mod ratelimit;
pub mod smbios;
pub mod snapshot;
mod vcpu;
mod vcpu_threads;

pub use boot::BootSource;
pub use exit_stats::{AddressSpace, ExitStats, RangeExits, VcpuExits};
pub use machine::{ExitReason, Machine, MachineConfig, MachineError, MachineHandle};
pub use smbios::SmbiosIdentity;
pub use snapshot::{SaveSummary, SnapshotError};
pub use vcpu::{CaptureError, PauseOutcome};

/// Re-exported for [`warn_ratelimited`].
#[doc(hidden)]
pub use tracing;
