//! vCPU threads started while the machine is still being built, each waiting for its vCPU.
//!
//! Creating a vCPU thread and installing its seccomp filter (the largest, ~250 instructions,
//! which the kernel converts and JIT-compiles) took ~0.25 ms on this host, and it came right
//! before the guest's first instruction: the main thread created the thread only in
//! [`Machine::start`](crate::Machine::start). A thread made when the build begins does that work
//! on the other CPU while the VM, its memory and its vCPUs are created, then waits on a channel;
//! `start` hands it its vCPU and it enters `KVM_RUN` at once.
//!
//! A waiting thread that gets nothing (the build failed, or the machine was dropped before
//! `start`) sees its channel close and ends without touching the machine.

use std::sync::mpsc::{sync_channel, SyncSender, TrySendError};
use std::sync::Arc;
use std::thread::JoinHandle;

use virtkit_hypervisor::Vcpu;
use virtkit_sandbox::ThreadRole;

use crate::vcpu::{run_vcpu, VcpuContext};

/// What `start` hands a waiting thread: its vCPU and what it runs with.
type Work = (Vcpu, Arc<VcpuContext>);

/// A vCPU thread (`vcpu-N`) waiting for its vCPU.
pub(crate) struct WaitingVcpuThread {
    index: u32,
    handle: JoinHandle<()>,
    work: SyncSender<Work>,
}

/// vCPU `index`'s thread: named `vcpu-N`, under the vCPU role's filter.
pub(crate) fn vcpu_thread(index: u32) -> virtkit_sandbox::Builder {
    virtkit_sandbox::Builder::new(ThreadRole::Vcpu).name(format!("vcpu-{index}"))
}

/// Starts one waiting thread per vCPU. A thread that cannot be created is left out: `start`
/// creates that vCPU's thread itself, as before, and reports the error then.
pub(crate) fn start_waiting(vcpus: u8) -> Vec<WaitingVcpuThread> {
    (0..u32::from(vcpus))
        .map_while(|index| {
            let (work, receive) = sync_channel::<Work>(1);
            let handle = vcpu_thread(index)
                .spawn(move || {
                    if let Ok((vcpu, ctx)) = receive.recv() {
                        run_vcpu(vcpu, index, &ctx);
                    }
                })
                .ok()?;
            Some(WaitingVcpuThread { index, handle, work })
        })
        .collect()
}

impl WaitingVcpuThread {
    pub(crate) fn index(&self) -> u32 {
        self.index
    }

    /// Hands the thread its vCPU; returns the thread to join. If the thread is gone (it can
    /// only have died), the work comes back for the caller to run on a new thread.
    pub(crate) fn run(self, vcpu: Vcpu, ctx: Arc<VcpuContext>) -> Result<JoinHandle<()>, Work> {
        match self.work.try_send((vcpu, ctx)) {
            Ok(()) => Ok(self.handle),
            Err(TrySendError::Full(work) | TrySendError::Disconnected(work)) => Err(work),
        }
    }

    /// Tells the thread there is no vCPU for it and waits for it to end.
    pub(crate) fn dismiss(self) {
        drop(self.work);
        let _ = self.handle.join();
    }
}
