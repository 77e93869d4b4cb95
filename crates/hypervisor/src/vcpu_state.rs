//! Saving and restoring a vCPU's whole state ([`VcpuState`]).
//!
//! The order follows what KVM needs: the MP state is read first (reading it makes the LAPIC
//! accept pending INIT/SIPI events, which changes the rest); on restore the CPUID comes
//! first (it decides which MSRs and XSAVE features exist), the LAPIC before the MSRs (the
//! TSC-deadline MSR needs the LAPIC's timer mode), and the events last.

use std::sync::OnceLock;

use kvm_bindings::{kvm_mp_state, kvm_msr_entry, Msrs};

use crate::error::{ioctl, HypervisorError};
use crate::state::{from_bytes, to_bytes, FpuSnapshot, KvmAbi, MsrValue, VcpuState};
use crate::vcpu::Vcpu;
use crate::Result;

/// MSRs saved even when `KVM_GET_MSR_INDEX_LIST` leaves them out (it lists what KVM emulates
/// on some kernels only): the TSC, TSC_ADJUST, the TSC deadline, and kvmclock's and the other
/// paravirtual MSRs (wall clock, system time, async PF, steal time, PV EOI, poll control).
const ALWAYS_TRIED: [u32; 11] = [
    0x10,
    0x3b,
    0x6e0,
    0x11,
    0x12,
    0x4b56_4d00,
    0x4b56_4d01,
    0x4b56_4d02,
    0x4b56_4d03,
    0x4b56_4d04,
    0x4b56_4d05,
];

/// The MSRs a VM's vCPUs save: KVM's list, narrowed once to those that read back.
#[derive(Debug, Default)]
pub(crate) struct SaveableMsrs {
    listed: Vec<u32>,
    readable: OnceLock<Vec<u32>>,
}

impl SaveableMsrs {
    /// `listed`: what `KVM_GET_MSR_INDEX_LIST` gave (empty where it failed).
    pub(crate) fn new(mut listed: Vec<u32>) -> SaveableMsrs {
        listed.extend(ALWAYS_TRIED);
        listed.sort_unstable();
        listed.dedup();
        SaveableMsrs {
            listed,
            readable: OnceLock::new(),
        }
    }
}

fn msr_entries(indices: impl IntoIterator<Item = (u32, u64)>) -> Result<Msrs> {
    let entries: Vec<kvm_msr_entry> = indices
        .into_iter()
        .map(|(index, data)| kvm_msr_entry {
            index,
            data,
            ..Default::default()
        })
        .collect();
    Msrs::from_entries(&entries).map_err(|_| HypervisorError::Ioctl {
        op: "KVM_GET_MSRS (building the list)",
        source: std::io::Error::from_raw_os_error(libc::E2BIG),
    })
}

fn decode<T: KvmAbi>(what: &'static str, bytes: &[u8]) -> Result<T> {
    from_bytes(bytes).ok_or(HypervisorError::StateLayout {
        what,
        len: bytes.len(),
        expected: size_of::<T>(),
    })
}

/// Whether an ioctl's failure means this KVM does not have it (rather than that it failed).
fn unsupported(e: &kvm_ioctls::Error) -> bool {
    matches!(
        e.errno(),
        libc::EINVAL | libc::ENOTTY | libc::ENOSYS | libc::EOPNOTSUPP
    )
}

impl Vcpu {
    /// The MSRs of this VM that read back, found once by reading each.
    fn readable_msrs(&self) -> &[u32] {
        self.msrs.readable.get_or_init(|| {
            let readable: Vec<u32> = self
                .msrs
                .listed
                .iter()
                .copied()
                .filter(|&index| {
                    let Ok(mut one) = msr_entries([(index, 0)]) else {
                        return false;
                    };
                    matches!(self.fd.get_msrs(&mut one), Ok(1))
                })
                .collect();
            tracing::debug!(
                listed = self.msrs.listed.len(),
                readable = readable.len(),
                "MSRs to save"
            );
            readable
        })
    }

    /// Reads everything KVM keeps for this vCPU. Call only while it is not running.
    pub fn save_state(&self) -> Result<VcpuState> {
        let mp_state = self
            .fd
            .get_mp_state()
            .map_err(ioctl("KVM_GET_MP_STATE"))?
            .mp_state;
        let regs = to_bytes(&self.fd.get_regs().map_err(ioctl("KVM_GET_REGS"))?);
        let sregs = to_bytes(&self.fd.get_sregs().map_err(ioctl("KVM_GET_SREGS"))?);
        let fpu = match self.fd.get_xsave() {
            Ok(xsave) => FpuSnapshot::Xsave(to_bytes(&xsave)),
            Err(e) if unsupported(&e) => {
                FpuSnapshot::Legacy(to_bytes(&self.fd.get_fpu().map_err(ioctl("KVM_GET_FPU"))?))
            }
            Err(e) => return Err(ioctl("KVM_GET_XSAVE")(e)),
        };
        let xcrs = match self.fd.get_xcrs() {
            Ok(x) => Some(to_bytes(&x)),
            Err(e) if unsupported(&e) => None,
            Err(e) => return Err(ioctl("KVM_GET_XCRS")(e)),
        };
        let debug_regs = match self.fd.get_debug_regs() {
            Ok(d) => Some(to_bytes(&d)),
            Err(e) if unsupported(&e) => None,
            Err(e) => return Err(ioctl("KVM_GET_DEBUGREGS")(e)),
        };
        let lapic = to_bytes(&self.fd.get_lapic().map_err(ioctl("KVM_GET_LAPIC"))?);
        let msrs = self.save_msrs()?;
        let events = to_bytes(&self.fd.get_vcpu_events().map_err(ioctl("KVM_GET_VCPU_EVENTS"))?);
        let cpuid = self
            .fd
            .get_cpuid2(kvm_bindings::KVM_MAX_CPUID_ENTRIES)
            .map_err(ioctl("KVM_GET_CPUID2"))?
            .as_slice()
            .iter()
            .map(Into::into)
            .collect();
        let tsc_khz = self.fd.get_tsc_khz().ok();
        Ok(VcpuState {
            mp_state,
            regs,
            sregs,
            fpu,
            xcrs,
            debug_regs,
            lapic,
            msrs,
            events,
            cpuid,
            tsc_khz,
        })
    }

    fn save_msrs(&self) -> Result<Vec<MsrValue>> {
        let indices = self.readable_msrs();
        let mut msrs = msr_entries(indices.iter().map(|&i| (i, 0)))?;
        let read = self.fd.get_msrs(&mut msrs).map_err(ioctl("KVM_GET_MSRS"))?;
        if let Some(&index) = indices.get(read) {
            // Each read back alone when the list was made; one that stops now must not be
            // papered over by saving fewer.
            return Err(HypervisorError::MsrUnreadable { index });
        }
        Ok(msrs
            .as_slice()
            .iter()
            .map(|e| MsrValue {
                index: e.index,
                data: e.data,
            })
            .collect())
    }

    /// Puts `state` into this vCPU, which must not have run since it was created (or be
    /// paused). KVM refusing any part is an error: a half-restored vCPU must not run.
    pub fn restore_state(&self, state: &VcpuState) -> Result<()> {
        self.set_cpuid(&state.cpuid)?;
        if let Some(khz) = state.tsc_khz {
            // The guest measured time at this rate; a host that cannot scale runs it at its own
            // and says so here rather than by a clock that drifts.
            if self.fd.get_tsc_khz().ok() != Some(khz) {
                if let Err(e) = self.fd.set_tsc_khz(khz) {
                    tracing::warn!(
                        saved_khz = khz,
                        "this host cannot run the guest's TSC at its saved rate ({e}); its clock may drift"
                    );
                }
            }
        }
        self.fd
            .set_mp_state(kvm_mp_state {
                mp_state: state.mp_state,
            })
            .map_err(ioctl("KVM_SET_MP_STATE"))?;
        self.fd
            .set_regs(&decode("registers (kvm_regs)", &state.regs)?)
            .map_err(ioctl("KVM_SET_REGS"))?;
        self.fd
            .set_sregs(&decode("special registers (kvm_sregs)", &state.sregs)?)
            .map_err(ioctl("KVM_SET_SREGS"))?;
        match &state.fpu {
            FpuSnapshot::Xsave(bytes) => {
                let xsave: kvm_bindings::kvm_xsave = decode("XSAVE area (kvm_xsave)", bytes)?;
                // SAFETY: `xsave` is a whole `kvm_xsave` (4 KiB, checked by `decode`), the size
                // KVM_SET_XSAVE reads; the saved area came from KVM_GET_XSAVE, which never
                // reports more than that legacy size.
                unsafe { self.fd.set_xsave(&xsave) }.map_err(ioctl("KVM_SET_XSAVE"))?;
            }
            FpuSnapshot::Legacy(bytes) => self
                .fd
                .set_fpu(&decode("FPU (kvm_fpu)", bytes)?)
                .map_err(ioctl("KVM_SET_FPU"))?,
        }
        if let Some(bytes) = &state.xcrs {
            self.fd
                .set_xcrs(&decode("XCRs (kvm_xcrs)", bytes)?)
                .map_err(ioctl("KVM_SET_XCRS"))?;
        }
        if let Some(bytes) = &state.debug_regs {
            self.fd
                .set_debug_regs(&decode("debug registers (kvm_debugregs)", bytes)?)
                .map_err(ioctl("KVM_SET_DEBUGREGS"))?;
        }
        self.fd
            .set_lapic(&decode("local APIC (kvm_lapic_state)", &state.lapic)?)
            .map_err(ioctl("KVM_SET_LAPIC"))?;
        self.restore_msrs(&state.msrs)?;
        self.fd
            .set_vcpu_events(&decode("vCPU events (kvm_vcpu_events)", &state.events)?)
            .map_err(ioctl("KVM_SET_VCPU_EVENTS"))?;
        Ok(())
    }

    fn restore_msrs(&self, saved: &[MsrValue]) -> Result<()> {
        let msrs = msr_entries(saved.iter().map(|m| (m.index, m.data)))?;
        let written = self.fd.set_msrs(&msrs).map_err(ioctl("KVM_SET_MSRS"))?;
        match saved.get(written) {
            None => Ok(()),
            Some(m) => Err(HypervisorError::MsrRefused {
                index: m.index,
                data: m.data,
            }),
        }
    }
}
