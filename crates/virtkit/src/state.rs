//! A virtual machine's state and why it stopped.

use std::fmt;

use virtkit_machine::ExitReason;

/// Where a virtual machine is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VmState {
    /// Not started, or ended cleanly.
    Stopped,
    /// Being built and loaded.
    Starting,
    Running,
    Paused,
    /// Asked to stop; vCPUs are winding down.
    Stopping,
    /// Ended by a failure (the guest crashed, KVM gave up, or the host failed).
    Error,
}

impl fmt::Display for VmState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            VmState::Stopped => "stopped",
            VmState::Starting => "starting",
            VmState::Running => "running",
            VmState::Paused => "paused",
            VmState::Stopping => "stopping",
            VmState::Error => "error",
        })
    }
}

impl VmState {
    /// Whether the lifecycle may go from `self` to `next`. A stop is final for the run: once
    /// stopping, only the end (stopped or error) follows, so a pause or resume that finishes
    /// late never overwrites it; once ended, only a new start.
    pub fn may_become(self, next: VmState) -> bool {
        use VmState::*;
        !matches!(
            (self, next),
            (Stopping, Starting | Running | Paused) | (Stopped | Error, Running | Paused | Stopping)
        )
    }
}

/// Why a virtual machine stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StopReason {
    /// The guest powered itself off.
    GuestPoweredOff,
    /// The guest reset the machine (a reboot).
    GuestReset,
    /// The guest crashed: its kernel panicked, or a vCPU triple-faulted.
    GuestCrashed { detail: String },
    /// KVM stopped a vCPU with an internal error (on PVM hosts: an instruction it cannot emulate).
    KvmInternalError {
        vcpu: u32,
        suberror: u32,
        rip: u64,
        /// Whether the host's KVM is PVM, where this usually means a stock guest kernel.
        pvm_host: bool,
    },
    /// The host stopped the machine (`stop()`).
    StoppedByHost,
    /// Something failed in the VMM.
    HostError { message: String },
}

impl StopReason {
    pub(crate) fn from_exit(exit: ExitReason, pvm_host: bool) -> StopReason {
        match exit {
            ExitReason::PowerOff => StopReason::GuestPoweredOff,
            ExitReason::Reset => StopReason::GuestReset,
            ExitReason::Panic => StopReason::GuestCrashed {
                detail: "the guest kernel panicked".into(),
            },
            ExitReason::TripleFault { vcpu } => StopReason::GuestCrashed {
                detail: format!("vCPU {vcpu} triple-faulted"),
            },
            ExitReason::InternalError { vcpu, suberror, rip } => StopReason::KvmInternalError {
                vcpu,
                suberror,
                rip,
                pvm_host,
            },
            ExitReason::FailEntry { vcpu, reason } => StopReason::HostError {
                message: format!(
                    "KVM could not enter vCPU {vcpu} (hardware entry failure reason {reason:#x})"
                ),
            },
            ExitReason::Stopped => StopReason::StoppedByHost,
            ExitReason::HostError { vcpu, message } => StopReason::HostError {
                message: match vcpu {
                    Some(v) => format!("vCPU {v}: {message}"),
                    None => message,
                },
            },
        }
    }

    /// Whether this is a clean end (the state becomes `Stopped`, not `Error`).
    pub fn is_clean(&self) -> bool {
        matches!(
            self,
            StopReason::GuestPoweredOff | StopReason::GuestReset | StopReason::StoppedByHost
        )
    }
}

impl fmt::Display for StopReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StopReason::GuestPoweredOff => f.write_str("the guest powered off"),
            StopReason::GuestReset => f.write_str("the guest reset the machine"),
            StopReason::GuestCrashed { detail } => write!(f, "the guest crashed: {detail}"),
            StopReason::KvmInternalError {
                vcpu,
                suberror,
                rip,
                pvm_host,
            } => {
                write!(f, "KVM stopped vCPU {vcpu} with an internal error (suberror {suberror}) at guest RIP {rip:#x}")?;
                if *pvm_host {
                    write!(
                        f,
                        "; this host's KVM is PVM (no hardware virtualization), which cannot run this guest's \
                         privileged code: stock Linux kernels stop like this early in boot, so boot a PVM-enabled \
                         guest kernel (CONFIG_PVM_GUEST) here, or run on a host with VT-x or AMD-V"
                    )?;
                }
                Ok(())
            }
            StopReason::StoppedByHost => f.write_str("the machine was stopped by the host"),
            StopReason::HostError { message } => write!(f, "the VMM failed: {message}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn internal_error_on_pvm_names_the_cause_and_the_fix() {
        let r = StopReason::from_exit(
            ExitReason::InternalError {
                vcpu: 0,
                suberror: 1,
                rip: 0xffff_ffff_8100_0000,
            },
            true,
        );
        let text = r.to_string();
        assert!(text.contains("RIP 0xffffffff81000000"), "{text}");
        assert!(text.contains("PVM-enabled guest kernel"), "{text}");
        assert!(!r.is_clean());
        let plain = StopReason::from_exit(
            ExitReason::InternalError {
                vcpu: 0,
                suberror: 1,
                rip: 1,
            },
            false,
        )
        .to_string();
        assert!(!plain.contains("PVM"), "{plain}");
    }

    #[test]
    fn crash_reasons_are_not_clean_and_say_crashed() {
        for exit in [ExitReason::Panic, ExitReason::TripleFault { vcpu: 1 }] {
            let r = StopReason::from_exit(exit, false);
            assert!(!r.is_clean());
            assert!(r.to_string().starts_with("the guest crashed"), "{r}");
        }
        assert!(StopReason::from_exit(ExitReason::PowerOff, false).is_clean());
    }

    #[test]
    fn a_stop_is_final_until_the_next_start() {
        use VmState::*;
        for late in [Running, Paused, Starting] {
            assert!(!Stopping.may_become(late), "stopping → {late}");
        }
        for end in [Stopped, Error] {
            assert!(Stopping.may_become(end));
            for late in [Running, Paused, Stopping] {
                assert!(!end.may_become(late), "{end} → {late}");
            }
            assert!(end.may_become(Starting));
        }
        assert!(Running.may_become(Paused) && Paused.may_become(Running));
        assert!(Running.may_become(Stopping) && Paused.may_become(Stopping));
    }
}
