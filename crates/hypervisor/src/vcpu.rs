use kvm_bindings::{kvm_fpu, kvm_msr_entry, CpuId, Msrs, KVM_SYSTEM_EVENT_RESET, KVM_SYSTEM_EVENT_SHUTDOWN};
use kvm_ioctls::{VcpuExit as KvmExit, VcpuFd};

use crate::coalesced::{CoalescedRing, CoalescedSink};
use crate::error::{ioctl, HypervisorError};
use crate::x86::{CpuidEntry, FpuState, SpecialRegisters, StandardRegisters};
use crate::Result;

/// Why `KVM_RUN` returned.
#[derive(Debug)]
pub enum VcpuExit<'a> {
    /// `out` to a port; the data is what the guest wrote.
    IoOut { port: u16, data: &'a [u8] },
    /// `in` from a port; fill `data` before the next run.
    IoIn { port: u16, data: &'a mut [u8] },
    /// A read of an address with no memory behind it; fill `data`.
    MmioRead { address: u64, data: &'a mut [u8] },
    /// A write to an address with no memory behind it.
    MmioWrite { address: u64, data: &'a [u8] },
    /// The guest halted with no in-kernel irqchip to wait for it.
    Hlt,
    /// Triple fault: the guest is dead.
    Shutdown,
    /// The guest asked for a reset through a KVM system event.
    SystemReset,
    /// The guest asked to power off through a KVM system event.
    SystemShutdown,
    /// KVM could not continue the guest (`KVM_EXIT_INTERNAL_ERROR`).
    InternalError { suberror: u32 },
    /// The hardware refused to enter the guest.
    FailEntry { reason: u64 },
    /// A signal interrupted `KVM_RUN` (someone kicked this vCPU), or immediate exit was set.
    Interrupted,
    /// Any other exit, by its KVM exit reason.
    Unhandled(&'static str),
}

/// A KVM vCPU.
#[derive(Debug)]
pub struct Vcpu {
    pub(crate) fd: VcpuFd,
    /// The MSRs to save, shared by the VM's vCPUs (see `vcpu_state`).
    pub(crate) msrs: std::sync::Arc<crate::vcpu_state::SaveableMsrs>,
    /// The VM's ring of coalesced port writes, when it has one, and where they are replayed.
    coalesced: Option<CoalescedRing>,
    coalesced_sink: Option<SinkBox>,
}

/// A [`CoalescedSink`] with a `Debug` that says nothing.
struct SinkBox(CoalescedSink);

impl std::fmt::Debug for SinkBox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CoalescedSink")
    }
}

const MSR_IA32_MISC_ENABLE: u32 = 0x1a0;
const MISC_ENABLE_FAST_STRING: u64 = 1;

impl Vcpu {
    pub(crate) fn new(
        fd: VcpuFd,
        msrs: std::sync::Arc<crate::vcpu_state::SaveableMsrs>,
        coalesced: Option<CoalescedRing>,
    ) -> Vcpu {
        Vcpu {
            fd,
            msrs,
            coalesced,
            coalesced_sink: None,
        }
    }

    /// Where the port writes the VM coalesces ([`crate::Vm::coalesce_port_writes`]) are
    /// replayed, in order, each time `KVM_RUN` returns and before the exit is reported. Until
    /// it is set they wait in the ring.
    pub fn set_coalesced_sink(&mut self, sink: CoalescedSink) {
        self.coalesced_sink = Some(SinkBox(sink));
    }

    /// Runs the guest until the next exit that needs the VMM.
    pub fn run(&mut self) -> Result<VcpuExit<'_>> {
        // The kvm_run page outlives this call; keep a pointer to read the internal-error
        // details, which kvm-ioctls does not decode.
        let run_page: *const kvm_bindings::kvm_run = self.fd.get_kvm_run();
        let result = self.fd.run();
        // Before the exit is handled: an `in` from the CMOS data port must find the index the
        // guest wrote before it.
        if let (Some(ring), Some(SinkBox(sink))) = (&self.coalesced, &mut self.coalesced_sink) {
            ring.drain(sink);
        }
        let exit = match result {
            Ok(exit) => exit,
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                return Ok(VcpuExit::Interrupted)
            }
            Err(e) => return Err(ioctl("KVM_RUN")(e)),
        };
        Ok(match exit {
            KvmExit::IoOut(port, data) => VcpuExit::IoOut { port, data },
            KvmExit::IoIn(port, data) => VcpuExit::IoIn { port, data },
            KvmExit::MmioRead(address, data) => VcpuExit::MmioRead { address, data },
            KvmExit::MmioWrite(address, data) => VcpuExit::MmioWrite { address, data },
            KvmExit::Hlt => VcpuExit::Hlt,
            KvmExit::Shutdown => VcpuExit::Shutdown,
            KvmExit::Intr => VcpuExit::Interrupted,
            KvmExit::FailEntry(reason, _) => VcpuExit::FailEntry { reason },
            KvmExit::SystemEvent(kind, _) => match kind {
                KVM_SYSTEM_EVENT_RESET => VcpuExit::SystemReset,
                KVM_SYSTEM_EVENT_SHUTDOWN => VcpuExit::SystemShutdown,
                _ => VcpuExit::Unhandled("KVM_EXIT_SYSTEM_EVENT"),
            },
            KvmExit::InternalError => {
                // SAFETY: `run_page` points at this vCPU's mmapped kvm_run, valid while `self.fd`
                // lives; for KVM_EXIT_INTERNAL_ERROR the kernel fills the `internal` member of
                // the exit-reason union, so this reads initialised data.
                let suberror = unsafe { (*run_page).__bindgen_anon_1.internal.suberror };
                VcpuExit::InternalError { suberror }
            }
            KvmExit::Exception => VcpuExit::Unhandled("KVM_EXIT_EXCEPTION"),
            KvmExit::Debug(_) => VcpuExit::Unhandled("KVM_EXIT_DEBUG"),
            KvmExit::IrqWindowOpen => VcpuExit::Unhandled("KVM_EXIT_IRQ_WINDOW_OPEN"),
            KvmExit::Unknown => VcpuExit::Unhandled("KVM_EXIT_UNKNOWN"),
            _ => VcpuExit::Unhandled("an exit reason virtkit does not handle"),
        })
    }

    /// Makes the next `run` return at once with [`VcpuExit::Interrupted`] (or not).
    pub fn set_immediate_exit(&mut self, on: bool) {
        self.fd.set_kvm_immediate_exit(on.into());
    }

    pub fn set_cpuid(&self, entries: &[CpuidEntry]) -> Result<()> {
        let kvm_entries: Vec<_> = entries.iter().map(Into::into).collect();
        let cpuid = CpuId::from_entries(&kvm_entries).map_err(|_| HypervisorError::Ioctl {
            op: "KVM_SET_CPUID2 (too many entries)",
            source: std::io::Error::from_raw_os_error(libc::E2BIG),
        })?;
        self.fd.set_cpuid2(&cpuid).map_err(ioctl("KVM_SET_CPUID2"))
    }

    pub fn registers(&self) -> Result<StandardRegisters> {
        Ok(self.fd.get_regs().map_err(ioctl("KVM_GET_REGS"))?.into())
    }

    pub fn set_registers(&self, regs: &StandardRegisters) -> Result<()> {
        self.fd.set_regs(&(*regs).into()).map_err(ioctl("KVM_SET_REGS"))
    }

    pub fn special_registers(&self) -> Result<SpecialRegisters> {
        let s = self.fd.get_sregs().map_err(ioctl("KVM_GET_SREGS"))?;
        Ok(SpecialRegisters::from_kvm(&s))
    }

    pub fn set_special_registers(&self, regs: &SpecialRegisters) -> Result<()> {
        let mut s = self.fd.get_sregs().map_err(ioctl("KVM_GET_SREGS"))?;
        regs.apply_to(&mut s);
        self.fd.set_sregs(&s).map_err(ioctl("KVM_SET_SREGS"))
    }

    pub fn set_fpu(&self, fpu: &FpuState) -> Result<()> {
        let f = kvm_fpu {
            fcw: fpu.fcw,
            mxcsr: fpu.mxcsr,
            ..Default::default()
        };
        self.fd.set_fpu(&f).map_err(ioctl("KVM_SET_FPU"))
    }

    /// Sets the MSRs a booting kernel expects to find as firmware left them.
    pub fn set_boot_msrs(&self) -> Result<()> {
        let msrs = Msrs::from_entries(&[kvm_msr_entry {
            index: MSR_IA32_MISC_ENABLE,
            data: MISC_ENABLE_FAST_STRING,
            ..Default::default()
        }])
        .map_err(|_| HypervisorError::Ioctl {
            op: "KVM_SET_MSRS (building the list)",
            source: std::io::Error::from_raw_os_error(libc::EINVAL),
        })?;
        self.fd.set_msrs(&msrs).map_err(ioctl("KVM_SET_MSRS"))?;
        Ok(())
    }

    /// Wires the local APIC's LINT0 to ExtINT (the PIC) and LINT1 to NMI, as PC firmware does,
    /// so the legacy PIC and NMIs reach the CPU before the guest programs its APIC.
    pub fn configure_lapic_lints(&self) -> Result<()> {
        const APIC_LVT0: usize = 0x350;
        const APIC_LVT1: usize = 0x360;
        const MODE_EXTINT: u32 = 0x7;
        const MODE_NMI: u32 = 0x4;
        let mut lapic = self.fd.get_lapic().map_err(ioctl("KVM_GET_LAPIC"))?;
        for (offset, mode) in [(APIC_LVT0, MODE_EXTINT), (APIC_LVT1, MODE_NMI)] {
            let bytes: [u8; 4] = lapic.regs[offset..offset + 4]
                .iter()
                .map(|b| *b as u8)
                .collect::<Vec<_>>()
                .try_into()
                .unwrap_or([0; 4]);
            let value = u32::from_le_bytes(bytes);
            // Delivery mode is bits 8..=10.
            let value = (value & !0x700) | (mode << 8);
            for (i, b) in value.to_le_bytes().iter().enumerate() {
                lapic.regs[offset + i] = *b as _;
            }
        }
        self.fd.set_lapic(&lapic).map_err(ioctl("KVM_SET_LAPIC"))
    }
}
