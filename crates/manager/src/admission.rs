//! Admission control: a VM is started only if the host can give it its memory. Guest memory is
//! only reserved, not allocated, when a VM starts, so nothing stops a user from starting VMs
//! whose memory adds up to more than the host has, until the guests touch it and the kernel's
//! OOM killer picks a VM process (or the user's desktop) to kill. Apple's framework and tart
//! refuse what does not fit; so does virtkit, unless told `--force`.
//!
//! The rule, with `ratio` the allowed overcommit ([`OVERCOMMIT_ENV`], 1.0 unless set):
//! - the memory of the running VMs (those under this home) plus the new one's must be at most
//!   `ratio × MemTotal`, and
//! - the new VM's memory must be at most `ratio × MemAvailable` (what the host can give now,
//!   after everything else it runs).

use std::path::Path;

use virtkit::ByteSize;

use crate::bundle::Bundle;
use crate::home::VirtkitHome;

/// The allowed overcommit: a number like 1.5 (guest memory may add up to 1.5 × the host's).
pub const OVERCOMMIT_ENV: &str = "VIRTKIT_MEMORY_OVERCOMMIT";

/// The host's memory, from `/proc/meminfo`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostMemory {
    pub total: u64,
    pub available: u64,
}

impl HostMemory {
    /// This host's figures; `None` where `/proc/meminfo` cannot be read.
    pub fn of_this_host() -> Option<HostMemory> {
        HostMemory::parse(&std::fs::read_to_string(Path::new("/proc/meminfo")).ok()?)
    }

    fn parse(meminfo: &str) -> Option<HostMemory> {
        let field = |name: &str| -> Option<u64> {
            let line = meminfo.lines().find(|l| l.starts_with(name))?;
            let kib: u64 = line[name.len()..]
                .trim()
                .trim_end_matches("kB")
                .trim()
                .parse()
                .ok()?;
            kib.checked_mul(1024)
        };
        Some(HostMemory {
            total: field("MemTotal:")?,
            available: field("MemAvailable:")?,
        })
    }
}

/// The memory the running VMs under a home have.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Commitment {
    /// Each running VM's name and memory size.
    pub vms: Vec<(String, u64)>,
}

impl Commitment {
    /// The running VMs under `home`, leaving out `except` (the VM being started, whose lock its
    /// own process holds).
    pub fn of_running(home: &VirtkitHome, except: Option<&str>) -> Commitment {
        let vms = Bundle::list(home)
            .unwrap_or_default()
            .into_iter()
            .filter(|(name, _)| Some(name.as_str()) != except)
            .filter_map(|(name, bundle)| {
                let b = bundle.ok()?;
                b.is_running().then(|| (name, b.configuration().memory_size))
            })
            .collect();
        Commitment { vms }
    }

    pub fn total(&self) -> u64 {
        self.vms.iter().map(|(_, m)| m).sum()
    }
}

/// Why a VM was not admitted.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum AdmissionError {
    #[error(
        "starting {what} ({}) would commit {} of guest memory, more than {ratio} × this host's {} \
         (running VMs have {}); stop a VM, give this one less memory, allow more overcommit \
         ({OVERCOMMIT_ENV}=1.5), or start it anyway with --force",
        ByteSize(*memory), ByteSize(*committed + *memory), ByteSize(*total), ByteSize(*committed)
    )]
    OverCommitted {
        what: String,
        memory: u64,
        committed: u64,
        total: u64,
        ratio: f64,
    },
    #[error(
        "starting {what} needs {} of memory and this host has {} available{}; free memory, give \
         this VM less, allow more overcommit ({OVERCOMMIT_ENV}=1.5), or start it anyway with --force",
        ByteSize(*memory), ByteSize(*available),
        if *ratio != 1.0 { format!(" (× {ratio} allowed overcommit)") } else { String::new() }
    )]
    Unavailable {
        what: String,
        memory: u64,
        available: u64,
        ratio: f64,
    },
    #[error("{OVERCOMMIT_ENV}=`{0}` is not a ratio: give a number like 1.0 or 1.5")]
    BadRatio(String),
}

/// The allowed overcommit ratio from the environment (1.0 if unset).
pub fn overcommit_ratio() -> Result<f64, AdmissionError> {
    match std::env::var(OVERCOMMIT_ENV) {
        Err(_) => Ok(1.0),
        Ok(text) => match text.trim().parse::<f64>() {
            Ok(r) if r.is_finite() && r > 0.0 => Ok(r),
            _ => Err(AdmissionError::BadRatio(text)),
        },
    }
}

/// Whether a VM `what` with `memory` bytes may start beside `running` on a host with `host`.
pub fn admit(
    what: &str,
    memory: u64,
    running: &Commitment,
    host: HostMemory,
    ratio: f64,
) -> Result<(), AdmissionError> {
    let committed = running.total();
    let scaled = |bytes: u64| (bytes as f64 * ratio) as u64;
    if committed.saturating_add(memory) > scaled(host.total) {
        return Err(AdmissionError::OverCommitted {
            what: what.to_owned(),
            memory,
            committed,
            total: host.total,
            ratio,
        });
    }
    if memory > scaled(host.available) {
        return Err(AdmissionError::Unavailable {
            what: what.to_owned(),
            memory,
            available: host.available,
            ratio,
        });
    }
    Ok(())
}

/// [`admit`] for a VM about to start on this host, beside the running VMs under `home`
/// (`name`: the VM's own bundle, if it has one). A host whose memory cannot be read admits.
pub fn admit_on_this_host(home: &VirtkitHome, name: Option<&str>, memory: u64) -> Result<(), AdmissionError> {
    let ratio = overcommit_ratio()?;
    let Some(host) = HostMemory::of_this_host() else {
        return Ok(());
    };
    let what = name.map_or_else(|| "this VM".to_owned(), |n| format!("`{n}`"));
    admit(&what, memory, &Commitment::of_running(home, name), host, ratio)
}

#[cfg(test)]
mod tests {
    use super::*;

    const GIB: u64 = 1 << 30;

    #[test]
    fn meminfo_parses() {
        let m =
            HostMemory::parse("MemTotal:       24572000 kB\nMemFree: 1 kB\nMemAvailable:   20000000 kB\n")
                .unwrap();
        assert_eq!(m.total, 24572000 * 1024);
        assert_eq!(m.available, 20000000 * 1024);
        assert!(HostMemory::parse("MemTotal: 1 kB\n").is_none());
    }

    #[test]
    fn what_fits_is_admitted_and_what_does_not_gets_the_figures() {
        let host = HostMemory {
            total: 16 * GIB,
            available: 12 * GIB,
        };
        let running = Commitment {
            vms: vec![("a".into(), 8 * GIB), ("b".into(), 4 * GIB)],
        };
        assert!(admit("`c`", 4 * GIB, &running, host, 1.0).is_ok());
        let e = admit("`c`", 5 * GIB, &running, host, 1.0).unwrap_err();
        let text = e.to_string();
        assert!(
            text.contains("would commit 17 GiB") && text.contains("this host's 16 GiB"),
            "{text}"
        );
        assert!(
            text.contains("running VMs have 12 GiB") && text.contains("--force"),
            "{text}"
        );
        // More overcommit allowed: the same VM fits.
        assert!(admit("`c`", 5 * GIB, &running, host, 1.5).is_ok());
        // Nothing else runs, but the host cannot give it now.
        let e = admit("`d`", 13 * GIB, &Commitment::default(), host, 1.0).unwrap_err();
        assert!(matches!(e, AdmissionError::Unavailable { .. }), "{e}");
        assert!(e.to_string().contains("12 GiB available"), "{e}");
    }
}
