//! What the control server does with a request. Quick commands (`state`, `request_stop`,
//! `stop`, reading the balloon) are answered on the server's loop thread; the ones that wait on
//! the machine (`pause` waits for every vCPU to park, `resume` for the device workers, setting
//! the balloon's target for its interrupt, `suspend` for the save) run one at a time on the
//! executor thread, so a pause that hangs holds neither the loop nor a `stop`.

use std::os::fd::OwnedFd;
use std::path::Path;
use std::sync::mpsc::{Receiver, Sender};
use std::sync::Arc;

use virtkit::VirtualMachine;

use crate::control::{ControlCommand, ControlRequest, ControlResponse};

/// Whether `request` may wait on the machine, and so goes to the executor.
pub(crate) fn waits(request: &ControlRequest) -> bool {
    match request.command {
        ControlCommand::Pause
        | ControlCommand::Resume
        | ControlCommand::Suspend
        | ControlCommand::Snapshot => true,
        ControlCommand::Balloon => request.target_bytes.is_some(),
        ControlCommand::State
        | ControlCommand::RequestStop
        | ControlCommand::Stop
        | ControlCommand::Addresses
        | ControlCommand::Stats => false,
        // Reads the framebuffer and compresses it: tens of milliseconds, off the loop.
        ControlCommand::Screenshot => true,
    }
}

/// A request for the executor, from the client `client`.
pub(crate) struct Job {
    pub client: u64,
    pub request: ControlRequest,
}

/// The executor's answer to a [`Job`].
pub(crate) struct Done {
    pub client: u64,
    pub response: ControlResponse,
}

/// The executor's body: runs jobs in order, hands each answer back and wakes the loop through
/// `wake` (an eventfd). Ends when the loop drops its end of `jobs`.
pub(crate) fn run_executor(
    jobs: Receiver<Job>,
    done: Sender<Done>,
    wake: Arc<OwnedFd>,
    handle: impl Fn(&ControlRequest) -> ControlResponse,
) {
    for job in jobs {
        let response = handle(&job.request);
        if done
            .send(Done {
                client: job.client,
                response,
            })
            .is_err()
        {
            return;
        }
        // The counter only needs to be non-zero; a full counter (never in practice) still
        // leaves the loop woken.
        let _ = rustix::io::write(&*wake, &1u64.to_ne_bytes());
    }
}

/// Where a suspend saves (the bundle's `state.vksave`) and what holds the process until its
/// answer is sent.
pub(crate) struct SuspendTarget<'a> {
    pub state_file: &'a Path,
    pub answer: &'a crate::suspend::FinalAnswer,
    /// Where a snapshot goes (`None` for a server that serves no bundle's VM: tests).
    pub snapshot: Option<&'a crate::running_snapshot::SnapshotTarget>,
}

/// Runs one request against the VM.
pub(crate) fn handle(
    request: &ControlRequest,
    vm: &Arc<VirtualMachine>,
    suspend: SuspendTarget<'_>,
) -> ControlResponse {
    match request.command {
        ControlCommand::Suspend => return crate::suspend::suspend(vm, suspend.state_file, suspend.answer),
        ControlCommand::Snapshot => {
            return match (suspend.snapshot, request.name.as_deref()) {
                (Some(target), Some(name)) => crate::running_snapshot::snapshot(vm, target, name),
                (None, _) => ControlResponse::failure("this VM's process keeps no snapshots"),
                (_, None) => ControlResponse::failure(
                    "a snapshot needs a name: {\"command\":\"snapshot\",\"name\":\"NAME\"}",
                ),
            }
        }
        ControlCommand::Balloon => return balloon(request.target_bytes, vm),
        ControlCommand::Screenshot => return crate::screenshot::screenshot(vm),
        ControlCommand::Addresses => return addresses(vm),
        ControlCommand::Stats => {
            return ControlResponse {
                exits: vm.exit_statistics().map(Box::new),
                ..ControlResponse::success(vm.state())
            }
        }
        _ => {}
    }
    let result = match request.command {
        ControlCommand::State
        | ControlCommand::Balloon
        | ControlCommand::Addresses
        | ControlCommand::Stats
        | ControlCommand::Suspend
        | ControlCommand::Snapshot
        | ControlCommand::Screenshot => Ok(()),
        ControlCommand::Pause => vm.pause(),
        ControlCommand::Resume => vm.resume(),
        ControlCommand::RequestStop => vm.request_stop(),
        ControlCommand::Stop => vm.stop(),
    };
    match result {
        Ok(()) => ControlResponse::success(vm.state()),
        Err(e) => ControlResponse::failure(e),
    }
}

/// Each network card's MAC and the guest's addresses on it (read from what the cards' workers
/// last published: no wait on the machine).
fn addresses(vm: &VirtualMachine) -> ControlResponse {
    match vm.network_addresses() {
        Ok(nics) => ControlResponse {
            addresses: Some(nics),
            ..ControlResponse::success(vm.state())
        },
        Err(e) => ControlResponse::failure(e),
    }
}

/// Sets the balloon's target if one is given, then reports it.
fn balloon(target: Option<u64>, vm: &VirtualMachine) -> ControlResponse {
    let result = target
        .map_or(Ok(()), |bytes| vm.set_balloon_target(bytes))
        .and_then(|()| vm.balloon());
    match result {
        Ok(status) => ControlResponse {
            balloon: Some(Box::new(status)),
            ..ControlResponse::success(vm.state())
        },
        Err(e) => ControlResponse::failure(e),
    }
}
