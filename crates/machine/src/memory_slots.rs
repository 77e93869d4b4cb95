//! Registering guest memory with KVM on a thread of its own, while the machine is assembled.
//!
//! A VM's first `KVM_SET_USER_MEMORY_REGION` waits for an SRCU grace period in the kernel
//! (`kvm_swap_active_memslots` → `synchronize_srcu`): 4-14 ms on this kind of host, asleep,
//! the largest single cost of a small guest's start. Nothing else in assembling the machine
//! (devices, tables, loading the guest through the host mapping, creating the vCPUs) needs the
//! slots, so they are registered on the `mem-slots` thread meanwhile, and joined before the
//! machine is handed out.

use std::sync::Arc;
use std::thread::JoinHandle;

use virtkit_hypervisor::{HypervisorError, Vm};
use virtkit_sandbox::ThreadRole;

use crate::machine::MachineError;

/// One KVM memory slot to register: a guest range and the host address behind it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SlotRequest {
    pub guest_address: u64,
    pub size: u64,
    pub host_address: u64,
    pub read_only: bool,
}

/// The `mem-slots` thread. Dropping it joins the thread, so the host memory the requests point
/// into must be declared before it (and so dropped after it).
pub(crate) struct SlotRegistration {
    thread: Option<JoinHandle<Result<(), HypervisorError>>>,
}

impl SlotRegistration {
    /// Starts registering `requests` in order.
    ///
    /// # Safety
    ///
    /// Each request's host range must be mapped, and stay mapped and not be remapped until its
    /// slot is removed or the VM is dropped; in particular it must outlive this value (whose
    /// drop joins the thread).
    pub(crate) unsafe fn start(
        vm: Arc<Vm>,
        requests: Vec<SlotRequest>,
    ) -> Result<SlotRegistration, MachineError> {
        let thread = virtkit_sandbox::Builder::new(ThreadRole::MemorySlots)
            .name("mem-slots".into())
            .spawn(move || {
                for r in requests {
                    // SAFETY: the caller of `start` guarantees the host range stays mapped while
                    // the slot exists.
                    unsafe { vm.map_memory(r.guest_address, r.size, r.host_address, r.read_only) }?;
                }
                Ok(())
            })
            .map_err(MachineError::Thread)?;
        Ok(SlotRegistration { thread: Some(thread) })
    }

    /// Waits until every slot is registered, or says why one was not.
    pub(crate) fn finish(mut self) -> Result<(), MachineError> {
        join(self.thread.take())
    }
}

fn join(thread: Option<JoinHandle<Result<(), HypervisorError>>>) -> Result<(), MachineError> {
    match thread.map(JoinHandle::join) {
        None | Some(Ok(Ok(()))) => Ok(()),
        Some(Ok(Err(e))) => Err(MachineError::Hypervisor(e)),
        // Nothing in the body panics; if it did, which slots exist is unknown.
        Some(Err(_)) => Err(MachineError::MemorySlotThreadPanicked),
    }
}

impl Drop for SlotRegistration {
    fn drop(&mut self) {
        let _ = join(self.thread.take());
    }
}
