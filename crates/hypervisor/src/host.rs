use std::path::Path;

use kvm_ioctls::Cap;

use crate::error::{ioctl, HypervisorError};
use crate::vm::Vm;
use crate::x86::CpuidEntry;
use crate::Result;

/// What kind of KVM this host has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KvmFlavor {
    /// KVM on hardware virtualization (VT-x or AMD-V): stock guest kernels run.
    Hardware,
    /// PVM (`kvm_pvm`): KVM without hardware virtualization. Only PVM-enlightened guest kernels
    /// run at full speed; stock kernels stop in early boot at an instruction the emulator lacks.
    Pvm,
    /// Some other KVM vendor module we do not recognise.
    Unknown,
}

impl KvmFlavor {
    /// Tells the flavor from the host's modules and CPU flags.
    pub fn detect() -> KvmFlavor {
        if Path::new("/sys/module/kvm_pvm").exists() {
            return KvmFlavor::Pvm;
        }
        if Path::new("/sys/module/kvm_intel").exists() || Path::new("/sys/module/kvm_amd").exists() {
            return KvmFlavor::Hardware;
        }
        KvmFlavor::Unknown
    }
}

/// Limits and features of the host's KVM.
#[derive(Debug, Clone)]
pub struct HostKvmInfo {
    pub flavor: KvmFlavor,
    pub api_version: i32,
    /// Most vCPUs a VM may have (KVM_CAP_MAX_VCPUS).
    pub max_vcpus: usize,
    /// vCPUs KVM recommends at most (KVM_CAP_NR_VCPUS).
    pub recommended_vcpus: usize,
    /// Memory slots per VM.
    pub max_memslots: usize,
    pub irqchip: bool,
    pub ioeventfd: bool,
    pub irqfd: bool,
    pub immediate_exit: bool,
}

/// An open `/dev/kvm`.
#[derive(Debug)]
pub struct Kvm {
    kvm: kvm_ioctls::Kvm,
}

impl Kvm {
    /// Opens `/dev/kvm` and checks the API version.
    pub fn open() -> Result<Kvm> {
        let kvm = kvm_ioctls::Kvm::new()
            .map_err(|e| HypervisorError::OpenKvm(std::io::Error::from_raw_os_error(e.errno())))?;
        let version = kvm.get_api_version();
        if version != kvm_bindings::KVM_API_VERSION as i32 {
            return Err(HypervisorError::ApiVersion(version));
        }
        Ok(Kvm { kvm })
    }

    /// Reports what this KVM is and what it allows.
    pub fn info(&self) -> HostKvmInfo {
        HostKvmInfo {
            flavor: KvmFlavor::detect(),
            api_version: self.kvm.get_api_version(),
            max_vcpus: self.kvm.get_max_vcpus(),
            recommended_vcpus: self.kvm.get_nr_vcpus(),
            max_memslots: self.kvm.get_nr_memslots(),
            irqchip: self.kvm.check_extension(Cap::Irqchip),
            ioeventfd: self.kvm.check_extension(Cap::Ioeventfd),
            irqfd: self.kvm.check_extension(Cap::Irqfd),
            immediate_exit: self.kvm.check_extension(Cap::ImmediateExit),
        }
    }

    /// Whether the in-kernel LAPIC offers the TSC-deadline timer mode. `KVM_GET_SUPPORTED_CPUID`
    /// never sets its CPUID bit: the VMM sets it when this says so.
    pub fn tsc_deadline_timer(&self) -> bool {
        self.kvm.check_extension(Cap::TscDeadlineTimer)
    }

    /// Whether guest port writes can be coalesced (`KVM_CAP_COALESCED_PIO`,
    /// [`crate::Vm::coalesce_port_writes`]).
    pub fn coalesced_pio(&self) -> bool {
        self.kvm.check_extension(Cap::CoalescedPio)
    }

    /// The CPUID leaves this KVM can give a guest.
    pub fn supported_cpuid(&self) -> Result<Vec<CpuidEntry>> {
        let cpuid = self
            .kvm
            .get_supported_cpuid(kvm_bindings::KVM_MAX_CPUID_ENTRIES)
            .map_err(ioctl("KVM_GET_SUPPORTED_CPUID"))?;
        Ok(cpuid.as_slice().iter().map(CpuidEntry::from).collect())
    }

    /// Creates an empty VM.
    pub fn create_vm(&self) -> Result<Vm> {
        for (cap, name) in [
            (Cap::Irqchip, "IRQCHIP"),
            (Cap::Ioeventfd, "IOEVENTFD"),
            (Cap::Irqfd, "IRQFD"),
            (Cap::UserMemory, "USER_MEMORY"),
            (Cap::ImmediateExit, "IMMEDIATE_EXIT"),
        ] {
            if !self.kvm.check_extension(cap) {
                return Err(HypervisorError::MissingCapability(name));
            }
        }
        let fd = self.kvm.create_vm().map_err(ioctl("KVM_CREATE_VM"))?;
        let msr_list = match self.kvm.get_msr_index_list() {
            Ok(list) => list.as_slice().to_vec(),
            Err(e) => {
                // Saved state then holds only the MSRs virtkit always tries (TSC, kvmclock).
                tracing::warn!("KVM_GET_MSR_INDEX_LIST failed ({e}); saved vCPU state keeps only the TSC and paravirtual MSRs");
                Vec::new()
            }
        };
        Ok(Vm::new(fd, self.kvm.get_nr_memslots(), msr_list))
    }
}
