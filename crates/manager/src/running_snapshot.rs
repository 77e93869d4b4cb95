//! `snapshot create` of a running or paused VM, done by its own process (which holds the
//! bundle's lock and has the disk open): pause, save the machine's state beside the bundle's
//! other snapshots, freeze the boot disk into a layer, move the device onto the new active
//! layer, and run on. The guest sees a pause of a few milliseconds plus the time to write its
//! memory; restoring the snapshot later makes the VM suspended at that moment (docs/SAVE.md).
//!
//! The work runs on a `snapshot` thread of its own (the `Snapshot` seccomp role): it opens,
//! links and renames the bundle's files and opens the new qcow2 chain, which neither the
//! control executor nor the state saver may do.

use std::path::PathBuf;
use std::sync::Arc;

use virtkit::{VirtualMachine, VmState};

use crate::bundle::Bundle;
use crate::control::ControlResponse;
use crate::suspend::error_chain;

/// Where the VM's bundle is, for a snapshot taken while it runs.
#[derive(Debug, Clone)]
pub struct SnapshotTarget {
    pub vm_name: String,
    pub bundle_dir: PathBuf,
}

/// Takes snapshot `name` of `vm` (running or paused); a running VM runs on afterwards.
pub(crate) fn snapshot(vm: &Arc<VirtualMachine>, target: &SnapshotTarget, name: &str) -> ControlResponse {
    let was_running = vm.state() == VmState::Running;
    if was_running {
        if let Err(e) = vm.pause() {
            return ControlResponse::failure(format!("cannot take the snapshot: {e}"));
        }
    }
    let started = std::time::Instant::now();
    let taken = take_on_its_own_thread(vm.clone(), target.clone(), name.to_owned());
    let paused_for = started.elapsed();
    let resumed = if was_running {
        vm.resume().map_err(|e| e.to_string())
    } else {
        Ok(())
    };
    match (taken, resumed) {
        (Ok(()), Ok(())) => {
            tracing::info!(snapshot = name, ?paused_for, "snapshot taken");
            ControlResponse::success(vm.state())
        }
        (Ok(()), Err(e)) => ControlResponse::failure(format!(
            "the snapshot `{name}` is taken, but the VM cannot run on ({e}); it stays paused"
        )),
        (Err(message), _) => ControlResponse::failure(format!(
            "cannot take the snapshot `{name}`: {message}; the VM {}",
            if was_running {
                "runs on as before"
            } else {
                "stays paused as before"
            }
        )),
    }
}

fn take_on_its_own_thread(
    vm: Arc<VirtualMachine>,
    target: SnapshotTarget,
    name: String,
) -> Result<(), String> {
    let thread = virtkit_sandbox::Builder::new(virtkit_sandbox::ThreadRole::Snapshot)
        .name("snapshot".into())
        .spawn(move || take(&vm, &target, &name))
        .map_err(|e| format!("cannot start the thread that takes it: {e}"))?;
    thread
        .join()
        .unwrap_or_else(|_| Err("the thread that takes it ended abnormally".to_owned()))
}

fn take(vm: &VirtualMachine, target: &SnapshotTarget, name: &str) -> Result<(), String> {
    let mut bundle =
        Bundle::open_path(&target.vm_name, target.bundle_dir.clone()).map_err(|e| error_chain(&e))?;
    let index = bundle
        .boot_disk_index()
        .ok_or_else(|| "the VM has no boot disk (disk.img) in its configuration".to_owned())?;
    bundle
        .snapshot_create_in_vm_process(
            name,
            |path| vm.save_machine_state(path).map(drop).map_err(|e| error_chain(&e)),
            |disk| {
                vm.replace_storage_device(index, disk)
                    .map_err(|e| error_chain(&e))
            },
        )
        .map(drop)
}
