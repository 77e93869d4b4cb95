//! What a VM must not share with the other VMs of the same home: a name that differs only in
//! case (on a case-insensitive file system, or to a person reading `virtkit list`, they are one
//! VM), and, while running, a machine identifier (a bundle copied with `cp -r` keeps it, and two
//! running guests with one SMBIOS UUID and one MAC address confuse DHCP servers, licence checks
//! and anything else that tells machines apart).

use std::path::Path;

use super::files::read_small;
use super::{check_name, lock, BundleError, LOCK_FILE, MACHINE_ID_FILE};
use virtkit::MachineIdentifier;

/// The VM names under `vms` (hidden leftovers and stray entries skipped).
fn names(vms: &Path) -> Vec<String> {
    std::fs::read_dir(vms)
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| check_name(n).is_ok())
        .collect()
}

/// Refuses `name` when another VM's name differs from it only in case.
pub(crate) fn check_case_clash(vms: &Path, name: &str) -> Result<(), BundleError> {
    match names(vms)
        .into_iter()
        .find(|n| n != name && n.eq_ignore_ascii_case(name))
    {
        Some(existing) => Err(BundleError::CaseClash {
            name: name.to_owned(),
            existing,
        }),
        None => Ok(()),
    }
}

/// The running VM other than `name` whose machine identifier is `id`, if there is one. Called
/// by a run holding its own lock, so of two copies started at once, at least one sees the other.
pub(crate) fn running_twin(vms: &Path, name: &str, id: MachineIdentifier) -> Option<String> {
    names(vms).into_iter().filter(|n| n != name).find(|n| {
        let dir = vms.join(n);
        let same = read_small(&dir, n, MACHINE_ID_FILE)
            .ok()
            .and_then(|t| t.trim().parse::<MachineIdentifier>().ok())
            == Some(id);
        same && lock::is_locked(&dir.join(LOCK_FILE)).unwrap_or(false)
    })
}
