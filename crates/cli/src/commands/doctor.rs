//! `virtkit doctor`: what this host's KVM is, its limits, and which guests it can run.

use clap::Args;
use virtkit::{ByteSize, HostCapabilities, HostKind};

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
        });
        println!("{}", serde_json::to_string_pretty(&doc).unwrap_or_default());
    } else {
        println!("KVM:                     {}", kind_name(host.kind));
        println!("hardware virtualization: {hw}");
        if let Some(k) = &host.kvm {
            println!("KVM API version:         {}", k.api_version);
            println!(
                "vCPUs per VM:            up to {} (recommended {})",
                k.max_vcpus, k.recommended_vcpus
            );
            println!("memory slots per VM:     {}", k.max_memslots);
            println!(
                "in-kernel irqchip:       {}; ioeventfd: {}; irqfd: {}",
                yes(k.irqchip),
                yes(k.ioeventfd),
                yes(k.irqfd)
            );
        }
        if let Some(e) = &host.kvm_error {
            println!("problem:                 {e}");
        }
        println!(
            "host:                    {} CPUs, {} RAM",
            host.cpus,
            ByteSize(host.memory)
        );
        println!("guests:                  {}", host.guest_support());
    }
    Ok(if host.kind == HostKind::NoKvm {
        EXIT_ERROR
    } else {
        EXIT_OK
    })
}

fn yes(b: bool) -> &'static str {
    if b {
        "yes"
    } else {
        "no"
    }
}
