use std::io;

/// Errors from KVM.
#[derive(Debug, thiserror::Error)]
pub enum HypervisorError {
    /// `/dev/kvm` could not be opened.
    #[error("cannot open /dev/kvm (is the kvm module loaded and are you allowed to use it?)")]
    OpenKvm(#[source] io::Error),
    /// The KVM API version is not the stable one.
    #[error("unsupported KVM API version {0} (expected 12)")]
    ApiVersion(i32),
    /// A capability the machine needs is missing.
    #[error("this host's KVM lacks the {0} capability")]
    MissingCapability(&'static str),
    /// A memory slot that this VM does not have was to be removed (a VMM bug).
    #[error("memory slot {0} is not mapped; only slots map_memory returned can be removed")]
    NoSuchSlot(u32),
    /// Saved state does not fit this KVM's structures (another ABI, or a damaged file).
    #[error("the saved {what} is {len} bytes but this host's KVM uses {expected}; the state was saved on a host with another KVM and cannot be restored here")]
    StateLayout {
        what: &'static str,
        len: usize,
        expected: usize,
    },
    /// KVM refused to take back an MSR value it gave.
    #[error("KVM refused to restore MSR {index:#x} (value {data:#x}); the state was saved on a host whose KVM has MSRs this one lacks")]
    MsrRefused { index: u32, data: u64 },
    /// An MSR that read back when the save list was made no longer does.
    #[error(
        "KVM stopped reading MSR {index:#x} that it read before; the machine state cannot be saved complete"
    )]
    MsrUnreadable { index: u32 },
    /// An ioctl failed.
    #[error("KVM {op} failed")]
    Ioctl {
        /// What we asked KVM to do.
        op: &'static str,
        #[source]
        source: io::Error,
    },
}

pub(crate) fn ioctl(op: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> HypervisorError {
    move |e| HypervisorError::Ioctl {
        op,
        source: io::Error::from_raw_os_error(e.errno()),
    }
}
