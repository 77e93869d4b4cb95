//! virtio-fs (device type 26): a shared directory the guest mounts by tag (`mount -t virtiofs
//! TAG DIR`). The device is only the configuration space (the tag and the number of request
//! queues) and the queues; the FUSE requests on them are served by a vhost-user backend,
//! virtiofsd, in its own sandboxed process, through [`crate::vhost_user`]. Only when virtiofsd is
//! gone does the VMM read the requests, just enough to answer each with `-EIO` ([`orphan`]).

pub mod fuzz;
pub mod orphan;
#[cfg(test)]
mod tests;

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use virtkit_virtio::features::{RING_EVENT_IDX, RING_INDIRECT_DESC, VERSION_1};
use virtkit_virtio::{
    read_config_bytes, Activation, DeviceQueue, DeviceWorker, VirtioDevice, VirtioError, VirtioInterrupt,
    WorkerBody,
};
use vm_memory::GuestMemoryMmap;

use crate::vhost_user::{check_queues, worker_body, VhostUserConnection};
use orphan::FuseErrorReplies;

/// Virtio device ID of file system devices.
pub const DEVICE_TYPE: u32 = 26;
/// The tag's field in the configuration space: UTF-8, NUL-padded, not necessarily terminated.
pub const TAG_LEN: usize = 36;
/// Queue size: as QEMU's `vhost-user-fs-pci` default.
pub const QUEUE_SIZE: u16 = 1024;
/// PCI class code: mass storage, "other", as QEMU reports virtio-fs.
pub const PCI_CLASS: (u8, u8, u8) = (0x01, 0x80, 0x00);

/// The features virtkit lets through from the backend to the guest. The notification queue
/// (`VIRTIO_FS_F_NOTIFICATION`) would change the queue layout, so it stays off.
const PASSED_FEATURES: u64 = VERSION_1 | RING_EVENT_IDX | RING_INDIRECT_DESC;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FsError {
    #[error("a shared directory's tag cannot be empty; give it a name, such as the directory's")]
    EmptyTag,
    #[error("the tag `{tag}` is {len} bytes; virtio-fs tags have at most {TAG_LEN}: give a shorter one")]
    TagTooLong { tag: String, len: usize },
    #[error("the tag `{tag}` contains a NUL byte; give a tag without one")]
    NulInTag { tag: String },
    #[error("a virtio-fs device needs at least one request queue")]
    NoRequestQueue,
}

/// Checks a tag as the configuration space holds it.
pub fn check_tag(tag: &str) -> Result<(), FsError> {
    if tag.is_empty() {
        return Err(FsError::EmptyTag);
    }
    if tag.len() > TAG_LEN {
        return Err(FsError::TagTooLong {
            tag: tag.to_string(),
            len: tag.len(),
        });
    }
    if tag.contains('\0') {
        return Err(FsError::NulInTag { tag: tag.to_string() });
    }
    Ok(())
}

/// The configuration space: `tag[36]` then `num_request_queues` (le32).
pub fn config_space(tag: &str, request_queues: u32) -> [u8; TAG_LEN + 4] {
    let mut config = [0u8; TAG_LEN + 4];
    let bytes = tag.as_bytes();
    let len = bytes.len().min(TAG_LEN);
    config[..len].copy_from_slice(&bytes[..len]);
    config[TAG_LEN..].copy_from_slice(&request_queues.to_le_bytes());
    config
}

/// What the device keeps across a snapshot. virtiofsd's own state (open files, inodes) is not
/// saved: a restored guest's open files on a share are gone.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FsState {
    pub acked_features: u64,
}

/// A virtio-fs device served by a vhost-user backend.
pub struct FileSystem {
    tag: String,
    config: [u8; TAG_LEN + 4],
    queue_sizes: Vec<u16>,
    offered_features: u64,
    acked_features: u64,
    worker: DeviceWorker<VhostUserConnection>,
}

impl std::fmt::Debug for FileSystem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileSystem")
            .field("tag", &self.tag)
            .field("queues", &self.queue_sizes.len())
            .finish()
    }
}

impl FileSystem {
    /// A device with tag `tag` and `request_queues` request queues (plus the high-priority
    /// queue) over a negotiated `connection` to virtiofsd.
    pub fn new(
        tag: &str,
        request_queues: u16,
        connection: VhostUserConnection,
    ) -> Result<FileSystem, FsError> {
        check_tag(tag)?;
        if request_queues == 0 {
            return Err(FsError::NoRequestQueue);
        }
        let queue_count = 1 + usize::from(request_queues);
        Ok(FileSystem {
            tag: tag.to_string(),
            config: config_space(tag, u32::from(request_queues)),
            queue_sizes: vec![QUEUE_SIZE; queue_count],
            offered_features: connection.backend_features() & PASSED_FEATURES,
            acked_features: 0,
            worker: DeviceWorker::new("fs", connection),
        })
    }

    pub fn tag(&self) -> &str {
        &self.tag
    }

    fn start(
        &self,
    ) -> impl FnOnce(Vec<DeviceQueue>, &Activation) -> Result<WorkerBody<VhostUserConnection>, VirtioError>
    {
        let count = self.queue_sizes.len();
        let acked = self.acked_features;
        move |queues, activation| {
            check_queues(&queues, count)?;
            Ok(worker_body(
                "fs",
                queues,
                activation,
                acked,
                Some(Box::new(FuseErrorReplies)),
            ))
        }
    }
}

impl VirtioDevice for FileSystem {
    type State = FsState;

    fn name(&self) -> &str {
        "fs"
    }

    fn device_type(&self) -> u32 {
        DEVICE_TYPE
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &self.queue_sizes
    }

    fn features(&self) -> u64 {
        self.offered_features
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config, offset, data);
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        tracing::trace!(
            offset,
            len = data.len(),
            "virtio-fs: the configuration space is read-only"
        );
    }

    fn activate(
        &mut self,
        memory: GuestMemoryMmap,
        interrupt: Arc<dyn VirtioInterrupt>,
        queues: Vec<DeviceQueue>,
        acked_features: u64,
    ) -> Result<(), VirtioError> {
        self.acked_features = acked_features & self.offered_features;
        let start = self.start();
        self.worker.activate(memory, interrupt, queues, start)
    }

    fn reset(&mut self) -> Option<Vec<DeviceQueue>> {
        self.acked_features = 0;
        self.worker.reset()
    }

    fn sleep(&mut self) -> Result<Option<Vec<DeviceQueue>>, VirtioError> {
        Ok(self.worker.sleep())
    }

    fn wake(&mut self, queues: Option<Vec<DeviceQueue>>) -> Result<(), VirtioError> {
        let start = self.start();
        self.worker.wake(queues, start)
    }

    fn snapshot(&self) -> Result<FsState, VirtioError> {
        self.worker.ensure_stopped()?;
        Ok(FsState {
            acked_features: self.acked_features,
        })
    }

    fn restore(&mut self, state: FsState) -> Result<(), VirtioError> {
        self.worker.ensure_stopped()?;
        if state.acked_features & !self.offered_features != 0 {
            return Err(VirtioError::IncompatibleState(
                "features this shared directory's daemon does not offer",
            ));
        }
        self.acked_features = state.acked_features;
        Ok(())
    }
}
