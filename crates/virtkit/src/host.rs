//! What this host can run: its KVM flavour and limits, and its memory.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use virtkit_hypervisor::{HostKvmInfo, Kvm, KvmFlavor};

/// The kind of KVM this host has, as far as guests are concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostKind {
    /// Hardware virtualization: any x86_64 guest runs.
    HardwareKvm,
    /// PVM: only PVM-enlightened kernels (and small guests, firmware) run.
    Pvm,
    /// A KVM we do not recognise.
    OtherKvm,
    /// `/dev/kvm` cannot be used.
    NoKvm,
}

/// The host's virtualization capabilities and limits.
#[derive(Debug, Clone)]
pub struct HostCapabilities {
    pub kind: HostKind,
    /// KVM's limits when `/dev/kvm` opened.
    pub kvm: Option<HostKvmInfo>,
    /// Why `/dev/kvm` could not be used, when it could not.
    pub kvm_error: Option<String>,
    /// Host RAM in bytes (MemTotal).
    pub memory: u64,
    /// Online host CPUs.
    pub cpus: usize,
}

/// MemTotal, from `sysinfo(2)`: the same figure as `/proc/meminfo`'s (both are the kernel's
/// `totalram_pages`), without the ~0.05 ms the kernel takes to write out all of meminfo.
fn host_memory() -> u64 {
    let info = rustix::system::sysinfo();
    info.totalram.saturating_mul(u64::from(info.mem_unit.max(1)))
}

/// How long an answer of [`HostCapabilities::detect`] is reused. Every `validate()` asks, and a
/// start validates again what its caller validated a moment before: `virtkit run` looked at
/// `/dev/kvm` (opening it, ten `KVM_CHECK_EXTENSION`s), the cgroup's CPU quota and
/// the host's memory twice before the guest's first instruction, ~0.05 ms each time here.
const DETECTION_FRESH_FOR: Duration = Duration::from_secs(1);

static LAST_DETECTION: Mutex<Option<(Instant, HostCapabilities)>> = Mutex::new(None);

impl HostCapabilities {
    /// Looks at `/dev/kvm`, the KVM modules and the host's memory (an answer of the last second
    /// is reused).
    pub fn detect() -> HostCapabilities {
        let mut last = LAST_DETECTION.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((at, host)) = last.as_ref() {
            if at.elapsed() < DETECTION_FRESH_FOR {
                return host.clone();
            }
        }
        let host = HostCapabilities::detect_now();
        *last = Some((Instant::now(), host.clone()));
        host
    }

    fn detect_now() -> HostCapabilities {
        let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
        let (kvm, kvm_error) = match Kvm::open() {
            Ok(kvm) => (Some(kvm.info()), None),
            Err(e) => (
                None,
                Some(match std::error::Error::source(&e) {
                    Some(s) => format!("{e}: {s}"),
                    None => e.to_string(),
                }),
            ),
        };
        let kind = match &kvm {
            None => HostKind::NoKvm,
            Some(info) => match info.flavor {
                KvmFlavor::Hardware => HostKind::HardwareKvm,
                KvmFlavor::Pvm => HostKind::Pvm,
                KvmFlavor::Unknown => HostKind::OtherKvm,
            },
        };
        HostCapabilities {
            kind,
            kvm,
            kvm_error,
            memory: host_memory(),
            cpus,
        }
    }

    /// Most vCPUs one VM may have here.
    pub fn max_vcpus(&self) -> Option<usize> {
        self.kvm.as_ref().map(|k| k.max_vcpus)
    }

    /// One sentence on which guests run here.
    pub fn guest_support(&self) -> &'static str {
        match self.kind {
            HostKind::HardwareKvm => {
                "hardware virtualization: stock Linux kernels and firmware boot run at full speed"
            }
            HostKind::Pvm => {
                "PVM (no VT-x/AMD-V): small guests and firmware run; stock Linux kernels stop in early boot \
                 at an instruction PVM cannot emulate, so use a PVM-enabled guest kernel (CONFIG_PVM_GUEST)"
            }
            HostKind::OtherKvm => "an unrecognised KVM module: guests may or may not run",
            HostKind::NoKvm => "no usable /dev/kvm: no guest can run",
        }
    }
}
