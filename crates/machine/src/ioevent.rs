//! Guest writes that signal an eventfd without leaving the kernel (ioeventfd), behind a trait so
//! that device models are testable without KVM.

pub use virtkit_hypervisor::IoEventAddress;
use virtkit_hypervisor::{HypervisorError, Vm};
use vmm_sys_util::eventfd::EventFd;

#[derive(Debug, thiserror::Error)]
#[error("KVM refused to change an ioeventfd at {address:?}")]
pub struct IoEventError {
    pub address: IoEventAddress,
    #[source]
    pub source: HypervisorError,
}

/// Registers and unregisters ioeventfds.
pub trait IoEvents: Send + Sync {
    /// Makes any guest write to `address` signal `event`.
    fn register(&self, event: &EventFd, address: IoEventAddress) -> Result<(), IoEventError>;
    /// Undoes [`IoEvents::register`].
    fn unregister(&self, event: &EventFd, address: IoEventAddress) -> Result<(), IoEventError>;
}

impl IoEvents for Vm {
    fn register(&self, event: &EventFd, address: IoEventAddress) -> Result<(), IoEventError> {
        self.register_ioevent(event, address)
            .map_err(|source| IoEventError { address, source })
    }

    fn unregister(&self, event: &EventFd, address: IoEventAddress) -> Result<(), IoEventError> {
        self.unregister_ioevent(event, address)
            .map_err(|source| IoEventError { address, source })
    }
}
