//! `virtkit snapshot create|list|restore|delete VM [NAME]`: named snapshots of a VM's disk and
//! configuration (disk layers: O(1) to take, whatever the disk's size), with its memory and
//! devices when it runs or is suspended. A running VM's snapshot is taken by its own process.

use clap::{Args, Subcommand};

use virtkit_manager::control::{ControlCommand, ControlRequest};

use crate::commands::vms::{ask_request, bundle_error_in, home, human_size, open};
use crate::exit::CliError;

#[derive(Args)]
pub struct SnapshotArgs {
    #[command(subcommand)]
    pub action: SnapshotAction,
}

#[derive(Subcommand)]
pub enum SnapshotAction {
    /// Take a snapshot of a VM: its disk and configuration, and its memory and devices if it
    /// runs, is paused or is suspended (a running VM pauses for the save and runs on).
    Create { vm: String, name: String },
    /// List a VM's snapshots, oldest first.
    List { vm: String },
    /// Put a stopped VM's disk, configuration and saved memory back as the snapshot had them
    /// (what the disk held since is discarded).
    Restore { vm: String, name: String },
    /// Delete a snapshot; the others stay whole.
    Delete { vm: String, name: String },
}

pub fn run(args: &SnapshotArgs) -> Result<u8, CliError> {
    let home = home()?;
    match &args.action {
        SnapshotAction::Create { vm, name } => {
            let mut b = open(&home, vm)?;
            if b.is_running() {
                return take_while_running(&b, vm, name);
            }
            let s = b
                .snapshot_create(name)
                .map_err(|e| bundle_error_in(format!("cannot take the snapshot `{name}` of `{vm}`"), &e))?;
            outln!(
                "took snapshot `{}` of `{vm}` ({} of disk changes in it)",
                s.name,
                human_size(s.bytes)
            );
        }
        SnapshotAction::List { vm } => {
            let b = open(&home, vm)?;
            let list = b
                .snapshots()
                .map_err(|e| bundle_error_in(format!("cannot list the snapshots of `{vm}`"), &e))?;
            if list.is_empty() {
                outln!("`{vm}` has no snapshots; `virtkit snapshot create {vm} NAME` takes one");
            } else {
                outln!("{:<24} {:<20} {:>10}", "NAME", "TAKEN (UTC)", "SIZE");
                for s in list {
                    outln!(
                        "{:<24} {:<20} {:>10}",
                        s.name,
                        utc(s.created),
                        human_size(s.bytes)
                    );
                }
            }
        }
        SnapshotAction::Restore { vm, name } => {
            let mut b = open(&home, vm)?;
            b.snapshot_restore(name).map_err(|e| {
                bundle_error_in(format!("cannot restore the snapshot `{name}` of `{vm}`"), &e)
            })?;
            outln!("restored `{vm}` to snapshot `{name}`");
        }
        SnapshotAction::Delete { vm, name } => {
            let mut b = open(&home, vm)?;
            b.snapshot_delete(name)
                .map_err(|e| bundle_error_in(format!("cannot delete the snapshot `{name}` of `{vm}`"), &e))?;
            outln!("deleted snapshot `{name}` of `{vm}`");
        }
    }
    Ok(0)
}

/// A running or paused VM's snapshot, taken by its process (which holds the disk).
fn take_while_running(b: &virtkit_manager::bundle::Bundle, vm: &str, name: &str) -> Result<u8, CliError> {
    let request = ControlRequest {
        name: Some(name.to_owned()),
        ..ControlRequest::new(ControlCommand::Snapshot)
    };
    let r = ask_request(b, &request)?;
    if !r.ok {
        return Err(CliError::new(format!(
            "`{vm}`: {}",
            r.error.unwrap_or_else(|| "refused".into())
        )));
    }
    let taken = b
        .snapshots()
        .ok()
        .and_then(|l| l.into_iter().find(|s| s.name == name));
    outln!(
        "took snapshot `{name}` of `{vm}`, which {} (memory and devices, and {} of disk changes); `virtkit snapshot restore {vm} {name}` on the stopped VM goes back to this moment",
        if r.state.as_deref() == Some("paused") { "stays paused" } else { "runs on" },
        human_size(taken.map_or(0, |s| s.bytes))
    );
    Ok(0)
}

/// `YYYY-MM-DD HH:MM:SS` for seconds since the epoch (UTC; civil-from-days, no time crate).
fn utc(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn utc_dates_are_civil_dates() {
        assert_eq!(super::utc(0), "1970-01-01 00:00:00");
        assert_eq!(super::utc(951_782_400), "2000-02-29 00:00:00");
        assert_eq!(super::utc(1_796_428_800 + 3661), "2026-12-05 01:01:01");
    }
}
