//! `virtkit doctor`: what this host's KVM is, its limits, and which guests it can run.

use clap::Args;
use virtkit::{ByteSize, HostCapabilities, HostKind};
use virtkit_manager::admission::{overcommit_ratio, Commitment, HostMemory};

use crate::exit::{CliError, EXIT_ERROR, EXIT_OK};

#[derive(Args)]
pub struct DoctorArgs {
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

fn cpu_flag(flag: &str) -> bool {
    std::fs::read_to_string("/proc/cpuinfo")
        .map(|t| {
            t.lines()
                .filter(|l| l.starts_with("flags"))
                .any(|l| l.split_whitespace().any(|f| f == flag))
        })
        .unwrap_or(false)
}

fn kind_name(kind: HostKind) -> &'static str {
    match kind {
        HostKind::HardwareKvm => "hardware KVM",
        HostKind::Pvm => "PVM (kvm_pvm)",
        HostKind::OtherKvm => "KVM (unrecognised vendor module)",
        HostKind::NoKvm => "none",
    }
}

pub fn run(args: &DoctorArgs) -> Result<u8, CliError> {
    let host = HostCapabilities::detect();
    let hw = if cpu_flag("vmx") {
        "VT-x"
    } else if cpu_flag("svm") {
        "AMD-V"
    } else {
        "none"
    };
    let commitment = memory_commitment();
    let passt = virtkit::network::passt::probe(std::path::Path::new("passt"));
    let taps = virtkit::network::tap::may_create_taps();
    let virtiofsd = virtkit::find_virtiofsd();
    if args.json {
        let kvm = host.kvm.as_ref().map(|k| {
            serde_json::json!({
                "api_version": k.api_version,
                "max_vcpus": k.max_vcpus,
                "recommended_vcpus": k.recommended_vcpus,
                "max_memory_slots": k.max_memslots,
                "irqchip": k.irqchip, "ioeventfd": k.ioeventfd, "irqfd": k.irqfd,
            })
        });
        let doc = serde_json::json!({
            "kvm": kind_name(host.kind),
            "kvm_error": host.kvm_error,
            "hardware_virtualization": hw,
            "limits": kvm,
            "host_memory_bytes": host.memory,
            "host_cpus": host.cpus,
            "guests": host.guest_support(),
            "networking": {
                "passt": passt.path,
                "passt_vhost_user": passt.vhost_user,
                "tap_and_bridge": taps,
            },
            "shared_directories": {
                "virtiofsd": virtiofsd.as_ref().ok(),
                "problem": virtiofsd.as_ref().err().map(|e| e.to_string()),
            },
            "memory_commitment": commitment.as_ref().map(|c| serde_json::json!({
                "running_vms": c.running.vms.iter().map(|(name, bytes)| serde_json::json!({"name": name, "memory": bytes})).collect::<Vec<_>>(),
                "committed_bytes": c.running.total(),
                "host_total_bytes": c.host.total,
                "host_available_bytes": c.host.available,
                "overcommit_ratio": c.ratio,
            })),
        });
        outln!("{}", serde_json::to_string_pretty(&doc).unwrap_or_default());
    } else {
        outln!("KVM:                     {}", kind_name(host.kind));
        outln!("hardware virtualization: {hw}");
        if let Some(k) = &host.kvm {
            outln!("KVM API version:         {}", k.api_version);
            outln!(
                "vCPUs per VM:            up to {} (recommended {})",
                k.max_vcpus,
                k.recommended_vcpus
            );
            outln!("memory slots per VM:     {}", k.max_memslots);
            outln!(
                "in-kernel irqchip:       {}; ioeventfd: {}; irqfd: {}",
                yes(k.irqchip),
                yes(k.ioeventfd),
                yes(k.irqfd)
            );
        }
        if let Some(e) = &host.kvm_error {
            outln!("problem:                 {e}");
        }
        outln!(
            "host:                    {} CPUs, {} RAM",
            host.cpus,
            ByteSize(host.memory)
        );
        outln!("guests:                  {}", host.guest_support());
        match &passt.path {
            Some(path) => outln!(
                "NAT networking:          passt at {} (frames over a socket{})",
                path.display(),
                if passt.vhost_user {
                    "; it also offers vhost-user, which virtkit does not use yet"
                } else {
                    "; this version has no vhost-user"
                }
            ),
            None => outln!(
                "NAT networking:          no: passt is not installed (Debian/Ubuntu: apt install passt); --network none|tap|bridge work without it"
            ),
        }
        match &virtiofsd {
            Ok(path) => outln!("shared directories:      virtiofsd at {}", path.display()),
            Err(e) => outln!("shared directories:      no: {e}"),
        }
        outln!(
            "TAP and bridged cards:   {}",
            if taps {
                "yes"
            } else {
                "no: they need root (or CAP_NET_ADMIN) and /dev/net/tun; --network nat needs neither"
            }
        );
        if let Some(c) = &commitment {
            outln!(
                "guest memory committed:  {} by {} running VM{} (limit {} × {} total; {} available now)",
                ByteSize(c.running.total()),
                c.running.vms.len(),
                if c.running.vms.len() == 1 { "" } else { "s" },
                c.ratio,
                ByteSize(c.host.total),
                ByteSize(c.host.available)
            );
        }
    }
    Ok(if host.kind == HostKind::NoKvm {
        EXIT_ERROR
    } else {
        EXIT_OK
    })
}

/// What admission control counts: the running VMs' memory against the host's.
struct MemoryCommitment {
    running: Commitment,
    host: HostMemory,
    ratio: f64,
}

fn memory_commitment() -> Option<MemoryCommitment> {
    let home = virtkit_manager::VirtkitHome::from_env().ok()?;
    Some(MemoryCommitment {
        running: Commitment::of_running(&home, None),
        host: HostMemory::of_this_host()?,
        ratio: overcommit_ratio().unwrap_or(1.0),
    })
}

fn yes(b: bool) -> &'static str {
    if b {
        "yes"
    } else {
        "no"
    }
}
