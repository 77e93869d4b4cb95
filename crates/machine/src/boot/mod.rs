//! Getting a guest's first instruction to run: the memory map the guest is told about, the
//! Linux boot protocols (64-bit bzImage and PVH ELF, 64- or 32-bit), and the firmware reset
//! vector.

mod e820;
pub mod elf32;
mod firmware;
mod linux;
mod regs;
mod variable_store;

use std::path::PathBuf;

pub use e820::{e820_map, firmware_e820_map, E820Entry, E820_RAM, E820_RESERVED};
pub use firmware::{load_firmware, mirror_isa_bios, FirmwareImage, FIRMWARE_MAX_SIZE};
pub use linux::{check_kernel, load_linux, KernelNeeds, LinuxBoot, LinuxEntry};
pub use regs::{configure_boot_vcpu, BootEntry};
pub use variable_store::{open_variable_store, VariableStore, VariableStoreError};

/// What to boot.
#[derive(Debug, Clone)]
pub enum BootSource {
    /// A Linux kernel: a bzImage (64-bit boot protocol) or an ELF (ELFCLASS64 vmlinux, or
    /// ELFCLASS32) with a PVH entry note.
    Linux {
        kernel: PathBuf,
        initrd: Option<PathBuf>,
        command_line: String,
    },
    /// A firmware image that starts at the reset vector: a BIOS, or EFI (OVMF's code) with its
    /// variable store (`variables`), which becomes the CFI flash right below the code and brings
    /// the PIIX4's power-management function OVMF looks for.
    Firmware {
        path: PathBuf,
        variables: Option<PathBuf>,
    },
}

/// Why a guest could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    #[error("cannot read {what} {path}")]
    Read {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is neither a bzImage nor an ELF kernel with a PVH entry note")]
    NotAKernel { path: PathBuf },
    #[error("{path} is an ELF kernel without a PVH entry note (XEN_ELFNOTE_PHYS32_ENTRY); build it with CONFIG_PVH=y or boot its bzImage")]
    NoPvhNote { path: PathBuf },
    #[error("{path} is a 32-bit ELF kernel that cannot be booted")]
    BadElf32 {
        path: PathBuf,
        #[source]
        source: elf32::Elf32Error,
    },
    #[error("cannot load the kernel {path} into guest memory")]
    LoadKernel {
        path: PathBuf,
        #[source]
        source: linux_loader::loader::Error,
    },
    #[error("the initrd {path} ({size} bytes) does not fit in guest memory below {limit:#x} after the kernel; give the guest more memory")]
    InitrdTooLarge { path: PathBuf, size: u64, limit: u64 },
    #[error("the kernel {path} decompresses into memory up to {needed:#x} ({} MiB), but the guest has RAM only up to {available:#x}; give the guest more than {} MiB", needed >> 20, needed >> 20)]
    KernelNeedsMoreMemory {
        path: PathBuf,
        needed: u64,
        available: u64,
    },
    #[error("the kernel command line is {len} bytes; the limit is {max}")]
    CommandLineTooLong { len: usize, max: usize },
    #[error("the kernel command line is invalid: {0}")]
    CommandLine(String),
    #[error(
        "the firmware image {path} is {size} bytes; it must be a multiple of 4 KiB and at most {max} bytes"
    )]
    FirmwareSize { path: PathBuf, size: u64, max: u64 },
    #[error(transparent)]
    VariableStore(#[from] VariableStoreError),
    #[error("writing boot data to guest memory failed")]
    GuestMemory(#[source] vm_memory::GuestMemoryError),
    #[error("setting up the boot vCPU failed")]
    Vcpu(#[source] virtkit_hypervisor::HypervisorError),
}
