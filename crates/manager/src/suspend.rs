//! `suspend`: the VM's whole state into the bundle's `state.vksave`, then the VM stops and its
//! process ends; the next `virtkit run` restores it (docs/SAVE.md, docs/BUNDLES.md).
//!
//! The save runs on a `state-save` thread of its own (the `StateSave` seccomp role): the
//! control executor that asks for it has neither the VM ioctls nor file creation a save needs.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use virtkit::{VirtualMachine, VmState};

use crate::control::ControlResponse;

/// The state a suspended VM's process answers before it ends.
pub const SUSPENDED: &str = "suspended";

/// A suspend's answer on its way to its client. The suspend stops the VM at once (nothing may
/// run it between the save and the stop), which ends the VM process; the process waits for this
/// before it exits, so the answer is written to the client rather than lost with the process.
#[derive(Debug, Default)]
pub struct FinalAnswer {
    pending: Mutex<bool>,
    sent: Condvar,
}

impl FinalAnswer {
    fn expect(&self) {
        *self.pending.lock().unwrap_or_else(|p| p.into_inner()) = true;
    }

    /// The control loop handed the answer to its client (or found the client gone).
    pub(crate) fn sent(&self) {
        *self.pending.lock().unwrap_or_else(|p| p.into_inner()) = false;
        self.sent.notify_all();
    }

    /// Waits at most `timeout` for an expected answer to be sent; returns at once if none is.
    pub fn wait_sent(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        while *pending {
            let Some(left) = deadline.checked_duration_since(Instant::now()) else {
                tracing::warn!("the suspend's answer was not sent within {timeout:?}; the client sees the connection close");
                return;
            };
            pending = self
                .sent
                .wait_timeout(pending, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }
}

/// Pauses `vm` (if it runs), saves it to `state_file` (written beside it and renamed into
/// place, so the file is whole or absent) and stops it; `answer` then holds the process until
/// the answer is sent. A failed save leaves the VM as it was (running again if it ran) and no
/// state file.
pub(crate) fn suspend(vm: &Arc<VirtualMachine>, state_file: &Path, answer: &FinalAnswer) -> ControlResponse {
    let was_running = vm.state() == VmState::Running;
    if was_running {
        if let Err(e) = vm.pause() {
            return ControlResponse::failure(format!("cannot suspend: {e}"));
        }
    }
    match save_on_its_own_thread(vm.clone(), state_file.to_owned()) {
        Ok(summary) => {
            tracing::info!(
                path = %state_file.display(),
                pages = summary.memory_pages_written,
                "suspended: the machine's state is saved; the VM stops"
            );
            answer.expect();
            if let Err(e) = vm.stop() {
                // Stopping already (a stop came meanwhile): the state is saved all the same.
                tracing::info!("{e}");
            }
            ControlResponse::success(SUSPENDED)
        }
        Err(message) => {
            let now = if was_running && vm.resume().is_ok() {
                "it runs on"
            } else {
                "it stays paused"
            };
            ControlResponse::failure(format!("cannot suspend: {message}; {now}"))
        }
    }
}

/// Runs the save on a `state-save` thread and waits for it.
fn save_on_its_own_thread(vm: Arc<VirtualMachine>, path: PathBuf) -> Result<virtkit::SaveSummary, String> {
    let thread = virtkit_sandbox::Builder::new(virtkit_sandbox::ThreadRole::StateSave)
        .name("state-save".into())
        .spawn(move || vm.save_machine_state(&path).map_err(|e| error_chain(&e)))
        .map_err(|e| format!("cannot start the thread that saves: {e}"))?;
    thread
        .join()
        .unwrap_or_else(|_| Err("the thread that saves ended abnormally".to_owned()))
}

/// `e` and its sources, as one line.
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
