//! Where the virtio structures sit in the transport's one BAR, and the vendor-specific PCI
//! capabilities that tell the driver (virtio 1.x, 4.1.4).

/// The BAR holding every structure: a 32-bit memory BAR, so that firmware running in 32-bit
/// mode (SeaBIOS) reaches it directly.
pub const BAR_INDEX: u8 = 0;
pub const BAR_SIZE: u64 = 0x8000;

pub const COMMON_CFG_OFFSET: u64 = 0x0000;
pub const COMMON_CFG_SIZE: u64 = 0x38;
pub const ISR_OFFSET: u64 = 0x1000;
pub const ISR_SIZE: u64 = 4;
pub const DEVICE_CFG_OFFSET: u64 = 0x2000;
pub const DEVICE_CFG_SIZE: u64 = 0x1000;
pub const NOTIFY_OFFSET: u64 = 0x3000;
/// Queue `n` is notified at `NOTIFY_OFFSET + n * NOTIFY_OFF_MULTIPLIER`.
pub const NOTIFY_OFF_MULTIPLIER: u32 = 4;
pub const MSIX_TABLE_OFFSET: u64 = 0x4000;
pub const MSIX_PBA_OFFSET: u64 = 0x6000;
/// Queues this layout has room for (notify area and MSI-X table).
pub const MAX_QUEUES: usize = 64;

/// Capability ID of vendor-specific capabilities.
pub const VENDOR_CAPABILITY: u8 = 0x09;
/// `cfg_type` of each virtio capability.
pub const CAP_COMMON_CFG: u8 = 1;
pub const CAP_NOTIFY_CFG: u8 = 2;
pub const CAP_ISR_CFG: u8 = 3;
pub const CAP_DEVICE_CFG: u8 = 4;
pub const CAP_PCI_CFG: u8 = 5;

/// Length of `struct virtio_pci_cap`.
const CAP_LEN: u8 = 16;

/// The body (after the capability ID and next pointer) of a `struct virtio_pci_cap` pointing at
/// `offset..offset + length` of BAR [`BAR_INDEX`], followed by `extra`.
pub fn capability_body(cfg_type: u8, offset: u32, length: u32, extra: &[u8]) -> Vec<u8> {
    // cap_len counts every byte of the capability, the ID and next pointer included.
    let cap_len = CAP_LEN + extra.len() as u8;
    let mut body = vec![cap_len, cfg_type, BAR_INDEX, 0, 0, 0];
    body.extend_from_slice(&offset.to_le_bytes());
    body.extend_from_slice(&length.to_le_bytes());
    body.extend_from_slice(extra);
    body
}

/// Offsets inside the `virtio_pci_cfg_cap` (from the capability's start) of the fields a driver
/// writes: the BAR, the offset and length in it, and the data window.
pub mod pci_cfg {
    pub const BAR: usize = 4;
    pub const OFFSET: usize = 8;
    pub const LENGTH: usize = 12;
    pub const DATA: usize = 16;
    pub const LEN: usize = 20;
    /// Write mask of the body (the capability minus its first two bytes).
    pub const WRITABLE: [u8; LEN - 2] = [
        0, 0, 0xff, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
    ];
}
