//! The virtio-blk device: features, configuration space, and starting and stopping its worker.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use virtkit_virtio::features::{RING_EVENT_IDX, RING_INDIRECT_DESC, VERSION_1};
use virtkit_virtio::{
    single_queue, Activation, DeviceQueue, DeviceWorker, VirtioDevice, VirtioError, VirtioInterrupt,
    WorkerBody,
};
use vm_memory::GuestMemoryMmap;

use super::backend::{DiskBackend, DiskOpenError, FileDisk};
use super::config::{BlockConfig, SERIAL_MAX_LEN};
use super::handler::RequestHandler;
use super::metrics::BlockMetrics;
use super::request::{DiskLimits, ID_BYTES, SECTOR_SHIFT};
use super::worker::Worker;

/// Virtio device ID of block devices.
pub const DEVICE_TYPE: u32 = 2;
/// Queue size: as Linux and QEMU use.
pub const QUEUE_SIZE: u16 = 256;
/// PCI class code for a virtio disk (mass storage, SCSI, as QEMU reports it).
pub const PCI_CLASS: (u8, u8, u8) = (0x01, 0x00, 0x00);

/// Feature bits (`VIRTIO_BLK_F_*`).
pub mod features {
    pub const SEG_MAX: u64 = 1 << 2;
    pub const RO: u64 = 1 << 5;
    pub const BLK_SIZE: u64 = 1 << 6;
    pub const FLUSH: u64 = 1 << 9;
    pub const DISCARD: u64 = 1 << 13;
    pub const WRITE_ZEROES: u64 = 1 << 14;
}

/// Discard and write-zeroes limits: 4 GiB - 512 per range, 16 ranges per request.
const MAX_RANGE_SECTORS: u32 = u32::MAX >> SECTOR_SHIFT;
const MAX_RANGE_SEGMENTS: u32 = 16;
/// Discard granularity hint: 4 KiB.
const DISCARD_ALIGNMENT_SECTORS: u32 = 8;
/// Bytes of `struct virtio_blk_config` up to and including `write_zeroes_may_unmap` and padding.
pub const CONFIG_LEN: usize = 0x3c;

#[derive(Debug, thiserror::Error)]
pub enum BlockError {
    #[error(transparent)]
    Open(#[from] DiskOpenError),
    #[error("the serial {0:?} is longer than {SERIAL_MAX_LEN} bytes")]
    SerialTooLong(String),
}

/// What the device keeps across a snapshot (the transport keeps the queues).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockState {
    pub acked_features: u64,
    pub capacity_sectors: u64,
    pub read_only: bool,
}

/// A virtio-blk device over a [`DiskBackend`].
pub struct Block<B: DiskBackend + 'static = FileDisk> {
    features: u64,
    acked_features: u64,
    limits: DiskLimits,
    config: [u8; CONFIG_LEN],
    queue_sizes: [u16; 1],
    /// The handler (with the backend), and the `v_blk` thread that has it while the device runs.
    worker: DeviceWorker<RequestHandler<B>>,
    metrics: Arc<BlockMetrics>,
}

impl<B: DiskBackend + 'static> std::fmt::Debug for Block<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Block").field("limits", &self.limits).finish()
    }
}

impl Block<FileDisk> {
    /// Opens the disk `config` describes.
    pub fn open(config: &BlockConfig) -> Result<Block<FileDisk>, BlockError> {
        let disk = FileDisk::open_with_engine(
            &config.path,
            config.read_only,
            config.cache,
            config.sync,
            config.engine,
        )?;
        Block::new(disk, config.read_only, config.serial.as_deref())
    }
}

impl<B: DiskBackend + 'static> Block<B> {
    pub fn new(disk: B, read_only: bool, serial: Option<&str>) -> Result<Block<B>, BlockError> {
        let mut id = [0u8; ID_BYTES];
        if let Some(serial) = serial {
            if serial.len() > SERIAL_MAX_LEN {
                return Err(BlockError::SerialTooLong(serial.to_owned()));
            }
            id[..serial.len()].copy_from_slice(serial.as_bytes());
        }
        let capacity_sectors = disk.capacity() >> SECTOR_SHIFT;
        let limits = DiskLimits {
            capacity_sectors,
            read_only,
            max_discard_sectors: MAX_RANGE_SECTORS,
            max_discard_segments: MAX_RANGE_SEGMENTS,
            max_write_zeroes_sectors: MAX_RANGE_SECTORS,
            max_write_zeroes_segments: MAX_RANGE_SEGMENTS,
        };
        let mut features = VERSION_1
            | RING_INDIRECT_DESC
            | RING_EVENT_IDX
            | features::SEG_MAX
            | features::BLK_SIZE
            | features::FLUSH;
        if read_only {
            features |= features::RO;
        } else {
            features |= features::DISCARD | features::WRITE_ZEROES;
        }
        let metrics = Arc::new(BlockMetrics::default());
        Ok(Block {
            features,
            acked_features: 0,
            config: config_space(&limits),
            limits,
            queue_sizes: [QUEUE_SIZE],
            worker: DeviceWorker::new("blk", RequestHandler::new(disk, limits, id, metrics.clone())),
            metrics,
        })
    }

    pub fn metrics(&self) -> &Arc<BlockMetrics> {
        &self.metrics
    }

    /// The backend, while no worker has it (for tests and inspection).
    pub fn disk(&self) -> Option<&B> {
        self.worker.handler().map(|h| &h.disk)
    }

    /// The request handler, while no worker has it.
    pub(super) fn handler_mut(&mut self) -> Option<&mut RequestHandler<B>> {
        self.worker.handler_mut()
    }
}

/// The `v_blk` worker's body for the queue handed over.
fn start<B: DiskBackend + 'static>(
    queues: Vec<DeviceQueue>,
    activation: &Activation,
) -> Result<WorkerBody<RequestHandler<B>>, VirtioError> {
    let queue = single_queue(queues)?;
    let Activation { memory, interrupt } = activation.clone();
    Ok(Box::new(move |handler, kill| {
        let worker = Worker {
            queue,
            memory,
            interrupt,
            handler,
            broken: false,
        };
        worker.run(kill)
    }))
}

/// `struct virtio_blk_config`, little-endian.
fn config_space(limits: &DiskLimits) -> [u8; CONFIG_LEN] {
    let mut c = [0u8; CONFIG_LEN];
    let mut put = |offset: usize, bytes: &[u8]| c[offset..offset + bytes.len()].copy_from_slice(bytes);
    put(0x00, &limits.capacity_sectors.to_le_bytes());
    // seg_max: the queue size less the header and status descriptors.
    put(0x0c, &u32::from(QUEUE_SIZE - 2).to_le_bytes());
    put(0x14, &512u32.to_le_bytes());
    put(0x22, &1u16.to_le_bytes());
    put(0x24, &limits.max_discard_sectors.to_le_bytes());
    put(0x28, &limits.max_discard_segments.to_le_bytes());
    put(0x2c, &DISCARD_ALIGNMENT_SECTORS.to_le_bytes());
    put(0x30, &limits.max_write_zeroes_sectors.to_le_bytes());
    put(0x34, &limits.max_write_zeroes_segments.to_le_bytes());
    put(0x38, &[1]);
    c
}

impl<B: DiskBackend + 'static> VirtioDevice for Block<B> {
    type State = BlockState;

    fn name(&self) -> &str {
        "blk"
    }

    fn device_type(&self) -> u32 {
        DEVICE_TYPE
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &self.queue_sizes
    }

    fn features(&self) -> u64 {
        self.features
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        virtkit_virtio::read_config_bytes(&self.config, offset, data);
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        // Nothing is writable without VIRTIO_BLK_F_CONFIG_WCE, which is not offered.
        tracing::trace!(offset, len = data.len(), "virtio-blk: config write ignored");
    }

    fn activate(
        &mut self,
        memory: GuestMemoryMmap,
        interrupt: Arc<dyn VirtioInterrupt>,
        queues: Vec<DeviceQueue>,
        acked_features: u64,
    ) -> Result<(), VirtioError> {
        self.worker.activate(memory, interrupt, queues, start)?;
        self.acked_features = acked_features & self.features;
        Ok(())
    }

    fn reset(&mut self) -> Option<Vec<DeviceQueue>> {
        self.acked_features = 0;
        self.worker.reset()
    }

    fn sleep(&mut self) -> Result<Option<Vec<DeviceQueue>>, VirtioError> {
        Ok(self.worker.sleep())
    }

    fn wake(&mut self, queues: Option<Vec<DeviceQueue>>) -> Result<(), VirtioError> {
        self.worker.wake(queues, start)
    }

    fn snapshot(&self) -> Result<BlockState, VirtioError> {
        self.worker.ensure_stopped()?;
        Ok(BlockState {
            acked_features: self.acked_features,
            capacity_sectors: self.limits.capacity_sectors,
            read_only: self.limits.read_only,
        })
    }

    fn restore(&mut self, state: BlockState) -> Result<(), VirtioError> {
        self.worker.ensure_stopped()?;
        if state.capacity_sectors != self.limits.capacity_sectors {
            return Err(VirtioError::IncompatibleState("the disk's size changed"));
        }
        if state.read_only != self.limits.read_only {
            return Err(VirtioError::IncompatibleState(
                "the disk's read-only setting changed",
            ));
        }
        if state.acked_features & !self.features != 0 {
            return Err(VirtioError::IncompatibleState(
                "features this disk does not offer",
            ));
        }
        self.acked_features = state.acked_features;
        Ok(())
    }
}
